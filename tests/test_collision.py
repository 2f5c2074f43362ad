"""The collision step: the hard collision against a NumPy loop, the leaves
it touches, and its cost (no N x N array).

* ``hard_collision`` (one random-bits draw, row gathers, no scatter) against
  a NumPy loop over the pairs that uses the same random numbers
  (``_random.hard_draws``), also for pairs laid out as rows and for
  ``hard_collision_pairs``;
* which leaves collide (mask, particle_axes trees) and which pass through.

The properties every path shares (the soft formula, conservation, KO off,
jit / vmap, dtypes, bad values, errors) are in test_properties_*.py and
test_errors.py.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import _random
from ko_optax.collision import hard
import systems

# -- the hard collision against a NumPy loop ---------------------------------


def _numpy_hard(w, g, rate, order, u, directions, length_scale=20.0):
  """DSMC step of (D, N) matrices from given random numbers, pair by pair."""
  w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
  new = g.copy()
  n = g.shape[1]
  m = n // 2
  pairs = [(order[2 * k], order[2 * k + 1]) for k in range(m)]
  speed = np.array([np.linalg.norm(g[:, i] - g[:, j]) for i, j in pairs])
  top = speed.max() if m and speed.max() > 0 else 1.0
  for k, (i, j) in enumerate(pairs):
    dist = np.linalg.norm(w[:, i] - w[:, j])
    p = min(1.0, max(0.0, rate * speed[k] / top * np.exp(-dist / length_scale)))
    if u[k] < p:
      centre = 0.5 * (g[:, i] + g[:, j])
      new[:, i] = centre + 0.5 * speed[k] * directions[:, k]
      new[:, j] = centre - 0.5 * speed[k] * directions[:, k]
  return new


@pytest.mark.parametrize('d, n', [(5, 8), (7, 9), (3, 1), (4, 2)])
def test_hard_collision_equals_the_numpy_loop(d, n):
  fast_fn = jax.jit(ko_optax.hard_collision)
  systems = [_random.Systems(1, n, d)]
  draw = jax.jit(lambda k: jax.tree.map(
      lambda x: x[0], _random.hard_draws(_random.random_words(
          k, (_random.hard_words(systems),)), systems)[0][:3]))
  for rate in (0.0, 0.3, 5.0):
    for seed in range(3):
      kw, kg, k = jax.random.split(jax.random.key(seed), 3)
      w = jax.random.normal(kw, (d, n))
      g = jax.random.normal(kg, (d, n))
      fast = np.asarray(fast_fn(w, g, rate, k))
      if n < 2:
        np.testing.assert_array_equal(fast, g)
        continue
      order, u, directions = map(np.asarray, draw(k))
      directions = directions.T                    # rows -> columns
      assert sorted(order) == list(range(n))       # a permutation
      plain = _numpy_hard(w, g, rate, order, u, directions)
      np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)


def test_pairs_as_rows_collide_as_pairs_as_columns():
  # The grouped path collides pairs as rows (axis=-1, no transposes); the
  # same numbers laid out as columns must give the same result.
  rows = lambda x: jnp.swapaxes(x, -1, -2)

  @jax.jit
  def both(key):
    k = jax.random.split(key, 6)
    d, m = 7, 9
    w_i, w_j, g_i, g_j = (jax.random.normal(x, (2, d, m)) for x in k[:4])
    u = jax.random.uniform(k[4], (2, m))
    directions = _random.unit_directions(
        jax.random.bits(k[5], (2, d, m), jnp.uint32), jnp.float32)
    cols = hard.collide_pairs(w_i, w_j, g_i, g_j, 3.0, u, directions,
                                   length_scale=4.0)
    by_rows = hard.collide_pairs(
        rows(w_i), rows(w_j), rows(g_i), rows(g_j), 3.0, u,
        rows(directions), length_scale=4.0, axis=-1)
    return g_i, cols, by_rows
  g_i, cols, by_rows = both(jax.random.key(11))
  changed = ~np.all(np.asarray(cols[0]) == np.asarray(g_i), axis=-2)
  assert changed.any() and not changed.all()   # some pairs collide, not all
  for a, b in zip(cols, by_rows):
    np.testing.assert_allclose(a, rows(b), rtol=1e-6, atol=1e-7)


def test_hard_collision_pairs_equals_the_numpy_loop():
  d, n = 6, 10
  kw, kg, k = jax.random.split(jax.random.key(7), 3)
  w = jax.random.normal(kw, (2, d, n))
  g = jax.random.normal(kg, (2, d, n))
  new = np.asarray(jax.jit(hard.collide_adjacent_pairs)(w, g, 3.0, k))
  bits = _random.random_words(k, (2, _random.pair_words(n, d)))
  u, directions = map(np.asarray, _random.pair_draws(bits, n, d,
                                                     jnp.float32))
  for b in range(2):   # each leading block is its own gas
    plain = _numpy_hard(w[b], g[b], 3.0, np.arange(n), u[b], directions[b])
    np.testing.assert_allclose(new[b], plain, rtol=1e-5, atol=1e-6)



def test_hard_share_of_colliding_particles_grows_with_rate():
  shares = []
  for rate in (0.05, 0.3, 1.0, 10.0):
    changed = []
    for seed in range(5):
      _, g, new, _ = map(np.asarray, systems.hard_step(jax.random.key(seed),
                                                     rate))
      changed.append(np.any(g != new, axis=0).mean())
    shares.append(np.mean(changed))
  assert shares == sorted(shares), shares
  assert shares[0] < 0.3 and shares[-1] > 0.5, shares



def _shapes_in_jaxpr(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield tuple(getattr(v.aval, 'shape', ()))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _shapes_in_jaxpr(sub)


def test_hard_forms_no_n_by_n_array():
  n, d = 64, 3
  params = {'w': jnp.ones((d, n))}
  tx = ko_optax.stochastic_collision(0.5, mode='hard')
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(tx.update)(params, state, params).jaxpr
  shapes = list(_shapes_in_jaxpr(jaxpr))
  assert shapes
  assert all(np.prod(s) < n * n for s in shapes), max(shapes, key=np.prod)
  soft = ko_optax.stochastic_collision(0.5, mode='soft')
  jaxpr = jax.make_jaxpr(soft.update)(params, soft.init(params), params).jaxpr
  assert (n, n) in set(_shapes_in_jaxpr(jaxpr))



# -- which leaves collide ----------------------------------------------------


def test_non_particle_leaves_pass_through():
  params = {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}
  grads = {'w': jnp.ones((3, 4)), 'b': jnp.full(4, 7.0)}
  for mode in ('soft', 'hard'):
    out, _ = systems.apply(ko_optax.stochastic_collision(1.0, mode=mode),
                           grads,
                    params)
    assert out['b'] is grads['b']


def test_mask_and_tree_particle_axes_skip_leaves():
  params = {'a': jnp.ones((3, 4)) + jnp.eye(3, 4), 'b': jnp.ones((3, 4))}
  grads = jax.tree.map(jnp.ones_like, params)
  for kwargs in [dict(mask={'a': True, 'b': False}),
                 dict(particle_axes={'a': -1, 'b': None}),
                 dict(mask=lambda u: {'a': True, 'b': False})]:
    out, _ = systems.apply(ko_optax.stochastic_collision(0.5, **kwargs), grads,
                    params)
    assert out['b'] is grads['b']
    assert not np.allclose(out['a'], grads['a'])


