"""PRNG keys in optimizer states: one stream per ensemble member.

KO's collision and diffusion steps keep a typed ``jax.random.key`` in their
state, created by ``init`` from the ``key`` argument of the factory. When an
ensemble (several seeds, a hyperparameter grid) is initialised with
``jax.vmap(tx.init)``, every member gets that same key. ``fold_in_keys``
gives each member its own stream without rebuilding the optimizer.
``draw_layout`` is the threefry layout the hard collision draws its random
words in (on CPU JAX's original one, the fastest there).
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp

from ko_optax import _backend


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key)


def fold_in_keys(state: Any, data: Any) -> Any:
  """Folds ``data`` into every typed PRNG key of an optimizer state.

  Args:
    state: any optimizer state (or pytree); leaves that are typed keys are
      replaced by ``jax.random.fold_in(key, data)``, other leaves are kept.
    data: an integer (e.g. a seed or an ensemble index), possibly traced.

  Returns:
    The state with new keys; the same structure, shapes and dtypes.

  Example:
    >>> import jax, jax.numpy as jnp, ko_optax
    >>> tx = ko_optax.ko(1e-2, collision='hard')
    >>> params = jnp.zeros((3, 2, 4))                 # three seeds
    >>> init = lambda p, seed: ko_optax.fold_in_keys(tx.init(p), seed)
    >>> states = jax.vmap(init)(params, jnp.arange(3))
    >>> keys = jax.random.key_data(states[0].key)
    >>> bool((keys[0] != keys[1]).any())
    True
  """
  return jax.tree.map(
      lambda x: jax.random.fold_in(x, data) if _is_key(x) else x, state)


def draw_layout() -> contextlib.AbstractContextManager[Any]:
  """The threefry counter layout of KO's random draws, as a context.

  On CPU, JAX's original layout (``jax.threefry_partitionable(False)``),
  which keeps both output words of every threefry block: half the hashing
  of the partitionable layout (JAX's default), which hashes one counter per
  word and XORs the two outputs, and on XLA:CPU several times faster
  (docs/design/implementation.md).
  Elsewhere the partitionable layout is kept, so that on a sharded
  accelerator mesh XLA can shard the draw. The numbers depend on the
  layout, not on the sharding: one backend draws the same numbers sharded
  or not. Keys of other PRNG implementations ('rbg') are not
  affected.
  """
  if _backend.original_threefry_layout():
    return jax.threefry_partitionable(False)
  return contextlib.nullcontext()
