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
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_optax import _checks
from ko_optax import _leafwise
from ko_optax import _numerics
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
    if _numerics.explicit_mesh(g) is not None:
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


_noisy_compiled = _leafwise.compiled_when_eager(_noisy)


def _noise_scale(temperature: Any) -> jax.Array:
  """``sqrt(2 T)``, NaN for a bad temperature (docs/method.md, "Bad
  values")."""
  bad = _checks.bad_rate(temperature)
  return jnp.where(bad, jnp.nan,
                   jnp.sqrt(2.0 * jnp.asarray(temperature, jnp.float32)))


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

  def step(updates: optax.Updates, state: ThermalDiffusionState,
           params: optax.Params | None, step_key: jax.Array) -> optax.Updates:
    del params
    t = _leafwise.scheduled('temperature', temperature, state.count)
    tree = _leafwise.Leaves.of(updates,
                               particles_lib.mask_leaves(mask, updates))
    for i in tree.active:
      _check_inexact(tree.leaves[i], tree.paths[i])
    leaves = tree.selected()
    noisy = _leafwise.unless_zero(t, lambda t: _noisy_compiled(
        leaves, step_key, _noise_scale(t)), leaves)
    return tree.splice(noisy)

  return _leafwise.transformation(ThermalDiffusionState, key, step)
