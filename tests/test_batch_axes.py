"""ParticleSpec batch axes: every index is an independent particle system.

A scanned stack ``(L, D, N)`` with ``ParticleSpec(-1, 0)`` must collide
exactly as its L slices would collide alone: soft equal per slice;
``condensation`` reports per slice. Hard pairs stay inside a slice and
conserve each slice's momentum and energy, in cells too
(test_properties_conservation.py).
"""

import jax
import jax.numpy as jnp
import numpy as np

import ko_optax

L, D, N = 3, 5, 8
STACK = jax.random.normal(jax.random.key(0), (L, D, N))
GRAD = jax.random.normal(jax.random.key(1), (L, D, N))
SPEC = ko_optax.ParticleSpec(-1, 0)


def _update(tx, grads, params):
  return jax.jit(tx.update)(grads, tx.init(params), params)[0]


def test_soft_equals_each_slice_alone():
  tx = ko_optax.stochastic_collision(0.3, mode='soft', particle_axes=SPEC)
  new = _update(tx, {'k': GRAD}, {'k': STACK})['k']
  for layer in range(L):
    alone = ko_optax.soft_collision(STACK[layer], GRAD[layer], 0.3)
    np.testing.assert_allclose(new[layer], alone, rtol=1e-5, atol=1e-6)
  # Without the batch axis the layers would mix into one gas of L * D.
  mixed = _update(ko_optax.stochastic_collision(0.3, mode='soft'),
                  {'k': GRAD}, {'k': STACK})['k']
  assert not np.allclose(mixed, new)


def test_condensation_reports_per_system():
  stack = STACK.at[1].set(jnp.ones((D, N)))          # layer 1 fully condensed
  m = ko_optax.condensation({'k': stack, 'b': jnp.zeros((L, N))},
                            particle_axes={'k': SPEC, 'b': None})
  assert m['b'] is None
  assert m['k'].mean_abs_cos.shape == (L,)
  assert m['k'].effective_rank.shape == (L,)
  np.testing.assert_allclose(m['k'].mean_abs_cos[1], 1.0, rtol=1e-6)
  alone = ko_optax.condensation({'k': STACK[0]})['k']
  np.testing.assert_allclose(m['k'].mean_abs_cos[0], alone.mean_abs_cos,
                             rtol=1e-6)
  np.testing.assert_allclose(m['k'].effective_rank[0], alone.effective_rank,
                             rtol=1e-5)
  flat = ko_optax.condensation_metrics({'k': stack},
                                       particle_axes={'k': SPEC})
  assert flat['k/mean_abs_cos'].shape == (L,)
