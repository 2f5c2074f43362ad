"""Condensation metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import diagnostics


def test_parallel_neurons_are_fully_condensed():
  w = jnp.outer(jnp.arange(1.0, 5.0), jnp.ones(6))    # 6 parallel neurons
  m = ko_optax.condensation({'w': w, 'b': jnp.zeros(6)})
  assert m['b'] is None
  np.testing.assert_allclose(m['w'].mean_abs_cos, 1.0, rtol=1e-6)
  np.testing.assert_allclose(m['w'].effective_rank, 1.0, rtol=1e-5)


def test_orthogonal_neurons_are_spread():
  m = ko_optax.condensation({'w': jnp.eye(5)})
  np.testing.assert_allclose(m['w'].mean_abs_cos, 0.0, atol=1e-7)
  np.testing.assert_allclose(m['w'].effective_rank, 5.0, rtol=1e-5)


def test_mean_abs_cos_against_numpy():
  w = np.random.default_rng(0).normal(size=(3, 3, 4, 7)).astype(np.float32)
  p = np.moveaxis(w, -1, 0).reshape(7, -1)
  p = p / np.linalg.norm(p, axis=1, keepdims=True)
  c = np.abs(p @ p.T)
  want = (c.sum() - np.trace(c)) / (7 * 6)
  m = jax.jit(ko_optax.condensation)({'conv': jnp.asarray(w)})
  np.testing.assert_allclose(m['conv'].mean_abs_cos, want, rtol=1e-5)
  np.testing.assert_allclose(ko_optax.cosine_matrix(jnp.asarray(w)),
                             p @ p.T, rtol=1e-5, atol=1e-6)


def test_zero_and_single_particle_leaves_are_finite():
  m = ko_optax.condensation({'z': jnp.zeros((4, 3)), 'one': jnp.ones((4, 1))})
  for leaf in jax.tree.leaves(m):
    assert np.isfinite(leaf)
  assert float(m['z'].effective_rank) == 0.0
  assert float(m['one'].mean_abs_cos) == 0.0


def test_kinetic_temperature():
  g = jnp.array([[1.0, 3.0], [0.0, 0.0]])          # velocities (1,0), (3,0)
  t = ko_optax.kinetic_temperature({'g': g, 'b': jnp.ones(2)})
  assert t['b'] is None
  np.testing.assert_allclose(t['g'], 1.0)           # mean of 1^2 and 1^2


def test_cosine_matrix_needs_a_matrix():
  with pytest.raises(ValueError, match='ndim >= 2'):
    diagnostics.cosine_matrix(jnp.ones(3))
