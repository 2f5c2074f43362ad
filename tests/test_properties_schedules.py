"""Schedules and optax.inject_hyperparams, on every path.

A rate given as a schedule is evaluated at the step count (collision,
diffusion, learning rate); under ``optax.inject_hyperparams`` a rate set in
the state changes the next jitted update without a recompile, and a zero
rate there is the base optimizer's update under inject_hyperparams too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ko_optax
import reference
import systems

PARAMS = systems.PARAMS   # the small shared tree


def test_collision_schedule_is_evaluated_at_the_step_count():
  w = jnp.asarray(systems.normal((4, 6), 0))
  g = jnp.asarray(systems.normal((4, 6), 1))
  tx = ko_optax.stochastic_collision(lambda count: 0.1 * count)
  state = tx.init(w)
  first, state = tx.update(g, state, w)
  second, state = tx.update(g, state, w)
  np.testing.assert_array_equal(first, g)    # rate(0) = 0
  np.testing.assert_allclose(second, reference.soft_collision(w, g, 0.1),
                             rtol=2e-5, atol=2e-6)
  assert int(state.count) == 2


def test_diffusion_schedule_and_fresh_noise_every_step():
  g = jnp.zeros(20_000)
  tx = ko_optax.thermal_diffusion(lambda count: 0.5 * count, key=1)
  update = jax.jit(tx.update)
  state = tx.init(g)
  first, state = update(g, state)
  second, state = update(g, state)
  third, state = update(g, state)
  np.testing.assert_array_equal(first, 0.0)                      # T(0) = 0
  np.testing.assert_allclose(np.var(second), 1.0, rtol=0.05)     # 2 * 0.5
  np.testing.assert_allclose(np.var(third), 2.0, rtol=0.05)      # 2 * 1.0
  assert np.corrcoef(second, third)[0, 1] < 0.05


def test_inject_hyperparams_changes_rates_under_jit():
  tx = optax.inject_hyperparams(ko_optax.ko)(
      learning_rate=1e-2, base='sgd', momentum=0.9, collision_rate=0.0,
      temperature=0.0)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  grads = jax.grad(systems.loss)(PARAMS, 0)
  off, _ = update(grads, state, PARAMS)
  # inject_hyperparams stores numbers as float32 arrays, which rounds
  # differently from Python floats: compare with SGD under it too.
  sgd_tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2,
                                                momentum=0.9)
  sgd, _ = jax.jit(sgd_tx.update)(grads, sgd_tx.init(PARAMS), PARAMS)
  systems.assert_bitwise(off, sgd)
  state.hyperparams['collision_rate'] = jnp.asarray(1.0, jnp.float32)
  on, state = update(grads, state, PARAMS)
  assert not np.allclose(on['conv']['kernel'], off['conv']['kernel'])
  assert update._cache_size() == 1
  state.hyperparams['learning_rate'] = jnp.asarray(0.0, jnp.float32)
  zero, _ = update(grads, state, PARAMS)
  systems.assert_bitwise(zero, jax.tree.map(jnp.zeros_like, zero))


def test_inject_hyperparams_with_schedule_and_static_callables():
  tx = optax.inject_hyperparams(
      ko_optax.ko, static_args=('mask',))(
          learning_rate=optax.linear_schedule(1e-2, 0.0, 3),
          collision_rate=lambda count: 0.1 * count,
          mask=lambda p: jax.tree.map(lambda x: x.ndim == 4, p))
  params, state = PARAMS, tx.init(PARAMS)
  update = jax.jit(tx.update)
  for step in range(3):
    grads = jax.grad(systems.loss)(params, step)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(state.hyperparams['collision_rate'], 0.2,
                             rtol=1e-6)


def test_velocity_collision_under_inject_hyperparams():
  kw, _ = jax.random.split(jax.random.key(0))
  params = {'w': jax.random.normal(kw, (6, 10)), 'b': jnp.zeros(10)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1.0)) + 0.3, params)
           for i in range(2)]
  tx = optax.inject_hyperparams(ko_optax.ko)(
      learning_rate=1e-2, collision_rate=0.3, collide_on='velocity',
      base='sgd')
  step = jax.jit(tx.update)
  state = tx.init(params)
  u1, state = step(grads[0], state, params)
  state.hyperparams['collision_rate'] = jnp.asarray(0.0)
  u2, _ = step(grads[1], state, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(
      (u1, u2)))
