"""Random draws are fixed by the key and fresh at every step, on every path.

The same key gives the same update bit for bit (an int seed and its typed
key alike); another key, another step or another KO instance draws other
numbers: the hard pairing, the collision cells and the diffusion noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ko_optax
from ko_optax import cells
import systems

PARAMS = systems.PARAMS   # the small shared tree


def test_ko_fixed_seed_is_deterministic_and_seeds_differ():
  make = lambda key: ko_optax.ko(1e-2, collision='hard', collision_rate=1.0,
                                 temperature=1e-3, key=key)
  tx = make(5)
  update = jax.jit(tx.update)     # the key enters through the state only
  grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x) ** 2)
                                 for x in jax.tree.leaves(p)))(PARAMS)
  run = lambda state: update(grads, state, PARAMS)[0]
  systems.assert_bitwise(run(tx.init(PARAMS)), run(tx.init(PARAMS)))
  systems.assert_bitwise(run(tx.init(PARAMS)), run(make(jax.random.key(5)).init(
      PARAMS)))
  other = run(make(6).init(PARAMS))
  assert not np.allclose(run(tx.init(PARAMS))['dense']['kernel'],
                         other['dense']['kernel'])


def test_hard_collision_is_deterministic_per_key_and_varies_with_key():
  a = systems.hard_step(jax.random.key(1), 1.0)[2]
  b = systems.hard_step(jax.random.key(1), 1.0)[2]
  c = systems.hard_step(jax.random.key(2), 1.0)[2]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_hard_pairing_changes_between_steps():
  w = jnp.asarray(systems.normal((4, 16), 0))
  g = jnp.asarray(systems.normal((4, 16), 1))
  tx = ko_optax.stochastic_collision(100.0, mode='hard', key=3,
                                     length_scale=1e6)
  state = tx.init(w)
  partners = []
  for _ in range(3):
    new, state = tx.update(g, state, w)
    new = np.asarray(new)
    # With rate 100 every drawn pair collides: momentum pairs are found by
    # matching column sums.
    pairs = set()
    for i in range(16):
      for j in range(i + 1, 16):
        if np.allclose(new[:, i] + new[:, j], g[:, i] + g[:, j], atol=1e-5):
          pairs.add((i, j))
    partners.append(frozenset(pairs))
  assert len(partners[0]) == 8
  assert len(set(partners)) > 1


def test_cells_change_from_step_to_step():
  params = {'w': jnp.asarray(systems.normal((8, 64), 10))}
  grads = {'w': jnp.asarray(systems.normal((8, 64), 11))}
  tx = ko_optax.stochastic_collision(0.5, cell_size=8, key=0)
  update = jax.jit(tx.update)
  state = tx.init(params)
  first, state = update(grads, state, params)
  second, state = update(grads, state, params)
  assert not np.allclose(first['w'], second['w'])
  order_fn = jax.jit(cells.cell_order, static_argnums=2)
  orders = [order_fn(params['w'][None], jax.random.key(k), 8)[0]
            for k in range(3)]
  for order in orders:
    np.testing.assert_array_equal(np.sort(order), np.arange(64))
  assert not np.array_equal(orders[0], orders[1])
  assert not np.array_equal(orders[1], orders[2])


def test_diffusion_seed_and_typed_key_determinism():
  g = jnp.zeros(64)
  runs = []
  for key in (7, 7, jax.random.key(7), 8):
    tx = ko_optax.thermal_diffusion(1.0, key=key)
    runs.append(np.asarray(tx.update(g, tx.init(g))[0]))
  np.testing.assert_array_equal(runs[0], runs[1])
  np.testing.assert_array_equal(runs[0], runs[2])
  assert not np.allclose(runs[0], runs[3])


def test_two_ko_instances_in_multi_transform_draw_different_numbers():
  w, g = systems.keyed()
  params = {'a': w, 'b': w}
  grads = {'a': g, 'b': g}
  for kw in (dict(collision='hard', collision_rate=1.0),
             dict(collision=None, temperature=1.0)):
    tx = optax.multi_transform({'a': ko_optax.ko(1e-2, **kw),
                                'b': ko_optax.ko(1e-2, **kw)},
                               {'a': 'a', 'b': 'b'})
    u, _ = tx.update(grads, tx.init(params), params)
    assert not np.array_equal(u['a'], u['b'])
