"""The collision step of KO: similar neurons exchange momentum.

A Boltzmann-equation solver splits each time step into free streaming and
collisions. In KO a particle is an output neuron of a layer: its position
``w_i`` is the neuron's weight vector and its velocity ``g_i`` the neuron's
gradient (see :mod:`ko_optax.particles` for which axes index the neurons).
Collisions act on the gradient before the base optimizer sees it and push
apart neurons that are close and move alike, which keeps them from
condensing onto a few directions.

Two collision operators are implemented, both on ``(D, N)`` particle matrices
whose columns are the particles:

* **soft** (mean-field, deterministic; the paper's practical form)::

      W^, G^ = columns of w, g scaled to unit length (zero columns stay zero)
      S      = (W^T W^) * (G^T G^)          # product of two N x N cosine maps
      S[S < threshold] = 0                   # only sufficiently similar pairs
      S_ii   = 0 unless include_self         # a particle does not hit itself
      g_new  = g - rate * g @ S              # i.e. g_i -= rate sum_j S_ij g_j

  Cost O(N^2 D) time and O(N^2) memory per leaf.

* **hard** (Direct Simulation Monte Carlo)::

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
  Feng, Huang, Fu, Wang, Yan, `KO: Kinetics-inspired Neural Optimizer with PDE
  Simulation Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  Bird, *Molecular Gas Dynamics and the Direct Simulation of Gas Flows*, 1994.
"""

from __future__ import annotations

import math
from typing import Any, Callable, cast, NamedTuple
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_optax import _checks
from ko_optax import cells as cells_lib
from ko_optax import keys as keys_lib
from ko_optax import leaf_cuts
from ko_optax import particles as particles_lib
from ko_optax._numerics import pow2_floor
from ko_optax._numerics import select

MODES = ('soft', 'hard')
NORMALIZATIONS = (None, 'mean', 'norm', 'similarity')
_TINY = 1e-30


class StochasticCollisionState(NamedTuple):
  """State of :func:`stochastic_collision`.

  Attributes:
    count: number of updates so far (the schedules' step).
    key: typed PRNG key; each update splits it into the next key and the
      step's randomness (hard pairings, collision cells).
  """
  # The field shadows tuple.count, as ``count`` does in optax's states.
  count: chex.Array  # type: ignore[assignment]
  key: chex.Array


def compute_dtype(dtype: Any) -> Any:
  """The real dtype collisions are computed in: float32, or float64 if given.

  A complex leaf collides on its real view (real and imaginary parts side by
  side, a particle in R^{2D}), in the real dtype of its precision.
  """
  return jnp.finfo(jnp.promote_types(dtype, jnp.float32)).dtype


def _max_abs(x: jax.Array, axis: Any) -> jax.Array:
  return jnp.max(jnp.abs(x), axis=axis, keepdims=True)


def unit_columns(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Scales the columns of ``x`` (..., D, N) to unit length, scale-safely.

  Each column is first divided by the power of 2 just below its largest
  entry (exact), so the squares neither overflow (entries above ~1.8e19 in
  float32) nor underflow (below ~1e-19): the directions are right at any
  finite magnitude.

  Returns:
    ``(x_hat, norms)``; zero columns stay zero (never NaN). ``norms`` has
    shape (..., 1, N); it is ``inf`` where the norm exceeds the dtype.
  """
  scale = pow2_floor(_max_abs(x, -2))
  x = x / scale
  norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=-2, keepdims=True))
  safe = jnp.where(norms > 0, norms, 1.0)
  return x / safe, norms * scale


def _finite_scale(x: jax.Array, axis: Any) -> jax.Array:
  """The power of 2 just below the largest ``|x|`` along ``axis``; 1 where
  ``x`` holds a NaN or an infinity there.

  One plain max-reduction (no filtering pass: that would cost a kernel per
  leaf). So a system holding a non-finite value is not rescaled: its bad
  particles still take no part, and a good particle whose squares then
  overflow passes through like them.
  """
  m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
  return select(jnp.isfinite(m), pow2_floor(m), 1.0)


def _unit_bounded_columns(x: jax.Array, axis: int = -2) -> jax.Array:
  """:func:`unit_columns` of columns with moderate entries (random normals);
  with ``axis=-1``, of rows."""
  norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.where(norms > 0, norms, 1.0)


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
  # g is divided by the power of 2 just below its largest entry (exact:
  # the result keeps its bits, and no square, repulsion or norm overflows).
  # A column holding a NaN or an infinity then has a non-finite sum of
  # squares: such particles are zero particles here (no
  # cosine with anyone: they neither push nor are pushed, and their push
  # is exactly 0), so they come out untouched. So does a neuron whose
  # weights' squares overflow (entries above ~1.8e19 in float32).
  # The cosines come from the squared norms and the Gram matrices
  # (_kernel_of_grams): few operations per leaf, which is compile time on
  # trees of many leaves.
  scale = _finite_scale(g, (-2, -1))                    # (..., 1, 1)
  g_s = g / scale
  # Per-particle quantities are (..., N) rows, broadcast where they meet the
  # (D, N) columns: fewer reshapes than keepdims (compile time).
  w_sq = jnp.sum(jnp.square(w), axis=-2)
  g_sq = jnp.sum(jnp.square(g_s), axis=-2)
  ok = jnp.isfinite(w_sq) & jnp.isfinite(g_sq)          # (..., N)
  # 1 / |w_i| and 1 / |g_i|, 0 for a particle that takes no part
  # (rsqrt(inf) = 0). The rsqrt comes last so that XLA computes it once per
  # particle instead of fusing it into each (N, N) or (D, N) consumer.
  takes_part = ok & (w_sq > 0) & (g_sq > 0)
  inv = lambda sq: jax.lax.rsqrt(select(takes_part, sq, jnp.inf))
  g_s = select(ok[..., None, :], g_s, 0.0)
  s = _kernel_of_grams(w, g_s, inv(w_sq), inv(g_sq), threshold, include_self)
  repulsion = jnp.einsum('...dm,...mn->...dn', g_s, s)
  # Each normalisation is a factor per particle (or per system), so that
  # the (D, N) tail is one multiply-subtract: g - (rate * factor) * repulsion.
  factor: Any
  if normalization == 'mean':
    partners = jnp.sum(ok, axis=-1, keepdims=True) - (0 if include_self
                                                       else 1)
    factor = (1.0 / jnp.maximum(partners, 1).astype(g.dtype))[..., None]
  elif normalization == 'norm':
    # |g_i| / |repulsion_i|: each repulsion rescaled to its particle's speed.
    # The square root comes last: XLA computes an expensive operation once
    # instead of fusing it into each of the base optimizer's kernels.
    r_sq = jnp.sum(jnp.square(repulsion), axis=-2)
    factor = jnp.sqrt(select(ok & (r_sq > 0), g_sq / r_sq, 0.0))[..., None, :]
  elif normalization == 'similarity':
    # The kernel's total weight per particle, floored at 1: the plain sum
    # for weakly similar particles, a weighted mean for condensed ones.
    factor = 1.0 / jnp.maximum(jnp.sum(jnp.abs(s), axis=-2, keepdims=True),
                               1.0)
  else:
    factor = 1.0
  # scale is a power of 2: multiplying by it is exact.
  new = g - ((rate * factor) * scale) * repulsion
  return select(jnp.isfinite(new), new, g)


def collision_probability(
    w_i: jax.Array, w_j: jax.Array, g_i: jax.Array, g_j: jax.Array,
    rate: Any, length_scale: Any,
) -> tuple[jax.Array, jax.Array]:
  """DSMC acceptance of pairs given as columns of (..., D, M) matrices.

  Returns:
    ``(p, relative_speed)``, each of shape (..., M): the probability that each
    pair collides, ``min(1, rate * r / max r * exp(-|w_i - w_j| / L))``, where
    the maximum runs over the pairs of the same leaf (or cell group).
  """
  relative_speed = jnp.sqrt(jnp.sum(jnp.square(g_i - g_j), axis=-2))
  distance = jnp.sqrt(jnp.sum(jnp.square(w_i - w_j), axis=-2))
  max_speed = jnp.max(relative_speed, axis=-1, keepdims=True)
  speed_ratio = relative_speed / jnp.where(max_speed > 0, max_speed, 1.0)
  p = rate * speed_ratio * jnp.exp(-distance / length_scale)
  return jnp.clip(p, 0.0, 1.0), relative_speed


def uniform_from_bits(bits: jax.Array, dtype: Any) -> jax.Array:
  """Uniform numbers in [0, 1) from random uint32 words (23 mantissa bits)."""
  one = jax.lax.bitcast_convert_type(
      (bits >> 9) | np.uint32(0x3F800000), jnp.float32)
  return (one - 1.0).astype(dtype)


def normal_from_bits(bits: jax.Array, dtype: Any) -> jax.Array:
  """Standard normal numbers from random uint32 words (inverse-CDF method)."""
  u = uniform_from_bits(bits, jnp.float32)
  v = jnp.maximum(2.0 * u - 1.0, np.float32(-1.0 + 2.0**-23))
  return (np.sqrt(2.0).astype(np.float32) * jax.lax.erf_inv(v)).astype(dtype)


def unit_directions(bits: jax.Array, dtype: Any) -> jax.Array:
  """Uniform random unit vectors from random words (..., D, M): columns.

  Each column holds D standard normal numbers scaled to unit length, which
  is isotropic on the sphere S^{D-1}.
  """
  return _unit_bounded_columns(normal_from_bits(bits, dtype))


def random_words(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Random uint32 words of ``shape`` from a typed ``key``:
  ``jax.random.bits`` in :func:`ko_optax.keys.draw_layout` (on CPU, JAX's
  original threefry layout, 3-5x faster there than the partitionable one;
  the 12-block GPT's KO-hard step 3-6 % faster), of a whole number of
  blocks of 16 words, cut to ``shape``: on XLA:CPU a threefry draw whose
  number of counter pairs is odd runs 4-8x slower than one a word longer
  (608538 words 8.6 ms, 608540 words 1.3 ms on a 2-core CPU; a 512-wide
  MLP's KO-hard optimizer step 19.0 -> 11.9 ms)."""
  size = math.prod(shape)
  padded = -(-size // 16) * 16
  with keys_lib.draw_layout():
    words = jax.random.bits(key, (padded,), jnp.uint32)
  return words[:size].reshape(shape)


def pair_words(n: int, d: int, *, pairing: bool) -> int:
  """Random uint32 words one hard-collision step of N particles needs."""
  return (n // 2) * (d + 1) + (2 * n if pairing else 0)


def pair_randomness(bits: jax.Array, n: int, d: int, *, pairing: bool,
                    dtype: Any) -> tuple[jax.Array | None, jax.Array,
                                         jax.Array]:
  """All the random numbers of one hard-collision step, cut from random words.

  A DSMC step needs a random pairing of the N particles, one acceptance
  number per pair and one scattering direction per pair. They are all cut
  from one array of random uint32 words, so that a whole tree of leaves
  needs ONE random-number kernel (on XLA:CPU each such kernel costs about
  0.3 s of compile time).

  Args:
    bits: uint32 array (..., W) with ``W = pair_words(n, d, pairing)``;
      the leading axes are independent blocks.
    n: particles per block (N).
    d: particle dimension (D).
    pairing: draw a random pairing of the N particles; otherwise the pairs
      are the neighbouring columns ``(2k, 2k + 1)``.
    dtype: float dtype of the uniforms and directions.

  Returns:
    ``(order, uniforms, directions)``: the particles in pairing order
    (..., N), or None without ``pairing`` (pair k is ``order[2k]``,
    ``order[2k + 1]``); uniforms (..., M) in [0, 1); unit directions
    (..., D, M), with M = N // 2.
  """
  m = n // 2
  batch = bits.shape[:-1]
  order = None
  if pairing:
    # A uniformly random permutation: sort the indices by two random words
    # (64 random bits; ties are ~n^2 / 2^65 unlikely).
    hi, lo = bits[..., :n], bits[..., n:2 * n]
    iota = jax.lax.broadcasted_iota(jnp.int32, hi.shape, hi.ndim - 1)
    order = jax.lax.sort((hi, lo, iota), dimension=-1, num_keys=2)[2]
    bits = bits[..., 2 * n:]
  uniforms = uniform_from_bits(bits[..., :m], dtype)
  directions = unit_directions(
      bits[..., m:m * (d + 1)].reshape(*batch, d, m), dtype)
  return order, uniforms, directions


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
  of (..., M, D) arrays, directions included: particles stored as rows
  need no transpose (:func:`hard_collision`). Bad values
  (docs/method.md): a pair with a non-finite value in either particle does
  not collide and is returned as it is, and takes no part in the maximum
  relative speed; the velocities are divided by the power of 2 just below
  their largest entry (exact; not when they hold a non-finite value) before
  the norms are taken, and an entry whose scattered value would overflow
  the dtype keeps its input value. ``scale`` (..., 1, 1), if given, is that
  power of 2, computed by the caller (e.g. once over a whole particle
  system before it is cut into pairs: one reduction instead of two; any
  power of 2 gives the same result where nothing overflows or underflows).

  Returns:
    The new ``(g_i, g_j)``.
  """
  # The velocities are divided by the power of 2 just below their largest
  # finite entry (exact); a pair holding a non-finite value then has a
  # non-finite relative speed, or a NaN distance (an infinite one already
  # gives p = 0).
  if scale is None:
    scale = jnp.maximum(_finite_scale(g_i, (-2, -1)),
                        _finite_scale(g_j, (-2, -1)))    # (..., 1, 1)
  length = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=axis))
  distance = length(w_i - w_j)
  gi, gj = g_i / scale, g_j / scale
  speed = length(gi - gj)
  ok = jnp.isfinite(speed) & ~jnp.isnan(distance)
  speed = jnp.where(ok, speed, 0.0)
  max_speed = jnp.max(speed, axis=-1, keepdims=True)
  ratio = speed / jnp.where(max_speed > 0, max_speed, 1.0)
  p = jnp.clip(rate * ratio * jnp.exp(-distance / length_scale), 0.0, 1.0)
  collide = ok & (uniforms < p)
  new_i, new_j = scatter_pairs(gi, gj, speed, collide, directions,
                               axis=axis)
  keep = lambda new, old: jnp.where(
      jnp.expand_dims(collide, axis) & jnp.isfinite(new * scale),
      new * scale, old)
  return keep(new_i, g_i), keep(new_j, g_j)


def hard_collision_pairs(
    w: jax.Array, g: jax.Array, rate: Any, key: jax.Array, *,
    length_scale: Any = 20.0,
) -> jax.Array:
  """Hard collision of particle pairs laid side by side.

  Args:
    w, g: (..., D, 2M) matrices whose columns ``2k`` and ``2k + 1`` form
      pair ``k``.
    rate: collision coefficient.
    key: typed PRNG key for acceptance and scattering.
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
  bits = random_words(key, (*batch, pair_words(n, d, pairing=False)))
  _, u, directions = pair_randomness(bits, n, d, pairing=False,
                                     dtype=g.dtype)
  g_i, g_j = collide_pairs(w_i, w_j, g_i, g_j, rate, u, directions,
                           length_scale=length_scale)
  return jnp.stack([g_i, g_j], axis=-1).reshape(g.shape)


def hard_collision(
    w: jax.Array, g: jax.Array, rate: Any, key: jax.Array, *,
    length_scale: Any = 20.0,
) -> jax.Array:
  """Hard (DSMC) collision of (D, N) particle matrices with random pairing.

  Draws a uniformly random perfect pairing of the N particles (one particle
  sits out when N is odd), then collides each pair with the DSMC acceptance
  probability (:func:`collision_probability`) by elastic isotropic
  scattering (:func:`scatter_pairs`). O(N D) time and memory, no N x N
  array, no data-dependent branch and one random-number kernel
  (:func:`pair_randomness`): every pair draws a direction and the
  non-colliding ones are kept with ``where``, so the step vectorises over
  stacked particle systems (``jax.vmap``) and over a user's ensemble alike.

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
  """
  d, n = g.shape
  if n < 2:
    return g
  bits = random_words(key, (pair_words(n, d, pairing=True),))
  order, u, directions = pair_randomness(bits, n, d, pairing=True,
                                         dtype=g.dtype)
  assert order is not None  # drawn with pairing=True
  return _hard_collision_paired(w, g, rate, order, u, directions.T,
                                inverse_permutation(order),
                                length_scale=length_scale)


def inverse_permutation(order: jax.Array) -> jax.Array:
  """The inverse of permutations ``order`` (..., N) along the last axis.

  A sort of ``(order, index)``: on XLA:CPU it compiles and runs cheaper
  than the scatter ``inverse[order] = index`` for the pairings' sizes.
  """
  index = jax.lax.broadcasted_iota(order.dtype, order.shape, order.ndim - 1)
  return jax.lax.sort((order, index), dimension=-1, num_keys=1)[1]


def _hard_collision_paired(
    w: jax.Array, g: jax.Array, rate: Any, order: jax.Array, u: jax.Array,
    directions: jax.Array, inverse: jax.Array, *, length_scale: Any,
) -> jax.Array:
  """The DSMC step of (D, N) matrices, given the pairing ``order`` (N,),
  the acceptance uniforms (M,), the unit scattering directions as rows
  (M, D) and the inverse permutation of ``order`` (N,)."""
  d, n = g.shape
  m = n // 2
  # Particles as rows (contiguous on CPU), in pairing order: pair k is rows
  # 2k and 2k + 1. One row gather in, one row gather (by the inverse
  # permutation) out; no scatter, and the pairs collide as rows (no
  # transpose of the pair halves).
  wp, gp = w.T[order], g.T[order]
  pairs = lambda x: x[:2 * m].reshape(m, 2, d)
  w2, g2 = pairs(wp), pairs(gp)
  new_i, new_j = collide_pairs(w2[:, 0], w2[:, 1], g2[:, 0], g2[:, 1], rate,
                               u, directions, length_scale=length_scale,
                               scale=_finite_scale(g, (-2, -1)), axis=-1)
  new = jnp.stack([new_i, new_j], axis=1).reshape(2 * m, d)
  if n % 2:
    new = jnp.concatenate([new, gp[2 * m:]])
  return new[inverse].T


def _uses_cells(n: int, cell_size: int | None, cell_groups: int) -> bool:
  return cell_size is not None and not (cell_size >= n and cell_groups == 1)


def _collide_system(
    w: jax.Array, g: jax.Array, rate: jax.Array, randomness: Any, *,
    mode: str, threshold: Any, include_self: bool,
    normalization: str | None, length_scale: Any, cell_size: int | None,
    cell_groups: int,
) -> jax.Array:
  """Collides one particle system, a (D, N) matrix; returns the new g.

  ``randomness`` is the system's share of :func:`group_randomness`: None
  (soft), the hard collision's ``(order, uniforms, directions, inverse)``,
  or a key (collision cells).
  """
  n = g.shape[-1]
  if mode == 'soft':
    collide = lambda w_, g_, k_: soft_collision(
        w_, g_, rate, threshold=threshold, include_self=include_self,
        normalization=normalization)
  else:
    collide = lambda w_, g_, k_: hard_collision_pairs(
        w_, g_, rate, k_, length_scale=length_scale)
  if cell_size is not None and _uses_cells(n, cell_size, cell_groups):
    return cells_lib.collide_in_cells(
        w, g, randomness, collide, cell_size=cell_size, groups=cell_groups,
        pairs=mode == 'hard')
  if mode == 'soft':
    exact = lambda w_, g_: collide(w_, g_, None)
  else:
    exact = lambda w_, g_: g_ if g_.shape[-1] < 2 else _hard_collision_paired(
        w_, g_, rate, *randomness, length_scale=length_scale)
  # Explicitly sharded leaves are gathered for the all-pairs form.
  return cells_lib.unsharded(exact, w, g)


# On CPU the soft collision stacks the leaves of a shape only where its
# systems are this small (N * N * D, the products' work), and collides them
# in one loop: 500 leaves of (8, 8) then compile 4x faster and step 1.3x
# faster than leaf by leaf; at (64, 64) the compile is 2.4x faster, the
# step 10 % slower; a 12-block GPT's (128, 128) leaves stacked made its
# train step 1.36x-1.43x Adam's instead of 1.22x (docs/benchmarks.md).
_SMALL_SOFT_SYSTEM = 2**15


def _small_soft_system(d: int, n: int) -> bool:
  """Whether soft systems of this shape are stacked on CPU."""
  return n * n * d <= _SMALL_SOFT_SYSTEM


def _soft_on_cpu(mode: str, cell_size: int | None) -> bool:
  """The all-pairs soft collision on CPU: only the leaves of small systems
  are stacked (:func:`_small_soft_system`), and their groups are looped
  over, not vmapped; other leaves collide one by one."""
  return (mode == 'soft' and cell_size is None
          and jax.default_backend() == 'cpu')


# Leaves with the same number of particles N but different dimensions D are
# collided together, zero-padded to the larger D, while the padded work is at
# most this factor of the real work: fewer distinct shapes compile faster.
_MAX_PADDING = 1.5


class CollisionGroup(NamedTuple):
  """Leaves collided together by one batched call.

  Attributes:
    d: the particle dimension of the group (the largest of its leaves').
    n: particles per system.
    dtype: the compute dtype.
    sharding: ``repr`` of the leaves' explicit sharding, ``'None'`` if none.
    members: indices of the leaves, in stacking order.
    systems: each member's number of systems B.
    dims: each member's own particle dimension (<= d).
  """
  d: int
  n: int
  dtype: Any
  sharding: str
  members: tuple[int, ...]
  systems: tuple[int, ...]
  dims: tuple[int, ...]


def plan_groups(g_leaves: list[jax.Array],
                specs: list[particles_lib.ParticleSpec],
                cell_size: int | None = None, cell_groups: int = 1,
                paths: list[str] | None = None,
                stack: bool | Callable[[int, int], bool] = True
                ) -> list[CollisionGroup]:
  """Groups colliding leaves by particle shape, dtype and sharding.

  With ``stack=False`` every leaf is its own group (its systems are still
  collided in one batched call); ``stack`` may also be a predicate of a
  system's ``(D, N)``, which stacks only the leaves it holds for.
  :func:`stochastic_collision` stacks the deterministic soft collision on
  CPU only for small systems (:func:`_small_soft_system`): there, a step
  that collides the leaves of a 12-block GPT one by one runs 1.22x Adam's
  train step, stacked 1.36x-1.43x (XLA:CPU overlaps the per-leaf products
  with the backward pass), while 500 leaves of (8, 8) step 1.3x faster
  stacked and compile about 4x faster (docs/benchmarks.md).

  Leaves whose systems share ``(D, N)``, the compute dtype and their
  explicit sharding form a group. Unsharded groups of one N on the
  all-pairs path are then merged, largest D first, while zero-padding them
  to the larger D costs at most ``_MAX_PADDING`` times their work (a
  ResNet's 12 conv shapes become 5 groups; a transformer's 128-wide
  projections are not padded to its 512-wide MLP kernels). Collision cells
  hash in D dimensions, so their groups are never padded.

  A complex leaf's particles count with their real view: D is twice its
  complex dimension, the dtype the real one.

  Raises:
    TypeError: for a leaf that is neither floating point nor complex,
      naming it.
  """
  paths = paths or [f'#{k}' for k in range(len(g_leaves))]
  exact: dict[Any, list[int]] = {}
  shape = {}
  for k, (g, spec) in enumerate(zip(g_leaves, specs)):
    if not jnp.issubdtype(g.dtype, jnp.inexact):
      raise TypeError(
          f'stochastic_collision needs floating-point or complex gradients, '
          f'got {g.dtype} for leaf {paths[k]}. Cast the leaf or exclude it '
          'with particle_axes / mask.'
      )
    b, d, n = particles_lib.particle_shape(g.shape, spec)
    if jnp.issubdtype(g.dtype, jnp.complexfloating):
      d *= 2   # the real view: a particle in C^D is one in R^{2D}
    shape[k] = (b, d, n)
    sharding = repr(cells_lib._explicit_spec(g))  # pylint: disable=protected-access
    exact.setdefault((d, n, jnp.dtype(compute_dtype(g.dtype)), sharding),
                     []).append(k)
  groups: list[list[Any]] = []
  buckets: dict[Any, list[Any]] = {}
  for (d, n, dtype, sharding), members in sorted(
      exact.items(), key=lambda kv: (-kv[0][0], kv[0][1], str(kv[0][2]))):
    count = sum(shape[k][0] for k in members)
    group = [d, n, dtype, sharding, list(members), count * d, count]
    if not (stack(d, n) if callable(stack) else stack):
      groups.extend([d, n, dtype, sharding, [k], 0, 0] for k in members)
      continue
    if sharding != 'None' or _uses_cells(n, cell_size, cell_groups):
      groups.append(group)
      continue
    bucket = buckets.get((n, dtype))
    if bucket is not None and (bucket[6] + count) * bucket[0] <= (
        _MAX_PADDING * (bucket[5] + count * d)):
      bucket[4] += members
      bucket[5] += count * d
      bucket[6] += count
      continue
    buckets[(n, dtype)] = group
    groups.append(group)
  return [CollisionGroup(d, n, dtype, sharding, tuple(members),
                         tuple(shape[k][0] for k in members),
                         tuple(shape[k][1] for k in members))
          for d, n, dtype, sharding, members, _, _ in groups]


def group_randomness(key: jax.Array, groups: list[CollisionGroup], *,
                     mode: str, cell_size: int | None = None,
                     cell_groups: int = 1) -> list[Any]:
  """The random input of every group's systems, stacked over the systems.

  Returns, per group: None (soft without cells: deterministic), B typed
  keys (collision cells), or the hard collision's ``(order (B, N), uniforms
  (B, M), directions (B, M, D), inverse (B, N))``, with unit directions
  (rows) that are zero beyond each system's own D and ``inverse`` the
  inverse permutation of ``order``.
  All the hard collisions of a tree are cut from ONE ``jax.random.bits``
  draw, converted by one batched sort per group (each system's particles
  by two random words), one uniform and one normal conversion, and the
  cells' keys are one split: the step compiles a fixed number of
  random-number kernels, whatever its number of leaves and shapes.
  """
  bits_key, cells_key = jax.random.split(key)
  cells = [_uses_cells(gr.n, cell_size, cell_groups) for gr in groups]
  out: list[Any] = [None] * len(groups)
  counts = [sum(gr.systems) if c else 0 for c, gr in zip(cells, groups)]
  if sum(counts):
    keys = jax.random.split(cells_key, sum(counts))
    starts = np.cumsum([0] + counts)
    for k, c in enumerate(counts):
      if c:
        out[k] = keys[starts[k]:starts[k + 1]]
  hard = [k for k, (c, gr) in enumerate(zip(cells, groups))
          if mode == 'hard' and not c and gr.n >= 2]
  if not hard:
    return out
  size = lambda k: sum(groups[k].systems)
  sort_sizes = [size(k) * groups[k].n for k in hard]
  u_sizes = [size(k) * (groups[k].n // 2) for k in hard]
  dir_sizes = [size(k) * groups[k].d * (groups[k].n // 2) for k in hard]
  t, total_u = sum(sort_sizes), sum(u_sizes)
  bits = random_words(bits_key, (2 * t + total_u + sum(dir_sizes),))
  # Each group's pairings in one batched sort, (B, N) by 64 random bits
  # (two words per particle); the payload is the particle's index.
  def pairing(start: int, b: int, n: int) -> jax.Array:
    words = lambda at: bits[at + start:at + start + b * n].reshape(b, n)
    index = jax.lax.broadcasted_iota(jnp.int32, (b, n), 1)
    return jax.lax.sort((words(0), words(t), index), dimension=-1,
                        num_keys=2)[2]
  uniforms = uniform_from_bits(bits[2 * t:2 * t + total_u], jnp.float32)
  normals = normal_from_bits(bits[2 * t + total_u:], jnp.float32)
  so = uo = do = 0
  for k, ss, us, ds in zip(hard, sort_sizes, u_sizes, dir_sizes):
    gr = groups[k]
    b, m = size(k), gr.n // 2
    z = normals[do:do + ds].reshape(b, m, gr.d)
    if min(gr.dims) < gr.d:
      dims = np.repeat(gr.dims, gr.systems)
      z = jnp.where(np.arange(gr.d)[None, None, :] < dims[:, None, None],
                    z, 0.0)
    order = pairing(so, b, gr.n)
    out[k] = (order, uniforms[uo:uo + us].reshape(b, m),
              _unit_bounded_columns(z, axis=-1), inverse_permutation(order))
    so, uo, do = so + ss, uo + us, do + ds
  return out


def _system_share(randomness: Any, b: int) -> Any:
  """System ``b``'s share of a group's randomness (stacked over systems)."""
  return jax.tree.map(lambda x: x[b], randomness)


def _collide_group(
    w_leaves: list[jax.Array], g_leaves: list[jax.Array],
    specs: list[particles_lib.ParticleSpec], group: CollisionGroup,
    rand: Any, rate: Any, options: dict[str, Any], poison: Any = False,
) -> jax.Array:
  """Collides one group's systems; returns them stacked, (B, D, N).

  ``poison`` (a bool, maybe traced): the rate is bad (NaN, infinite or
  negative), and every value of the group becomes NaN (docs/method.md).
  """
  d, dtype = group.d, group.dtype
  rate = jnp.asarray(rate, dtype)
  system = lambda w, g, r: _collide_system(w, g, rate=rate, randomness=r,
                                           **options)
  # Zero particle dimensions up to the group's D change nothing: norms,
  # cosines, distances and speeds are the same, and a padded dimension of
  # a velocity stays 0 (so do the padded directions).
  pad = lambda x: x if x.shape[1] == d else jnp.pad(
      x, ((0, 0), (0, d - x.shape[1]), (0, 0)))
  particles = lambda leaves: [
      pad(_real_view(particles_lib.to_particles(leaves[k], specs[k]),
                     jnp.iscomplexobj(g_leaves[k])).astype(dtype))
      for k in group.members]
  ws, gs = particles(w_leaves), particles(g_leaves)
  if sum(group.systems) == 1:
    new = system(ws[0][0], gs[0][0], _system_share(rand, 0))[None]
  elif group.sharding != 'None':
    # Explicitly sharded systems keep their own shardings: one by one.
    w, g = jnp.concatenate(ws), jnp.concatenate(gs)
    new = jnp.stack([system(w[b], g[b], _system_share(rand, b))
                     for b in range(g.shape[0])])
  else:
    stack = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs)
    if (_soft_on_cpu(options['mode'], options['cell_size'])
        and len(group.members) > 1):
      # A stack of small soft systems: one loop over the systems, whose
      # products XLA:CPU runs unbatched.
      new = jax.lax.map(lambda a: system(*a), (stack(ws), stack(gs), rand))
    else:
      new = jax.vmap(system)(stack(ws), stack(gs), rand)
  if poison is not False:
    new = jnp.where(poison, jnp.asarray(jnp.nan, new.dtype), new)
  return new


def _real_view(p: jax.Array, is_complex: bool) -> jax.Array:
  """(B, D, N) particles as real ones: complex ones as (B, 2D, N).

  ``is_complex`` is the gradient's kind: a real position beside a complex
  velocity gets a zero imaginary part, a complex one beside a real
  velocity its real part.
  """
  if not is_complex:
    return jnp.real(p) if jnp.iscomplexobj(p) else p
  return jnp.concatenate([jnp.real(p), jnp.imag(p) if jnp.iscomplexobj(p)
                          else jnp.zeros_like(p)], axis=1)


def _from_real_view(p: jax.Array, dtype: Any) -> jax.Array:
  """Inverse of :func:`_real_view` for a leaf of ``dtype``."""
  if not jnp.issubdtype(dtype, jnp.complexfloating):
    return p
  d = p.shape[1] // 2
  return jax.lax.complex(p[:, :d], p[:, d:])


def _keep_finite(new: jax.Array, old: jax.Array, poison: Any) -> jax.Array:
  """``new`` cast to ``old``'s dtype; where the cast overflows, ``old``.

  Collisions compute in float32 at least: a bfloat16 or float16 result can
  still round to infinity on the way back. Only then is there anything to
  check (static), so float32 leaves pay nothing. A poisoned (bad-rate)
  result stays NaN.
  """
  cast = new.astype(old.dtype)
  if poison is True or jnp.finfo(old.dtype).max >= jnp.finfo(new.dtype).max:
    return cast
  return jnp.where(jnp.isfinite(cast) | poison, cast, old)


def collide_groups(
    w_leaves: list[jax.Array], g_leaves: list[jax.Array],
    specs: list[particles_lib.ParticleSpec], groups: list[CollisionGroup],
    randomness: list[Any], rate: Any, poison: Any = False,
    one: Any = None, **options: Any,
) -> list[jax.Array]:
  """Collides the particles of several leaves, one batched call per group.

  Each group's systems are stacked (zero-padded to the group's D) and
  collided by one ``jax.vmap``-ed kernel, so the compiled step holds one
  collision per group, not per leaf. The result equals colliding each
  system alone with its share of the randomness (to float rounding of
  batched reductions).

  Args:
    w_leaves, g_leaves: the positions (params) and velocities (gradients).
    specs: each leaf's normalised :class:`ko_optax.ParticleSpec`.
    groups: :func:`plan_groups`.
    randomness: :func:`group_randomness`.
    rate: the collision rate.
    poison: True (maybe traced) when the rate is bad: the returned leaves
      are then NaN (the "Bad values" policy of docs/method.md).
    one: None, or a run-time float32 1 (a value XLA cannot fold,
      :func:`ko_optax.leaf_cuts.run_time_one`): the leaves of a group of
      several are then cut out of its stack so that the base optimizer's
      kernels stay shared between leaves of a shape. On CPU, unsharded
      groups are cut at run-time offsets
      (:func:`ko_optax.leaf_cuts.run_time_offsets`: no per-leaf kernel);
      elsewhere each cut leaf is divided by ``one``
      (:func:`ko_optax.leaf_cuts.materialized`: one small kernel per leaf).
      Either changes no bit.
    **options: ``mode``, ``threshold``, ``include_self``, ``normalization``,
      ``length_scale``, ``cell_size``, ``cell_groups`` of
      :func:`stochastic_collision`.

  Returns:
    The new gradient leaves, in order.
  """
  out: list[Any] = [None] * len(g_leaves)
  starts = [np.cumsum((0,) + group.systems[:-1]).tolist()
            for group in groups]
  dynamic = [one is not None and len(group.members) > 1
             and group.sharding == 'None' and leaf_cuts.use_run_time_offsets()
             for group in groups]
  offsets = iter(leaf_cuts.run_time_offsets(
      [s for group_starts, dyn in zip(starts, dynamic) if dyn
       for s in group_starts], one))
  for group, rand, group_starts, dyn in zip(groups, randomness, starts,
                                            dynamic):
    new = _collide_group(w_leaves, g_leaves, specs, group, rand, rate,
                         options, poison)
    for k, start, size, leaf_d in zip(group.members, group_starts,
                                      group.systems, group.dims):
      g = g_leaves[k]
      if dyn:
        part = jax.lax.dynamic_slice_in_dim(new, next(offsets), size, 0)
      else:
        part = new[start:start + size]
      leaf = particles_lib.from_particles(
          _from_real_view(part[:, :leaf_d], g.dtype), specs[k], g.shape)
      out[k] = _keep_finite(leaf, g, poison)
      if one is not None and len(group.members) > 1 and not dyn:
        out[k] = leaf_cuts.materialized(out[k], one)
  return out


# The size of one N x N soft kernel (over the systems of a leaf) from which
# stochastic_collision warns, at trace time, that all pairs are costly.
MEMORY_WARNING_BYTES = 2**30


def _warn_memory(leaves: list[jax.Array],
                 specs: list[particles_lib.ParticleSpec], paths: list[str],
                 cell_size: int | None, cell_groups: int) -> None:
  """Warns for every leaf whose all-pairs soft kernel is 1 GiB or more."""
  for leaf, spec, path in zip(leaves, specs, paths):
    b, _, n = particles_lib.particle_shape(leaf.shape, spec)
    if _uses_cells(n, cell_size, cell_groups):
      continue
    size = b * n * n * jnp.dtype(compute_dtype(leaf.dtype)).itemsize
    if size >= MEMORY_WARNING_BYTES:
      warnings.warn(
          f'ko_optax: the all-pairs soft collision of leaf {path} (shape '
          f'{tuple(leaf.shape)}, {n} particles) needs an N x N kernel of '
          f'{size / 2**30:.1f} GiB per step, and O(N^2 D) time. Collide in '
          'cells (cell_size=256, O(N C D)), use collision="hard" (O(N D)), '
          'or leave the leaf out with mask / particle_axes.', stacklevel=4)


def check_options(threshold: Any, length_scale: Any) -> None:
  """Type and value checks of the collision's numeric options."""
  _checks.check_scalar('threshold', threshold, schedule=False)
  _checks.check_scalar('length_scale', length_scale, schedule=False)
  if _checks.is_static_number(threshold) and np.isnan(threshold):
    raise ValueError('threshold must not be NaN (no pair would be cut).')
  if _checks.is_static_number(length_scale) and not (
      float(length_scale) > 0):
    raise ValueError(f'length_scale must be > 0, got {length_scale!r}.')


def _collide_tree(
    step_key: jax.Array, w_leaves: list[jax.Array],
    g_leaves: list[jax.Array], rate: Any, poison: Any, count: Any,
    threshold: Any, length_scale: Any, *,
    specs: tuple[particles_lib.ParticleSpec, ...],
    groups: tuple[CollisionGroup, ...], mode: str, include_self: bool,
    normalization: str | None, cell_size: int | None, cell_groups: int,
) -> list[jax.Array]:
  """One collision step of the colliding leaves: the step's random numbers
  (:func:`group_randomness`) and every group's collision
  (:func:`collide_groups`)."""
  randomness = group_randomness(step_key, list(groups), mode=mode,
                                cell_size=cell_size, cell_groups=cell_groups)
  return collide_groups(
      w_leaves, g_leaves, list(specs), list(groups), randomness, rate, poison,
      one=leaf_cuts.run_time_one(count), mode=mode, threshold=threshold,
      include_self=include_self, normalization=normalization,
      length_scale=length_scale, cell_size=cell_size,
      cell_groups=cell_groups)


# Un-jitted, ``tx.update`` would run the collision operation by operation,
# and each of its hundreds of operations compiles on first use: seconds for
# a small tree, and tens of milliseconds per later call. Called outside any
# trace it therefore runs this compiled twin (one compile per tree layout
# and setting, cached by jax); under the caller's jit, vmap or grad the
# plain function is traced into the caller's program, unchanged.
_collide_tree_jit = jax.jit(
    _collide_tree,
    static_argnames=('specs', 'groups', 'mode', 'include_self',
                     'normalization', 'cell_size', 'cell_groups'))


def stochastic_collision(
    collision_rate: optax.ScalarOrSchedule,
    *,
    mode: str = 'soft',
    key: Any = 0,
    particle_axes: particles_lib.ParticleAxesSpec = None,
    mask: particles_lib.MaskSpec = None,
    threshold: float = 0.0,
    include_self: bool = False,
    length_scale: float = 20.0,
    normalization: str | None = None,
    cell_size: int | None = None,
    cell_groups: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""KO's collision step: neurons that are alike exchange momentum.

  Treats the output neurons of each parameter leaf as particles (position:
  the neuron's weights; velocity: its gradient) and collides them, either
  with the deterministic mean-field ``'soft'`` operator or the Direct
  Simulation Monte Carlo ``'hard'`` operator (see the module docstring for
  the formulas). Leaves with ``ndim < 2`` and leaves excluded by
  ``particle_axes`` or ``mask`` pass through untouched. Needs params.

  Leaves whose particle systems have the same shape (D, N) and dtype are
  collided together by one batched kernel (``jax.vmap`` over the stacked
  systems), so compile time grows with the number of distinct shapes, not
  leaves (``collision.plan_groups``; leaves of one N are zero-padded to a
  common D while that costs at most 1.5x their work); the random numbers of
  all of them are one draw (``collision.group_randomness``), and the result
  equals colliding each system alone with its share of that draw.

  Args:
    collision_rate: the collision coefficient gamma_c (float or schedule,
      >= 0). 0 is the identity. The paper's code uses 0.1.
    mode: ``'soft'`` (O(N^2 D) per leaf) or ``'hard'`` (O(N D) per leaf).
    key: int seed or typed ``jax.random.key``; the state carries the key.
    particle_axes: which axes of each leaf index the particles, as a
      :class:`ko_optax.ParticleSpec` (particle axes and batch axes: each
      index of the batch axes, e.g. the layer axis of a scanned stack, is
      its own gas), an int or tuple of ints (particle axes), a tree of those
      (None: the leaf does not collide), or a callable of the updates
      returning such a tree. None means :func:`ko_optax.flax_particle_axes`
      ``()``: Flax's standard layers by name (kernels collide along their
      output axes; biases, norm scales and embeddings do not). See
      :mod:`ko_optax.particles`.
    mask: which leaves collide: None (all particle leaves), a tree of bools
      with the structure of the params, or a callable returning one.
    threshold: soft mode: pairs with kernel ``S_ij < threshold`` do not
      interact (0: only pairs moving alike and placed alike act).
    include_self: soft mode: keep the diagonal ``S_ii = 1`` (the reference
      code's default, which also scales each gradient by ``1 - rate``).
    length_scale: hard mode: proximity length L of the acceptance kernel
      ``exp(-|w_i - w_j| / L)``; the reference code's 0.05 per unit distance
      is L = 20.
    normalization: soft mode: None (plain sum, as in the paper), ``'mean'``
      (divide by the number of partners), ``'norm'`` (repulsion rescaled
      to ``|g_i|``, width independent, the same push whatever the
      similarity) or ``'similarity'`` (divide by ``max(1, sum_j |S_ij|)``:
      the push grows with similarity and stays bounded); see
      :func:`soft_collision`.
    cell_size: None collides all pairs of a leaf. An int C sorts the
      particles into collision cells of at most C by a random-hyperplane
      hash of their weight directions, re-drawn each step, and collides only
      within a cell: O(N C D) time, O(N C) memory. ``C >= N`` is exactly the
      all-pairs collision. See :mod:`ko_optax.cells`.
    cell_groups: with cells, split the particles into this many contiguous
      blocks first (e.g. the number of shards of the particle axis) and form
      cells inside each block, so a sharded leaf needs no communication.
      None means 1. ``cell_size`` and ``cell_groups`` fix array shapes: with
      ``optax.inject_hyperparams`` name them in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` requires
    ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, ko_optax
    >>> params = {'w': jnp.ones((3, 4)) + jnp.eye(3, 4), 'b': jnp.zeros(4)}
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> tx = ko_optax.stochastic_collision(0.1)
    >>> state = tx.init(params)
    >>> new_grads, state = jax.jit(tx.update)(grads, state, params)
    >>> new_grads['w'].shape, bool(jnp.all(new_grads['b'] == 1.0))
    ((3, 4), True)

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  """
  _checks.check_choice('mode', mode, MODES)
  _checks.check_choice('normalization', normalization, NORMALIZATIONS)
  _checks.check_non_negative('collision_rate', collision_rate)
  _checks.check_finite('collision_rate', collision_rate)
  check_options(threshold, length_scale)
  cell_size = _checks.check_positive_int_or_none('cell_size', cell_size)
  if cell_groups is not None and cell_size is None:
    _checks.warn_ineffective(
        'cell_groups', cell_groups, 'it splits collision cells, and '
        'cell_size is None (all pairs collide)')
  cell_groups = _checks.check_positive_int_or_none('cell_groups',
                                                   cell_groups) or 1
  if not isinstance(include_self, bool):
    raise TypeError(f'include_self must be a bool, got {include_self!r}.')

  def init_fn(params: optax.Params) -> StochasticCollisionState:
    return StochasticCollisionState(
        count=jnp.zeros([], jnp.int32),
        key=_checks.tree_key(_checks.canonicalize_key(key), params))

  def update_fn(
      updates: optax.Updates,
      state: optax.OptState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, StochasticCollisionState]:
    del extra_args
    state = cast(StochasticCollisionState, state)  # what init_fn returned
    _checks.check_params(params, updates, 'stochastic_collision')
    rate = collision_rate(state.count) if callable(collision_rate) else (
        collision_rate)
    _checks.check_scalar('collision_rate', rate, schedule=False)
    next_key, step_key = jax.random.split(state.key)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
    leaves = [leaf for _, leaf in leaves_with_path]
    # jaxlib ships no type stub for PyTreeDef: mypy cannot see its methods.
    param_leaves = treedef.flatten_up_to(params)  # type: ignore[attr-defined]
    specs = particles_lib.resolve_particle_axes(particle_axes, updates, mask)
    active = [i for i, s in enumerate(specs) if s is not None]
    active_specs = [s for s in specs if s is not None]
    paths = [jax.tree_util.keystr(leaves_with_path[i][0]) for i in active]
    w_active = [param_leaves[i] for i in active]
    g_active = [leaves[i] for i in active]
    if mode == 'soft':
      _warn_memory(g_active, active_specs, paths, cell_size, cell_groups)
    groups = plan_groups(
        g_active, active_specs, cell_size, cell_groups, paths,
        stack=(_small_soft_system if _soft_on_cpu(mode, cell_size)
               else True))
    eager = not _checks.is_traced(w_active, g_active, state, rate, threshold,
                                  length_scale)

    def collide_all(rate: Any, poison: Any = False) -> list[jax.Array]:
      collide = _collide_tree_jit if eager else _collide_tree
      return collide(
          step_key, w_active, g_active, rate,
          jnp.asarray(poison) if eager else poison, state.count, threshold,
          length_scale, specs=tuple(active_specs), groups=tuple(groups),
          mode=mode, include_self=include_self, normalization=normalization,
          cell_size=cell_size, cell_groups=cell_groups)

    # A rate that is NaN, infinite or negative at run time makes the
    # colliding leaves NaN, with and without jit (docs/method.md, "Bad
    # values"): optax.apply_if_finite then skips and counts the step.
    if _checks.is_concrete(rate):
      if np.any(np.asarray(rate) != 0):
        collided = collide_all(rate, _checks.bad_rate(np.asarray(rate)))
      else:
        collided = g_active
    else:
      # A traced rate (a schedule, inject_hyperparams) may be 0: skip the
      # work then, and return the gradients untouched, bit for bit.
      collided = jax.lax.cond(
          jnp.asarray(rate) != 0,
          lambda rate: collide_all(rate, _checks.bad_rate(rate)),
          lambda rate: g_active, rate)
    new_leaves = list(leaves)
    for i, new in zip(active, collided):
      new_leaves[i] = new
    # safe_increment is annotated ArrayLike; it returns an array for one.
    new_state = StochasticCollisionState(
        count=cast(chex.Array, optax.safe_increment(state.count)),
        key=next_key)
    return jax.tree.unflatten(treedef, new_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
