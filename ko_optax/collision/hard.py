"""The hard collision: Direct Simulation Monte Carlo on pairs of particles.

On (D, N) particle matrices whose columns are the particles::

    draw a random perfect pairing of the N particles (one idle if N is odd)
    pair (i, j) collides with probability
        p = min(1, rate * |g_i - g_j| / max_pairs |g_i - g_j|
                     * exp(-|w_i - w_j| / length_scale))
    a collision scatters the pair elastically and isotropically in its
    centre-of-mass frame: with v = (g_i + g_j) / 2, r = |g_i - g_j| and n a
    uniform random unit vector in R^D,
        g_i <- v + (r / 2) n,   g_j <- v - (r / 2) n.

Per pair, momentum ``g_i + g_j`` and energy ``|g_i|^2 + |g_j|^2`` are
conserved exactly. Cost O(N D) per leaf; no N x N array is formed.

References:
  Bird, *Molecular Gas Dynamics and the Direct Simulation of Gas Flows*, 1994.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ko_optax import _random
from ko_optax._numerics import finite_scale


def acceptance(speed: jax.Array, distance: jax.Array, rate: Any,
               length_scale: Any) -> jax.Array:
  """The DSMC collision probability of pairs, (..., M).

  ``min(1, rate * r / max r * exp(-|w_i - w_j| / L))`` from each pair's
  relative speed ``r`` and distance; the maximum runs over the last axis
  (the pairs of one particle system).
  """
  max_speed = jnp.max(speed, axis=-1, keepdims=True)
  ratio = speed / jnp.where(max_speed > 0, max_speed, 1.0)
  return jnp.clip(rate * ratio * jnp.exp(-distance / length_scale), 0.0, 1.0)


def scatter_pairs(
    g_i: jax.Array, g_j: jax.Array, relative_speed: jax.Array,
    collide: jax.Array, directions: jax.Array, *, axis: int = -2,
) -> tuple[jax.Array, jax.Array]:
  """Elastic isotropic scattering of pairs (columns of (..., D, M) arrays).

  Each colliding pair keeps its centre-of-mass velocity ``(g_i + g_j) / 2``
  and relative speed ``r``; its relative velocity is redrawn along the unit
  ``direction`` (uniform on the sphere):
  ``g_i <- v + (r / 2) n``, ``g_j <- v - (r / 2) n``. Pairs with
  ``collide`` False are returned unchanged. ``relative_speed`` and
  ``collide`` have shape (..., M); with ``axis=-1`` the pairs are the rows
  of (..., M, D) arrays instead.
  """
  centre = 0.5 * (g_i + g_j)
  half = 0.5 * jnp.expand_dims(relative_speed, axis) * directions
  collide = jnp.expand_dims(collide, axis)
  return (jnp.where(collide, centre + half, g_i),
          jnp.where(collide, centre - half, g_j))


def collide_pairs(
    w_i: jax.Array, w_j: jax.Array, g_i: jax.Array, g_j: jax.Array,
    rate: Any, uniforms: jax.Array, directions: jax.Array, *,
    length_scale: Any, scale: jax.Array | None = None, axis: int = -2,
) -> tuple[jax.Array, jax.Array]:
  """One DSMC step of given pairs: acceptance, then elastic scattering.

  Pairs are the columns of (..., D, M) arrays; ``uniforms`` (..., M) and
  unit ``directions`` (..., D, M) are the step's random numbers. With
  ``axis=-1`` (the axis of the particle dimension D) the pairs are the rows
  of (..., M, D) arrays, directions included, so particles stored as rows
  need no transpose. Bad values (docs/method.md): a pair with a non-finite
  value in either particle does not collide, is returned as it is and takes
  no part in the maximum relative speed; the velocities are divided by the
  power of 2 just below their largest entry (exact; not when they hold a
  non-finite value) before the norms are taken, and an entry whose
  scattered value would overflow keeps its input value. ``scale``
  (..., 1, 1), if given, is that power of 2, computed by the caller once
  over a whole particle system (any power of 2 gives the same result where
  nothing overflows or underflows).

  Returns:
    The new ``(g_i, g_j)``.
  """
  # A pair holding a non-finite value has a non-finite relative speed or a
  # NaN distance (an infinite one already gives p = 0).
  if scale is None:
    scale = jnp.maximum(finite_scale(g_i, (-2, -1)),
                        finite_scale(g_j, (-2, -1)))    # (..., 1, 1)
  length = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=axis))
  distance = length(w_i - w_j)
  gi, gj = g_i / scale, g_j / scale
  speed = length(gi - gj)
  ok = jnp.isfinite(speed) & ~jnp.isnan(distance)
  speed = jnp.where(ok, speed, 0.0)
  p = acceptance(speed, distance, rate, length_scale)
  collide = ok & (uniforms < p)
  new_i, new_j = scatter_pairs(gi, gj, speed, collide, directions,
                               axis=axis)
  keep = lambda new, old: jnp.where(
      jnp.expand_dims(collide, axis) & jnp.isfinite(new * scale),
      new * scale, old)
  return keep(new_i, g_i), keep(new_j, g_j)


def collide_adjacent_pairs(
    w: jax.Array, g: jax.Array, rate: Any, key: jax.Array, *,
    length_scale: Any = 20.0,
) -> jax.Array:
  """Hard collision of pairs already formed: columns ``2k`` and ``2k + 1``.

  Args:
    w, g: (..., D, 2M) matrices whose columns ``2k`` and ``2k + 1`` form
      pair ``k`` (collision cells sort the particles so).
    rate: collision coefficient.
    key: typed PRNG key for acceptance and scattering
      (:func:`ko_optax._random.pair_draws`).
    length_scale: proximity length L of ``exp(-|w_i - w_j| / L)``.

  Returns:
    The velocities after collisions, same layout as ``g``.
  """
  *batch, d, n = g.shape
  if n < 2:
    return g
  pair_shape = g.shape[:-1] + (n // 2, 2)
  w2 = w.reshape(pair_shape)
  g2 = g.reshape(pair_shape)
  w_i, w_j = w2[..., 0], w2[..., 1]
  g_i, g_j = g2[..., 0], g2[..., 1]
  bits = _random.random_words(key, (*batch, _random.pair_words(n, d)))
  u, directions = _random.pair_draws(bits, n, d, g.dtype)
  g_i, g_j = collide_pairs(w_i, w_j, g_i, g_j, rate, u, directions,
                           length_scale=length_scale)
  return jnp.stack([g_i, g_j], axis=-1).reshape(g.shape)


def collide_in_pairing(
    w: jax.Array, g: jax.Array, rate: Any, order: jax.Array,
    uniforms: jax.Array, directions: jax.Array, inverse: jax.Array, *,
    length_scale: Any,
) -> jax.Array:
  """The DSMC step of (D, N) matrices given one system's random numbers
  (the fields of :class:`ko_optax._random.HardDraw` without its batch axis):
  the pairing ``order`` (N,), acceptance ``uniforms`` (M,), unit scattering
  ``directions`` as rows (M, D) and the ``inverse`` of ``order`` (N,)."""
  d, n = g.shape
  m = n // 2
  # Particles as rows (contiguous on CPU), in pairing order: one row gather
  # in and one (by the inverse permutation) out, with no scatter and no
  # transpose of the pair halves.
  wp, gp = w.T[order], g.T[order]
  pairs = lambda x: x[:2 * m].reshape(m, 2, d)
  w2, g2 = pairs(wp), pairs(gp)
  new_i, new_j = collide_pairs(w2[:, 0], w2[:, 1], g2[:, 0], g2[:, 1], rate,
                               uniforms, directions, length_scale=length_scale,
                               scale=finite_scale(g, (-2, -1)), axis=-1)
  new = jnp.stack([new_i, new_j], axis=1).reshape(2 * m, d)
  if n % 2:
    new = jnp.concatenate([new, gp[2 * m:]])
  return new[inverse].T


def hard_collision(
    w: jax.Array, g: jax.Array, rate: Any, key: jax.Array, *,
    length_scale: Any = 20.0,
) -> jax.Array:
  """Hard (DSMC) collision of (D, N) particle matrices with random pairing.

  Draws a uniformly random perfect pairing of the N particles (one particle
  sits out when N is odd), then collides each pair with the DSMC acceptance
  probability (:func:`ko_optax.collision.hard.acceptance`) by elastic
  isotropic scattering (:func:`ko_optax.collision.hard.scatter_pairs`).
  O(N D) time and memory, no N x N array, no data-dependent branch and one
  random-number kernel: every pair draws a direction and the non-colliding
  ones are kept with ``where``, so the step vectorises over stacked particle
  systems (``jax.vmap``). The random numbers are laid out as
  :func:`ko_optax.stochastic_collision` lays out those of one particle
  system.

  Args:
    w: positions (weights), shape (D, N); columns are particles.
    g: velocities (gradients), same shape.
    rate: collision coefficient (>= 0); pairs collide with probability at
      most ``min(1, rate)``.
    key: typed PRNG key (pairing, acceptance, directions).
    length_scale: proximity length L of the acceptance kernel.

  Returns:
    The velocities after the collisions, shape and dtype of ``g``. Each
    colliding pair keeps its momentum ``g_i + g_j`` and energy
    ``|g_i|^2 + |g_j|^2``.

  Example:
    >>> import jax, jax.numpy as jnp, ko_optax
    >>> w = jax.random.normal(jax.random.key(0), (8, 6))
    >>> g = jax.random.normal(jax.random.key(1), (8, 6))
    >>> new = ko_optax.hard_collision(w, g, 1.0, jax.random.key(2))
    >>> bool(jnp.allclose(new.sum(-1), g.sum(-1), atol=1e-5))  # momentum
    True
    >>> bool(jnp.allclose(jnp.sum(new**2), jnp.sum(g**2), rtol=1e-5))  # energy
    True

  References:
    Bird, *Molecular Gas Dynamics and the Direct Simulation of Gas Flows*,
    1994.
  """
  d, n = g.shape
  if n < 2:
    return g
  systems = [_random.Systems(1, n, d)]
  bits = _random.random_words(key, (_random.hard_words(systems),))
  order, u, directions, inverse = _random.hard_draws(bits, systems)[0]
  return collide_in_pairing(w, g, rate, order[0], u[0].astype(g.dtype),
                            directions[0].astype(g.dtype), inverse[0],
                            length_scale=length_scale)
