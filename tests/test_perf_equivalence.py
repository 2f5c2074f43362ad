"""The fast code paths compute the plain maths, and group leaves exactly.

* ``collision.hard_collision`` (one random-bits draw, row gathers, no
  scatter) against a NumPy loop over the pairs that uses the same random
  numbers (``_random.hard_draws``);
* ``stochastic_collision`` collides leaves of equal particle shape in one
  batched call: the result equals colliding each particle system alone with
  its own share of the step's random numbers
  (``grouping.group_randomness``), for soft, hard and cells;
* the compiled step holds one random-number draw, whatever the number of
  leaves and shapes.
"""

import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import _backend
from ko_optax import _random
from ko_optax import collision
from ko_optax import keys
from ko_optax import leaf_cuts
from ko_optax import particles
from ko_optax.collision import grouping
from ko_optax.collision import hard


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
  fast_fn = jax.jit(collision.hard_collision)
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


# Leaves of two particle shapes, several of each, a stacked leaf whose
# systems have the first shape, a leaf with the first N and a smaller D (it
# is collided with them, zero-padded) and leaves that do not collide.
TREE = {
    'a': jax.random.normal(jax.random.key(0), (6, 10)),
    'b': jax.random.normal(jax.random.key(1), (6, 10)),
    'c': jax.random.normal(jax.random.key(2), (2, 3, 10)),
    'd': jax.random.normal(jax.random.key(3), (4, 6, 10)),
    'e': jax.random.normal(jax.random.key(4), (5, 7)),
    'f': jnp.ones(10),
    'g': jax.random.normal(jax.random.key(5), (4, 10)),  # zero-padded to D=6
}
SPECS = {'a': -1, 'b': -1, 'c': -1, 'd': ko_optax.ParticleSpec(-1, 0),
         'e': -1, 'f': None, 'g': -1}
GRADS = jax.tree.map(lambda x: jnp.cos(3.0 * x) + 0.1, TREE)


def _own_share(randomness, b, d):
  """System ``b``'s share of a group's randomness, cut to its own D."""
  # (M, D) directions (rows) -> the system's own D columns.
  return jax.tree.map(lambda x: x[b] if x.ndim < 3 else x[b, :, :d],
                      randomness)


@pytest.mark.parametrize('options', [
    dict(mode='soft', normalization='norm'),
    dict(mode='hard'),
], ids=['soft-norm', 'hard'])
def test_grouped_collision_equals_each_system_alone(options):
  tx = ko_optax.stochastic_collision(2.0, key=5, particle_axes=SPECS,
                                     **options)
  state = tx.init(TREE)
  grouped, _ = jax.jit(tx.update)(GRADS, state, TREE)
  if options['mode'] == 'soft' and jax.default_backend() == 'cpu':
    # Small soft systems are stacked on CPU too, and looped over.
    text = jax.jit(tx.update).lower(GRADS, state, TREE).as_text()
    assert 'stablehlo.while' in text
  # The same step by hand: one system at a time, with the grouped path's
  # random numbers, each cut to the system's own D.
  _, step_key = jax.random.split(state.key)
  leaves, treedef = jax.tree.flatten(GRADS)
  params = treedef.flatten_up_to(TREE)
  specs = particles.resolve_particle_axes(SPECS, GRADS)
  active = [i for i, s in enumerate(specs) if s is not None]
  full = dict(mode='soft', threshold=0.0, include_self=False,
              normalization=None, length_scale=20.0, cell_size=None,
              cell_groups=1)
  full.update(options)
  groups = grouping.plan_groups([leaves[i] for i in active],
                                 [specs[i] for i in active],
                                 full['cell_size'], full['cell_groups'])
  assert len(groups) < len(active)
  randomness = grouping.group_randomness(
      step_key, groups, mode=full['mode'], cell_size=full['cell_size'],
      cell_groups=full['cell_groups'])
  alone = jax.jit(lambda w, g, r: grouping._collide_system(
      w, g, jnp.float32(2.0), r, **full))
  expected = list(leaves)
  for group, rand in zip(groups, randomness):
    start = 0
    for k, size, d in zip(group.members, group.systems, group.dims):
      i = active[k]
      w = particles.to_particles(params[i], specs[i])
      g = particles.to_particles(leaves[i], specs[i])
      new = jnp.stack([alone(w[b], g[b], _own_share(rand, start + b, d))
                       for b in range(size)])
      expected[i] = particles.from_particles(new, specs[i], leaves[i].shape)
      start += size
  expected = treedef.unflatten(expected)
  for name in TREE:
    np.testing.assert_allclose(grouped[name], expected[name], rtol=2e-5,
                               atol=2e-6, err_msg=name)
  np.testing.assert_array_equal(grouped['f'], GRADS['f'])
  # The stacked path itself (what the transformation runs for the soft
  # collision on GPU and TPU; on CPU it collides leaf by leaf).
  stacked = jax.jit(lambda w, g, r: grouping.collide_groups(
      w, g, [specs[i] for i in active], groups, r, 2.0,
      **full))(
          [params[i] for i in active], [leaves[i] for i in active],
          randomness)
  for k, i in enumerate(active):
    np.testing.assert_allclose(stacked[k], jax.tree.leaves(expected)[i],
                               rtol=2e-5, atol=2e-6)


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


def test_groups_of_one_n_merge_only_while_padding_is_cheap():
  def groups(shapes, **cells):
    leaves = [jnp.zeros(s) for s in shapes]
    specs = [particles.normalize_spec(-1, s) for s in shapes]
    return [(g.d, g.n, g.members) for g in grouping.plan_groups(
        leaves, specs, **cells)]
  # ResNet-like: one stem conv (D=27) and four 3x3 convs (D=144) of N=16.
  resnet = [(3, 3, 3, 16)] + [(3, 3, 16, 16)] * 4
  assert groups(resnet) == [(144, 16, (1, 2, 3, 4, 0))]
  # GPT-like: 4 (128 x 128) projections and one (512 x 128) MLP kernel per
  # block: padding the projections to D=512 would be 2.5x the work.
  gpt = [(128, 128)] * 4 + [(512, 128)]
  assert groups(gpt) == [(512, 128, (4,)), (128, 128, (0, 1, 2, 3))]
  # Collision cells hash in D dimensions: never padded.
  assert len(groups(resnet, cell_size=4)) == 2


def _distinct_kernels(compiled_text):
  """Fused computations of an optimized HLO module that differ in more than
  their names: what XLA:CPU compiles once each."""
  bodies = set()
  for block in re.split(r'\n(?=%|ENTRY)', compiled_text):
    if block.startswith(('%fused_computation', '%wrapped')):
      body = re.sub(r', metadata=\{[^}]*\}', '', block.split('\n', 1)[1])
      bodies.add(re.sub(r'%[\w.\-]+', '%', body))
  return len(bodies)


def test_base_optimizer_kernels_stay_shared_between_equal_leaves(
    monkeypatch):
  # Leaves cut out of a group's stack at constant offsets make XLA compile
  # the base optimizer's kernels once per leaf. On CPU the cuts are at
  # run-time offsets: a deeper stack of equal blocks adds no kernel at all.
  # Elsewhere each cut leaf is divided by a run-time 1: at most one small
  # kernel per colliding leaf. The updates are the same bit for bit.
  def build(blocks):
    params = {f'b{i}': {'w': jax.random.normal(jax.random.key(i), (8, 12)),
                        'v': jax.random.normal(jax.random.key(-i), (16, 12)),
                        'b': jnp.zeros(12)} for i in range(blocks)}
    tx = ko_optax.ko(1e-3, collision_rate=0.5)
    state = tx.init(params)
    compiled = jax.jit(lambda p, s: tx.update(p, s, p)).lower(
        params, state).compile()
    return _distinct_kernels(compiled.as_text()), compiled(params, state)[0]
  one = leaf_cuts.run_time_one(jnp.int32(0))
  odd = jnp.array([jnp.inf, -jnp.inf, 0.0, -0.0, 3e38, 1.2e-38])
  np.testing.assert_array_equal(leaf_cuts.materialized(odd, one), odd)
  assert bool(jnp.isnan(leaf_cuts.materialized(jnp.float32(jnp.nan), one)))
  assert _backend.cut_at_run_time_offsets()             # the CPU default
  (few, _), (many, updates) = build(2), build(5)
  assert many - few <= 2, (few, many)
  extra_leaves = 2 * (5 - 2)                     # w and v collide
  monkeypatch.setattr(_backend, 'cut_at_run_time_offsets', lambda: False)
  (few_div, _), (many_div, divided) = build(2), build(5)
  assert many_div - few_div <= extra_leaves + 2, (few_div, many_div)
  # The static cut alone lets Adam's kernels multiply with the leaves.
  monkeypatch.setattr(leaf_cuts, 'run_time_one', lambda count: None)
  static, same = build(5)
  assert static - few_div >= many_div - few_div + extra_leaves // 2, (
      few_div, many_div, static)
  for other in (divided, same):
    jax.tree.map(np.testing.assert_array_equal, updates, other)


def test_run_time_offsets_are_exact_and_unbatched_under_vmap():
  # The offsets are the given ints; under jax.vmap (seeds side by side)
  # they stay unbatched, so a cut is a dynamic_slice, not a gather; and the
  # conditional that hides them is not folded away: two cuts of one shape
  # at different offsets compile to one kernel.
  x = jnp.arange(2 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 3)
  ones = leaf_cuts.run_time_one(jnp.arange(2))

  def cuts(x, one):
    a, b = leaf_cuts.run_time_offsets([2, 6], one)
    return (2 * jax.lax.dynamic_slice_in_dim(x, a, 4, 0) + 1,
            2 * jax.lax.dynamic_slice_in_dim(x, b, 4, 0) + 1)

  batched = jax.jit(jax.vmap(cuts))
  a, b = batched(x, ones)
  np.testing.assert_array_equal(a, 2 * x[:, 2:6] + 1)
  np.testing.assert_array_equal(b, 2 * x[:, 6:10] + 1)
  hlo = batched.lower(x, ones).compile().as_text()
  assert ' gather(' not in hlo and ' dynamic-slice(' in hlo
  one_cut = jax.jit(cuts).lower(x[0], ones[0]).compile().as_text()
  static = jax.jit(lambda x: (2 * x[2:6] + 1, 2 * x[6:10] + 1)).lower(
      x[0]).compile().as_text()
  assert 'conditional' in one_cut
  assert _distinct_kernels(static) == 2
  assert _distinct_kernels(one_cut) < _distinct_kernels(static) + 1


def test_group_randomness_inverse_undoes_the_pairing():
  # The hard path takes the inverse permutation from a second sort;
  # momentum and energy cannot see a wrong one (they are sums over the
  # particles), so check it, and the collision, against NumPy's argsort.
  leaves = [GRADS['a'], GRADS['b']]             # one group of two
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
