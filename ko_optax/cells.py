"""Collision cells: collide only particles that share a cell.

Direct Simulation Monte Carlo never collides every pair of molecules: it
divides space into cells and collides particles only with partners from their
own cell. KO does the same to scale past the soft collision's O(N^2 D) cost:

1. (optional) split the N particles of a leaf into ``groups`` contiguous
   blocks, e.g. one per shard of a sharded particle axis, so that no cell spans
   two devices;
2. inside each block, order the particles by the direction of their weight
   vectors with a random projection tree: sort them by their projection onto
   a random direction and cut at the median, then sort each half by a second
   direction and cut it, and so on for ``ceil(log2(cells))`` levels
   (directions re-drawn from the state's key every step). Every cut is a
   hyperplane, so this is locality-sensitive for the cosine like a sign hash
   (two neurons at angle theta are separated by a random hyperplane through
   the origin with probability theta / pi), but every cut is a median, so
   cells follow the tree instead of cutting across buckets of uneven size;
3. cut the sorted order into cells of ``cell_size`` consecutive particles
   (the last cell of a block may be smaller; it is padded with zero
   particles, which do not interact);
4. collide inside each cell (soft), or pair neighbours in the sorted order
   (hard), and put the result back in the original order.

Sorting makes every cell full, so the cost is O(N C D) time and O(N C) memory
for the soft collision, with neurons of similar direction (the ones the
collision acts on: ``S_ij`` is proportional to ``cos(w_i, w_j)``) landing in
the same cell more often than not. Because the directions are re-drawn each
step, every pair meets over time. With ``cell_size >= N`` and one group the
caller uses the exact all-pairs collision instead.

Data movement. The particles are the columns of a row-major (D, N) matrix,
so any reordering moves strided data; on XLA:CPU these copies, not the
O(N C D) flops, used to dominate. Here the particles are moved exactly
twice, each time by a gather that reads contiguous rows of its input (into
cell order, and back), and the inverse permutation is a scatter. On CPU the
cells are then collided one at a time, each a contiguous slice of the
sorted particles (no transposes, and the slice stays in cache); on GPU and
TPU in one batched call.

Sharding. Under ``jax.jit`` with a sharded particle axis, the blocks are the
unit of locality: when ``groups`` is a multiple of the number of shards of
the particle axis, every block lives on one device and the projections, the
sorts, the gathers and the cell collisions run without any cross-device
communication (with JAX's automatic partitioner and with explicit-sharding
meshes alike). With explicit sharding (``jax.make_mesh``'s default axis
types) this module also makes the other layouts work: a sharded particle
dimension D is gathered inside each shard of particles, and a particle axis
whose shards do not line up with the blocks is gathered before the
collision; results are put back in the leaf's sharding afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ko_optax import _backend
from ko_optax._numerics import explicit_spec
from ko_optax._numerics import pow2_floor


def num_levels(block: int, cell_size: int) -> int:
  """Depth of the projection tree for blocks of ``block`` particles."""
  cells = math.ceil(block / cell_size)
  return max(1, math.ceil(math.log2(cells)))


def _runs(x: jax.Array, runs: int, size: int, fill: Any) -> jax.Array:
  """(..., B) -> (..., runs, size): consecutive runs, the last one padded."""
  pad = [(0, 0)] * (x.ndim - 1) + [(0, runs * size - x.shape[-1])]
  return jnp.pad(x, pad, constant_values=fill).reshape(
      x.shape[:-1] + (runs, size))


def cell_order(w: jax.Array, key: jax.Array, cell_size: int) -> jax.Array:
  """Order of the columns of ``w`` (..., D, B) that groups similar directions.

  A random projection tree (Dasgupta and Freund, 2008) over the sorted
  order: level ``l`` sorts every node of ``C * 2**(L - l)`` consecutive
  positions by the projection of the particles onto a random direction
  ``u_l`` and so splits it at the median into its two children. After
  ``L = ceil(log2(B / C))`` levels every run of ``C`` consecutive positions
  (a cell) holds particles that fell on the same side of ``L`` random
  hyperplanes through medians, and inside a cell the particles are in the
  order of their last projection.

  The projections are those of the unit vectors ``w_i / |w_i|``: cells
  group directions (the soft kernel is a product of cosines), whatever the
  norms. Every cut is a median, so unlike buckets of a sign hash (whose
  sizes vary, and which cells then cut across) the cells follow the tree;
  like a sign hash it is locality-sensitive for the cosine: two neurons at a
  small angle land on the same side of a cut unless it passes between them.
  Ties (e.g. zero weight vectors) are broken at random.

  Args:
    w: particle positions, columns are particles; leading axes are blocks.
    key: typed PRNG key for the directions and the tie-breaking.
    cell_size: particles per cell, C.

  Returns:
    Integer array (..., B): a permutation of each block.
  """
  b = w.shape[-1]
  levels = num_levels(b, cell_size)
  direction_key, tie_key = jax.random.split(key)
  directions = jax.random.normal(direction_key, (levels, w.shape[-2]), w.dtype)
  directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
  # With D leading, XLA contracts it in place ((L, D) x (D, ... B)) instead
  # of transposing w.
  # Each particle's norm is taken divided by the power of 2 below its
  # largest entry (exact), so it neither overflows nor underflows whatever
  # its magnitude; the projections are taken of the raw w (accumulated in
  # float32 at least) and divided by the same power of 2 afterwards, which
  # is exact too wherever they are finite and normal (float32 weights of
  # magnitude 1e-36 to 1e36; outside, a particle's cosines may come out 0 or
  # +-1, which misplaces it in the tree, never NaN): no scaled copy of w
  # is written (a pass over the whole (D, N) matrix, 3-5 % of a cell step
  # at N = 4096, D = 1024 on CPU).
  inv_scale = 1 / pow2_floor(jnp.max(jnp.abs(w), axis=-2))       # (..., B)
  projections = jnp.einsum(
      'ld,d...->l...', directions, jnp.moveaxis(w, -2, 0),
      preferred_element_type=jnp.promote_types(w.dtype, jnp.float32),
  ) * inv_scale
  norms = jnp.sqrt(jnp.sum(jnp.square(w * inv_scale[..., None, :]),
                           axis=-2))
  # cos(u_l, w_i), in [-1, 1]; 0 for zero weight vectors.
  projections = projections / jnp.where(norms > 0, norms, 1)
  # Every sort below sorts one uint32 array (XLA:CPU sorts those several
  # times faster than keys with a payload): a key in the high bits, the
  # position it comes from in the low ``index_bits``. Equal keys keep
  # their previous order, which starts random: ties (e.g. zero weight
  # vectors) are broken at random.
  index_bits = max(1, math.ceil(math.log2(b)))
  key_bits = 32 - index_bits
  position = jax.lax.broadcasted_iota(jnp.uint32, projections.shape[1:],
                                      projections.ndim - 2)
  pad = jnp.uint32(2**32 - 1)  # sorts last; no real key reaches it

  def sort_by(keys: jax.Array, size: int) -> jax.Array:
    """Positions sorted by ``keys`` (uint32 < 2**key_bits - 1) in runs."""
    runs = math.ceil(b / size)
    packed = _runs((keys << index_bits) | position, runs, size, pad)
    packed = jax.lax.sort(packed, dimension=-1)
    packed = packed.reshape(packed.shape[:-2] + (runs * size,))[..., :b]
    return (packed & jnp.uint32(2**index_bits - 1)).astype(jnp.int32)

  ties = jax.random.bits(tie_key, projections.shape[1:], jnp.uint32,
                         out_sharding=jax.typeof(projections[0]).sharding)
  order = sort_by(ties >> (index_bits + 1), b)
  for level in range(levels):
    # The nodes of this level are runs of `size` positions; each is sorted
    # by the projections onto this level's direction, as fixed-point
    # numbers of key_bits bits.
    cosine = jnp.take_along_axis(projections[level], order, axis=-1)
    scale = 2.0 ** (key_bits - 1)
    fixed = jnp.clip(jnp.floor((jnp.nan_to_num(cosine) + 1) * scale), 0,
                     2 * scale - 2).astype(jnp.uint32)
    moved = sort_by(fixed, cell_size * 2 ** (levels - level))
    order = jnp.take_along_axis(order, moved, axis=-1)
  return order


def _gather(
    x: jax.Array, index: jax.Array, axes: tuple[int, ...],
    batch: tuple[int, ...], index_batch: tuple[int, ...],
) -> jax.Array:
  """Gathers single elements: ``x`` at ``index`` along ``axes``.

  ``out[i] = x[j]`` where ``j`` has the coordinates ``index[i, :]`` along
  ``axes`` and, along the (sorted) axes ``batch`` of ``x``, the coordinates
  of ``i`` along the axes ``index_batch`` of ``index``. ``index`` has the
  shape of ``out`` plus a last axis of ``len(axes)``.

  Every element is read from a row of ``x`` that is contiguous in memory,
  and the output may order the batch axes differently from ``x``: a block
  transpose comes for free. On XLA:CPU this is several times faster than a
  transpose followed by row gathers. Indices must be in bounds.
  """
  dims = jax.lax.GatherDimensionNumbers(
      offset_dims=(), collapsed_slice_dims=axes, start_index_map=axes,
      operand_batching_dims=batch, start_indices_batching_dims=index_batch)
  return jax.lax.gather(x, index, dims, (1,) * x.ndim,
                        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _sort_columns(
    wb: jax.Array, gb: jax.Array, order: jax.Array, m: int,
) -> tuple[jax.Array, jax.Array]:
  """Particles of (D, G, B) blocks in cell order, as (G, D, M) blocks.

  Columns past B (``m > B``) are zero particles.
  """
  d, groups, block = wb.shape
  index = jnp.pad(order, ((0, 0), (0, m - block)))
  index = jnp.broadcast_to(index[:, None, :, None], (groups, d, m, 1))
  # Output (G, D, M) from input (D, G, B): batch axes D, G of the input are
  # axes 1, 0 of the output. g's gather gets its indices as uint32: the same
  # int32 indices would be computed once, shared and stored (an O(N D)
  # index array); distinct ones fuse into each gather.
  sort = lambda x, i: _gather(x, i, axes=(2,), batch=(0, 1),
                              index_batch=(1, 0))
  ws = sort(wb, index.astype(jnp.int32))
  gs = sort(gb, index.astype(jnp.uint32))
  if m > block:
    real = jnp.arange(m) < block
    ws, gs = jnp.where(real, ws, 0), jnp.where(real, gs, 0)
  return ws, gs


def _unsort(
    new: jax.Array, where: jax.Array, *, cell_axes: tuple[int, ...],
    batch: tuple[int, int], shape: tuple[int, int],
) -> jax.Array:
  """Puts collided particles back in the original order, a (D, N) matrix.

  Args:
    new: the collided particles; ``batch`` holds the positions of its block
      (G) and dimension (D) axes, in this order.
    where: (G, B, len(cell_axes)): for every particle of every block, its
      coordinates in ``new`` along ``cell_axes``.
    cell_axes: the axes of ``new`` that index the sorted particles.
    batch: the block and dimension axes of ``new``.
    shape: (D, N).

  Returns:
    The (D, N) matrix whose column ``k * B + i`` is particle ``i`` of block
    ``k``.
  """
  d, n = shape
  groups, block, _ = where.shape
  index = jnp.broadcast_to(where[None], (d,) + where.shape)  # (D, G, B, .)
  # Output (D, G, B): the block axis of ``new`` is axis 1 of the output, its
  # dimension axis axis 0. (``batch`` is sorted: the block axis comes first
  # in every layout used here.)
  out = _gather(new, index, axes=cell_axes, batch=batch, index_batch=(1, 0))
  return out.reshape(d, n)


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def unsharded(fn: Callable[..., jax.Array], w: jax.Array, g: jax.Array,
              *args: Any) -> jax.Array:
  """Runs ``fn(w, g, *args)`` on replicated copies of explicitly sharded inputs.

  The exact (all-pairs) collisions need every particle on every device. With
  JAX's automatic partitioner (or no mesh) this is a no-op, and XLA inserts
  the all-gathers; with explicit sharding the inputs are gathered here and
  the result is put back in ``g``'s sharding.
  """
  found = explicit_spec(g) or explicit_spec(w)
  if found is None:
    return fn(w, g, *args)
  replicated = P(*([None] * g.ndim))
  w = jax.sharding.reshard(w, replicated)
  g_sharding = jax.typeof(g).sharding
  g = jax.sharding.reshard(g, replicated)
  return jax.sharding.reshard(fn(w, g, *args), g_sharding.spec)


def _align_with_blocks(w: jax.Array, g: jax.Array, groups: int
                       ) -> tuple[jax.Array, jax.Array, Any]:
  """With explicit sharding, keeps the particle axis' shards where the
  blocks line up with them (no communication) and gathers it otherwise, and
  gathers D inside each shard of particles (the projections and the kernels
  contract over D). Returns ``(w, g, g's spec or None)``."""
  found = explicit_spec(g) or explicit_spec(w)
  if found is None:
    return w, g, None
  mesh, _ = found
  out_spec = jax.typeof(g).sharding.spec
  n_entry = (explicit_spec(g) or found)[1][1]
  shards = math.prod(mesh.shape[a] for a in _axes(n_entry))
  if groups % shards:
    n_entry = None
  w = jax.sharding.reshard(w, P(None, n_entry))
  g = jax.sharding.reshard(g, P(None, n_entry))
  return w, g, out_spec


def _collide_neighbours(
    wb: jax.Array, gb: jax.Array, g: jax.Array, order: jax.Array,
    position: jax.Array, collide: Callable[..., jax.Array],
    collide_key: jax.Array,
) -> jax.Array:
  """Hard collisions: neighbours in the sorted order of each (D, G, B) block
  collide as pairs, in one call on the sorted blocks (G, D, B)."""
  d, n = g.shape
  block = wb.shape[2]
  if block < 2:
    return g      # one particle per block: no pair, nothing collides
  ws, gs = _sort_columns(wb, gb, order, block)
  paired = 2 * (block // 2)
  # One key per block, so that each device draws only its own blocks'
  # random words (one draw of all blocks would be moved between shards).
  block_keys = jax.random.split(collide_key, wb.shape[1])
  found = explicit_spec(ws)
  if found is not None:
    block_keys = jax.sharding.reshard(block_keys, P(found[1][0]))
  new_sorted = jax.vmap(collide)(ws[..., :paired], gs[..., :paired],
                                 block_keys)
  if paired < block:
    # Odd blocks: the last particle has no partner and keeps g.
    new_sorted = jnp.concatenate([new_sorted, gs[..., paired:]], axis=-1)
  return _unsort(new_sorted, position[..., None], cell_axes=(2,),
                 batch=(0, 1), shape=(d, n))


def _collide_cells(
    wb: jax.Array, gb: jax.Array, order: jax.Array, position: jax.Array,
    collide: Callable[..., jax.Array], collide_key: jax.Array, cell_size: int,
) -> jax.Array:
  """Collides the cells of C consecutive sorted particles of each (D, G, B)
  block; returns the (D, N) result in the original order."""
  d, groups, block = wb.shape
  shape = (d, groups * block)
  cells = math.ceil(block / cell_size)
  # The last cell of a block is padded with zero particles (index 0 then
  # masked), which do not interact.
  ws, gs = _sort_columns(wb, gb, order, cells * cell_size)
  if _backend.loop_over_cells():

    def one_cell(k: jax.Array, new: jax.Array) -> jax.Array:
      # Cell k of every block, (G, D, C). Its velocities are read from the
      # loop carry before they are overwritten: the carry starts as the
      # sorted g, so the loop needs no output buffer of its own.
      start = k * cell_size
      take = lambda x: jax.lax.dynamic_slice_in_dim(
          x, start, cell_size, axis=-1)
      out = collide(take(ws), take(new), jax.random.fold_in(collide_key, k))
      return jax.lax.dynamic_update_slice_in_dim(new, out, start, axis=-1)

    new_sorted = jax.lax.fori_loop(0, cells, one_cell, gs)
    return _unsort(new_sorted, position[..., None], cell_axes=(2,),
                   batch=(0, 1), shape=shape)
  # (G, D, K*C) -> (G, K, D, C): a batch of K cells per block.
  to_cells = lambda x: jnp.swapaxes(
      x.reshape(groups, d, cells, cell_size), 1, 2)
  new_cells = collide(to_cells(ws), to_cells(gs), collide_key)
  cell, slot = position // cell_size, position % cell_size
  return _unsort(new_cells, jnp.stack([cell, slot], axis=-1),
                 cell_axes=(1, 3), batch=(0, 2), shape=shape)


def collide_in_cells(
    w: jax.Array,
    g: jax.Array,
    key: jax.Array,
    collide: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    *,
    cell_size: int,
    groups: int = 1,
    pairs: bool = False,
) -> jax.Array:
  """Applies ``collide`` inside collision cells of the particles of a leaf.

  Args:
    w: positions, a (D, N) particle matrix (columns are particles).
    g: velocities, same shape.
    key: typed PRNG key for the cell order and for ``collide``.
    collide: ``collide(w, g, key)`` on batched particle matrices
      (..., D, C); returns the new ``g``. It must treat the leading axes as
      a batch: on CPU it is called once per cell index k, on (G, D, C) with
      the key ``fold_in(key_c, k)``; on GPU and TPU once, on (G, K, D, C)
      with ``key_c`` (K cells per block; ``key_c``: the second half of
      ``split(key)``).
    cell_size: particles per cell, C.
    groups: number of contiguous blocks the N particles are first split into;
      cells never cross a block. Must divide N. Use the number of shards of
      the particle axis (or a multiple) for communication-free collisions.
    pairs: hard collisions: instead of cells of C, ``collide`` receives each
      block in cell order with pairs as neighbouring columns (D, 2M), under
      ``jax.vmap`` over the G blocks with the keys ``split(key_c, G)`` (so a
      device draws only the random numbers of its own blocks); the last
      particle of an odd block keeps its velocity, and with one particle per
      block ``collide`` is not called.

  Returns:
    The new velocities, a (D, N) matrix with the sharding of ``g``. Works
    under ``jax.vmap`` over leading axes of ``w``, ``g`` and ``key`` (one
    key per particle system).

  Raises:
    ValueError: if ``groups`` does not divide N.

  Example:
    >>> import jax, jax.numpy as jnp, ko_optax
    >>> w = jax.random.normal(jax.random.key(0), (16, 64))
    >>> g = jax.random.normal(jax.random.key(1), (16, 64))
    >>> soft = lambda w, g, k: ko_optax.soft_collision(w, g, 0.1)
    >>> new = ko_optax.collide_in_cells(w, g, jax.random.key(2), soft,
    ...                                 cell_size=8)
    >>> new.shape
    (16, 64)

  References:
    Bird, *Molecular Gas Dynamics and the Direct Simulation of Gas Flows*,
    1994 (collision cells).
  """
  d, n = g.shape
  if n % groups:
    raise ValueError(
        f'cell_groups={groups} must divide the number of particles N={n} of '
        'every colliding leaf; use the number of shards of the particle axis '
        'or 1.'
    )
  block = n // groups
  w, g, out_spec = _align_with_blocks(w, g, groups)
  order_key, collide_key = jax.random.split(key)
  # (D, N) -> (D, G, B), a free reshape: block k holds the particles
  # k*B .. (k+1)*B - 1.
  wb, gb = w.reshape(d, groups, block), g.reshape(d, groups, block)
  order = cell_order(jnp.swapaxes(wb, 0, 1), order_key, cell_size)
  # sorted position of every particle, the inverse permutation: a scatter
  # (O(B)) rather than a second argsort (O(B log B)).
  position = jax.vmap(lambda o: jnp.zeros_like(o).at[o].set(
      jnp.arange(block, dtype=o.dtype), unique_indices=True))(order)
  if pairs:
    new = _collide_neighbours(wb, gb, g, order, position, collide,
                              collide_key)
  else:
    new = _collide_cells(wb, gb, order, position, collide, collide_key,
                         cell_size)
  if out_spec is not None:
    new = jax.sharding.reshard(new, out_spec)
  return new
