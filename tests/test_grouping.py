"""Grouped collisions: leaves of equal particle shape collide in one
batched call, exactly as each particle system alone.

* ``stochastic_collision`` collides leaves of equal particle shape in one
  batched call: the result equals colliding each particle system alone with
  its own share of the step's random numbers
  (``grouping.group_randomness``), for soft and hard;
* which leaves are grouped (padding only while it is cheap);
* the leaves cut out of a group's stack keep the base optimizer's kernels
  shared (run-time offsets), bit for bit the same updates.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import _backend
from ko_optax import leaf_cuts
from ko_optax import particles
from ko_optax.collision import grouping

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
