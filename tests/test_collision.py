"""The collision step: soft formula, hard conservation laws, errors, dtypes."""

import functools

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax
from ko_optax import _random as random_lib
from ko_optax import collision
import reference


def _random(shape, seed, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * (
      scale)


def _apply(tx, grads, params, steps=1):
  state = tx.init(params)
  for _ in range(steps):
    grads, state = tx.update(grads, state, params)
  return grads, state


# -- soft collision against a float64 reference ------------------------------


@pytest.mark.parametrize('shape', [(6, 7), (3, 3, 2, 6), (9, 1), (5, 2)])
@pytest.mark.parametrize('threshold, include_self, normalization', [
    (0.0, False, None), (0.0, True, None), (-1.0, False, None),
    (0.2, False, None), (0.0, False, 'mean'), (0.0, True, 'mean'),
    (0.0, False, 'norm'), (0.0, False, 'similarity'),
    (0.0, True, 'similarity'),
])
def test_soft_matches_reference(shape, threshold, include_self, normalization):
  w, g = _random(shape, 0), _random(shape, 1)
  # Make a few particles alike so that positive pairs exist.
  if shape[-1] > 1:
    w[..., 1] = w[..., 0] + 0.1 * w[..., 1]
    g[..., 1] = g[..., 0] + 0.1 * g[..., 1]
  tx = ko_optax.stochastic_collision(
      0.3, threshold=threshold, include_self=include_self,
      normalization=normalization)
  out, _ = _apply(tx, {'k': jnp.asarray(g)}, {'k': jnp.asarray(w)})
  want = reference.soft_collision(w, g, 0.3, threshold, include_self,
                                  normalization)
  np.testing.assert_allclose(out['k'], want, rtol=2e-5, atol=2e-6)


def test_soft_other_particle_axis_matches_reference():
  w, g = _random((6, 4, 3), 2), _random((6, 4, 3), 3)
  tx = ko_optax.stochastic_collision(0.5, particle_axes=0)
  out, _ = _apply(tx, jnp.asarray(g), jnp.asarray(w))
  want = reference.soft_collision(w, g, 0.5, axis=0)
  np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-6)


_jit_soft = jax.jit(collision.soft_collision)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    d=st.integers(1, 6), n=st.integers(1, 7),
    rate=st.floats(0.0, 2.0), seed=st.integers(0, 2**16),
    zero_rows=st.booleans())
def test_soft_property_matches_reference(d, n, rate, seed, zero_rows):
  w, g = _random((d, n), seed), _random((d, n), seed + 1)
  if zero_rows:
    w[:, 0] = 0.0
    g[:, -1] = 0.0
  # Jitted (rate traced): one compile per shape, not one per operation.
  out = _jit_soft(jnp.asarray(w), jnp.asarray(g), rate)
  want = reference.soft_collision(w.T, g.T, rate, axis=0).T
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_soft_zero_rows_and_zero_grads_stay_finite():
  w = np.zeros((4, 5), np.float32)
  w[:, 2] = 1.0
  g = np.zeros((4, 5), np.float32)
  for ww, gg in [(w, g), (w, _random((4, 5), 0)), (np.zeros_like(w), g)]:
    for mode in ('soft', 'hard'):
      out, _ = _apply(ko_optax.stochastic_collision(0.5, mode=mode),
                      jnp.asarray(gg), jnp.asarray(ww))
      assert np.all(np.isfinite(out)), mode
  out, _ = _apply(ko_optax.stochastic_collision(0.5), jnp.zeros((4, 5)),
                  jnp.asarray(w))
  np.testing.assert_array_equal(out, 0.0)


def test_soft_pushes_alike_particles_apart():
  w = np.array([[1.0, 1.0, 0.0], [0.0, 0.1, 1.0]], np.float32)
  g = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
  out = np.asarray(collision.soft_collision(w, g, 0.5))
  # Particles 0 and 1 move alike and sit alike: each loses part of its
  # gradient along the other's; particle 2 is orthogonal and untouched.
  assert out[0, 0] < g[0, 0] and out[0, 1] < g[0, 1]
  np.testing.assert_allclose(out[:, 2], g[:, 2])


def test_rate_zero_is_identity_bitwise():
  w, g = _random((5, 8), 0), _random((5, 8), 1)
  for mode in ('soft', 'hard'):
    out, _ = _apply(ko_optax.stochastic_collision(0.0, mode=mode),
                    jnp.asarray(g), jnp.asarray(w), steps=3)
    np.testing.assert_array_equal(out, g)


def test_non_particle_leaves_pass_through():
  params = {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}
  grads = {'w': jnp.ones((3, 4)), 'b': jnp.full(4, 7.0)}
  for mode in ('soft', 'hard'):
    out, _ = _apply(ko_optax.stochastic_collision(1.0, mode=mode), grads,
                    params)
    assert out['b'] is grads['b']


def test_mask_and_tree_particle_axes_skip_leaves():
  params = {'a': jnp.ones((3, 4)) + jnp.eye(3, 4), 'b': jnp.ones((3, 4))}
  grads = jax.tree.map(jnp.ones_like, params)
  for kwargs in [dict(mask={'a': True, 'b': False}),
                 dict(particle_axes={'a': -1, 'b': None}),
                 dict(mask=lambda u: {'a': True, 'b': False})]:
    out, _ = _apply(ko_optax.stochastic_collision(0.5, **kwargs), grads,
                    params)
    assert out['b'] is grads['b']
    assert not np.allclose(out['a'], grads['a'])


# -- hard collision -----------------------------------------------------------


def _pairs_of(before, after):
  """Columns changed by a hard collision, grouped into the colliding pairs."""
  changed = np.flatnonzero(np.any(before != after, axis=0))
  return changed


@pytest.fixture(scope='module')
def hard_step():
  @functools.partial(jax.jit, static_argnames=('n', 'd'))
  def step(key, rate, n=40, d=6):
    kw, kg = jax.random.split(jax.random.key(123))
    w = jax.random.normal(kw, (d, n))
    g = jax.random.normal(kg, (d, n))
    systems = [random_lib.Systems(1, n, d)]
    bits = random_lib.random_words(key, (random_lib.hard_words(systems),))
    order = random_lib.hard_draws(bits, systems)[0].order[0]
    new = collision.hard_collision(w, g, rate, key, length_scale=20.0)
    return w, g, new, order
  return step


def test_hard_conserves_momentum_and_energy_per_pair(hard_step):
  w, g, new, order = map(np.asarray, hard_step(jax.random.key(0), 1.0))
  m = len(order) // 2
  collided = 0
  # The pairing: the random order cut into neighbouring pairs.
  changed = _pairs_of(g, new)
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


def test_hard_is_deterministic_per_key_and_varies_with_key(hard_step):
  a = hard_step(jax.random.key(1), 1.0)[2]
  b = hard_step(jax.random.key(1), 1.0)[2]
  c = hard_step(jax.random.key(2), 1.0)[2]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_hard_share_of_colliding_particles_grows_with_rate(hard_step):
  shares = []
  for rate in (0.05, 0.3, 1.0, 10.0):
    changed = []
    for seed in range(5):
      _, g, new, _ = map(np.asarray, hard_step(jax.random.key(seed), rate))
      changed.append(np.any(g != new, axis=0).mean())
    shares.append(np.mean(changed))
  assert shares == sorted(shares), shares
  assert shares[0] < 0.3 and shares[-1] > 0.5, shares


def test_hard_pairing_changes_between_steps():
  w = jnp.asarray(_random((4, 16), 0))
  g = jnp.asarray(_random((4, 16), 1))
  tx = ko_optax.stochastic_collision(100.0, mode='hard', key=3,
                                     length_scale=1e6)
  state = tx.init(w)
  partners = []
  for _ in range(3):
    new, state = tx.update(g, state, w)
    new = np.asarray(new)
    # With rate 100 every drawn pair collides: momentum pairs are found by
    # matching column sums.
    sums = new + 0.0
    pairs = set()
    for i in range(16):
      for j in range(i + 1, 16):
        if np.allclose(sums[:, i] + sums[:, j], g[:, i] + g[:, j], atol=1e-5):
          pairs.add((i, j))
    partners.append(frozenset(pairs))
  assert len(partners[0]) == 8
  assert len(set(partners)) > 1


@pytest.mark.parametrize('n', [1, 2, 3, 7])
def test_small_and_odd_particle_counts(n):
  w = jnp.asarray(_random((5, n), 0))
  g = jnp.asarray(_random((5, n), 1))
  for mode in ('soft', 'hard'):
    out, _ = _apply(ko_optax.stochastic_collision(5.0, mode=mode), g, w)
    assert out.shape == g.shape and np.all(np.isfinite(out))
    if n == 1:
      np.testing.assert_array_equal(out, g)
  # With odd N one particle sits out: at most N - 1 change.
  out, _ = _apply(ko_optax.stochastic_collision(100.0, mode='hard',
                                                length_scale=1e6), g, w)
  assert np.sum(np.any(np.asarray(out) != np.asarray(g), 0)) <= n - n % 2


def _shapes_in_jaxpr(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield tuple(getattr(v.aval, 'shape', ()))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _shapes_in_jaxpr(sub)


def test_hard_forms_no_n_by_n_array():
  n, d = 64, 3
  params = {'w': jnp.ones((d, n))}
  tx = ko_optax.stochastic_collision(0.5, mode='hard')
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(tx.update)(params, state, params).jaxpr
  shapes = list(_shapes_in_jaxpr(jaxpr))
  assert shapes
  assert all(np.prod(s) < n * n for s in shapes), max(shapes, key=np.prod)
  soft = ko_optax.stochastic_collision(0.5, mode='soft')
  jaxpr = jax.make_jaxpr(soft.update)(params, soft.init(params), params).jaxpr
  assert (n, n) in set(_shapes_in_jaxpr(jaxpr))


# -- dtypes ------------------------------------------------------------------


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_leaves_keep_their_dtype(dtype, mode):
  params = {'w': jnp.asarray(_random((6, 8), 0), dtype),
            'b': jnp.zeros(8, dtype)}
  grads = jax.tree.map(lambda x: jnp.ones_like(x) * 1e-3, params)
  tx = ko_optax.stochastic_collision(0.5, mode=mode)
  out, state = jax.jit(tx.update)(grads, tx.init(params), params)
  chex.assert_trees_all_equal_dtypes(out, grads)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32)))
             for x in jax.tree.leaves(out))


def test_bf16_soft_matches_float32_computation():
  w32, g32 = _random((6, 8), 0), _random((6, 8), 1)
  w16, g16 = jnp.asarray(w32, jnp.bfloat16), jnp.asarray(g32, jnp.bfloat16)
  out16, _ = _apply(ko_optax.stochastic_collision(0.3), g16, w16)
  ref = reference.soft_collision(np.asarray(w16, np.float32),
                                 np.asarray(g16, np.float32), 0.3)
  np.testing.assert_allclose(np.asarray(out16, np.float32), ref, rtol=1e-2,
                             atol=1e-2)


def test_integer_gradients_are_rejected():
  with pytest.raises(TypeError, match='floating-point'):
    _apply(ko_optax.stochastic_collision(0.1), jnp.ones((3, 3), jnp.int32),
           jnp.ones((3, 3), jnp.int32))


# -- errors ------------------------------------------------------------------


def test_missing_params_raises():
  tx = ko_optax.stochastic_collision(0.1)
  g = jnp.ones((3, 3))
  with pytest.raises(ValueError, match='needs the current params'):
    tx.update(g, tx.init(g))


def test_mismatched_params_raise():
  tx = ko_optax.stochastic_collision(0.1)
  g = {'a': jnp.ones((3, 3))}
  with pytest.raises(ValueError, match='params must have the same tree'):
    tx.update(g, tx.init(g), {'b': jnp.ones((3, 3))})
  with pytest.raises(ValueError, match='different shapes'):
    tx.update(g, tx.init(g), {'a': jnp.ones((3, 4))})


@pytest.mark.parametrize('kwargs, match', [
    (dict(collision_rate=-0.1), 'collision_rate must be >= 0'),
    (dict(collision_rate=0.1, mode='elastic'), 'mode must be one of'),
    (dict(collision_rate=0.1, normalization='l2'), 'normalization must be'),
    (dict(collision_rate=0.1, length_scale=0.0), 'length_scale must be > 0'),
    (dict(collision_rate=0.1, cell_size=0), 'cell_size must be'),
    (dict(collision_rate=0.1, key=jax.random.PRNGKey(0)), 'legacy'),
])
def test_bad_arguments_name_themselves(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    tx = ko_optax.stochastic_collision(**kwargs)
    tx.init(jnp.ones((2, 2)))


def test_particle_axes_out_of_range_raises_at_update():
  tx = ko_optax.stochastic_collision(0.1, particle_axes=2)
  g = jnp.ones((3, 3))
  with pytest.raises(ValueError, match='out of range'):
    tx.update(g, tx.init(g), g)


def test_schedule_is_evaluated_at_the_step_count():
  w = jnp.asarray(_random((4, 6), 0))
  g = jnp.asarray(_random((4, 6), 1))
  tx = ko_optax.stochastic_collision(lambda count: 0.1 * count)
  state = tx.init(w)
  first, state = tx.update(g, state, w)
  second, state = tx.update(g, state, w)
  np.testing.assert_array_equal(first, g)    # rate(0) = 0
  np.testing.assert_allclose(second, reference.soft_collision(w, g, 0.1),
                             rtol=2e-5, atol=2e-6)
  assert int(state.count) == 2


def test_similarity_normalization_grows_with_similarity():
  # 'norm' pushes every particle by exactly rate * |g_i|, alike or not;
  # 'similarity' pushes a condensed layer as 'norm' does (its repulsion is
  # the mean of N - 1 equal velocities) and a random layer much less.
  n, d, rate = 16, 64, 0.1
  rng = np.random.default_rng(0)
  g_same = jnp.ones((d, n))
  w_same = jnp.ones((d, n))
  for norm in ('norm', 'similarity'):
    out = collision.soft_collision(w_same, g_same, rate, normalization=norm)
    np.testing.assert_allclose(out, 0.9 * g_same, rtol=1e-6)
  w = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
  change = {}
  for norm in ('norm', 'similarity'):
    out = collision.soft_collision(w, g, rate, normalization=norm)
    change[norm] = np.linalg.norm(out - g, axis=0) / np.linalg.norm(g, axis=0)
  np.testing.assert_allclose(change['norm'], rate, rtol=1e-5)
  assert change['similarity'].max() < 0.2 * rate


@pytest.mark.parametrize('mode', ['hard', 'soft'])
def test_eager_update_runs_one_compiled_collision(mode):
  # Called outside any trace, the update runs the collision as one compiled
  # program (cached by layout and settings), not operation by operation:
  # its first call compiles a handful of programs (the collision and a few
  # small operations around it; 173 (hard) and 59 (soft) when every
  # operation compiled on its own), a later one none, also when
  # inject_hyperparams rebuilds the transformation at every call. The
  # result is the jitted update's.
  compiles = []
  def listener(name, secs, **kwargs):
    del secs, kwargs
    if name == '/jax/core/compile/backend_compile_duration':
      compiles.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # Shapes no other test uses, so that no earlier compile is reused.
    params = {'w': _random((5, 11), 40), 'v': _random((3, 11, 6), 41),
              'b': jnp.ones(6)}
    grads = jax.tree.map(lambda x: 0.5 * x + 0.1, params)
    spec = {'w': -1, 'v': ko_optax.ParticleSpec(-1, 0), 'b': None}
    tx = optax.inject_hyperparams(collision.stochastic_collision,
                                  static_args=('mode', 'particle_axes'))(
        0.5, mode=mode, key=3, particle_axes=spec)
    state = tx.init(params)
    del compiles[:]
    eager, state_1 = tx.update(grads, state, params)
    assert 0 < len(compiles) <= 10, len(compiles)
    del compiles[:]
    tx.update(grads, state_1, params)
    assert not compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  jitted, _ = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)
