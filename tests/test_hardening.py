"""Bad values, early errors and complex parameters (issue 11).

Each test here failed before the "Bad values" policy of docs/method.md and
passes with it. Most run eagerly on small leaves: no compile.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax
from ko_optax.collision import hard as hard_lib

N, D = 6, 5


def _system(seed=0, n=N, d=D):
  kw, kg = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kw, (d, n)), jax.random.normal(kg, (d, n)))


@functools.lru_cache(maxsize=None)
def _collider(mode, rate, items):
  """A jitted stochastic_collision update of one (D, N) leaf: one compile
  per configuration and shape, reused for every input of that shape."""
  tx = ko_optax.stochastic_collision(rate, mode=mode, key=3, **dict(items))

  @jax.jit
  def collide(w, g):
    p = {'w': w}
    return tx.update({'w': g}, tx.init(p), p)[0]['w']
  return collide


def _collide(mode, w, g, rate=0.9, **kw):
  return np.asarray(_collider(mode, rate, tuple(sorted(kw.items())))(w, g))


CASES = [('soft', dict(normalization='mean')),
         ('soft', dict(normalization='norm')),
         ('soft', dict(normalization='similarity')),
         ('soft', dict(normalization='norm', cell_size=2)),
         ('hard', {}), ('hard', dict(cell_size=2))]


@pytest.mark.parametrize('mode,kw', CASES)
def test_poisoned_neurons_do_not_spread_and_collisions_are_scale_safe(
    mode, kw):
  w, g = _system(n=8)
  # Neuron 2: a NaN in its gradient; neuron 4: an infinite weight.
  bad = [2, 4]
  g_bad = g.at[1, 2].set(jnp.nan)
  w_bad = w.at[0, 4].set(jnp.inf)
  out = _collide(mode, w_bad, g_bad, **kw)
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
  clean = _collide(mode, w, g, **kw)
  np.testing.assert_array_equal(_collide(mode, w, g * big, **kw),
                                clean * big)
  np.testing.assert_array_equal(_collide(mode, w, g / big, **kw),
                                clean / big)
  # Weights whose squares overflow: finite, and the neurons pass through.
  assert np.isfinite(_collide(mode, w * big, g, **kw)).all()
  assert np.isfinite(_collide(mode, w, g.at[0, 0].set(1.8e19), **kw)).all()


def test_no_overflow_near_the_dtype_maximum():
  w, g = _system(2)
  g = jnp.sign(g) * 3e38      # every result entry could overflow

  @jax.jit
  def both(w, g):
    soft = ko_optax.soft_collision(w, g, 1.0, normalization='norm')
    order = jnp.arange(N)
    u = jnp.zeros(N // 2)                 # every pair collides
    directions = jnp.ones((N // 2, D)) / np.sqrt(D)   # rows
    hard = hard_lib.collide_in_pairing(
        w, g, 1.0, order, u, directions, order,  # identity: its own inverse
        length_scale=1e30)
    return soft, hard
  soft, hard = both(w, g)
  assert np.isfinite(soft).all() and np.isfinite(hard).all()


BAD = (np.nan, -0.1, np.inf)


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_a_bad_runtime_value_acts_the_same_with_and_without_jit(mode):
  tx = optax.inject_hyperparams(ko_optax.ko, static_args=('collision',))(
      1e-2, collision=mode, collision_rate=0.1, temperature=1e-4)
  w, g = _system()
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
  w, g = _system()
  params = {'w': w}
  state = tx.init(params)
  step = jax.jit(tx.update)
  u0, state = step({'w': g}, state, params)
  assert np.isfinite(u0['w']).all()
  u1, state = step({'w': g}, state, params)
  assert int(state[1].notfinite_count) == 1
  np.testing.assert_array_equal(u1['w'], np.zeros_like(u1['w']))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state[1]))


@pytest.mark.parametrize('make', [
    lambda: ko_optax.ko(1e-3, collision_rate=np.inf),
    lambda: ko_optax.ko(1e-3, temperature=np.inf),
    lambda: ko_optax.stochastic_collision(np.inf),
    lambda: ko_optax.thermal_diffusion(np.inf),
])
def test_an_infinite_rate_is_rejected(make):
  with pytest.raises(ValueError, match='must be finite'):
    make()


@pytest.mark.parametrize('make,name', [
    (lambda: ko_optax.ko(1e-3, collision_rate='hot'), 'collision_rate'),
    (lambda: ko_optax.ko(1e-3, collision_rate=None), 'collision_rate'),
    (lambda: ko_optax.ko(1e-3, collision=None, collision_rate='hot'),
     'collision_rate'),
    (lambda: ko_optax.ko(1e-3, temperature='warm'), 'temperature'),
    (lambda: ko_optax.ko('fast'), 'learning_rate'),
    (lambda: ko_optax.ko(1e-3, b1='0.9'), 'b1'),
    (lambda: ko_optax.ko(1e-3, momentum='high', base='sgd'), 'momentum'),
    (lambda: ko_optax.ko(1e-3, threshold='0'), 'threshold'),
    (lambda: ko_optax.ko(1e-3, length_scale=None), 'length_scale'),
    (lambda: ko_optax.ko(1e-3, collision_rate=jnp.ones(3)), 'collision_rate'),
    (lambda: ko_optax.stochastic_collision('hot'), 'collision_rate'),
    (lambda: ko_optax.thermal_diffusion(None), 'temperature'),
    (lambda: ko_optax.kinetic_advection(eps='tiny'), 'eps'),
])
def test_type_errors_come_at_construction_and_name_the_argument(make, name):
  with pytest.raises(TypeError, match=name):
    make()


def test_a_huge_all_pairs_soft_kernel_warns_once_at_trace_time():
  tx = ko_optax.ko(1e-3, collision='soft')
  params = {'head': {'kernel': jax.ShapeDtypeStruct((8, 16384), jnp.float32)}}
  state = jax.eval_shape(tx.init, params)
  with pytest.warns(UserWarning, match=r"\['head'\]\['kernel'\].*1\.0 GiB"
                    r".*cell_size=.*collision=\"hard\""):
    jax.eval_shape(tx.update, params, state, params)
  cells = ko_optax.ko(1e-3, collision='soft', cell_size=256)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    jax.eval_shape(cells.update, params, jax.eval_shape(cells.init, params),
                   params)


def _complex_system(seed=0):
  w, g = _system(seed)
  w2, g2 = _system(seed + 10)
  return (w + 1j * w2).astype(jnp.complex64), (g + 1j * g2).astype(
      jnp.complex64)


def test_complex_ko_off_is_adam_bit_for_bit():
  w, g = _complex_system()
  params = {'w': w, 'b': w[0]}
  grads = {'w': g, 'b': g[0]}
  zero = lambda count: 0.0 * count   # traced zeros: both branches compile
  opts = [ko_optax.ko(1e-2, collision_rate=zero, temperature=zero),
          optax.adam(1e-2)]
  outs = []
  for tx in opts:
    state, p = tx.init(params), params
    step = jax.jit(tx.update)
    for _ in range(3):
      u, state = step(grads, state, p)
      p = optax.apply_updates(p, u)
    outs.append(p)
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    assert a.dtype == jnp.complex64
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('cell_size', [None, 2])
def test_complex_hard_collisions_conserve_momentum_and_energy(cell_size):
  w, g = _complex_system(1)
  # No distance damping: the fastest pair (of each cell) surely collides.
  out = _collide('hard', w, g, rate=1.0, cell_size=cell_size,
                 length_scale=1e30)
  assert out.dtype == np.complex64
  assert not np.allclose(out, g)
  np.testing.assert_allclose(out.sum(-1), g.sum(-1), atol=1e-5)
  np.testing.assert_allclose(np.sum(np.abs(out)**2), np.sum(np.abs(g)**2),
                             rtol=1e-5)


def test_complex_soft_collision_is_the_real_view():
  w, g = _complex_system(2)
  real = lambda x: jnp.concatenate([x.real, x.imag], axis=0)   # R^{2D}
  out = _collide('soft', w, g, normalization='norm')
  ref = _collide('soft', real(w), real(g), normalization='norm')
  np.testing.assert_allclose(out.real, ref[:D], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.imag, ref[D:], rtol=1e-5, atol=1e-6)


def test_complex_diffusion_kicks_both_parts():
  tx = ko_optax.thermal_diffusion(0.5, key=0)
  g = jnp.zeros(20_000, jnp.complex64)
  noisy, _ = tx.update(g, tx.init(g))
  assert noisy.dtype == jnp.complex64
  assert abs(float(noisy.real.var()) - 1.0) < 0.05   # 2 T per part
  assert abs(float(noisy.imag.var()) - 1.0) < 0.05


def test_complex_velocity_collision_runs():
  w, g = _complex_system(3)
  tx = ko_optax.ko(1e-2, base='sgd', collision='hard', collision_rate=1.0,
                   collide_on='velocity')
  u, state = tx.update({'w': g}, tx.init({'w': w}), {'w': w})
  assert u['w'].dtype == jnp.complex64 and np.isfinite(u['w']).all()
  # the collided momentum buffer conserves the layer's momentum
  np.testing.assert_allclose(state[0].base.trace['w'].sum(-1),
                             -u['w'].sum(-1) / 1e-2, rtol=1e-5)


def test_integer_leaves_are_rejected_naming_the_leaf():
  params = {'layer': {'kernel': jnp.ones((4, 3), jnp.int32)}}
  tx = ko_optax.ko(1e-3, mask=True, temperature=1e-8, collision=None)
  with pytest.raises(TypeError, match=r"\['layer'\]\['kernel'\]"):
    tx.update(params, tx.init(params), params)


def test_mu_dtype_sets_the_sgd_momentum_buffer():
  params = {'w': jnp.ones((4, 3))}
  for collide_on in ('gradient', 'velocity'):
    tx = ko_optax.ko(1e-3, base='sgd', mu_dtype=jnp.bfloat16,
                     collide_on=collide_on)
    _, state = jax.eval_shape(tx.update, params, tx.init(params), params)
    traces = [x for x in jax.tree.leaves(state) if x.shape == (4, 3)]
    assert traces and all(x.dtype == jnp.bfloat16 for x in traces)
  with pytest.raises(ValueError, match='mu_dtype'):
    ko_optax.ko(1e-3, base='sgd', momentum=None, mu_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match='mu_dtype'):
    ko_optax.ko(1e-3, base=optax.scale_by_lion(), mu_dtype=jnp.bfloat16)


@pytest.mark.parametrize('make,name', [
    (lambda: ko_optax.ko(1e-3, cell_groups=2), 'cell_groups'),
    (lambda: ko_optax.stochastic_collision(0.1, cell_groups=2), 'cell_groups'),
    (lambda: ko_optax.ko(1e-3, collision=None, normalization='mean'),
     'normalization'),
    (lambda: ko_optax.ko(1e-3, collision=None, collide_on='velocity'),
     'collide_on'),
])
def test_settings_that_do_nothing_warn(make, name):
  with pytest.warns(UserWarning, match=f'{name}=.* has no effect'):
    make()


def test_a_nan_threshold_is_rejected():
  with pytest.raises(ValueError, match='threshold'):
    ko_optax.ko(1e-3, collision='soft', threshold=float('nan'))
  with pytest.raises(ValueError, match='threshold'):
    ko_optax.stochastic_collision(0.1, threshold=float('nan'))


@pytest.mark.parametrize('base', [optax.adam(1e-3), optax.sgd(0.1)])
def test_a_base_with_a_learning_rate_is_rejected(base):
  with pytest.raises(ValueError, match='complete optimizer'):
    ko_optax.ko(1e-3, base=base)
  ko_optax.ko(1e-3, base=optax.scale_by_adam())   # the right form


def test_a_bool_mask_reaches_the_diffusion():
  params = {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)}
  for mask, noisy in ((True, True), (False, False)):
    tx = ko_optax.ko(1e-3, collision=None, mask=mask, temperature=1e-2)
    u, _ = tx.update(params, tx.init(params), params)
    adam, _ = optax.adam(1e-3).update(params, optax.adam(1e-3).init(params))
    same = all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(u), jax.tree.leaves(adam)))
    assert same != noisy


def test_two_ko_instances_in_multi_transform_draw_different_numbers():
  w, g = _system()
  params = {'a': w, 'b': w}
  grads = {'a': g, 'b': g}
  for kw in (dict(collision='hard', collision_rate=1.0),
             dict(collision=None, temperature=1.0)):
    tx = optax.multi_transform({'a': ko_optax.ko(1e-2, **kw),
                                'b': ko_optax.ko(1e-2, **kw)},
                               {'a': 'a', 'b': 'b'})
    u, _ = tx.update(grads, tx.init(params), params)
    assert not np.array_equal(u['a'], u['b'])
