"""Collision cells: exactness at C >= N, no N x N arrays, locality.

Conservation in cells, their dtypes, determinism, vmap and edge cases are in
test_properties_*.py with the other paths.
"""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import _backend
from ko_optax import cells
from ko_optax.collision import soft


def _random(shape, seed):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _soft(w, g, k, rate=0.3):
  del k
  return soft.soft_collision(w, g, rate)


_cells = jax.jit(cells.collide_in_cells,
                 static_argnames=('collide', 'cell_size', 'groups', 'pairs'))


def _update(tx, grads, params, steps=1):
  """Runs ``steps`` jitted updates from a fresh state."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  outs = []
  for _ in range(steps):
    out, state = update(grads, state, params)
    outs.append(out)
  return outs, state


def _all_avals(jaxpr):
  """Every abstract value produced anywhere in a jaxpr, sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield var.aval
    for param in eqn.params.values():
      subs = param if isinstance(param, (list, tuple)) else [param]
      for sub in subs:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _all_avals(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _all_avals(sub)


def _largest_array(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args)
  return max(int(np.prod(getattr(a, 'shape', ()))) for a in
             _all_avals(jaxpr.jaxpr))


# -- C >= N is the all-pairs collision ---------------------------------------


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_cell_size_at_least_n_is_all_pairs_exactly(mode, cell_size=12):
  params = {'w': _random((5, 12), 0), 'b': _random((12,), 1)}
  grads = {'w': _random((5, 12), 2), 'b': _random((12,), 3)}
  exact = ko_optax.stochastic_collision(0.4, mode=mode, key=3)
  cells_tx = ko_optax.stochastic_collision(
      0.4, mode=mode, key=3, cell_size=cell_size)
  (_, want), s_exact = _update(exact, grads, params, 2)
  (_, got), s_cells = _update(cells_tx, grads, params, 2)
  np.testing.assert_array_equal(got['w'], want['w'])
  np.testing.assert_array_equal(got['b'], grads['b'])
  np.testing.assert_array_equal(jax.random.key_data(s_cells.key),
                                jax.random.key_data(s_exact.key))


@pytest.mark.parametrize('collision_mode', ['soft', 'hard'])
def test_ko_cell_size_at_least_n_is_all_pairs_exactly(collision_mode):
  params = {'w': _random((6, 10), 4)}
  grads = {'w': _random((6, 10), 5)}
  outs = []
  for cell_size in (None, 64):
    tx = ko_optax.ko(1e-2, collision=collision_mode, collision_rate=0.5,
                     temperature=1e-4, cell_size=cell_size)
    (_, updates), _ = _update(tx, grads, params, 2)
    outs.append(updates['w'])
  np.testing.assert_array_equal(outs[1], outs[0])


def test_one_cell_per_block_is_blockwise_all_pairs():
  # Cells do not depend on the order inside a cell: with C = block size the
  # cells path is the exact soft collision of each block.
  w, g = _random((7, 24), 6), _random((7, 24), 7)
  got = _cells(w, g, jax.random.key(0), _soft, cell_size=8,
                               groups=3)
  want = jnp.concatenate(
      [_soft(w[:, i:i + 8], g[:, i:i + 8], None) for i in (0, 8, 16)], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  whole = _cells(w, g, jax.random.key(1), _soft,
                                 cell_size=24)
  np.testing.assert_allclose(whole, _soft(w, g, None), rtol=1e-6, atol=1e-6)


# -- cost: no N x N array ----------------------------------------------------


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_no_n_by_n_array_with_cells(mode):
  n, c, d = 512, 16, 4
  params = {'w': _random((d, n), 8)}
  grads = {'w': _random((d, n), 9)}

  def largest(cell_size):
    tx = ko_optax.ko(1e-3, collision=mode, cell_size=cell_size)
    state = tx.init(params)
    return _largest_array(
        lambda g, s, p: tx.update(g, s, p), grads, state, params)

  assert largest(c) < n * n // 4, 'an N x N array was formed with cells on'
  if mode == 'soft':
    # The check sees the all-pairs kernel when cells are off.
    assert largest(None) >= n * n


# -- randomness: cells are re-drawn every step -------------------------------


def test_cell_order_is_a_random_permutation_of_each_block():
  # Blocks of 30 in cells of 4 (3 levels, a padded last cell), with zero
  # weight vectors, whose projections all tie: still a permutation of each
  # block, and the ties change order from key to key.
  w = _random((2, 5, 30), 25).at[:, :, :10].set(0.0)
  order_fn = jax.jit(cells.cell_order, static_argnums=2)
  orders = [np.asarray(order_fn(w, jax.random.key(k), 4)) for k in range(2)]
  for order in orders:
    np.testing.assert_array_equal(np.sort(order, axis=-1),
                                  np.broadcast_to(np.arange(30), (2, 30)))
  zeros = [o[o < 10] for o in (orders[0][0], orders[1][0])]
  assert not np.array_equal(*zeros)


def test_cell_order_ignores_each_particle_s_scale_and_takes_half_floats():
  # The tree sorts cosines: scaling particles by powers of 2, each its own,
  # over 2**-100 .. 2**100 changes no position (the projections are taken
  # of the raw weights and rescaled exactly).
  w = _random((12, 64), 26)
  exponents = np.random.default_rng(0).integers(-100, 100, size=64)
  scaled = w * jnp.asarray(2.0 ** exponents, jnp.float32)
  order_fn = jax.jit(cells.cell_order, static_argnums=2)
  np.testing.assert_array_equal(order_fn(scaled, jax.random.key(3), 8),
                                order_fn(w, jax.random.key(3), 8))
  # float16 and bfloat16 particles (their power-of-2 scales used to fail):
  # a permutation, and a finite soft collision in the input's dtype.
  for dtype in (jnp.float16, jnp.bfloat16):
    low = (w * 3000).astype(dtype)
    order = np.asarray(order_fn(low, jax.random.key(3), 8))
    np.testing.assert_array_equal(np.sort(order), np.arange(64))
  out = _cells(low, low, jax.random.key(4), _soft, cell_size=8)
  assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(out).all())


def test_cells_group_similar_directions():
  # 8 tight clusters of 16 directions, cells of 16: most in-cell partners
  # are from the particle's own cluster (0.80 here; 0.61 with the former
  # sign hash of 3 hyperplanes, whose buckets clusters shared and cells cut
  # across; 0.11 with random cells).
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(8), 16)
  centres = rng.normal(size=(8, 32))
  w = centres[labels] + 0.05 * rng.normal(size=(128, 32))
  w = jnp.asarray(w.T[None], jnp.float32)
  order_fn = jax.jit(cells.cell_order, static_argnums=2)
  shared = []
  for k in range(10):
    order = np.asarray(order_fn(w, jax.random.key(k), 16)[0])
    cell_labels = labels[order].reshape(8, 16)
    same = (cell_labels[:, :, None] == cell_labels[:, None, :]).sum() - 128
    shared.append(same / (128 * 15))
  assert np.mean(shared) > 0.75


# -- the accelerator layout: cells collided in one batched call -------------


def test_batched_cells_match_the_cell_loop(monkeypatch):
  # On CPU the cells are collided one at a time; on GPU and TPU in one
  # batched call. Same result.
  w, g = _random((6, 40), 23), _random((6, 40), 24)
  fn = functools.partial(cells.collide_in_cells, collide=_soft, cell_size=6,
                         groups=2)
  loop = jax.jit(fn)(w, g, jax.random.key(7))
  monkeypatch.setattr(_backend, 'loop_over_cells', lambda: False)
  batched = jax.jit(fn)(w, g, jax.random.key(7))
  np.testing.assert_allclose(batched, loop, rtol=1e-6, atol=1e-6)
