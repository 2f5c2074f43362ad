"""KO's random numbers, cut from random uint32 words.

Every random number of a collision step (pairings, acceptance uniforms,
scattering directions) is cut from one ``jax.random.bits`` draw, so that a
whole tree of leaves compiles one random-number kernel. The public
:func:`ko_optax.hard_collision` and the transformation's hard collisions
draw their pairings and directions with the same functions and layout
(:func:`hard_draws`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ko_optax import _numerics
from ko_optax import keys as keys_lib


def random_words(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Random uint32 words of ``shape`` from a typed ``key``.

  ``jax.random.bits`` in :func:`ko_optax.keys.draw_layout`, of a whole
  number of blocks of 16 words, cut to ``shape``: on XLA:CPU a threefry draw
  whose number of counter pairs is odd runs several times slower than one a
  word longer.
  """
  size = math.prod(shape)
  padded = -(-size // 16) * 16
  with keys_lib.draw_layout():
    words = jax.random.bits(key, (padded,), jnp.uint32)
  return words[:size].reshape(shape)


def uniform_from_bits(bits: jax.Array, dtype: Any) -> jax.Array:
  """Uniform numbers in [0, 1) from random uint32 words (23 mantissa bits)."""
  in_one_two = jax.lax.bitcast_convert_type(
      (bits >> 9) | np.uint32(0x3F800000), jnp.float32)
  return (in_one_two - 1.0).astype(dtype)


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
  return _numerics.unit_bounded(normal_from_bits(bits, dtype))


def random_pairing(high: jax.Array, low: jax.Array) -> jax.Array:
  """A uniformly random permutation of the last axis, (..., N): pair k is
  ``order[2k], order[2k + 1]``.

  The indices sorted by two random words each (64 random bits, so ties are
  about N^2 / 2^65 unlikely).
  """
  index = jax.lax.broadcasted_iota(jnp.int32, high.shape, high.ndim - 1)
  return jax.lax.sort((high, low, index), dimension=-1, num_keys=2)[2]


def inverse_permutation(order: jax.Array) -> jax.Array:
  """The inverse of permutations ``order`` (..., N) along the last axis.

  A sort of ``(order, index)``, which XLA:CPU compiles and runs cheaper than
  the scatter ``inverse[order] = index``.
  """
  index = jax.lax.broadcasted_iota(order.dtype, order.shape, order.ndim - 1)
  return jax.lax.sort((order, index), dimension=-1, num_keys=1)[1]


class HardDraw(NamedTuple):
  """The random numbers of hard collisions of B systems of N particles.

  Attributes:
    order: (B, N) random pairings (:func:`random_pairing`).
    uniforms: (B, M) acceptance uniforms in [0, 1), M = N // 2.
    directions: (B, M, D) unit scattering directions, as rows.
    inverse: (B, N) the inverse permutations of ``order``.
  """
  order: jax.Array
  uniforms: jax.Array
  directions: jax.Array
  inverse: jax.Array


class Systems(NamedTuple):
  """B particle systems of shape (D, N); ``dims``: each system's own D
  (directions are zero beyond it), or None when all are D."""
  b: int
  n: int
  d: int
  dims: Any = None


def hard_words(systems: Sequence[Systems]) -> int:
  """How many random words :func:`hard_draws` cuts for ``systems``."""
  return sum(s.b * (2 * s.n + (s.n // 2) * (s.d + 1)) for s in systems)


def hard_draws(bits: jax.Array, systems: Sequence[Systems]) -> list[HardDraw]:
  """The float32 random numbers of hard collisions, cut from ``bits``.

  ``bits`` holds :func:`hard_words` words, laid out as: the first word of
  every particle of every system (in the order of ``systems``), then their
  second words, then the uniforms, then the normals of the directions (M
  rows of D per system). One batched sort per entry of ``systems``, one
  uniform and one normal conversion for all of them.
  """
  sort_sizes = [s.b * s.n for s in systems]
  uniform_sizes = [s.b * (s.n // 2) for s in systems]
  normal_sizes = [s.b * (s.n // 2) * s.d for s in systems]
  words, total_uniforms = sum(sort_sizes), sum(uniform_sizes)
  uniforms = uniform_from_bits(
      bits[2 * words:2 * words + total_uniforms], jnp.float32)
  normals = normal_from_bits(bits[2 * words + total_uniforms:], jnp.float32)
  sort_at = uniform_at = normal_at = 0
  draws = []
  for s, sort_size, uniform_size, normal_size in zip(
      systems, sort_sizes, uniform_sizes, normal_sizes):
    m = s.n // 2
    z = normals[normal_at:normal_at + normal_size].reshape(s.b, m, s.d)
    if s.dims is not None and min(s.dims) < s.d:
      z = jnp.where(np.arange(s.d)[None, None, :]
                    < np.asarray(s.dims)[:, None, None], z, 0.0)
    cut = lambda at, b=s.b, n=s.n: bits[at:at + b * n].reshape(b, n)
    order = random_pairing(cut(sort_at), cut(words + sort_at))
    draws.append(HardDraw(
        order, uniforms[uniform_at:uniform_at + uniform_size].reshape(s.b, m),
        _numerics.unit_bounded(z, axis=-1), inverse_permutation(order)))
    sort_at += sort_size
    uniform_at += uniform_size
    normal_at += normal_size
  return draws


def pair_words(n: int, d: int) -> int:
  """Random words :func:`pair_draws` needs for N particles of dimension D."""
  return (n // 2) * (d + 1)


def pair_draws(bits: jax.Array, n: int, d: int,
               dtype: Any) -> tuple[jax.Array, jax.Array]:
  """The random numbers of hard collisions of pairs already formed.

  Args:
    bits: uint32 words (..., W), ``W = pair_words(n, d)``; the leading axes
      are independent systems.
    n: particles per system (N); the pairs are ``(2k, 2k + 1)``.
    d: particle dimension (D).
    dtype: float dtype of the uniforms and directions.

  Returns:
    ``(uniforms, directions)``: (..., M) in [0, 1) and unit directions as
    columns (..., D, M), M = N // 2.
  """
  m = n // 2
  batch = bits.shape[:-1]
  uniforms = uniform_from_bits(bits[..., :m], dtype)
  directions = unit_directions(
      bits[..., m:m * (d + 1)].reshape(*batch, d, m), dtype)
  return uniforms, directions
