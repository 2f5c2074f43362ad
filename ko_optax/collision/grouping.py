"""Colliding many leaves at once: groups of leaves of one particle shape.

Leaves whose particle systems share (D, N), the compute dtype and their
explicit sharding are stacked and collided by one batched call, so the
compiled step holds one collision per group, not per leaf; all their random
numbers are one draw (:func:`group_randomness`). The result equals colliding
each system alone with its share of that draw.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ko_optax import _backend
from ko_optax import _numerics
from ko_optax import _random
from ko_optax import cells as cells_lib
from ko_optax import leaf_cuts
from ko_optax import particles as particles_lib
from ko_optax.collision import hard
from ko_optax.collision import soft

# Leaves of one N but different D are zero-padded to the larger D and
# collided together while the padded work is at most this factor of the real
# work: fewer distinct shapes compile faster.
_MAX_PADDING = 1.5


def uses_cells(n: int, cell_size: int | None, cell_groups: int) -> bool:
  """Whether systems of N particles collide in cells (``cell_size >= N``
  with one group is the all-pairs collision)."""
  return cell_size is not None and not (cell_size >= n and cell_groups == 1)


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


class _Bucket(NamedTuple):
  """A group being planned: its key, members, and the work it holds."""
  d: int
  n: int
  dtype: Any
  sharding: str
  members: list[int]
  real_work: int      # sum of each system's own D (the work unpadded)
  system_count: int   # the number of systems (the work is d times it)


def _particle_shapes(g_leaves: list[jax.Array],
                     specs: list[particles_lib.ParticleSpec],
                     paths: list[str]) -> list[tuple[int, int, int]]:
  """Each leaf's (B, D, N), D of the real view; checks the dtypes."""
  shapes = []
  for g, spec, path in zip(g_leaves, specs, paths):
    if not jnp.issubdtype(g.dtype, jnp.inexact):
      raise TypeError(
          f'stochastic_collision needs floating-point or complex gradients, '
          f'got {g.dtype} for leaf {path}. Cast the leaf or exclude it '
          'with particle_axes / mask.'
      )
    b, d, n = particles_lib.particle_shape(g.shape, spec)
    if jnp.issubdtype(g.dtype, jnp.complexfloating):
      d *= 2   # the real view: a particle in C^D is one in R^{2D}
    shapes.append((b, d, n))
  return shapes


def plan_groups(g_leaves: list[jax.Array],
                specs: list[particles_lib.ParticleSpec],
                cell_size: int | None = None, cell_groups: int = 1,
                paths: list[str] | None = None,
                stack: Callable[[int, int], bool] | None = None,
                ) -> list[CollisionGroup]:
  """Groups colliding leaves by particle shape, dtype and sharding.

  Leaves whose systems share ``(D, N)``, the compute dtype and their
  explicit sharding form a group. Unsharded groups of one N on the
  all-pairs path are then merged, largest D first, while zero-padding them
  to the larger D costs at most ``_MAX_PADDING`` times their work (a
  ResNet's 12 conv shapes become 5 groups; a transformer's 128-wide
  projections are not padded to its 512-wide MLP kernels). Collision cells
  hash in D dimensions, so their groups are never padded. ``stack``, a
  predicate of a system's ``(D, N)``, stacks only the leaves it holds for
  (the others are groups of one leaf); None stacks all.

  Raises:
    TypeError: for a leaf that is neither floating point nor complex,
      naming it.
  """
  paths = paths or [f'#{k}' for k in range(len(g_leaves))]
  shapes = _particle_shapes(g_leaves, specs, paths)
  same_shape: dict[Any, list[int]] = {}
  for k, g in enumerate(g_leaves):
    _, d, n = shapes[k]
    sharding = repr(_numerics.explicit_spec(g))
    same_shape.setdefault(
        (d, n, jnp.dtype(_numerics.compute_dtype(g.dtype)), sharding),
        []).append(k)
  groups: list[_Bucket] = []
  padded: dict[Any, int] = {}     # (n, dtype) -> index of its open group
  for (d, n, dtype, sharding), members in sorted(
      same_shape.items(), key=lambda kv: (-kv[0][0], kv[0][1], str(kv[0][2]))):
    count = sum(shapes[k][0] for k in members)
    group = _Bucket(d, n, dtype, sharding, list(members), count * d, count)
    if stack is not None and not stack(d, n):
      groups.extend(_Bucket(d, n, dtype, sharding, [k], 0, 0)
                    for k in members)
    elif sharding != 'None' or uses_cells(n, cell_size, cell_groups):
      groups.append(group)
    elif (n, dtype) in padded and _fits(groups[padded[(n, dtype)]], group):
      host = groups[padded[(n, dtype)]]
      groups[padded[(n, dtype)]] = host._replace(
          members=host.members + group.members,
          real_work=host.real_work + group.real_work,
          system_count=host.system_count + group.system_count)
    else:
      padded[(n, dtype)] = len(groups)
      groups.append(group)
  return [CollisionGroup(g.d, g.n, g.dtype, g.sharding, tuple(g.members),
                         tuple(shapes[k][0] for k in g.members),
                         tuple(shapes[k][1] for k in g.members))
          for g in groups]


def _fits(host: _Bucket, group: _Bucket) -> bool:
  """Whether ``group`` padded to ``host``'s D keeps the padded work within
  ``_MAX_PADDING`` of the real work."""
  padded_work = (host.system_count + group.system_count) * host.d
  return padded_work <= _MAX_PADDING * (host.real_work + group.real_work)


def group_randomness(key: jax.Array, groups: list[CollisionGroup], *,
                     mode: str, cell_size: int | None = None,
                     cell_groups: int = 1) -> list[Any]:
  """The random input of every group's systems, stacked over the systems.

  Returns, per group: None (soft without cells: deterministic), B typed
  keys (collision cells), or the hard collision's
  :class:`ko_optax._random.HardDraw` (B systems), with directions that are
  zero beyond each system's own D. All the hard collisions of a tree are
  cut from ONE random-words draw and the cells' keys are one split, so the
  step compiles a fixed number of random-number kernels, whatever its
  number of leaves and shapes.
  """
  bits_key, cells_key = jax.random.split(key)
  cells = [uses_cells(gr.n, cell_size, cell_groups) for gr in groups]
  out: list[Any] = [None] * len(groups)
  counts = [sum(gr.systems) if c else 0 for c, gr in zip(cells, groups)]
  if sum(counts):
    keys = jax.random.split(cells_key, sum(counts))
    starts = np.cumsum([0] + counts)
    for k, c in enumerate(counts):
      if c:
        out[k] = keys[starts[k]:starts[k + 1]]
  hard_groups = [k for k, (c, gr) in enumerate(zip(cells, groups))
                 if mode == 'hard' and not c and gr.n >= 2]
  if not hard_groups:
    return out
  systems = [_random.Systems(sum(groups[k].systems), groups[k].n,
                             groups[k].d,
                             np.repeat(groups[k].dims, groups[k].systems))
             for k in hard_groups]
  bits = _random.random_words(bits_key, (_random.hard_words(systems),))
  for k, draw in zip(hard_groups, _random.hard_draws(bits, systems)):
    out[k] = draw
  return out


def _collide_system(
    w: jax.Array, g: jax.Array, rate: jax.Array, randomness: Any, *,
    mode: str, threshold: Any, include_self: bool,
    normalization: str | None, length_scale: Any, cell_size: int | None,
    cell_groups: int,
) -> jax.Array:
  """Collides one particle system, a (D, N) matrix; returns the new g.

  ``randomness`` is the system's share of :func:`group_randomness`: None
  (soft), a :class:`ko_optax._random.HardDraw`, or a key (collision cells).
  """
  n = g.shape[-1]
  if mode == 'soft':
    in_cell = lambda w_, g_, k_: soft.soft_collision(
        w_, g_, rate, threshold=threshold, include_self=include_self,
        normalization=normalization)
  else:
    in_cell = lambda w_, g_, k_: hard.collide_adjacent_pairs(
        w_, g_, rate, k_, length_scale=length_scale)
  if cell_size is not None and uses_cells(n, cell_size, cell_groups):
    return cells_lib.collide_in_cells(
        w, g, randomness, in_cell, cell_size=cell_size, groups=cell_groups,
        pairs=mode == 'hard')
  if mode == 'soft':
    all_pairs = lambda w_, g_: in_cell(w_, g_, None)
  else:
    all_pairs = lambda w_, g_: g_ if g_.shape[-1] < 2 else (
        hard.collide_in_pairing(w_, g_, rate, *randomness,
                                length_scale=length_scale))
  # Explicitly sharded leaves are gathered for the all-pairs form.
  return cells_lib.unsharded(all_pairs, w, g)


def _system_share(randomness: Any, b: int) -> Any:
  """System ``b``'s share of a group's randomness (stacked over systems)."""
  return jax.tree.map(lambda x: x[b], randomness)


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


def _group_particles(leaves: list[jax.Array], g_leaves: list[jax.Array],
                     specs: list[particles_lib.ParticleSpec],
                     group: CollisionGroup) -> list[jax.Array]:
  """The group's members as real (B, D, N) systems, zero-padded to its D.

  Zero dimensions change no norm, cosine, distance or speed, and a padded
  dimension of a velocity stays 0 (so do the padded directions).
  """
  pad = lambda x: x if x.shape[1] == group.d else jnp.pad(
      x, ((0, 0), (0, group.d - x.shape[1]), (0, 0)))
  return [pad(_real_view(particles_lib.to_particles(leaves[k], specs[k]),
                         jnp.iscomplexobj(g_leaves[k])).astype(group.dtype))
          for k in group.members]


def _collide_group(
    w_leaves: list[jax.Array], g_leaves: list[jax.Array],
    specs: list[particles_lib.ParticleSpec], group: CollisionGroup,
    rand: Any, rate: Any, options: dict[str, Any], rate_is_bad: Any = False,
) -> jax.Array:
  """Collides one group's systems; returns them stacked, (B, D, N).

  ``rate_is_bad`` (False, True, or a traced bool): the rate is NaN,
  infinite or negative, and every value of the group becomes NaN
  (docs/method.md).
  """
  rate = jnp.asarray(rate, group.dtype)
  system = lambda w, g, r: _collide_system(w, g, rate=rate, randomness=r,
                                           **options)
  ws = _group_particles(w_leaves, g_leaves, specs, group)
  gs = _group_particles(g_leaves, g_leaves, specs, group)
  if sum(group.systems) == 1:
    new = system(ws[0][0], gs[0][0], _system_share(rand, 0))[None]
  elif group.sharding != 'None':
    # Explicitly sharded systems keep their own shardings: one by one.
    w, g = jnp.concatenate(ws), jnp.concatenate(gs)
    new = jnp.stack([system(w[b], g[b], _system_share(rand, b))
                     for b in range(g.shape[0])])
  else:
    stack = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs)
    if (_backend.soft_stacks_small_systems_only(options['mode'],
                                                options['cell_size'])
        and len(group.members) > 1):
      # XLA:CPU runs the products of a loop over small systems unbatched.
      new = jax.lax.map(lambda a: system(*a), (stack(ws), stack(gs), rand))
    else:
      new = jax.vmap(system)(stack(ws), stack(gs), rand)
  if rate_is_bad is not False:
    new = jnp.where(rate_is_bad, jnp.asarray(jnp.nan, new.dtype), new)
  return new


def _keep_finite(new: jax.Array, old: jax.Array,
                 rate_is_bad: Any) -> jax.Array:
  """``new`` cast to ``old``'s dtype; where the cast overflows, ``old``.

  Collisions compute in float32 at least, so a bfloat16 or float16 result
  can still round to infinity on the way back; float32 leaves skip the
  check. A result of a bad rate stays NaN.
  """
  cast = new.astype(old.dtype)
  if rate_is_bad is True or (
      jnp.finfo(old.dtype).max >= jnp.finfo(new.dtype).max):
    return cast
  return jnp.where(jnp.isfinite(cast) | rate_is_bad, cast, old)


def collide_groups(
    w_leaves: list[jax.Array], g_leaves: list[jax.Array],
    specs: list[particles_lib.ParticleSpec], groups: list[CollisionGroup],
    randomness: list[Any], rate: Any, rate_is_bad: Any = False,
    unfoldable_one: Any = None, **options: Any,
) -> list[jax.Array]:
  """Collides the particles of several leaves, one batched call per group.

  Args:
    w_leaves, g_leaves: the positions (params) and velocities (gradients).
    specs: each leaf's normalised :class:`ko_optax.ParticleSpec`.
    groups: :func:`plan_groups`.
    randomness: :func:`group_randomness`.
    rate: the collision rate.
    rate_is_bad: True (maybe traced) when the rate is bad: the returned
      leaves are then NaN (the "Bad values" policy of docs/method.md).
    unfoldable_one: None, or a run-time float32 1
      (:func:`ko_optax.leaf_cuts.run_time_one`): the leaves of a group of
      several are then cut out of its stack so that the base optimizer's
      kernels stay shared between leaves of a shape, at run-time offsets
      (:func:`ko_optax.leaf_cuts.run_time_offsets`) where
      :func:`ko_optax._backend.cut_at_run_time_offsets`, else
      :func:`ko_optax.leaf_cuts.materialized`. Either changes no bit.
    **options: ``mode``, ``threshold``, ``include_self``, ``normalization``,
      ``length_scale``, ``cell_size``, ``cell_groups`` of
      :func:`ko_optax.stochastic_collision`.

  Returns:
    The new gradient leaves, in order.
  """
  out: list[Any] = [None] * len(g_leaves)
  starts = [np.cumsum((0,) + group.systems[:-1]).tolist()
            for group in groups]
  cut_leaves = [unfoldable_one is not None and len(group.members) > 1
                for group in groups]
  at_offsets = [cut and group.sharding == 'None'
                and _backend.cut_at_run_time_offsets()
                for cut, group in zip(cut_leaves, groups)]
  offsets = iter(leaf_cuts.run_time_offsets(
      [s for group_starts, dyn in zip(starts, at_offsets) if dyn
       for s in group_starts], unfoldable_one))
  for group, rand, group_starts, dyn, cut in zip(
      groups, randomness, starts, at_offsets, cut_leaves):
    new = _collide_group(w_leaves, g_leaves, specs, group, rand, rate,
                         options, rate_is_bad)
    for k, start, size, leaf_d in zip(group.members, group_starts,
                                      group.systems, group.dims):
      g = g_leaves[k]
      if dyn:
        part = jax.lax.dynamic_slice_in_dim(new, next(offsets), size, 0)
      else:
        part = new[start:start + size]
      leaf = particles_lib.from_particles(
          _from_real_view(part[:, :leaf_d], g.dtype), specs[k], g.shape)
      out[k] = _keep_finite(leaf, g, rate_is_bad)
      if cut and not dyn:
        out[k] = leaf_cuts.materialized(out[k], unfoldable_one)
  return out
