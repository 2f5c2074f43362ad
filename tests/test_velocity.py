"""Collisions on the base optimizer's velocity (its momentum buffer)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax


def _problem(seed=0, d=6, n=10):
  kw, kg = jax.random.split(jax.random.key(seed))
  params = {'w': jax.random.normal(kw, (d, n)), 'b': jnp.zeros(n)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1.0)) + 0.3, params)
           for i in range(4)]
  return params, grads


def _run(tx, params, grads):
  step = jax.jit(tx.update)
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = step(g, state, params)
    out.append(u)
  return out, state


@pytest.mark.parametrize('base, reference', [
    ('adam', optax.adam(1e-2)),
    ('sgd', optax.sgd(1e-2, momentum=0.9)),
])
def test_velocity_collision_at_zero_rate_is_the_base_bitwise(base, reference):
  # A traced rate of 0 (a schedule) runs the collision's lax.cond, which
  # returns the momentum untouched: the base optimizer, bit for bit.
  params, grads = _problem()
  tx = ko_optax.ko(1e-2, base=base, collide_on='velocity', collision='soft',
                   collision_rate=lambda count: 0.0 * count)
  got, _ = _run(tx, params, grads)
  want, _ = _run(reference, params, grads)
  for a, b in zip(got, want):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_sgd_velocity_collision_is_kept_in_the_trace():
  params, grads = _problem()
  collision = ko_optax.stochastic_collision(0.8, mode='hard', key=3)
  tx = ko_optax.kinetic_advection('sgd', momentum=0.9, collision=collision)
  got, state = _run(tx, params, grads)
  # By hand: t <- collide(g + 0.9 t), and the update is t.
  trace = jax.tree.map(jnp.zeros_like, params)
  cstate = collision.init(params)
  collide = jax.jit(collision.update)
  moved = 0
  for g, u in zip(grads, got):
    before = jax.tree.map(lambda g, t: g + 0.9 * t, g, trace)
    trace, cstate = collide(before, cstate, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6),
                 u, trace)
    # Hard collisions conserve the leaf's total momentum and energy.
    np.testing.assert_allclose(trace['w'].sum(-1), before['w'].sum(-1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(trace['w'] ** 2),
                               jnp.sum(before['w'] ** 2), rtol=1e-5)
    np.testing.assert_array_equal(trace['b'], before['b'])  # not particles
    moved += int(jnp.sum(jnp.any(trace['w'] != before['w'], axis=0)))
  assert moved > 0
  np.testing.assert_allclose(state.base.trace['w'], trace['w'], rtol=1e-5,
                             atol=1e-6)


def test_adam_velocity_collision_changes_mu_not_nu():
  params, grads = _problem(1)
  plain = ko_optax.kinetic_advection('adam')
  collided = ko_optax.kinetic_advection(
      'adam', collision=ko_optax.stochastic_collision(0.5, mode='soft'))
  _, plain_state = _run(plain, params, grads)
  updates, state = _run(collided, params, grads)
  np.testing.assert_array_equal(state.base.nu['w'], plain_state.nu['w'])
  np.testing.assert_array_equal(state.base.mu['b'], plain_state.mu['b'])
  assert not np.allclose(state.base.mu['w'], plain_state.mu['w'])
  assert int(state.base.count) == int(state.collision.count) == 4
  assert all(bool(jnp.all(jnp.isfinite(u['w']))) for u in updates)


def test_velocity_collision_under_inject_hyperparams():
  params, grads = _problem()
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


@pytest.mark.parametrize('kwargs, match', [
    (dict(base=optax.scale_by_lion()), 'momentum buffer'),
    (dict(base='sgd', momentum=None), 'momentum buffer'),
    (dict(collide_on='momentum'), 'collide_on'),
])
def test_velocity_collision_bad_input(kwargs, match):
  kwargs = {'collide_on': 'velocity', **kwargs}
  with pytest.raises(ValueError, match=match):
    ko_optax.ko(1e-2, **kwargs)


def test_collision_must_be_a_transformation():
  with pytest.raises(TypeError, match='stochastic_collision'):
    ko_optax.kinetic_advection('adam', collision=0.1)


def test_hard_velocity_collision_on_adam_warns():
  with pytest.warns(UserWarning, match='unstable'):
    ko_optax.ko(1e-3, collide_on='velocity')   # hard and adam are defaults
