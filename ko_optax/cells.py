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
3. sort the particles by hash code, read as a Gray code (so that neighbouring
   buckets in the sorted order differ in a single hyperplane), with ties in
   random order, and cut the sorted order into cells of ``cell_size``
   consecutive particles (the last cell of a block may be smaller; it is
   padded with zero particles, which do not interact);
4. collide inside each cell (soft), or pair neighbours in the sorted order
   (hard), and scatter the result back to the original order.

Sorting makes every cell full, so the cost is O(N C D) time and O(N C) memory
for the soft collision, with neurons of similar direction (the ones the
collision acts on: ``S_ij`` is proportional to ``cos(w_i, w_j)``) landing in
the same cell more often than not. Because the hyperplanes are re-drawn each
step, every pair meets over time. With ``cell_size >= N`` and one group the
caller uses the exact all-pairs collision instead.

Sharding. Under ``jax.jit`` with a sharded particle axis, the blocks are the
unit of locality: when ``groups`` is a multiple of the number of shards of
the particle axis, every block lives on one device and the hash, the sort,
the gathers and the cell collisions run without any cross-device
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

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def num_hyperplanes(block: int, cell_size: int) -> int:
  """Hash bits for a block of ``block`` particles and cells of ``cell_size``."""
  cells = math.ceil(block / cell_size)
  return max(1, math.ceil(math.log2(cells))) if cells > 1 else 1


def gray_rank(signs: jax.Array) -> jax.Array:
  """Position of sign patterns (..., bits) in the reflected Gray-code order.

  Bit ``k`` of the pattern has weight ``2**k``. Consecutive ranks differ in
  exactly one bit, so buckets that are neighbours in the sorted order lie on
  the same side of all hyperplanes but one.
  """
  bits = signs.shape[-1]
  # binary_k = XOR of the Gray bits k .. bits-1 (the more significant ones).
  suffix = jnp.cumsum(signs[..., ::-1].astype(jnp.uint32), axis=-1)[..., ::-1]
  binary = suffix % 2
  return jnp.sum(binary << jnp.arange(bits, dtype=jnp.uint32), axis=-1,
                 dtype=jnp.uint32)


def hash_order(w: jax.Array, key: jax.Array, bits: int) -> jax.Array:
  """Sorted order of the columns of ``w`` (..., D, B) by a hyperplane hash.

  Args:
    w: particle positions, columns are particles; leading axes are blocks.
    key: typed PRNG key for the hyperplanes and the tie-breaking.
    bits: number of random hyperplanes.

  Returns:
    Integer array (..., B): a permutation per block that puts particles with
    the same sign pattern against ``bits`` random hyperplanes next to each
    other (buckets in Gray-code order, ties in random order).
  """
  return _hash_order_rows(jnp.swapaxes(w, -1, -2), key, bits)


def _hash_order_rows(x: jax.Array, key: jax.Array, bits: int) -> jax.Array:
  """:func:`hash_order` of particles given as rows of x (..., B, D)."""
  plane_key, tie_key = jax.random.split(key)
  d = x.shape[-1]
  planes = jax.random.normal(plane_key, (d, bits), x.dtype)
  # The projection's sign does not depend on the particle norms: no need to
  # normalise the weights first.
  signs = jnp.einsum('...bd,dk->...bk', x, planes) > 0
  codes = gray_rank(signs)
  sharding = jax.typeof(codes).sharding
  ties = jax.random.bits(tie_key, codes.shape, jnp.uint32,
                         out_sharding=sharding)
  # One uint32 sort key: the bucket in the high bits, a random tie-breaker
  # in the rest.
  sort_key = (codes << (32 - bits)) | (ties >> bits) if bits < 32 else codes
  return jnp.argsort(sort_key, axis=-1)


def _take_rows(x: jax.Array, order: jax.Array) -> jax.Array:
  """Gathers the rows of x (..., B, D) in ``order`` (..., B).

  Particles are moved as contiguous rows: on CPU this gather is an order of
  magnitude faster than gathering the columns of a (D, B) matrix.
  """
  return jnp.take_along_axis(x, order[..., None], axis=-2)


def _explicit_spec(x: jax.Array):
  """(mesh, spec) of ``x`` when it is explicitly sharded, else None."""
  sharding = jax.typeof(x).sharding
  mesh = getattr(sharding, 'mesh', None)
  if mesh is None or mesh.empty or not mesh.explicit_axes:
    return None
  spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
  if all(s is None for s in spec):
    return None
  return mesh, spec


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def unsharded(fn: Callable[..., jax.Array], w: jax.Array, g: jax.Array,
              *args) -> jax.Array:
  """Runs ``fn(w, g, *args)`` on replicated copies of explicitly sharded inputs.

  The exact (all-pairs) collisions need every particle on every device. With
  JAX's automatic partitioner (or no mesh) this is a no-op, and XLA inserts
  the all-gathers; with explicit sharding the inputs are gathered here and
  the result is put back in ``g``'s sharding.
  """
  found = _explicit_spec(g) or _explicit_spec(w)
  if found is None:
    return fn(w, g, *args)
  replicated = P(*([None] * g.ndim))
  w = jax.sharding.reshard(w, replicated)
  g_sharding = jax.typeof(g).sharding
  g = jax.sharding.reshard(g, replicated)
  return jax.sharding.reshard(fn(w, g, *args), g_sharding.spec)


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
      cells never cross a block. Must divide N. Use the number of shards of
      the particle axis (or a multiple) for communication-free collisions.
    pairs: hard collisions: instead of cells of C, ``collide`` receives each
      block in hash order with pairs as neighbouring columns (..., D, 2M);
      with one particle per block it is not called.

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
  """
  d, n = g.shape
  if n % groups:
    raise ValueError(
        f'cell_groups={groups} must divide the number of particles N={n} of '
        'every colliding leaf; use the number of shards of the particle axis '
        'or 1.'
    )
  block = n // groups
  found = _explicit_spec(g) or _explicit_spec(w)
  out_spec = None
  if found is not None:
    # Explicit sharding: keep the particle axis' shards when the blocks line
    # up with them (no communication), gather it otherwise; gather D inside
    # each shard of particles (the hash and the kernels contract over D).
    mesh, _ = found
    out_spec = jax.typeof(g).sharding.spec
    n_entry = (_explicit_spec(g) or found)[1][1]
    shards = math.prod(mesh.shape[a] for a in _axes(n_entry))
    if groups % shards:
      n_entry = None
    w = jax.sharding.reshard(w, P(None, n_entry))
    g = jax.sharding.reshard(g, P(None, n_entry))
  hash_key, collide_key = jax.random.split(key)
  # (D, N) -> (G, B, D), particles as rows: block k holds particles
  # k*B .. (k+1)*B - 1; the gathers then move contiguous rows. The cells
  # are handed to ``collide`` in its (..., D, C) layout. On XLA:CPU these
  # copies, not the O(N C D) flops, dominate the cells' time (see
  # docs/scaling.md); on accelerators they run at memory bandwidth.
  wb = w.T.reshape(groups, block, d)
  gb = g.T.reshape(groups, block, d)
  order = _hash_order_rows(wb, hash_key, num_hyperplanes(block, cell_size))
  ws, gs = _take_rows(wb, order), _take_rows(gb, order)
  # Materialise the sorted particles once: left to itself XLA may fuse the
  # gather into every consumer and redo it there (1.5x slower on CPU).
  ws, gs = jax.lax.optimization_barrier((ws, gs))
  cols = lambda x: jnp.swapaxes(x, -1, -2)
  if pairs and block < 2:
    # One particle per block: no pair, nothing collides.
    new_sorted = gs
  elif pairs:
    m = 2 * (block // 2)
    new_paired = cols(collide(cols(ws[:, :m]), cols(gs[:, :m]), collide_key))
    new_sorted = jnp.concatenate([new_paired, gs[:, m:]], axis=1)
  else:
    cells = math.ceil(block / cell_size)
    pad = cells * cell_size - block
    padding = ((0, 0), (0, pad), (0, 0))
    # (G, K*C, D) -> (G, K, C, D): a batch of K cells per block.
    wc = jnp.pad(ws, padding).reshape(groups, cells, cell_size, d)
    gc = jnp.pad(gs, padding).reshape(groups, cells, cell_size, d)
    wc, gc = jax.lax.optimization_barrier((cols(wc), cols(gc)))
    new = cols(jax.lax.optimization_barrier(collide(wc, gc, collide_key)))
    new_sorted = new.reshape(groups, cells * cell_size, d)[:, :block]
  inverse = jnp.argsort(order, axis=-1)
  new = _take_rows(new_sorted, inverse).reshape(n, d).T
  if out_spec is not None:
    new = jax.sharding.reshard(new, out_spec)
  return new
