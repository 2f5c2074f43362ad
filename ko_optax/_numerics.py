"""Exact rescaling by powers of 2: scale-safe norms and cosines."""

from __future__ import annotations

from typing import Any

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
  uint = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[m.dtype.itemsize]
  exponent = ((1 << info.nexp) - 1) << info.nmant
  bits = jax.lax.bitcast_convert_type(m, uint) & uint(exponent)
  p = jax.lax.bitcast_convert_type(bits, m.dtype)
  return select(p > 0, p, 1.0)


def select(pred: jax.Array, on_true: Any, on_false: Any) -> jax.Array:
  """``jnp.where(pred, on_true, on_false)`` as one ``lax.select``.

  ``jnp.where`` is a jitted function: every use adds a nested call, a dtype
  conversion and broadcasts to the lowered program, which XLA's passes then
  inline and simplify. The soft collision runs once per leaf on CPU, so on
  a tree of hundreds of leaves those operations are compile time
  (docs/benchmarks.md). ``on_true`` is an array; ``on_false`` an array or
  a Python scalar, cast to ``on_true``'s dtype. Under a mesh with explicit
  axes it is ``jnp.where``, which carries the operands' shardings.
  """
  if any(_on_explicit_mesh(x) for x in (pred, on_true, on_false)):
    return jnp.where(pred, on_true, on_false)
  shape = jnp.broadcast_shapes(pred.shape, jnp.shape(on_true),
                               jnp.shape(on_false))
  on_true = jnp.asarray(on_true)
  fill = lambda x: jax.lax.broadcast_in_dim(
      x, shape, tuple(range(len(shape) - x.ndim, len(shape))))
  full = lambda x: x if x.shape == shape else fill(x)
  return jax.lax.select(full(pred), full(on_true),
                        full(jnp.asarray(on_false, on_true.dtype)))


def _on_explicit_mesh(x: Any) -> bool:
  """Whether ``x`` is an array typed with a mesh that has explicit axes."""
  if not isinstance(x, jax.Array):
    return False
  mesh = getattr(jax.typeof(x).sharding, 'mesh', None)
  return mesh is not None and not mesh.empty and bool(mesh.explicit_axes)
