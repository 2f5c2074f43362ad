"""Argument checks and key handling shared by the KO transformations.

Every check names the argument it rejects and says how to fix it. Checks on
numeric arguments only run when the value is concrete: under
``optax.inject_hyperparams`` numbers arrive as tracers and cannot be inspected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# optax's message for a transformation called without params (its
# NO_PARAMS_MSG, which optax does not export).
NO_PARAMS_MSG = (
    'You are using a transformation that requires the current value of '
    'parameters, but you are not passing `params` when calling `update`.')


def is_concrete(value: Any) -> bool:
  """True when ``value`` is a Python number or a non-traced array."""
  if isinstance(value, jax.core.Tracer):
    return False
  return isinstance(value, (int, float, np.ndarray, np.number, jax.Array))


def check_non_negative(name: str, value: Any) -> None:
  """Raises ValueError if a concrete ``value`` has a negative entry.

  Schedules (callables) and traced values are accepted as they are: their
  values are only known inside ``update``.
  """
  if callable(value) or not is_concrete(value):
    return
  array = np.asarray(value)
  if not np.issubdtype(array.dtype, np.number):
    raise TypeError(f'{name} must be a number or a schedule, got {value!r}.')
  if np.any(np.isnan(array)):
    raise ValueError(f'{name} must not be NaN.')
  if np.any(array < 0):
    raise ValueError(
        f'{name} must be >= 0, got {value!r}. Pass 0 to switch this step off.'
    )


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ValueError unless ``value`` is one of ``choices``."""
  if value not in choices:
    options = ', '.join(repr(c) for c in choices)
    raise ValueError(f'{name} must be one of {options}; got {value!r}.')


def check_positive_int_or_none(name: str, value: Any) -> int | None:
  """Returns ``value`` as a Python int (or None); raises unless positive."""
  if value is None:
    return None
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f'{name} fixes array shapes and must be a static Python int, got a '
        f'traced value. With optax.inject_hyperparams, pass '
        f"static_args=('{name}',).")
  if isinstance(value, jax.Array) and value.shape == () and jnp.issubdtype(
      value.dtype, jnp.integer):
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f'{name} must be a positive int or None, got {value!r}.')
  if value < 1:
    raise ValueError(f'{name} must be a positive int or None, got {value!r}.')
  return int(value)


def canonicalize_key(key: Any, name: str = 'key') -> jax.Array:
  """Turns an int seed or a typed key into a typed ``jax.random.key``.

  Legacy ``uint32[2]`` keys (``jax.random.PRNGKey``) are rejected, as in
  ``optax.add_noise``: typed keys checkpoint with orbax and carry their
  implementation with them.

  Args:
    key: an int seed, an integer array holding a seed (as
      ``optax.inject_hyperparams`` passes it) or a typed key.
    name: the argument's name, used in error messages.

  Returns:
    A typed PRNG key (dtype ``key<...>``, shape ``()``).
  """
  if isinstance(key, jax.Array) and jnp.issubdtype(
      key.dtype, jax.dtypes.prng_key
  ):
    if key.shape != ():
      raise ValueError(
          f'{name} must be a single typed key (shape ()), got shape '
          f'{key.shape}. Split it first, or pass an int seed.'
      )
    return key
  if isinstance(key, bool):
    raise TypeError(f'{name} must be an int seed or a jax.random.key.')
  dtype = getattr(key, 'dtype', None)
  shape = getattr(key, 'shape', ())
  if dtype is not None and jnp.issubdtype(dtype, jnp.uint32) and shape == (2,):
    raise TypeError(
        f'{name} looks like a legacy jax.random.PRNGKey (uint32[2]). Pass an '
        'int seed or a typed key: jax.random.key(seed), or '
        'jax.random.wrap_key_data(legacy_key).'
    )
  if isinstance(key, (int, np.integer)) or (
      dtype is not None and jnp.issubdtype(dtype, jnp.integer) and shape == ()
  ):
    return jax.random.key(key)
  raise TypeError(
      f'{name} must be an int seed or a typed jax.random.key, got {key!r}.'
  )


def check_params(params: Any, updates: Any, transform: str) -> None:
  """Raises ValueError if ``params`` is missing or its tree differs."""
  if params is None:
    raise ValueError(
        f'{transform} needs the current params: call '
        'update(updates, state, params). ' + NO_PARAMS_MSG
    )
  params_def = jax.tree.structure(params)
  updates_def = jax.tree.structure(updates)
  # jaxlib ships no type stub for PyTreeDef: mypy cannot see its __eq__.
  if params_def != updates_def:  # type: ignore[operator]
    raise ValueError(
        f'{transform}: params must have the same tree structure as the '
        f'updates (gradients). params: {params_def}; updates: {updates_def}.'
    )
  for p, u in zip(jax.tree.leaves(params), jax.tree.leaves(updates)):
    if np.shape(p) != np.shape(u):
      raise ValueError(
          f'{transform}: params and updates have leaves of different shapes '
          f'({np.shape(p)} and {np.shape(u)}); pass the params the gradients '
          'were taken of.'
      )
