"""Hard collisions conserve momentum and energy, on every path.

A hard collision turns the relative velocity of a pair of particles, so each
colliding pair keeps its total momentum (the sum of its two velocities) and
its energy (the sum of their squares), and so do the leaf, each of its
particle systems and each cell. Checked per pair where the pairing is known,
per system elsewhere, and over magnitudes 1e-30 .. 1e30 with hypothesis.
"""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import cells
from ko_optax.collision import hard as hard_lib
import systems


def _assert_conserved(before, after, rtol, atol, in_pairs):
  """(D, N) systems: the particles' total momentum and energy are kept, and
  (``in_pairs``: where ``before`` is bit for bit what the collision got) the
  particles that moved pair up among themselves."""
  before, after = np.asarray(before), np.asarray(after)
  np.testing.assert_allclose(after.sum(-1), before.sum(-1), rtol=rtol,
                             atol=atol)                         # momentum
  energy = lambda x: np.sum(np.abs(x) ** 2)
  np.testing.assert_allclose(energy(after), energy(before),
                             rtol=1e-5)                         # energy
  if in_pairs:
    assert np.sum(np.any(after != before, axis=0)) % 2 == 0


# -- the public operator, pair by pair ---------------------------------------


def test_hard_collision_conserves_momentum_and_energy_per_pair():
  w, g, new, order = map(np.asarray,
                         systems.hard_step(jax.random.key(0), 1.0))
  m = len(order) // 2
  collided = 0
  # The pairing: the random order cut into neighbouring pairs.
  changed = np.flatnonzero(np.any(g != new, axis=0))
  assert len(changed) > 0 and len(changed) % 2 == 0
  pairing = order[:2 * m].reshape(m, 2)
  for i, j in pairing:
    if np.allclose(new[:, i], g[:, i]) and np.allclose(new[:, j], g[:, j]):
      continue
    collided += 1
    np.testing.assert_allclose(new[:, i] + new[:, j], g[:, i] + g[:, j],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.sum(new[:, i] ** 2 + new[:, j] ** 2),
        np.sum(g[:, i] ** 2 + g[:, j] ** 2), rtol=1e-5)
    # The relative speed is kept, its direction is new.
    np.testing.assert_allclose(np.linalg.norm(new[:, i] - new[:, j]),
                               np.linalg.norm(g[:, i] - g[:, j]), rtol=1e-5)
  assert collided * 2 == len(changed)
  # Leaf totals are conserved too.
  np.testing.assert_allclose(new.sum(1), g.sum(1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose((new ** 2).sum(), (g ** 2).sum(), rtol=1e-5)


# -- collision cells, pair by pair -------------------------------------------


def test_hard_in_cells_conserves_momentum_and_energy_per_pair():
  n, groups, c = 33, 3, 4
  w = jnp.asarray(systems.normal((6, n), 12))
  g = jnp.asarray(systems.normal((6, n), 13))
  key = jax.random.key(5)
  hard = lambda w, g, k: hard_lib.collide_adjacent_pairs(
      w, g, 1.0, k, length_scale=20.0)
  new = jax.jit(cells.collide_in_cells, static_argnames=(
      'collide', 'cell_size', 'groups', 'pairs'))(
          w, g, key, hard, cell_size=c, groups=groups, pairs=True)
  assert not np.allclose(new, g)
  order_key, _ = jax.random.split(key)
  block = n // groups
  wb = w.reshape(6, groups, block).transpose(1, 0, 2)
  order = np.asarray(jax.jit(cells.cell_order, static_argnums=2)(
      wb, order_key, c))
  g, new = np.asarray(g, np.float64), np.asarray(new, np.float64)
  changed = 0
  for b in range(groups):
    for k in range(block // 2):
      i, j = b * block + order[b, 2 * k], b * block + order[b, 2 * k + 1]
      np.testing.assert_allclose(new[:, i] + new[:, j], g[:, i] + g[:, j],
                                 rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(
          np.sum(new[:, [i, j]] ** 2), np.sum(g[:, [i, j]] ** 2), rtol=1e-5)
      changed += not np.allclose(new[:, i], g[:, i])
  assert changed > 0
  # Odd blocks: the particle left over keeps its velocity.
  for b in range(groups):
    last = b * block + order[b, -1]
    np.testing.assert_array_equal(new[:, last], g[:, last])


# -- every path of the transformations, system by system ---------------------

L, D, N = 3, 5, 8
STACK = jax.random.normal(jax.random.key(0), (L, D, N))
GRAD = jax.random.normal(jax.random.key(1), (L, D, N))
STACKED = ko_optax.ParticleSpec(-1, 0)

# Leaves of two particle shapes (grouped into one batched collision each),
# a stacked leaf, and a leaf zero-padded to the D of its group.
TREE = {
    'a': jax.random.normal(jax.random.key(0), (6, 10)),
    'b': jax.random.normal(jax.random.key(1), (6, 10)),
    'd': jax.random.normal(jax.random.key(3), (4, 6, 10)),
    'e': jax.random.normal(jax.random.key(4), (5, 7)),
    'g': jax.random.normal(jax.random.key(5), (4, 10)),
}
TREE_SPECS = {'a': -1, 'b': -1, 'd': STACKED, 'e': -1, 'g': -1}


def _update(tx, grads, params):
  return jax.jit(tx.update)(grads, tx.init(params), params)[0]


def _batch_axis_in_the_middle():
  # (D, L, N) with ParticleSpec(-1, 1): each of the L slices is its own gas.
  params = {'k': jnp.moveaxis(STACK, 0, 1)}
  grads = {'k': jnp.moveaxis(GRAD, 0, 1)}
  tx = ko_optax.stochastic_collision(
      5.0, mode='hard', particle_axes=ko_optax.ParticleSpec(-1, 1))
  new = np.asarray(_update(tx, grads, params)['k'])
  g = np.asarray(grads['k'])
  assert np.any(new != g)
  return [(g[:, layer], new[:, layer]) for layer in range(L)], 1e-5, 1e-5, True


def _cells_inside_each_system():
  tx = ko_optax.stochastic_collision(5.0, mode='hard', particle_axes=STACKED,
                                     cell_size=2, cell_groups=2)
  new = np.asarray(_update(tx, {'k': GRAD}, {'k': STACK})['k'])
  g = np.asarray(GRAD)
  blocks = (slice(0, N // 2), slice(N // 2, N))
  return ([(g[layer][:, b], new[layer][:, b]) for layer in range(L)
           for b in blocks], 1e-5, 1e-5, True)


def _grouped_leaves():
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x) + 0.1, TREE)
  tx = ko_optax.stochastic_collision(2.0, mode='hard', key=5,
                                     particle_axes=TREE_SPECS)
  new = _update(tx, grads, TREE)
  pairs = [(grads[k], new[k]) for k in ('a', 'b', 'e', 'g')]
  pairs += [(grads['d'][i], new['d'][i]) for i in range(4)]
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in pairs)
  return pairs, 1e-5, 1e-5, True


def _ko_on_sgd_without_momentum():
  # ko()'s update is -lr times the collided gradient.
  w, g = systems.keyed(4, n=10)
  tx = ko_optax.ko(1e-2, base='sgd', momentum=None, collision='hard',
                   collision_rate=1.0, length_scale=1e30)
  new = _update(tx, {'w': g}, {'w': w})['w']
  assert not np.allclose(new, -1e-2 * g)
  return [(-1e-2 * g, new)], 1e-5, 1e-7, False


def _complex(cell_size):
  def path():
    w, g = systems.complex_keyed(1)
    # No distance damping: the fastest pair (of each cell) surely collides.
    out = systems.collide('hard', w, g, rate=1.0, cell_size=cell_size,
                          length_scale=1e30)
    assert out.dtype == np.complex64
    assert not np.allclose(out, g)
    return [(g, out)], 1e-7, 1e-5, True
  return path


def _velocity_sgd():
  # The collided momentum buffer: t_k = collide(g_k + 0.9 t_{k-1}).
  kw, _ = jax.random.split(jax.random.key(0))
  params = {'w': jax.random.normal(kw, (6, 10)), 'b': jnp.zeros(10)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1.0)) + 0.3, params)
           for i in range(4)]
  tx = ko_optax.kinetic_advection(
      'sgd', momentum=0.9,
      collision=ko_optax.stochastic_collision(0.8, mode='hard', key=3))
  step = jax.jit(tx.update)
  state = tx.init(params)
  pairs = []
  for g in grads:
    trace = state.base.trace
    _, state = step(g, state, params)
    before = jax.tree.map(lambda g, t: g + 0.9 * t, g, trace)
    np.testing.assert_allclose(state.base.trace['b'], before['b'], rtol=1e-6)
    pairs.append((before['w'], state.base.trace['w']))
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in pairs)
  return pairs, 1e-5, 1e-5, False


def _velocity_complex():
  w, g = systems.complex_keyed(3)
  tx = ko_optax.ko(1e-2, base='sgd', collision='hard', collision_rate=1.0,
                   collide_on='velocity')
  u, state = tx.update({'w': g}, tx.init({'w': w}), {'w': w})
  assert u['w'].dtype == jnp.complex64 and np.isfinite(u['w']).all()
  # The collided momentum buffer conserves the layer's momentum.
  np.testing.assert_allclose(state[0].base.trace['w'].sum(-1),
                             -u['w'].sum(-1) / 1e-2, rtol=1e-5)
  return [(g, state[0].base.trace['w'])], 1e-5, 1e-5, True


PATHS = {
    'batch-axis': _batch_axis_in_the_middle,
    'cells-per-system': _cells_inside_each_system,
    'grouped-leaves': _grouped_leaves,
    'ko-sgd': _ko_on_sgd_without_momentum,
    'complex': _complex(None),
    'complex-cells': _complex(2),
    'velocity-sgd': _velocity_sgd,
    'velocity-complex': _velocity_complex,
}


@pytest.mark.parametrize('path', list(PATHS))
def test_every_hard_path_conserves_momentum_and_energy(path):
  systems_, rtol, atol, in_pairs = PATHS[path]()
  for before, after in systems_:
    _assert_conserved(before, after, rtol, atol, in_pairs)


# -- any magnitude, float32 and complex --------------------------------------


@settings(max_examples=3, deadline=None, derandomize=True)
@given(data=st.data(), shape=st.sampled_from(systems.SHAPES),
       dtype=st.sampled_from(['float32', 'complex64']),
       exponent=st.integers(-30, 30), rate=st.floats(0.1, 3.0))
def test_hard_collisions_conserve_at_any_magnitude(
    data, shape, dtype, exponent, rate):
  w, g, _ = systems.draw(data, shape, dtype, exponent)
  out = systems.traced_collider('hard')(w, g, rate)
  assert np.isfinite(np.asarray(out)).all()
  tol = 1e-5 * float(jnp.max(jnp.abs(g))) * shape[1]
  np.testing.assert_allclose(out.sum(-1), g.sum(-1), atol=tol, rtol=0)
  energy = lambda x: float(jnp.sum(jnp.abs(x.astype(jnp.complex64)) ** 2))
  np.testing.assert_allclose(energy(out), energy(g), rtol=1e-5)
