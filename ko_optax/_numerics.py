"""Numerics shared by the collisions: compute dtypes, exact rescaling by
powers of 2 (scale-safe norms and cosines), one select, and whether an array
is explicitly sharded."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def compute_dtype(dtype: Any) -> Any:
  """The real dtype collisions are computed in: float32, or float64 if given.

  A complex leaf collides on its real view (real and imaginary parts side by
  side, a particle in R^{2D}), in the real dtype of its precision.
  """
  return jnp.finfo(jnp.promote_types(dtype, jnp.float32)).dtype


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


def unit_columns(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Scales the columns of ``x`` (..., D, N) to unit length, scale-safely.

  Each column is first divided by the power of 2 just below its largest
  entry (exact), so the squares neither overflow nor underflow: the
  directions are right at any finite magnitude.

  Returns:
    ``(x_hat, norms)``; zero columns stay zero (never NaN). ``norms`` has
    shape (..., 1, N); it is ``inf`` where the norm exceeds the dtype.
  """
  scale = pow2_floor(jnp.max(jnp.abs(x), axis=-2, keepdims=True))
  x = x / scale
  norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=-2, keepdims=True))
  safe = jnp.where(norms > 0, norms, 1.0)
  return x / safe, norms * scale


def unit_bounded(x: jax.Array, axis: int = -2) -> jax.Array:
  """``x`` scaled to unit length along ``axis`` (columns by default), for
  moderate entries such as random normals: no rescaling first."""
  norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.where(norms > 0, norms, 1.0)


def finite_scale(x: jax.Array, axis: Any) -> jax.Array:
  """The power of 2 just below the largest ``|x|`` along ``axis``; 1 where
  ``x`` holds a NaN or an infinity there.

  One plain max-reduction, because a filtering pass would cost a kernel per
  leaf: a system holding a non-finite value is not rescaled, its bad
  particles still take no part, and a good particle whose squares then
  overflow passes through like them.
  """
  m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
  return select(jnp.isfinite(m), pow2_floor(m), 1.0)


def select(pred: jax.Array, on_true: Any, on_false: Any) -> jax.Array:
  """``jnp.where(pred, on_true, on_false)`` as one ``lax.select``.

  ``jnp.where`` is a jitted function whose nested call, dtype conversion and
  broadcasts XLA must then inline and simplify: compile time, once per leaf
  where the soft collision runs leaf by leaf. ``on_true`` is an array;
  ``on_false`` an array or a Python scalar, cast to ``on_true``'s dtype.
  Under a mesh with explicit axes it is ``jnp.where``, which carries the
  operands' shardings.
  """
  if any(explicit_mesh(x) is not None for x in (pred, on_true, on_false)):
    return jnp.where(pred, on_true, on_false)
  shape = jnp.broadcast_shapes(pred.shape, jnp.shape(on_true),
                               jnp.shape(on_false))
  on_true = jnp.asarray(on_true)
  fill = lambda x: jax.lax.broadcast_in_dim(
      x, shape, tuple(range(len(shape) - x.ndim, len(shape))))
  full = lambda x: x if x.shape == shape else fill(x)
  return jax.lax.select(full(pred), full(on_true),
                        full(jnp.asarray(on_false, on_true.dtype)))


def explicit_mesh(x: Any) -> Any:
  """The mesh ``x`` is typed with when it has explicit axes, else None."""
  if not isinstance(x, jax.Array):
    return None
  mesh = getattr(jax.typeof(x).sharding, 'mesh', None)
  if mesh is None or mesh.empty or not mesh.explicit_axes:
    return None
  return mesh


def explicit_spec(x: jax.Array) -> tuple[Any, tuple[Any, ...]] | None:
  """``(mesh, spec)`` of ``x`` when it is explicitly sharded along some
  axis, else None (also for a replicated array on an explicit mesh)."""
  mesh = explicit_mesh(x)
  if mesh is None:
    return None
  spec = tuple(jax.typeof(x).sharding.spec)
  spec += (None,) * (x.ndim - len(spec))
  if all(s is None for s in spec):
    return None
  return mesh, spec
