"""ko(): KO acts, converges, and lives inside optax's combinators.

KO switched off (bit for bit its base), jit / vmap, determinism, schedules,
dtypes, bad values and errors of ko() are tested with every other path in
test_properties_*.py and test_errors.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax
import systems

PARAMS = systems.PARAMS   # the small shared tree


_run = systems.train


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
  systems.assert_bitwise(out[0], jax.tree.map(jnp.zeros_like, out[0]))
  assert any(np.any(x != 0) for x in jax.tree.leaves(out[1]))
  assert int(state.gradient_step) == 2


def test_extra_args_are_accepted():
  # One small leaf: the update runs eagerly, op by op.
  params = {'w': jnp.ones((3, 4))}
  tx = ko_optax.ko(1e-2)
  updates, _ = tx.update(params, tx.init(params), params,
                         value=jnp.asarray(1.0))
  assert updates['w'].shape == (3, 4)


# -- errors -------------------------------------------------------------------


