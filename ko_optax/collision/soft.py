"""The soft (mean-field) collision: every pair of similar particles interacts.

On (D, N) particle matrices whose columns are the particles::

    W^, G^ = columns of w, g scaled to unit length (zero columns stay zero)
    S      = (W^T W^) * (G^T G^)          # product of two N x N cosine maps
    S[S < threshold] = 0                   # only sufficiently similar pairs
    S_ii   = 0 unless include_self         # a particle does not hit itself
    g_new  = g - rate * g @ S              # i.e. g_i -= rate sum_j S_ij g_j

Cost O(N^2 D) time and O(N^2) memory per leaf.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ko_optax._numerics import finite_scale
from ko_optax._numerics import select
from ko_optax._numerics import unit_columns


def soft_collision_kernel(
    w: jax.Array, g: jax.Array, threshold: Any = 0.0,
    include_self: bool = False,
) -> jax.Array:
  """The soft collision kernel ``S`` of particle matrices ``w, g`` (..., D, N).

  ``S_ij = cos(w_i, w_j) cos(g_i, g_j)``, zeroed where below ``threshold``
  and on the diagonal unless ``include_self``. Shape (..., N, N). The
  cosines are scale-safe (:func:`unit_columns`); a column holding a
  non-finite value gives NaN cosines, and its pairs are zero.
  """
  w_hat, _ = unit_columns(w)
  g_hat, _ = unit_columns(g)
  return _kernel(w_hat, g_hat, threshold, include_self)


def _gram(x: jax.Array) -> jax.Array:
  """The products of the columns of ``x`` (..., D, N): (..., N, N)."""
  return jnp.einsum('...dn,...dm->...nm', x, x)


def _kernel(w_hat: jax.Array, g_hat: jax.Array, threshold: Any,
            include_self: bool) -> jax.Array:
  """:func:`soft_collision_kernel` of unit columns."""
  return _mask_kernel(_gram(w_hat) * _gram(g_hat), threshold, include_self)


def _mask_kernel(s: jax.Array, threshold: Any,
                 include_self: bool) -> jax.Array:
  """Zeroes the kernel where it is below ``threshold`` or NaN and, unless
  ``include_self``, on the diagonal: one select."""
  keep = s >= threshold                                  # False where NaN
  if not include_self:
    n = s.shape[-1]
    rows = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    keep = keep & (rows != cols)
  return select(keep, s, 0.0)


def _kernel_of_grams(w: jax.Array, g: jax.Array, inv_w: jax.Array,
                     inv_g: jax.Array, threshold: Any,
                     include_self: bool) -> jax.Array:
  """:func:`soft_collision_kernel` from the Gram matrices of the columns.

  ``cos(w_i, w_j) cos(g_i, g_j)
  = (w_i . w_j) (g_i . g_j) / (|w_i| |w_j| |g_i| |g_j|)``.
  ``inv_w``, ``inv_g`` (..., N) are ``1 / |w_i|``, ``1 / |g_i|``, 0 for a
  particle that takes no part; its products are then 0, or NaN where its
  column holds a non-finite value, and both are zeroed by
  :func:`_mask_kernel`. The products of particles that take part are
  finite: ``|x_i . x_j| <= |x_i| |x_j|``. Where N <= D the products are
  taken of the columns as they are and divided by the norms in the (N, N)
  pass that masks the kernel anyway, so no unit-length copy of ``w`` or
  ``g`` is written; where N > D that pass is the larger one, and the
  columns are scaled first.
  """
  d, n = g.shape[-2:]
  if n > d:
    return _kernel(w * inv_w[..., None, :], g * inv_g[..., None, :],
                   threshold, include_self)
  inv = inv_w * inv_g
  s = (_gram(w) * _gram(g)) * (inv[..., :, None] * inv[..., None, :])
  return _mask_kernel(s, threshold, include_self)


def soft_collision(
    w: jax.Array,
    g: jax.Array,
    rate: Any,
    *,
    threshold: Any = 0.0,
    include_self: bool = False,
    normalization: str | None = None,
) -> jax.Array:
  """Soft (mean-field) collision of particle matrices ``w, g`` (..., D, N).

  Args:
    w: positions (weights), columns are particles.
    g: velocities (gradients), same shape as ``w``.
    rate: collision coefficient gamma_c.
    threshold: pairs with ``S_ij < threshold`` do not interact.
    include_self: keep the diagonal ``S_ii`` (each gradient is then also
      scaled by ``1 - rate``).
    normalization: None (the paper: plain sum over partners), ``'mean'``
      (divide the sum by the number of partners, N - 1, or N with
      ``include_self``), or ``'norm'`` (rescale each particle's repulsion to
      length ``|g_i|``, so that ``rate`` is a fraction of the gradient,
      whatever the particle's similarity to the others: a lone particle is
      pushed as hard as one of a condensed cluster), or ``'similarity'``
      (divide the sum by ``max(1, sum_j |S_ij|)``: below a total similarity
      of 1 it is the paper's plain sum, above it a similarity-weighted mean
      of the partners' velocities, so the push grows with how alike the
      particles are and never exceeds ``rate`` times the largest partner
      velocity).

  Returns:
    The collided velocities, shape and dtype of ``g``. Bad values
    (docs/method.md): a particle whose ``w`` or ``g`` column holds a NaN or
    an infinity takes no part (its column is returned as it is, and the
    others collide among themselves); the velocities' cosines and norms are
    scale-safe (``g`` is divided by the power of 2 just below its largest
    entry, an exact rescaling, unless it holds a non-finite value), a
    particle whose squares still overflow passes through too, and an entry
    whose result would overflow the dtype keeps its input value, so a
    finite input never gives a non-finite output. ``rate`` is assumed
    finite and >= 0.

  Example:
    Two particles at the same place moving alike push each other apart:

    >>> import jax.numpy as jnp, ko_optax
    >>> w = jnp.ones((2, 2))                      # columns: two particles
    >>> g = jnp.array([[1.0, 1.0], [0.0, 0.1]])
    >>> new = ko_optax.soft_collision(w, g, 0.5)
    >>> [[round(float(x), 3) for x in row] for row in new]
    [[0.502, 0.502], [-0.05, 0.1]]

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  """
  # Dividing g by a power of 2 is exact and keeps every square finite; a
  # particle whose squares are still not finite (a NaN, an infinity, or
  # weights above ~1.8e19 in float32) becomes a zero particle that neither
  # pushes nor is pushed.
  scale = finite_scale(g, (-2, -1))                    # (..., 1, 1)
  g_s = g / scale
  # Per-particle rows (..., N) need fewer reshapes than keepdims columns.
  w_sq = jnp.sum(jnp.square(w), axis=-2)
  g_sq = jnp.sum(jnp.square(g_s), axis=-2)
  ok = jnp.isfinite(w_sq) & jnp.isfinite(g_sq)          # (..., N)
  # 1 / |w_i| and 1 / |g_i| (0 for a particle that takes no part), last so
  # that XLA computes the rsqrt once per particle, not in every consumer.
  takes_part = ok & (w_sq > 0) & (g_sq > 0)
  inverse_norm = lambda sq: jax.lax.rsqrt(select(takes_part, sq, jnp.inf))
  g_s = select(ok[..., None, :], g_s, 0.0)
  s = _kernel_of_grams(w, g_s, inverse_norm(w_sq), inverse_norm(g_sq),
                       threshold, include_self)
  repulsion = jnp.einsum('...dm,...mn->...dn', g_s, s)
  # Each normalisation is a factor per particle (or per system), so that
  # the (D, N) tail is one multiply-subtract: g - (rate * factor) * repulsion.
  factor: Any
  if normalization == 'mean':
    partners = jnp.sum(ok, axis=-1, keepdims=True) - (0 if include_self
                                                       else 1)
    factor = (1.0 / jnp.maximum(partners, 1).astype(g.dtype))[..., None]
  elif normalization == 'norm':
    # |g_i| / |repulsion_i|, the square root last so XLA computes it once.
    r_sq = jnp.sum(jnp.square(repulsion), axis=-2)
    factor = jnp.sqrt(select(ok & (r_sq > 0), g_sq / r_sq, 0.0))[..., None, :]
  elif normalization == 'similarity':
    # Floored at 1: the plain sum for weakly similar particles.
    factor = 1.0 / jnp.maximum(jnp.sum(jnp.abs(s), axis=-2, keepdims=True),
                               1.0)
  else:
    factor = 1.0
  # scale is a power of 2: multiplying by it is exact.
  new = g - ((rate * factor) * scale) * repulsion
  return select(jnp.isfinite(new), new, g)
