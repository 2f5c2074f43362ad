"""Exact rescaling by powers of 2: scale-safe norms and cosines."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pow2_floor(m: jax.Array) -> jax.Array:
  """The largest power of 2 not above ``m`` (finite, >= 0); 1 where m is 0.

  Dividing by a power of 2 is exact, so computing on ``x / pow2_floor(max
  |x|)`` and scaling back changes no bit of a result whose intermediates
  stay in the normal range, and keeps them from overflowing (or underflowing)
  whatever the magnitude of ``x``. Subnormal ``m`` also gives 1.
  """
  info = jnp.finfo(m.dtype)
  uint = jnp.uint64 if m.dtype.itemsize == 8 else jnp.uint32
  exponent = ((1 << info.nexp) - 1) << info.nmant
  bits = jax.lax.bitcast_convert_type(m, uint) & uint(exponent)
  p = jax.lax.bitcast_convert_type(bits, m.dtype)
  return jnp.where(p > 0, p, jnp.ones_like(p))
