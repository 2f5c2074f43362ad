"""ko(): exactness against its base optimizer and life inside optax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
      'dense': {'kernel': jax.random.normal(k1, (5, 8)),
                'bias': jnp.zeros(8)},
      'conv': {'kernel': jax.random.normal(k2, (3, 3, 2, 4))},
  }


PARAMS = _params()


def _loss(params, step):
  leaves = jax.tree.leaves(params)
  return sum(jnp.sum(jnp.sin(x * (1.0 + 0.1 * step)) ** 2) for x in leaves)


def _run(tx, steps=4, params=PARAMS, jit=True):
  """Runs ``steps`` updates; returns the list of update trees and the state."""
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  out = []
  for step in range(steps):
    grads = jax.grad(_loss)(params, step)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out, state


def _member(tree, i):
  """Member ``i`` of a vmapped ensemble."""
  return jax.tree.map(lambda x: x[i], tree)


def _assert_bitwise(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- exactly its base optimizer when KO is off -------------------------------


@pytest.mark.parametrize('off', [
    dict(collision=None),
    dict(collision_rate=0.0),
    dict(collision_rate=jnp.asarray(0.0)),          # computed, not skipped
    dict(collision='hard', collision_rate=jnp.asarray(0.0),
         temperature=jnp.asarray(0.0)),
])
def test_adam_bitwise(off):
  ko, _ = _run(ko_optax.ko(1e-2, b1=0.8, b2=0.99, eps=1e-7, **off))
  adam, _ = _run(optax.adam(1e-2, b1=0.8, b2=0.99, eps=1e-7))
  _assert_bitwise(ko, adam)


@pytest.mark.parametrize('momentum, nesterov', [(0.9, False), (0.8, True),
                                                (None, False)])
def test_sgd_bitwise(momentum, nesterov):
  ko, _ = _run(ko_optax.ko(0.05, base='sgd', momentum=momentum,
                           nesterov=nesterov, collision_rate=0.0))
  sgd, _ = _run(optax.sgd(0.05, momentum=momentum, nesterov=nesterov))
  _assert_bitwise(ko, sgd)


def test_adamw_bitwise():
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  ko, _ = _run(ko_optax.ko(1e-2, collision=None, weight_decay=0.1,
                           weight_decay_mask=mask))
  adamw, _ = _run(optax.adamw(1e-2, weight_decay=0.1, mask=mask))
  _assert_bitwise(ko, adamw)


def test_schedule_learning_rate_bitwise():
  sched = optax.linear_schedule(1e-2, 1e-3, 4)
  ko, _ = _run(ko_optax.ko(sched, collision=None))
  adam, _ = _run(optax.adam(sched))
  _assert_bitwise(ko, adam)


def test_custom_base_transformation():
  ko, _ = _run(ko_optax.ko(1e-2, base=optax.scale_by_lion(), collision=None))
  lion, _ = _run(optax.lion(1e-2, weight_decay=0.0))
  _assert_bitwise(ko, lion)


# -- KO on -------------------------------------------------------------------


@pytest.mark.parametrize('collision', ['soft', 'hard'])
def test_ko_changes_updates_and_stays_finite(collision):
  ko, _ = _run(ko_optax.ko(1e-2, collision=collision, collision_rate=1.0,
                           temperature=1e-6))
  adam, _ = _run(optax.adam(1e-2))
  assert not np.allclose(ko[-1]['dense']['kernel'],
                         adam[-1]['dense']['kernel'])
  # Biases do not collide, but they still get the diffusion noise.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(ko))


@pytest.mark.parametrize('collision', ['soft', 'hard'])
def test_jit_and_eager_agree(collision):
  tx = ko_optax.ko(1e-2, collision=collision, collision_rate=0.5,
                   temperature=1e-4, key=3)
  small = {'w': PARAMS['dense']['kernel'], 'b': PARAMS['dense']['bias']}
  jitted, _ = _run(tx, steps=2, jit=True, params=small)
  eager, _ = _run(tx, steps=2, jit=False, params=small)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-7)


def test_fixed_seed_is_deterministic_and_seeds_differ():
  make = lambda key: ko_optax.ko(1e-2, collision='hard', collision_rate=1.0,
                                 temperature=1e-3, key=key)
  tx = make(5)
  update = jax.jit(tx.update)     # the key enters through the state only
  grads = jax.grad(_loss)(PARAMS, 0)
  run = lambda state: update(grads, state, PARAMS)[0]
  _assert_bitwise(run(tx.init(PARAMS)), run(tx.init(PARAMS)))
  _assert_bitwise(run(tx.init(PARAMS)), run(make(jax.random.key(5)).init(
      PARAMS)))
  other = run(make(6).init(PARAMS))
  assert not np.allclose(run(tx.init(PARAMS))['dense']['kernel'],
                         other['dense']['kernel'])


def test_jitted_step_traces_once():
  tx = ko_optax.ko(1e-2, collision='hard', temperature=1e-4)
  traces = []

  @jax.jit
  def step(params, state, i):
    traces.append(None)
    grads = jax.grad(_loss)(params, i)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for i in range(4):
    params, state = step(params, state, i)
  assert len(traces) == 1


@pytest.mark.parametrize('collision', ['soft', 'hard'])
def test_converges_on_a_regression_problem(collision):
  x = jax.random.normal(jax.random.key(1), (64, 6))
  w_true = jax.random.normal(jax.random.key(2), (6, 4))
  y = x @ w_true
  loss = lambda p: jnp.mean((x @ p['w'] - y) ** 2)
  tx = ko_optax.ko(5e-2, collision=collision, collision_rate=0.1)
  params = {'w': jnp.zeros((6, 4)) + 1e-2}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(300):
    params, state = step(params, state)
  assert loss(params) < 1e-2 * loss({'w': jnp.zeros((6, 4))}), collision


# -- composition with optax ---------------------------------------------------


def test_inject_hyperparams_changes_rates_under_jit():
  tx = optax.inject_hyperparams(ko_optax.ko)(
      learning_rate=1e-2, base='sgd', momentum=0.9, collision_rate=0.0,
      temperature=0.0)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  grads = jax.grad(_loss)(PARAMS, 0)
  off, _ = update(grads, state, PARAMS)
  # inject_hyperparams stores numbers as float32 arrays, which rounds
  # differently from Python floats: compare with SGD under it too.
  sgd_tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2,
                                                momentum=0.9)
  sgd, _ = jax.jit(sgd_tx.update)(grads, sgd_tx.init(PARAMS), PARAMS)
  _assert_bitwise(off, sgd)
  state.hyperparams['collision_rate'] = jnp.asarray(1.0, jnp.float32)
  on, state = update(grads, state, PARAMS)
  assert not np.allclose(on['conv']['kernel'], off['conv']['kernel'])
  assert update._cache_size() == 1
  state.hyperparams['learning_rate'] = jnp.asarray(0.0, jnp.float32)
  zero, _ = update(grads, state, PARAMS)
  _assert_bitwise(zero, jax.tree.map(jnp.zeros_like, zero))


def test_inject_hyperparams_with_schedule_and_static_callables():
  tx = optax.inject_hyperparams(
      ko_optax.ko, static_args=('mask',))(
          learning_rate=optax.linear_schedule(1e-2, 0.0, 3),
          collision_rate=lambda count: 0.1 * count,
          mask=lambda p: jax.tree.map(lambda x: x.ndim == 4, p))
  _, state = _run(tx, steps=3)
  np.testing.assert_allclose(state.hyperparams['collision_rate'], 0.2,
                             rtol=1e-6)


def test_init_on_shape_dtype_structs():
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        PARAMS)
  tx = ko_optax.ko(1e-2, collision='hard', temperature=1e-3)
  abstract = jax.eval_shape(tx.init, shapes)
  concrete = tx.init(PARAMS)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)


def test_state_is_stable_through_lax_cond():
  tx = ko_optax.ko(1e-2, collision='hard', temperature=1e-3)
  state = tx.init(PARAMS)
  grads = jax.grad(_loss)(PARAMS, 0)

  @jax.jit
  def maybe_update(pred, state):
    return jax.lax.cond(pred, lambda s: tx.update(grads, s, PARAMS)[1],
                        lambda s: s, state)

  new = maybe_update(True, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
  assert jax.tree.structure(new) == jax.tree.structure(state)


def test_chain_masked_and_multi_transform():
  labels = {'dense': {'kernel': 'adam', 'bias': 'adam'},
            'conv': {'kernel': 'ko'}}
  tx = optax.multi_transform(
      {'ko': ko_optax.ko(1e-2, collision_rate=5.0), 'adam': optax.adam(1e-2)},
      labels)
  ko_out, _ = _run(tx, steps=2)
  adam_out, _ = _run(optax.adam(1e-2), steps=2)
  np.testing.assert_array_equal(ko_out[-1]['dense']['kernel'],
                                adam_out[-1]['dense']['kernel'])
  assert not np.allclose(ko_out[-1]['conv']['kernel'],
                         adam_out[-1]['conv']['kernel'])

  masked = optax.chain(
      optax.masked(ko_optax.stochastic_collision(0.5),
                   {'dense': {'kernel': True, 'bias': False},
                    'conv': {'kernel': False}}),
      optax.clip_by_global_norm(1.0),
      optax.adam(1e-2))
  out, _ = _run(masked, steps=2)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out))


def test_multisteps_accumulates_then_applies():
  tx = optax.MultiSteps(ko_optax.ko(1e-2, collision='hard',
                                    collision_rate=0.5), every_k_schedule=2)
  out, state = _run(tx, steps=4)
  _assert_bitwise(out[0], jax.tree.map(jnp.zeros_like, out[0]))
  assert any(np.any(x != 0) for x in jax.tree.leaves(out[1]))
  assert int(state.gradient_step) == 2


def test_apply_if_finite_skips_bad_steps():
  tx = optax.apply_if_finite(ko_optax.ko(1e-2), max_consecutive_errors=3)
  state = tx.init(PARAMS)
  bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), PARAMS)
  updates, new_state = jax.jit(tx.update)(bad, state, PARAMS)
  assert int(new_state.notfinite_count) == 1
  _assert_bitwise(updates, jax.tree.map(jnp.zeros_like, updates))
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)


def test_extra_args_are_accepted():
  # One small leaf: the update runs eagerly, op by op.
  params = {'w': jnp.ones((3, 4))}
  tx = ko_optax.ko(1e-2)
  updates, _ = tx.update(params, tx.init(params), params,
                         value=jnp.asarray(1.0))
  assert updates['w'].shape == (3, 4)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_dtype_is_preserved(dtype):
  params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
  tx = ko_optax.ko(1e-2, collision='soft', temperature=1e-4)
  out, _ = _run(tx, steps=1, params=params)
  chex.assert_trees_all_equal_dtypes(out[0], params)


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, match', [
    (dict(base='rmsprop'), 'base must be one of'),
    (dict(base=3), 'base must be'),
    (dict(collision='elastic'), 'collision must be one of'),
    (dict(learning_rate=-1.0), 'learning_rate must be >= 0'),
    (dict(temperature=-1.0), 'temperature must be >= 0'),
    (dict(collision_rate=-0.5), 'collision_rate must be >= 0'),
    (dict(weight_decay=-0.5), 'weight_decay must be >= 0'),
])
def test_bad_arguments(kwargs, match):
  kwargs = {'learning_rate': 1e-2, **kwargs}
  with pytest.raises((ValueError, TypeError), match=match):
    ko_optax.ko(**kwargs)


def test_missing_params_message():
  tx = ko_optax.ko(1e-2)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match='needs the current params'):
    tx.update(PARAMS, state)


@pytest.mark.parametrize('collision', ['soft', 'hard'])
def test_vmap_over_an_ensemble_matches_a_loop(collision):
  tx = ko_optax.ko(1e-2, collision=collision, collision_rate=0.5,
                   temperature=1e-4)
  params = jax.vmap(lambda k: {'w': jax.random.normal(k, (4, 6))})(
      jax.random.split(jax.random.key(0), 3))
  grads = jax.tree.map(jnp.cos, params)
  states = jax.vmap(tx.init)(params)
  batched, _ = jax.jit(jax.vmap(tx.update))(grads, states, params)
  update = jax.jit(tx.update)
  for i in range(3):
    single, _ = update(_member(grads, i), _member(states, i),
                       _member(params, i))
    chex.assert_trees_all_close(_member(batched, i), single, rtol=1e-5,
                                atol=1e-7)
