"""Collision cells: collide only particles that share a cell.

Direct Simulation Monte Carlo never collides every pair of molecules: it
divides space into cells and collides particles only with partners from their
own cell. KO does the same to scale past the soft collision's O(N^2 D) cost:

1. (optional) split the N particles of a leaf into ``groups`` contiguous
   blocks, e.g. one per shard of a sharded particle axis, so that no cell spans
   two devices;
2. inside each block, hash every particle by the direction of its weight
   vector with random hyperplanes (locality-sensitive hashing for the cosine:
   two neurons at angle theta get the same bit with probability
   1 - theta / pi), with ``ceil(log2(cells))`` hyperplanes re-drawn from the
   state's key every step;
3. sort the particles by hash code (ties in random order) and cut the sorted
   order into cells of ``cell_size`` consecutive particles (the last cell of a
   block may be smaller; it is padded with zero particles, which do not
   interact);
4. collide inside each cell (soft), or pair neighbours in the sorted order
   (hard), and scatter the result back to the original order.

Sorting makes every cell full, so the cost is O(N C D) time and O(N C) memory
for the soft collision, with neurons of similar direction (the ones the
collision acts on: ``S_ij`` is proportional to ``cos(w_i, w_j)``) landing in
the same cell more often than not. Because the hyperplanes are re-drawn each
step, every pair meets over time. With ``cell_size >= N`` and one group the
caller uses the exact all-pairs collision instead.
"""

from __future__ import annotations

from collections.abc import Callable
import math

import jax
import jax.numpy as jnp


def num_hyperplanes(block: int, cell_size: int) -> int:
  """Hash bits for a block of ``block`` particles and cells of ``cell_size``."""
  cells = math.ceil(block / cell_size)
  return max(1, math.ceil(math.log2(cells))) if cells > 1 else 1


def hash_order(w: jax.Array, key: jax.Array, bits: int) -> jax.Array:
  """Sorted order of the columns of ``w`` (..., D, B) by a hyperplane hash.

  Returns:
    Integer array (..., B): a permutation per block that puts particles with
    the same sign pattern against ``bits`` random hyperplanes next to each
    other (ties in random order).
  """
  plane_key, tie_key = jax.random.split(key)
  d, b = w.shape[-2], w.shape[-1]
  planes = jax.random.normal(plane_key, (d, bits), w.dtype)
  # The projection's sign does not depend on the column norms: no need to
  # normalise the weights first.
  signs = jnp.einsum('...db,dk->...bk', w, planes) > 0
  codes = jnp.sum(signs * (2 ** jnp.arange(bits)), axis=-1).astype(w.dtype)
  ties = jax.random.uniform(tie_key, w.shape[:-2] + (b,), w.dtype)
  return jnp.argsort(codes + ties, axis=-1)


def _take(x: jax.Array, order: jax.Array) -> jax.Array:
  """Gathers the columns of x (..., D, B) in ``order`` (..., B)."""
  return jnp.take_along_axis(x, order[..., None, :], axis=-1)


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
    key: typed PRNG key for the hash and for ``collide``.
    collide: ``collide(w, g, key)`` on batched particle matrices
      (..., D, C); returns the new ``g``.
    cell_size: particles per cell, C.
    groups: number of contiguous blocks the N particles are first split into;
      cells never cross a block. Must divide N.
    pairs: hard collisions: instead of cells of C, ``collide`` receives each
      block in hash order with pairs as neighbouring columns (..., D, 2M).

  Returns:
    The new velocities, a (D, N) matrix.
  """
  d, n = g.shape
  if n % groups:
    raise ValueError(
        f'cell_groups={groups} must divide the number of particles N={n} of '
        'every colliding leaf; use the number of shards of the particle axis '
        'or 1.'
    )
  block = n // groups
  hash_key, collide_key = jax.random.split(key)
  # (D, N) -> (G, D, B): block k holds particles k*B .. (k+1)*B - 1.
  wb = w.reshape(d, groups, block).transpose(1, 0, 2)
  gb = g.reshape(d, groups, block).transpose(1, 0, 2)
  order = hash_order(wb, hash_key, num_hyperplanes(block, cell_size))
  ws, gs = _take(wb, order), _take(gb, order)
  if pairs:
    m = 2 * (block // 2)
    new_paired = collide(ws[..., :m], gs[..., :m], collide_key)
    new_sorted = jnp.concatenate([new_paired, gs[..., m:]], axis=-1)
  else:
    cells = math.ceil(block / cell_size)
    pad = cells * cell_size - block
    padding = ((0, 0), (0, 0), (0, pad))
    wc = jnp.pad(ws, padding).reshape(groups, d, cells, cell_size)
    gc = jnp.pad(gs, padding).reshape(groups, d, cells, cell_size)
    # (G, D, K, C) -> (G, K, D, C): a batch of K cells per block.
    new = collide(wc.transpose(0, 2, 1, 3), gc.transpose(0, 2, 1, 3),
                  collide_key)
    new_sorted = new.transpose(0, 2, 1, 3).reshape(groups, d, -1)[..., :block]
  inverse = jnp.argsort(order, axis=-1)
  new_blocks = _take(new_sorted, inverse)
  return new_blocks.transpose(1, 0, 2).reshape(d, n)
