"""The thermal-diffusion step: Gaussian noise of variance 2 T."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax


def test_variance_is_two_t_and_mean_zero():
  t = 0.02
  g = {'w': jnp.zeros((300, 200)), 'b': jnp.zeros(1000)}
  tx = ko_optax.thermal_diffusion(t, key=0)
  out, _ = jax.jit(tx.update)(g, tx.init(g))
  x = np.asarray(out['w']).ravel()
  assert abs(x.mean()) < 4 * np.sqrt(2 * t / x.size)
  np.testing.assert_allclose(x.var(), 2 * t, rtol=0.02)
  assert np.asarray(out['b']).std() > 0


def test_zero_temperature_is_identity_bitwise():
  g = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  tx = ko_optax.thermal_diffusion(0.0)
  out, _ = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(out, g)


def test_schedule_and_fresh_noise_every_step():
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


def test_seed_and_typed_key_determinism():
  g = jnp.zeros(64)
  runs = []
  for key in (7, 7, jax.random.key(7), 8):
    tx = ko_optax.thermal_diffusion(1.0, key=key)
    runs.append(np.asarray(tx.update(g, tx.init(g))[0]))
  np.testing.assert_array_equal(runs[0], runs[1])
  np.testing.assert_array_equal(runs[0], runs[2])
  assert not np.allclose(runs[0], runs[3])


def test_mask_and_dtype():
  g = {'a': jnp.zeros(100, jnp.bfloat16), 'b': jnp.zeros(100)}
  tx = ko_optax.thermal_diffusion(1.0, mask={'a': True, 'b': False})
  out, _ = tx.update(g, tx.init(g))
  chex.assert_trees_all_equal_dtypes(out, g)
  assert np.asarray(out['a'], np.float32).std() > 0.5
  np.testing.assert_array_equal(out['b'], 0.0)


def test_negative_temperature_is_rejected():
  with pytest.raises(ValueError, match='temperature must be >= 0'):
    ko_optax.thermal_diffusion(-1.0)


def test_leaves_of_one_shape_draw_in_one_kernel_with_their_own_keys():
  tree = {f'l{i}': jnp.zeros((3, 4)) for i in range(3)}
  tree['v'] = jnp.zeros(5)
  tx = ko_optax.thermal_diffusion(0.5, key=3)
  state = tx.init(tree)
  noisy, _ = jax.jit(tx.update)(tree, state)
  _, step_key = jax.random.split(state.key)
  keys = jax.random.split(step_key, 4)
  for k, name in enumerate(sorted(tree)):       # leaves in tree order
    want = jnp.sqrt(2 * 0.5) * jax.random.normal(keys[k], tree[name].shape)
    np.testing.assert_allclose(noisy[name], want, rtol=1e-6, atol=1e-7)
  def draws(jaxpr):
    return sum((e.primitive.name == 'random_bits') + sum(
        draws(sub) for sub in jax.extend.core.jaxprs_in_params(e.params))
               for e in jaxpr.eqns)
  # One draw for the three (3, 4) leaves, one for the vector.
  assert draws(jax.make_jaxpr(tx.update)(tree, state).jaxpr) == 2
