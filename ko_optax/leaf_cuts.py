"""Cutting leaves back out of a collision group, compiled once per shape.

KO collides the leaves of a tree in groups
(:func:`ko_optax.collision.grouping.plan_groups`): the particle systems of
equal-shape leaves are stacked along a leading axis, collided by one batched
call, and the result is cut back into the leaves. How that cut is written
decides how many kernels XLA compiles, which on a deep model is most of KO's
compile time.

A slice at a constant offset is fused by XLA into every consumer of the
leaf: the base optimizer's per-leaf kernels (Adam's two moments and its
update), identical for every leaf of a shape and compiled once otherwise,
then carry the offset and are compiled once per leaf (docs/method.md). Two
remedies, both exact:

* :func:`run_time_offsets` (CPU, unsharded groups): the offsets become
  run-time values, so the cut is a ``dynamic_slice`` whose kernel, fused
  or not, is the same for every leaf of a shape: no per-leaf kernel at
  all.
* :func:`materialized` (elsewhere): the cut leaf is divided by a run-time
  1, which XLA does not copy into several consumers: one small kernel per
  leaf, and the kernels after it stay shared.

Both need a value XLA cannot fold, :func:`run_time_one`, made from the
optimizer state's step count.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp


def run_time_one(count: Any) -> jax.Array:
  """A float32 1 that XLA cannot fold to a constant: ``1 + 0 * count`` of a
  step count (finite, so the product is 0; XLA keeps ``0 * x`` of floats,
  NaN when x is not)."""
  return 1.0 + 0.0 * jnp.asarray(count, jnp.float32)


def materialized(leaf: jax.Array, one: jax.Array) -> jax.Array:
  """``leaf`` divided by a run-time 1: the same values, bit for bit.

  XLA does not copy a division into several consumers: the cut leaf is
  computed once, by one small kernel of its own, and the base optimizer's
  kernels after it stay shared between equal-shape leaves (docs/method.md).
  Dividing by 1
  returns every normal number, zero, infinity and NaN as it is; subnormals
  (below ~1.2e-38 in float32) become 0 where the backend flushes them, as
  XLA:CPU does in any arithmetic (the base optimizer's first multiply would
  flush them too). ``one`` must be a run-time value (:func:`run_time_one`):
  a constant 1 is folded away.
  """
  return leaf / one.astype(leaf.dtype)


@jax.custom_batching.custom_vmap
def _opaque(one: jax.Array, values: tuple[jax.Array, ...]
            ) -> tuple[jax.Array, ...]:
  # ``one > 0`` always holds, so this is ``values``; XLA cannot know it,
  # and the conditional's outputs reach their consumers as parameters.
  rotated = lambda t: t[1:] + t[:1]
  return jax.lax.cond(one > 0, lambda t: t, rotated, values)


@_opaque.def_vmap
def _opaque_vmap(axis_size: int, in_batched: Any, one: jax.Array,
                 values: tuple[jax.Array, ...]) -> Any:
  # Under jax.vmap (seeds trained side by side), ``one`` is batched like
  # the state it comes from, but is 1 in every member: keep the offsets
  # unbatched, so that the cut stays a dynamic_slice (a batched offset
  # would turn it into a gather).
  del axis_size
  one_batched, values_batched = in_batched
  return _opaque(one[0] if one_batched else one, values), values_batched


def run_time_offsets(starts: Sequence[int], one: jax.Array
                     ) -> tuple[jax.Array, ...]:
  """The int32 scalars ``starts``, as run-time values XLA cannot fold.

  They are the outputs of a ``lax.cond`` on ``one > 0`` (true at run time)
  whose other branch rotates them: a conditional's outputs are separate
  buffers, so a kernel that reads one of them takes it as a parameter, and
  the kernels of cuts at different offsets are one and the same. On
  XLA:CPU the conditional costs a few microseconds; on an accelerator a
  conditional may wait for its predicate on the host, so
  :func:`ko_optax.collision.grouping.collide_groups` uses this on CPU only
  (:func:`ko_optax._backend.cut_at_run_time_offsets`).

  Args:
    starts: the offsets, Python ints (at least two, or the two branches
      would be the same and XLA could fold them).
    one: :func:`run_time_one`; may be batched under ``jax.vmap`` (the
      offsets are not).

  Returns:
    A tuple of int32 scalars equal to ``starts``.
  """
  if len(starts) < 2:
    return tuple(jnp.int32(s) for s in starts)
  return _opaque(jnp.asarray(one, jnp.float32),
                 tuple(jnp.int32(s) for s in starts))
