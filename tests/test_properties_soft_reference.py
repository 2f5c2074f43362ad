"""The soft collision computes the formula of tests/reference.py.

Every path that runs the soft formula is checked against the float64 NumPy
reference: the public ``soft_collision``, ``stochastic_collision`` (each
normalization, threshold and ``include_self``, any particle axis, bfloat16,
complex leaves as their real view) and ``ko(collision='soft')``.
"""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
import reference
import systems


@pytest.mark.parametrize('shape', [(6, 7), (3, 3, 2, 6), (9, 1), (5, 2)])
@pytest.mark.parametrize('threshold, include_self, normalization', [
    (0.0, False, None), (0.0, True, None), (-1.0, False, None),
    (0.2, False, None), (0.0, False, 'mean'), (0.0, True, 'mean'),
    (0.0, False, 'norm'), (0.0, False, 'similarity'),
    (0.0, True, 'similarity'),
])
def test_stochastic_collision_matches_reference(shape, threshold,
                                                include_self, normalization):
  w, g = systems.normal(shape, 0), systems.normal(shape, 1)
  # Make a few particles alike so that positive pairs exist.
  if shape[-1] > 1:
    w[..., 1] = w[..., 0] + 0.1 * w[..., 1]
    g[..., 1] = g[..., 0] + 0.1 * g[..., 1]
  tx = ko_optax.stochastic_collision(
      0.3, threshold=threshold, include_self=include_self,
      normalization=normalization)
  out, _ = systems.apply(tx, {'k': jnp.asarray(g)}, {'k': jnp.asarray(w)})
  want = reference.soft_collision(w, g, 0.3, threshold, include_self,
                                  normalization)
  np.testing.assert_allclose(out['k'], want, rtol=2e-5, atol=2e-6)


def test_other_particle_axis_matches_reference():
  w, g = systems.normal((6, 4, 3), 2), systems.normal((6, 4, 3), 3)
  tx = ko_optax.stochastic_collision(0.5, particle_axes=0)
  out, _ = systems.apply(tx, jnp.asarray(g), jnp.asarray(w))
  want = reference.soft_collision(w, g, 0.5, axis=0)
  np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize('normalization', [None, 'norm'])
def test_ko_soft_matches_reference(normalization):
  # On plain SGD ko()'s update is -lr times the collided gradient.
  w, g = systems.normal((6, 7), 4), systems.normal((6, 7), 5)
  w[:, 1] = w[:, 0] + 0.1 * w[:, 1]
  g[:, 1] = g[:, 0] + 0.1 * g[:, 1]
  tx = ko_optax.ko(1.0, base='sgd', momentum=None, collision='soft',
                   collision_rate=0.3, normalization=normalization)
  out, _ = tx.update({'k': jnp.asarray(g)}, tx.init({'k': w}),
                     {'k': jnp.asarray(w)})
  want = reference.soft_collision(w, g, 0.3, normalization=normalization)
  np.testing.assert_allclose(-out['k'], want, rtol=2e-5, atol=2e-6)


_jit_soft = jax.jit(ko_optax.soft_collision)


# The shapes and zero rows are also covered by the parametrized tests above:
# a few random examples suffice.
@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(
    d=st.integers(1, 6), n=st.integers(1, 7),
    rate=st.floats(0.0, 2.0), seed=st.integers(0, 2**16),
    zero_rows=st.booleans())
def test_soft_collision_matches_reference_at_any_shape(d, n, rate, seed,
                                                       zero_rows):
  w, g = systems.normal((d, n), seed), systems.normal((d, n), seed + 1)
  if zero_rows:
    w[:, 0] = 0.0
    g[:, -1] = 0.0
  # Jitted (rate traced): one compile per shape, not one per operation.
  out = _jit_soft(jnp.asarray(w), jnp.asarray(g), rate)
  want = reference.soft_collision(w.T, g.T, rate, axis=0).T
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('d, n', [(1, 1), (4, 5), (6, 7)])
def test_soft_collision_with_zero_rows_matches_reference(d, n):
  w, g = systems.normal((d, n), 7), systems.normal((d, n), 8)
  w[:, 0] = 0.0
  g[:, -1] = 0.0
  out = _jit_soft(jnp.asarray(w), jnp.asarray(g), 0.7)
  want = reference.soft_collision(w.T, g.T, 0.7, axis=0).T
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_bf16_soft_matches_float32_computation():
  w32, g32 = systems.normal((6, 8), 0), systems.normal((6, 8), 1)
  w16, g16 = jnp.asarray(w32, jnp.bfloat16), jnp.asarray(g32, jnp.bfloat16)
  out16, _ = systems.apply(ko_optax.stochastic_collision(0.3), g16, w16)
  ref = reference.soft_collision(np.asarray(w16, np.float32),
                                 np.asarray(g16, np.float32), 0.3)
  np.testing.assert_allclose(np.asarray(out16, np.float32), ref, rtol=1e-2,
                             atol=1e-2)


def test_complex_soft_collision_is_the_real_view():
  w, g = systems.complex_keyed(2)
  real = lambda x: jnp.concatenate([x.real, x.imag], axis=0)   # R^{2D}
  out = systems.collide('soft', w, g, normalization='norm')
  ref = systems.collide('soft', real(w), real(g), normalization='norm')
  d = w.shape[0]
  np.testing.assert_allclose(out.real, ref[:d], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.imag, ref[d:], rtol=1e-5, atol=1e-6)


def test_soft_pushes_alike_particles_apart():
  w = np.array([[1.0, 1.0, 0.0], [0.0, 0.1, 1.0]], np.float32)
  g = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
  out = np.asarray(ko_optax.soft_collision(w, g, 0.5))
  # Particles 0 and 1 move alike and sit alike: each loses part of its
  # gradient along the other's; particle 2 is orthogonal and untouched.
  assert out[0, 0] < g[0, 0] and out[0, 1] < g[0, 1]
  np.testing.assert_allclose(out[:, 2], g[:, 2])


def test_similarity_normalization_grows_with_similarity():
  # 'norm' pushes every particle by exactly rate * |g_i|, alike or not;
  # 'similarity' pushes a condensed layer as 'norm' does (its repulsion is
  # the mean of N - 1 equal velocities) and a random layer much less.
  n, d, rate = 16, 64, 0.1
  rng = np.random.default_rng(0)
  g_same = jnp.ones((d, n))
  w_same = jnp.ones((d, n))
  for norm in ('norm', 'similarity'):
    out = ko_optax.soft_collision(w_same, g_same, rate, normalization=norm)
    np.testing.assert_allclose(out, 0.9 * g_same, rtol=1e-6)
  w = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
  change = {}
  for norm in ('norm', 'similarity'):
    out = ko_optax.soft_collision(w, g, rate, normalization=norm)
    change[norm] = np.linalg.norm(out - g, axis=0) / np.linalg.norm(g, axis=0)
  np.testing.assert_allclose(change['norm'], rate, rtol=1e-5)
  assert change['similarity'].max() < 0.2 * rate
