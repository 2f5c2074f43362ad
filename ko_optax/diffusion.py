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

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_optax import _checks


class ThermalDiffusionState(NamedTuple):
  """State of :func:`thermal_diffusion`.

  Attributes:
    count: number of updates so far (the temperature schedule's step).
    key: typed PRNG key, split at every update.
  """
  count: chex.Array
  key: chex.Array


def _leaf_noise(g: jax.Array, key: jax.Array, scale: jax.Array) -> jax.Array:
  """Returns ``g + scale * xi`` computed in at least float32."""
  if not jnp.issubdtype(g.dtype, jnp.floating):
    raise TypeError(
        f'thermal_diffusion needs floating-point updates, got {g.dtype}; '
        'exclude the leaf with mask.'
    )
  dtype = jnp.promote_types(g.dtype, jnp.float32)
  xi = jax.random.normal(key, g.shape, dtype,
                         out_sharding=jax.typeof(g).sharding)
  return (g.astype(dtype) + scale.astype(dtype) * xi).astype(g.dtype)


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
      each update draws from a fresh subkey (one per leaf).
    mask: None (every leaf), or a tree of bools with the structure of the
      updates, or a callable returning one: only True leaves get noise.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

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

  def init_fn(params):
    del params
    return ThermalDiffusionState(
        count=jnp.zeros([], jnp.int32), key=_checks.canonicalize_key(key))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    t = temperature(state.count) if callable(temperature) else temperature
    scale = jnp.sqrt(2.0 * jnp.asarray(t, jnp.float32))
    next_key, step_key = jax.random.split(state.key)
    leaves, treedef = jax.tree.flatten(updates)
    keep = [True] * len(leaves) if mask is None else treedef.flatten_up_to(
        mask(updates) if callable(mask) else mask)
    keys = jax.random.split(step_key, max(len(leaves), 1))
    active = [i for i, m in enumerate(keep) if m]

    def diffuse(scale):
      return [_leaf_noise(leaves[i], keys[i], scale) for i in active]

    if _checks.is_concrete(t):
      noisy = (diffuse(scale) if np.any(np.asarray(t) != 0)
               else [leaves[i] for i in active])
    else:
      # A traced temperature may be 0: then draw nothing and return the
      # updates untouched, bit for bit.
      noisy = jax.lax.cond(scale > 0, diffuse,
                           lambda scale: [leaves[i] for i in active], scale)
    new_leaves = list(leaves)
    for i, new in zip(active, noisy):
      new_leaves[i] = new
    new_state = ThermalDiffusionState(
        count=optax.safe_increment(state.count), key=next_key)
    return jax.tree.unflatten(treedef, new_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
