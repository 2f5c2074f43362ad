"""Every path keeps its leaves' dtypes: bfloat16, float16, float32, complex.

The hypothesis cases of test_properties_bad_values.py also check the dtype
of collisions over float32, bfloat16 and complex64 at any magnitude, and
test_properties_off_is_base.py KO switched off in each of them.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax
import systems


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_collided_leaves_keep_their_dtype(dtype, mode):
  params = {'w': jnp.asarray(systems.normal((6, 8), 0), dtype),
            'b': jnp.zeros(8, dtype)}
  grads = jax.tree.map(lambda x: jnp.ones_like(x) * 1e-3, params)
  tx = ko_optax.stochastic_collision(0.5, mode=mode)
  out, state = jax.jit(tx.update)(grads, tx.init(params), params)
  chex.assert_trees_all_equal_dtypes(out, grads)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32)))
             for x in jax.tree.leaves(out))


@pytest.mark.parametrize('dtype, kw', [
    (jnp.bfloat16, dict(collision='soft')),
    (jnp.float32, dict(collision='soft')),
    (jnp.bfloat16, dict(collision='hard')),
    (jnp.bfloat16, dict(collision='hard', cell_size=2)),
    (jnp.bfloat16, dict(base='sgd', collide_on='velocity',
                        collision_rate=1.0)),
], ids=['soft-bf16', 'soft-f32', 'hard-bf16', 'hard-cells-bf16',
        'velocity-bf16'])
def test_ko_keeps_the_dtype(dtype, kw):
  params = jax.tree.map(lambda x: x.astype(dtype), systems.small_params())
  grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x) ** 2)
                                 for x in jax.tree.leaves(p)))(params)
  tx = ko_optax.ko(1e-2, temperature=1e-4, **kw)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  chex.assert_trees_all_equal_dtypes(out, params)


def test_cells_keep_dtype_and_shape_of_non_default_layouts():
  params = {'k': jnp.asarray(systems.normal((3, 3, 4, 20), 14)).astype(
      jnp.bfloat16)}
  grads = {'k': jnp.asarray(systems.normal((3, 3, 4, 20), 15)).astype(
      jnp.bfloat16)}
  tx = ko_optax.stochastic_collision(0.2, cell_size=4, cell_groups=2)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert out['k'].dtype == jnp.bfloat16 and out['k'].shape == (3, 3, 4, 20)
  tx = ko_optax.stochastic_collision(0.2, cell_size=4, particle_axes=0)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert out['k'].shape == (3, 3, 4, 20)


def test_diffusion_mask_and_dtype():
  g = {'a': jnp.zeros(100, jnp.bfloat16), 'b': jnp.zeros(100)}
  tx = ko_optax.thermal_diffusion(1.0, mask={'a': True, 'b': False})
  out, _ = tx.update(g, tx.init(g))
  chex.assert_trees_all_equal_dtypes(out, g)
  assert np.asarray(out['a'], np.float32).std() > 0.5
  np.testing.assert_array_equal(out['b'], 0.0)


def test_complex_diffusion_kicks_both_parts():
  tx = ko_optax.thermal_diffusion(0.5, key=0)
  g = jnp.zeros(20_000, jnp.complex64)
  noisy, _ = tx.update(g, tx.init(g))
  assert noisy.dtype == jnp.complex64
  assert abs(float(noisy.real.var()) - 1.0) < 0.05   # 2 T per part
  assert abs(float(noisy.imag.var()) - 1.0) < 0.05


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
