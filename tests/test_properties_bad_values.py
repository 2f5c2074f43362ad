"""Bad values and edge cases: the "Bad values" policy of docs/method.md.

Finite in, finite out, on every path: one particle, two, an odd number,
zero rows and zero gradients, magnitudes from 1e-30 to 1e30 (hypothesis:
float32, bfloat16, complex64; float64 when x64 is on). A poisoned neuron (a
NaN gradient, an infinite weight) keeps its value and does not spread; a bad
rate or temperature gives NaN updates, the same with and without jit, which
``optax.apply_if_finite`` skips.
"""

import chex
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax
from ko_optax import cells
from ko_optax.collision import hard as hard_lib
import systems

MODES = ['soft', 'hard']


# -- one particle, odd N, zero rows ------------------------------------------


@pytest.mark.parametrize('n', [1, 2, 3, 7])
def test_small_and_odd_particle_counts(n):
  w = jnp.asarray(systems.normal((5, n), 0))
  g = jnp.asarray(systems.normal((5, n), 1))
  for mode in MODES:
    out, _ = systems.apply(ko_optax.stochastic_collision(5.0, mode=mode), g,
                           w)
    assert out.shape == g.shape and np.all(np.isfinite(out))
    if n == 1:
      np.testing.assert_array_equal(out, g)
  # With odd N one particle sits out: at most N - 1 change.
  out, _ = systems.apply(ko_optax.stochastic_collision(
      100.0, mode='hard', length_scale=1e6), g, w)
  assert np.sum(np.any(np.asarray(out) != np.asarray(g), 0)) <= n - n % 2


def test_zero_rows_and_zero_grads_stay_finite():
  w = np.zeros((4, 5), np.float32)
  w[:, 2] = 1.0
  g = np.zeros((4, 5), np.float32)
  for ww, gg in [(w, g), (w, systems.normal((4, 5), 0)),
                 (np.zeros_like(w), g)]:
    for mode in MODES:
      out, _ = systems.apply(ko_optax.stochastic_collision(0.5, mode=mode),
                             jnp.asarray(gg), jnp.asarray(ww))
      assert np.all(np.isfinite(out)), mode
  out, _ = systems.apply(ko_optax.stochastic_collision(0.5),
                         jnp.zeros((4, 5)), jnp.asarray(w))
  np.testing.assert_array_equal(out, 0.0)


# Leaves of N = 1, 2, 3 and 7 with a zero weight vector and a zero gradient,
# and an all-zero leaf, through every other path in one compile each.
EDGE_PARAMS = {f'n{n}': jnp.asarray(systems.normal((5, n), n)).at[:, 0].set(
    0.0) for n in (1, 2, 3, 7)}
EDGE_PARAMS['zero'] = jnp.zeros((5, 4))
EDGE_GRADS = {k: jnp.asarray(systems.normal(v.shape, 10 + v.shape[1])).at[
    :, -1].set(0.0) for k, v in EDGE_PARAMS.items()}
EDGE_GRADS['zero'] = jnp.zeros((5, 4))

EDGE_PATHS = {
    'soft-mean': lambda: ko_optax.stochastic_collision(
        5.0, normalization='mean'),
    'soft-norm': lambda: ko_optax.stochastic_collision(
        5.0, normalization='norm'),
    'soft-similarity': lambda: ko_optax.stochastic_collision(
        5.0, normalization='similarity'),
    'soft-cells': lambda: ko_optax.stochastic_collision(5.0, cell_size=2),
    'hard-cells': lambda: ko_optax.stochastic_collision(
        5.0, mode='hard', cell_size=2),
    'diffusion': lambda: ko_optax.thermal_diffusion(1e-2, key=1),
    'ko-hard': lambda: ko_optax.ko(1e-2, collision='hard', temperature=1e-4),
    'ko-velocity': lambda: ko_optax.ko(1e-2, base='sgd', collide_on='velocity',
                                       collision_rate=1.0),
}


@pytest.mark.parametrize('path', list(EDGE_PATHS))
def test_edge_cases_stay_finite_on_every_path(path):
  tx = EDGE_PATHS[path]()
  out, _ = jax.jit(tx.update)(EDGE_GRADS, tx.init(EDGE_PARAMS), EDGE_PARAMS)
  for name, leaf in out.items():
    assert leaf.shape == EDGE_GRADS[name].shape
    assert np.all(np.isfinite(leaf)), name
  if path.startswith(('soft', 'hard')):
    # One particle alone, and zero gradients, do not collide.
    np.testing.assert_array_equal(out['n1'], EDGE_GRADS['n1'])
    np.testing.assert_array_equal(out['zero'], 0.0)


def _pairs_only(w, g, k):
  assert g.shape[-1] >= 2, 'collide called without a pair'
  return hard_lib.collide_adjacent_pairs(w, g, 0.7, k, length_scale=20.0)


def test_hard_in_cells_with_one_particle_per_block_is_identity():
  # cell_groups = N leaves every particle alone in its block: no pair, so
  # nothing collides and ``collide`` is not called (it used to get zero
  # pairs, and the hard collision failed on a max over them).
  w = jnp.asarray(systems.normal((3, 2), 17))
  g = jnp.asarray(systems.normal((3, 2), 18))
  new = jax.jit(cells.collide_in_cells, static_argnames=(
      'collide', 'cell_size', 'groups', 'pairs'))(
          w, g, jax.random.key(0), _pairs_only, cell_size=1, groups=2,
          pairs=True)
  np.testing.assert_array_equal(new, g)
  params = {'head': jnp.asarray(systems.normal((4, 2), 19))}
  grads = {'head': jnp.asarray(systems.normal((4, 2), 20))}
  tx = ko_optax.stochastic_collision(0.1, mode='hard', cell_size=1,
                                     cell_groups=2)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_array_equal(out['head'], grads['head'])


# -- any magnitude and dtype; a poisoned neuron ------------------------------

case = dict(shape=st.sampled_from(systems.SHAPES),
            dtype=st.sampled_from(systems.DTYPES),
            mode=st.sampled_from(MODES), exponent=st.integers(-30, 30),
            rate=st.floats(0.1, 3.0))


@settings(max_examples=3, deadline=None, derandomize=True)
@given(data=st.data(), **case)
def test_finite_in_finite_out_and_a_poisoned_neuron_stays_put(
    data, shape, dtype, mode, exponent, rate):
  w, g, _ = systems.draw(data, shape, dtype, exponent)
  collide = systems.traced_collider(mode)
  out = np.asarray(collide(w, g, rate).astype(jnp.complex64))
  assert out.dtype == np.complex64 and np.isfinite(out).all()
  assert collide(w, g, rate).dtype == jnp.dtype(dtype)
  bad = data.draw(st.integers(0, shape[1] - 1), label='poisoned neuron')
  poisoned = g.at[0, bad].set(jnp.nan)
  out = np.asarray(collide(w, poisoned, rate).astype(jnp.complex64))
  np.testing.assert_array_equal(
      out[:, bad], np.asarray(poisoned[:, bad].astype(jnp.complex64)))
  assert np.isfinite(np.delete(out, bad, axis=1)).all()


CASES = [('soft', dict(normalization='mean')),
         ('soft', dict(normalization='norm')),
         ('soft', dict(normalization='similarity')),
         ('soft', dict(normalization='norm', cell_size=2)),
         ('hard', {}), ('hard', dict(cell_size=2))]


@pytest.mark.parametrize('mode,kw', CASES)
def test_poisoned_neurons_do_not_spread_and_collisions_are_scale_safe(
    mode, kw):
  w, g = systems.keyed(n=8)
  # Neuron 2: a NaN in its gradient; neuron 4: an infinite weight.
  bad = [2, 4]
  g_bad = g.at[1, 2].set(jnp.nan)
  w_bad = w.at[0, 4].set(jnp.inf)
  out = systems.collide(mode, w_bad, g_bad, **kw)
  np.testing.assert_array_equal(out[:, bad], np.asarray(g_bad[:, bad]))
  others = np.delete(out, bad, axis=1)
  assert np.isfinite(others).all()
  # The others still collide among themselves.
  assert not np.array_equal(others, np.delete(np.asarray(g), bad, axis=1))
  if kw.get('normalization') == 'mean' and 'cell_size' not in kw:
    # ... exactly as they would without the poisoned neurons.
    alone = np.asarray(ko_optax.soft_collision(
        np.delete(np.asarray(w), bad, axis=1),
        np.delete(np.asarray(g), bad, axis=1), 0.9, **kw))
    np.testing.assert_allclose(others, alone, rtol=1e-5, atol=1e-6)
  # Scale safety: 2**66 ~ 7.4e19, whose square overflows float32. Scaling
  # the gradients by a power of 2 scales the result by it exactly (no NaN,
  # no lost collision).
  big = 2.0**66
  clean = systems.collide(mode, w, g, **kw)
  np.testing.assert_array_equal(systems.collide(mode, w, g * big, **kw),
                                clean * big)
  np.testing.assert_array_equal(systems.collide(mode, w, g / big, **kw),
                                clean / big)
  # Weights whose squares overflow: finite, and the neurons pass through.
  assert np.isfinite(systems.collide(mode, w * big, g, **kw)).all()
  assert np.isfinite(systems.collide(mode, w, g.at[0, 0].set(1.8e19),
                                     **kw)).all()


def test_no_overflow_near_the_dtype_maximum():
  n, d = 6, 5
  w, g = systems.keyed(2, n=n, d=d)
  g = jnp.sign(g) * 3e38      # every result entry could overflow

  @jax.jit
  def both(w, g):
    soft = ko_optax.soft_collision(w, g, 1.0, normalization='norm')
    order = jnp.arange(n)
    u = jnp.zeros(n // 2)                 # every pair collides
    directions = jnp.ones((n // 2, d)) / np.sqrt(d)   # rows
    hard = hard_lib.collide_in_pairing(
        w, g, 1.0, order, u, directions, order,  # identity: its own inverse
        length_scale=1e30)
    return soft, hard
  soft, hard = both(w, g)
  assert np.isfinite(soft).all() and np.isfinite(hard).all()


# -- a bad rate or temperature -----------------------------------------------

BAD = (np.nan, -0.1, np.inf)


@pytest.mark.parametrize('mode', MODES)
def test_a_bad_runtime_value_acts_the_same_with_and_without_jit(mode):
  tx = optax.inject_hyperparams(ko_optax.ko, static_args=('collision',))(
      1e-2, collision=mode, collision_rate=0.1, temperature=1e-4)
  w, g = systems.keyed()
  params = {'w': w, 'b': jnp.ones(3)}
  grads = {'w': g, 'b': jnp.ones(3)}
  state = tx.init(params)

  def update(rate, temperature):
    hyper = dict(state.hyperparams, collision_rate=rate,
                 temperature=temperature)
    return tx.update(grads, state._replace(hyperparams=hyper), params)[0]

  jitted = jax.jit(update)   # one compile for every value below
  values = [(bad, 1e-4) for bad in BAD] + [(0.1, bad) for bad in BAD[:2]]
  for rate, temperature in values:
    rate, temperature = jnp.float32(rate), jnp.float32(temperature)
    for out in (update(rate, temperature), jitted(rate, temperature)):
      assert np.isnan(out['w']).all(), (rate, temperature)
  assert np.isfinite(jitted(jnp.float32(0.1), jnp.float32(1e-4))['w']).all()


def test_apply_if_finite_after_the_collision_skips_and_counts_a_bad_rate():
  # optax.apply_if_finite checks the updates it is given: placed after the
  # collision it sees the NaN of a bad rate, skips the step (the base's
  # state stays finite) and counts it.
  rate = lambda count: jnp.where(count == 1, jnp.nan, 0.1)
  tx = optax.chain(ko_optax.stochastic_collision(rate, mode='hard'),
                   optax.apply_if_finite(optax.adam(1e-2), 3))
  w, g = systems.keyed()
  params = {'w': w}
  state = tx.init(params)
  step = jax.jit(tx.update)
  u0, state = step({'w': g}, state, params)
  assert np.isfinite(u0['w']).all()
  u1, state = step({'w': g}, state, params)
  assert int(state[1].notfinite_count) == 1
  np.testing.assert_array_equal(u1['w'], np.zeros_like(u1['w']))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state[1]))


def test_apply_if_finite_around_ko_skips_bad_steps():
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'dense': {'kernel': jax.random.normal(k1, (5, 8)),
                      'bias': jnp.zeros(8)},
            'conv': {'kernel': jax.random.normal(k2, (3, 3, 2, 4))}}
  tx = optax.apply_if_finite(ko_optax.ko(1e-2), max_consecutive_errors=3)
  state = tx.init(params)
  bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
  updates, new_state = jax.jit(tx.update)(bad, state, params)
  assert int(new_state.notfinite_count) == 1
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, jnp.zeros_like(u))
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
