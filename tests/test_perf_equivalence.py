"""Optimised code paths compute what the plain versions computed.

``collision.hard_collision`` gathers and scatters the paired particles as
rows of the transposed matrices (contiguous memory) instead of as columns;
it must give the same result as the plain column version below (the same
pairing, the same random numbers, the same collisions), up to float
rounding of the reductions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ko_optax import collision


def _hard_collision_columns(w, g, rate, key, length_scale=20.0):
  """The plain version: column gather, hard_collision_pairs, column scatter."""
  n = g.shape[-1]
  if n < 2:
    return g
  perm_key, pair_key = jax.random.split(key)
  order = jax.random.permutation(perm_key, n)
  paired = order[:n - n % 2]
  new = collision.hard_collision_pairs(
      w[:, paired], g[:, paired], rate, pair_key, length_scale=length_scale)
  return g.at[:, paired].set(new, unique_indices=True)


@pytest.mark.parametrize('d, n', [(5, 8), (7, 9), (3, 1)])
def test_hard_collision_rows_equals_columns(d, n):
  fast_fn = jax.jit(collision.hard_collision)
  plain_fn = jax.jit(_hard_collision_columns)
  for rate in (0.0, 0.3, 5.0):
    for seed in range(3):
      kw, kg, k = jax.random.split(jax.random.key(seed), 3)
      w = jax.random.normal(kw, (d, n))
      g = jax.random.normal(kg, (d, n))
      fast = fast_fn(w, g, rate, k)
      plain = plain_fn(w, g, rate, k)
      np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
      # The same particles collided.
      np.testing.assert_array_equal(np.any(fast != g, axis=0),
                                    np.any(plain != g, axis=0))


def test_hard_collision_rows_under_vmap():
  kw, kg = jax.random.split(jax.random.key(0))
  w = jax.random.normal(kw, (3, 6, 10))
  g = jax.random.normal(kg, (3, 6, 10))
  keys = jax.random.split(jax.random.key(1), 3)
  fast = jax.vmap(lambda w, g, k: collision.hard_collision(w, g, 2.0, k))(
      w, g, keys)
  plain = jax.vmap(lambda w, g, k: _hard_collision_columns(w, g, 2.0, k))(
      w, g, keys)
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
  assert fast.dtype == jnp.float32


def test_hard_collision_draws_only_for_colliding_pairs_same_physics():
  # A concrete rate bounds the number of collisions, so directions are
  # drawn for the colliding pairs only: other random numbers than the plain
  # version, but the same pairs collide and each keeps its momentum and
  # energy (centre-of-mass velocity and relative speed).
  d, n, rate = 5, 64, 0.2
  assert collision.collision_capacity(rate, n // 2) < n // 2
  fast_fn = jax.jit(lambda w, g, k: collision.hard_collision(w, g, rate, k))
  plain_fn = jax.jit(_hard_collision_columns)
  for seed in range(4):
    kw, kg, k = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(kw, (d, n)) * 0.1
    g = jax.random.normal(kg, (d, n))
    fast = np.asarray(fast_fn(w, g, k))
    plain = np.asarray(plain_fn(w, g, rate, k))
    g = np.asarray(g)
    hit = np.any(plain != g, axis=0)
    np.testing.assert_array_equal(np.any(fast != g, axis=0), hit)
    order = np.asarray(jax.random.permutation(jax.random.split(k)[0], n))
    for a, b in order.reshape(-1, 2):
      if not hit[a]:
        continue
      np.testing.assert_allclose(fast[:, a] + fast[:, b], g[:, a] + g[:, b],
                                 rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(np.linalg.norm(fast[:, a] - fast[:, b]),
                                 np.linalg.norm(g[:, a] - g[:, b]),
                                 rtol=1e-5)


def test_scatter_rows_overflow_falls_back_to_all_pairs():
  m, d = 6, 4
  kg, k = jax.random.split(jax.random.key(0))
  g_i, g_j = jax.random.normal(kg, (2, m, d))
  speed = jnp.linalg.norm(g_i - g_j, axis=-1)
  collide = jnp.array([True, False, True, True, False, True])
  small = collision._scatter_rows(g_i, g_j, speed, collide, k, capacity=2)
  full = collision._scatter_rows(g_i, g_j, speed, collide, k, capacity=m)
  want = collision.scatter_pairs(g_i.T, g_j.T, speed, collide, k)
  for a, b, c in zip(small, full, want):
    np.testing.assert_allclose(a, c.T, rtol=1e-6)
    np.testing.assert_allclose(b, c.T, rtol=1e-6)


def test_scatter_rows_directions_are_isotropic():
  m, d = 4000, 3
  g_i = jnp.zeros((m, d))
  g_j = jnp.zeros((m, d)).at[:, 0].set(2.0)
  speed = jnp.full((m,), 2.0)
  collide = jnp.arange(m) % 2 == 0
  new_i, _ = collision._scatter_rows(g_i, g_j, speed, collide,
                                     jax.random.key(3), capacity=m // 2 + 50)
  u = np.asarray(new_i)[::2] - np.array([1.0, 0.0, 0.0])  # unit directions
  np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(u.mean(0), 0.0, atol=0.06)
  np.testing.assert_allclose((u ** 2).mean(0), 1.0 / 3, atol=0.03)
  np.testing.assert_array_equal(np.asarray(new_i)[1::2], 0.0)
