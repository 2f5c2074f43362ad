"""Argument checks and key handling shared by the KO transformations.

Every check names the argument it rejects and says how to fix it. Checks on
numeric arguments only run when the value is concrete: under
``optax.inject_hyperparams`` numbers arrive as tracers and cannot be inspected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
import warnings
import zlib

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


def is_traced(*trees: Any) -> bool:
  """Whether any leaf of ``trees`` is a tracer: the caller runs under a
  ``jit``, ``vmap`` or ``grad`` rather than eagerly."""
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def is_static_number(value: Any) -> bool:
  """True for Python and NumPy numbers: values fixed at construction.

  JAX arrays are not: ``optax.inject_hyperparams`` passes its numbers as JAX
  arrays (traced under jit, concrete without), and such run-time values
  follow the run-time policy (:func:`bad_rate`) so that a bad value acts
  the same with and without jit.
  """
  return isinstance(value, (int, float, np.ndarray, np.number)) and (
      not isinstance(value, jax.Array))


def check_non_negative(name: str, value: Any) -> None:
  """Raises ValueError if a Python or NumPy ``value`` is negative or NaN.

  Schedules (callables) and JAX arrays (traced or not) are only type
  checked: their values are run-time values (:func:`is_static_number`).
  """
  check_scalar(name, value)
  if not is_static_number(value):
    return
  array = np.asarray(value)
  if np.any(np.isnan(array)):
    raise ValueError(f'{name} must not be NaN.')
  if np.any(array < 0):
    raise ValueError(
        f'{name} must be >= 0, got {value!r}. Pass 0 to switch this step off.'
    )


def check_scalar(name: str, value: Any, *, schedule: bool = True,
                 optional: bool = False) -> None:
  """Raises TypeError unless ``value`` is a real number (or a schedule).

  Accepted: Python ints and floats (not bools), NumPy scalars, 0-d real
  arrays, traced values (``optax.inject_hyperparams`` passes numbers as
  tracers), callables when ``schedule`` (an optax schedule), and None when
  ``optional``. The error names the argument: a string or None passed as a
  rate would otherwise fail later, inside ``update``, without a name.
  """
  if value is None and optional:
    return
  if callable(value) and schedule and not isinstance(value, jax.Array):
    return
  if isinstance(value, jax.core.Tracer):
    return
  what = 'a number or a schedule' if schedule else 'a number'
  if optional:
    what += ' or None'
  if isinstance(value, bool) or not isinstance(
      value, (int, float, np.number, np.ndarray, jax.Array)):
    raise TypeError(f'{name} must be {what}, got {value!r}.')
  dtype = np.asarray(value).dtype if not isinstance(value, jax.Array) else (
      value.dtype)
  if np.shape(value) != () or not (
      jnp.issubdtype(dtype, jnp.integer)
      or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(
        f'{name} must be {what} (a real scalar, shape ()), got {value!r}.')


def check_finite(name: str, value: Any) -> None:
  """Raises ValueError if a Python or NumPy ``value`` is NaN or infinite."""
  if not is_static_number(value):
    return
  if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
    raise ValueError(f'{name} must be finite, got {value!r}.')


def bad_rate(value: Any) -> Any:
  """True if a run-time rate is NaN, infinite or negative.

  A Python bool for a concrete rate, a traced bool array otherwise.

  The policy (docs/method.md, "Bad values"): such a rate makes the step's
  updates NaN, with and without jit, so that ``optax.apply_if_finite``
  skips and counts the step instead of the schedule's error going unseen.
  """
  if is_concrete(value):   # a Python bool: no operation under jit
    value = np.asarray(value, np.float64)
    return bool(not (np.isfinite(value) and value >= 0))
  value = jnp.asarray(value)
  return ~(jnp.isfinite(value) & (value >= 0))


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


def warn_ineffective(name: str, value: Any, why: str,
                     stacklevel: int = 2) -> None:
  """Warns that ``name=value`` does nothing in the chosen mode.

  Settings that do nothing are warned about, not rejected: a sweep passes
  the same options to every mode (docs/method.md, "Bad values").
  """
  warnings.warn(f'ko_optax: {name}={value!r} has no effect: {why}.',
                stacklevel=stacklevel + 1)


def tree_key(key: jax.Array, params: Any) -> jax.Array:
  """``key`` with the tree's leaf paths folded in: one stream per tree.

  Two KO transformations built with the same ``key`` (the default 0) but
  acting on different leaves, e.g. under ``optax.multi_transform``, whose
  inner ``init`` sees the other labels' leaves as ``MaskedNode``, then draw
  different random numbers. Only the paths count (not shapes or values),
  so the key is the same in every process that builds the same tree.
  """
  paths = [jax.tree_util.keystr(path) for path, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  digest = zlib.crc32('\n'.join(paths).encode()) & 0x7FFFFFFF
  return jax.random.fold_in(key, digest)


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
