"""Collisions on the base optimizer's velocity (its momentum buffer).

The velocity path's conservation, KO-off, schedule, dtype and error tests
are in test_properties_*.py and test_errors.py with the other paths.
"""

import jax
import jax.numpy as jnp
import numpy as np

import ko_optax
import systems


def _run(tx, params, grads):
  step = jax.jit(tx.update)
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = step(g, state, params)
    out.append(u)
  return out, state


def test_sgd_velocity_collision_is_kept_in_the_trace():
  params, grads = systems.velocity_problem()
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
    np.testing.assert_array_equal(trace['b'], before['b'])  # not particles
    moved += int(jnp.sum(jnp.any(trace['w'] != before['w'], axis=0)))
  assert moved > 0
  np.testing.assert_allclose(state.base.trace['w'], trace['w'], rtol=1e-5,
                             atol=1e-6)


def test_adam_velocity_collision_changes_mu_not_nu():
  params, grads = systems.velocity_problem(1)
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


