"""The thermal-diffusion step: Gaussian noise of variance 2 T.

Its zero temperature, schedule, seeds, dtypes and errors are in
test_properties_*.py and test_errors.py with the other paths.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

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
