"""The random draws: one threefry draw per step, cut into what each part
needs.

Words come from a draw of whole blocks of 16 (fast on XLA:CPU); directions
are isotropic and normals standard; the compiled step holds one draw
whatever the number of leaves and shapes; the hard path's inverse
permutation undoes its pairing.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import _random
from ko_optax import keys
from ko_optax import particles
from ko_optax.collision import grouping
from ko_optax.collision import hard


def _random_bits_shapes(jaxpr):
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'random_bits':
      shapes.append(tuple(eqn.params['shape']))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      shapes += _random_bits_shapes(sub)
  return shapes


@pytest.mark.parametrize('shape', [(1,), (15,), (16,), (17,), (608538,),
                                   (3, 5, 7)])
def test_random_words_are_cut_from_a_draw_of_whole_blocks_of_16(shape):
  # On XLA:CPU a threefry draw whose number of counter pairs is odd runs
  # 4-8x slower than one a word longer: every draw is a multiple of 16
  # words, cut to the size asked for.
  key = jax.random.key(11)
  size = int(np.prod(shape))
  padded = -(-size // 16) * 16
  words = _random.random_words(key, shape)
  assert words.shape == shape and words.dtype == jnp.uint32
  with keys.draw_layout():
    whole = jax.random.bits(key, (padded,), jnp.uint32)
  np.testing.assert_array_equal(words, np.asarray(whole)[:size].reshape(shape))
  jaxpr = jax.make_jaxpr(lambda k: _random.random_words(k, shape))(key)
  assert _random_bits_shapes(jaxpr.jaxpr) == [(padded,)]


def test_unit_directions_are_isotropic():
  bits = jax.random.bits(jax.random.key(3), (3, 4000), jnp.uint32)
  u = np.asarray(_random.unit_directions(bits, jnp.float32)).T
  np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(u.mean(0), 0.0, atol=0.06)
  np.testing.assert_allclose((u ** 2).mean(0), 1.0 / 3, atol=0.03)
  z = np.asarray(_random.normal_from_bits(
      jax.random.bits(jax.random.key(4), (20000,), jnp.uint32), jnp.float32))
  assert np.all(np.isfinite(z))
  assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.03



def _random_bits_calls(jaxpr):
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name in ('random_bits', 'threefry2x32')
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _random_bits_calls(sub)
  return count


def test_one_random_draw_whatever_the_leaves_and_shapes():
  def calls(num_leaves, shapes):
    params = {f'l{i}_{j}': jnp.ones(s) for i in range(num_leaves)
              for j, s in enumerate(shapes)}
    tx = ko_optax.stochastic_collision(0.5, mode='hard')
    jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr
    return _random_bits_calls(jaxpr)
  one = calls(1, [(4, 6)])
  assert one > 0
  assert calls(12, [(4, 6), (3, 5), (2, 2, 7)]) == one



def test_group_randomness_inverse_undoes_the_pairing():
  # The hard path takes the inverse permutation from a second sort;
  # momentum and energy cannot see a wrong one (they are sums over the
  # particles), so check it, and the collision, against NumPy's argsort.
  # One group of two (6, 10) leaves.
  leaves = [jnp.cos(3.0 * jax.random.normal(jax.random.key(k), (6, 10))) + 0.1
            for k in (0, 1)]
  specs = [particles.normalize_spec(-1, x.shape) for x in leaves]
  groups = grouping.plan_groups(leaves, specs)
  for group, rand in zip(groups, grouping.group_randomness(
      jax.random.key(4), groups, mode='hard')):
    order, u, directions, inverse = rand
    n = group.n
    for b in range(order.shape[0]):
      np.testing.assert_array_equal(order[b][inverse[b]], np.arange(n))
    w = jax.random.normal(jax.random.key(5), (group.d, n))
    g = jax.random.normal(jax.random.key(6), (group.d, n))
    run = jax.jit(lambda w, g, o, u, d, inv: hard.collide_in_pairing(
        w, g, jnp.float32(3.0), o, u, d, inv, length_scale=20.0))
    share = (w, g, order[0], u[0], directions[0])
    np.testing.assert_array_equal(
        run(*share, inverse[0]),
        run(*share, jnp.asarray(np.argsort(np.asarray(order[0])),
                                jnp.int32)))
