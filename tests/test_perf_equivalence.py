"""Optimised code paths compute what the plain versions computed.

``collision.hard_collision`` reads the paired particles as rows of the
transposed matrices (contiguous memory) and draws directions and moves
columns only for the colliding pairs; it must give the same result as the
plain column version below (the same pairing, the same random numbers, the
same collisions), up to float rounding of the reductions.
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
  fast = jax.jit(jax.vmap(
      lambda w, g, k: collision.hard_collision(w, g, 2.0, k)))(w, g, keys)
  plain = jax.jit(jax.vmap(
      lambda w, g, k: _hard_collision_columns(w, g, 2.0, k)))(w, g, keys)
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
  assert fast.dtype == jnp.float32


def test_hard_collision_many_pairs_equals_columns_at_every_rung():
  # 300 pairs: capacity rungs 19, 75 and 300. Rates from rare to certain
  # collisions take each rung; the result is the plain one every time.
  d, n = 6, 600
  assert collision.capacity_rungs(n // 2, 'cpu') == (19, 75, 300)
  fast_fn = jax.jit(collision.hard_collision)
  plain_fn = jax.jit(_hard_collision_columns)
  counts = set()
  for rate, seed in [(0.02, 0), (0.2, 1), (0.6, 2), (5.0, 3)]:
    kw, kg, k = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(kw, (d, n)) * 0.1
    g = jax.random.normal(kg, (d, n))
    fast = np.asarray(fast_fn(w, g, rate, k))
    plain = np.asarray(plain_fn(w, g, rate, k))
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    counts.add(int(np.sum(np.any(plain != np.asarray(g), axis=0))) // 2)
  assert min(counts) <= 19 and 19 < max(counts) <= 300, counts


def test_colliding_pairs_result_does_not_depend_on_capacity():
  d, n = 4, 40
  m = n // 2
  kg, kc, kp, kk = jax.random.split(jax.random.key(0), 4)
  g = jax.random.normal(kg, (d, n))
  order = jax.random.permutation(kp, n)
  first, second = order[0::2], order[1::2]
  speed = jnp.linalg.norm(g[:, first] - g[:, second], axis=0)
  collide = jax.random.uniform(kc, (m,)) < 0.3
  keys = jax.random.split(kk, m)
  hits = int(collide.sum())
  collide_fn = jax.jit(collision._collide_colliding_pairs,
                       static_argnames='capacity')
  outs = [np.asarray(collide_fn(g, first, second, speed, collide, keys,
                                capacity=c))
          for c in (hits, hits + 3, m)]
  top = jax.jit(collision._collide_all_pairs, static_argnames='capacity')
  outs.append(np.asarray(top(
      g, first, second, speed, collide, keys, capacity=m)))   # the top rung
  for out in outs[1:]:
    np.testing.assert_allclose(out, outs[0], rtol=1e-6, atol=1e-7)
  moved = np.any(outs[0] != np.asarray(g), axis=0)
  assert moved.sum() == 2 * hits


def test_capacity_rungs():
  assert collision.capacity_rungs(5, 'cpu') == (5,)
  assert collision.capacity_rungs(256, 'cpu') == (16, 64, 256)
  assert collision.capacity_rungs(2048, 'cpu') == (32, 128, 512, 2048)
  assert collision.capacity_rungs(2048, 'gpu') == (2048,)


def test_unit_directions_are_isotropic():
  u = np.asarray(collision.unit_directions(
      jax.random.split(jax.random.key(3), 4000), 3, jnp.float32))
  np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(u.mean(0), 0.0, atol=0.06)
  np.testing.assert_allclose((u ** 2).mean(0), 1.0 / 3, atol=0.03)
