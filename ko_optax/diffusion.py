"""The thermal-diffusion step of KO: temperature-controlled noise.

In kinetic theory a gas at temperature T diffuses: on top of the collisions,
each particle's velocity receives a random kick whose variance is set by the
temperature (a Langevin / Fokker-Planck term). KO adds it to the gradient::

    g <- g + sqrt(2 T) xi,    xi ~ N(0, 1) independently per element.

The reference code adds such noise right after the soft collision with
standard deviation 1e-4, i.e. T = 5e-9. T = 0 is the identity.

References:
  Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
  Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
"""

from __future__ import annotations

import functools
from typing import Any, cast, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_optax import _checks
from ko_optax import particles as particles_lib


class ThermalDiffusionState(NamedTuple):
  """State of :func:`thermal_diffusion`.

  Attributes:
    count: number of updates so far (the temperature schedule's step).
    key: typed PRNG key, split at every update.
  """
  # The field shadows tuple.count, as ``count`` does in optax's states.
  count: chex.Array  # type: ignore[assignment]
  key: chex.Array


def _check_inexact(g: jax.Array, path: str) -> None:
  if not jnp.issubdtype(g.dtype, jnp.inexact):
    raise TypeError(
        f'thermal_diffusion needs floating-point or complex updates, got '
        f'{g.dtype} for leaf {path}; exclude the leaf with mask.'
    )


def _is_explicitly_sharded(x: jax.Array) -> bool:
  mesh = getattr(jax.typeof(x).sharding, 'mesh', None)
  return mesh is not None and not mesh.empty and bool(mesh.explicit_axes)


def _noisy(leaves: list[jax.Array], key: jax.Array,
           scale: jax.Array) -> list[jax.Array]:
  """``g + scale * xi`` for every leaf, computed in at least float32.

  Leaf ``k``'s noise is ``jax.random.normal(keys[k], shape)`` with
  ``keys = jax.random.split(key, len(leaves))``. Leaves of one shape and
  dtype draw theirs in one vmapped call: one random-number kernel per shape
  instead of one per leaf (each costs compile time). Explicitly sharded
  leaves draw in their own sharding (the same numbers). A complex leaf gets
  independent standard normal noise on its real and its imaginary part
  (``jax.random.normal``'s complex draw, of variance 1/2 per part, times
  sqrt(2)): each real degree of freedom is kicked alike.
  """
  dtypes = [jnp.promote_types(g.dtype, jnp.float32) for g in leaves]
  keys = jax.random.split(key, max(len(leaves), 1))
  noise: list[Any] = [None] * len(leaves)
  groups: dict[Any, list[int]] = {}
  for i, g in enumerate(leaves):
    if _is_explicitly_sharded(g):
      noise[i] = jax.random.normal(keys[i], g.shape, dtypes[i],
                                   out_sharding=jax.typeof(g).sharding)
    else:
      groups.setdefault((g.shape, jnp.dtype(dtypes[i])), []).append(i)
  for (shape, dtype), members in groups.items():
    if len(members) == 1:
      noise[members[0]] = jax.random.normal(keys[members[0]], shape, dtype)
      continue
    draw = functools.partial(jax.random.normal, shape=shape, dtype=dtype)
    drawn = jax.vmap(draw)(keys[np.asarray(members)])
    for j, i in enumerate(members):
      noise[i] = drawn[j]
  def kick(g: jax.Array, d: Any, xi: jax.Array) -> jax.Array:
    s = scale
    if jnp.issubdtype(d, jnp.complexfloating):
      s = s * np.sqrt(2.0).astype(np.float32)
    return (g.astype(d) + s.astype(d) * xi).astype(g.dtype)

  return [kick(g, d, xi) for g, d, xi in zip(leaves, dtypes, noise)]


# Called outside any trace, an update draws its noise with this compiled
# twin of _noisy (one compile per tree layout, cached by jax) instead of
# operation by operation; under the caller's jit, vmap or grad _noisy is
# traced into the caller's program, unchanged.
_noisy_jit = jax.jit(_noisy)


def thermal_diffusion(
    temperature: optax.ScalarOrSchedule,
    *,
    key: Any = 0,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """KO's thermal-diffusion step: adds ``sqrt(2 T) * N(0, 1)`` per element.

  Args:
    temperature: the temperature T (float or schedule, >= 0); 0 is the
      identity. The reference code's noise of std 1e-4 is T = 5e-9.
    key: int seed or typed ``jax.random.key``; the state carries the key and
      each update draws from a fresh subkey per leaf (leaves of one shape
      in one vmapped draw).
    mask: None (every leaf), a bool (every leaf, or none), a tree of bools
      with the structure of the updates, or a callable returning one: only
      True leaves get noise.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Complex leaves get noise
    of variance ``2 T`` on each part. A temperature that is NaN, infinite or
    negative at run time (a schedule, ``optax.inject_hyperparams``) makes
    the noisy leaves NaN, with and without jit, so that
    ``optax.apply_if_finite`` skips and counts the step (docs/method.md,
    "Bad values"). The state's key is ``key`` with the tree's leaf paths
    folded in at ``init``: transformations on different leaves draw
    different numbers from the same ``key``.

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> tx = ko_optax.thermal_diffusion(0.5, key=0)
    >>> g = jnp.zeros(10_000)
    >>> noisy, _ = tx.update(g, tx.init(g))
    >>> round(float(noisy.var()), 1)   # 2 T
    1.0

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  """
  _checks.check_non_negative('temperature', temperature)
  _checks.check_finite('temperature', temperature)

  def init_fn(params: optax.Params) -> ThermalDiffusionState:
    return ThermalDiffusionState(
        count=jnp.zeros([], jnp.int32),
        key=_checks.tree_key(_checks.canonicalize_key(key), params))

  def update_fn(
      updates: optax.Updates,
      state: optax.OptState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ThermalDiffusionState]:
    del params, extra_args
    state = cast(ThermalDiffusionState, state)  # what init_fn returned
    t = temperature(state.count) if callable(temperature) else temperature
    _checks.check_scalar('temperature', t, schedule=False)
    concrete, raw = _checks.is_concrete(t), t
    t = jnp.asarray(t, jnp.float32)
    # A bad temperature gives NaN noise (docs/method.md, "Bad values").
    scale = jnp.where(_checks.bad_rate(raw if concrete else t), jnp.nan,
                      jnp.sqrt(2.0 * t))
    next_key, step_key = jax.random.split(state.key)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
    leaves = [leaf for _, leaf in leaves_with_path]
    keep = particles_lib.mask_leaves(mask, updates)
    active = [i for i, m in enumerate(keep) if m]
    for i in active:
      _check_inexact(leaves[i], jax.tree_util.keystr(leaves_with_path[i][0]))

    active_leaves = [leaves[i] for i in active]
    traced = _checks.is_traced(active_leaves, state, scale)

    def diffuse(scale: jax.Array) -> list[jax.Array]:
      return (_noisy if traced else _noisy_jit)(active_leaves, step_key,
                                                scale)

    if concrete:
      noisy = (diffuse(scale) if np.any(np.asarray(raw) != 0)
               else [leaves[i] for i in active])
    else:
      # A traced temperature may be 0: then draw nothing and return the
      # updates untouched, bit for bit. NaN != 0: a bad one gives NaN.
      noisy = jax.lax.cond(t != 0, diffuse,
                           lambda scale: [leaves[i] for i in active], scale)
    new_leaves = list(leaves)
    for i, new in zip(active, noisy):
      new_leaves[i] = new
    # safe_increment is annotated ArrayLike; it returns an array for one.
    new_state = ThermalDiffusionState(
        count=cast(chex.Array, optax.safe_increment(state.count)),
        key=next_key)
    return jax.tree.unflatten(treedef, new_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
