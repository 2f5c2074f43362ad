"""The particle view: which axes of a leaf index the neurons."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import particles

PS = particles.ParticleSpec


def _axes(specs):
  """The particle axes of resolved specs (None where a leaf has none)."""
  return [None if s is None else s.particle_axes for s in specs]


TREE = {
    'dense': jnp.zeros((3, 5)),
    'conv': jnp.zeros((2, 2, 3, 4)),
    'bias': jnp.zeros(5),
    'scalar': jnp.zeros(()),
}


def test_default_is_last_axis_of_matrices():
  specs = particles.resolve_particle_axes(None, TREE)
  # jax.tree.leaves sorts dict keys: bias, conv, dense, scalar.
  assert specs == [None, PS((3,), ()), PS((1,), ()), None]


def test_single_int_applies_to_matrix_leaves_only():
  axes = particles.resolve_particle_axes(0, TREE)
  assert _axes(axes) == [None, (0,), (0,), None]


def test_tree_spec_tuple_axes_and_none():
  spec = {'dense': None, 'conv': (-2, -1), 'bias': None, 'scalar': None}
  axes = particles.resolve_particle_axes(spec, TREE)
  assert _axes(axes) == [None, (2, 3), None, None]


def test_callable_spec_is_resolved_from_updates():
  calls = []

  def spec(updates):
    calls.append(jax.tree.map(jnp.shape, updates))
    return jax.tree.map(lambda x: 0 if x.ndim == 2 else None, updates)

  axes = particles.resolve_particle_axes(spec, TREE)
  assert _axes(axes) == [None, None, (0,), None]
  assert calls


def test_mask_switches_leaves_off():
  mask = {'dense': False, 'conv': True, 'bias': True, 'scalar': True}
  axes = particles.resolve_particle_axes(None, TREE, mask)
  assert _axes(axes) == [None, (3,), None, None]


@pytest.mark.parametrize('bad, match', [
    (5, 'out of range'),
    ((0, 0), 'repeats'),
    ({'dense': 0, 'conv': None, 'bias': 0, 'scalar': None}, 'ndim >= 2'),
    ({'dense': 0}, 'particle_axes must be'),
    ('x', 'particle_axes must be'),
])
def test_bad_specs_name_the_argument(bad, match):
  with pytest.raises((ValueError, TypeError), match=match):
    particles.resolve_particle_axes(bad, TREE)


def test_all_axes_is_rejected():
  with pytest.raises(ValueError, match='at least one axis'):
    particles.resolve_particle_axes((0, 1), {'w': jnp.zeros((2, 3))})


@pytest.mark.parametrize('shape, axes', [
    ((3, 5), (1,)), ((3, 5), (0,)), ((2, 3, 4, 5), (3,)),
    ((2, 3, 4, 5), (2,)), ((4, 3, 5), (1, 2)), ((4, 3, 5), (0, 2)),
])
def test_particle_matrix_round_trip(shape, axes):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  spec = PS(axes, ())
  p = particles.to_particles(x, spec)
  b, d, n = particles.particle_shape(shape, spec)
  assert p.shape == (b, d, n) == (1, d, n)
  np.testing.assert_array_equal(particles.from_particles(p, spec, shape), x)
  # Column k is the k-th particle: the slice at index k of the particle axes.
  moved = np.moveaxis(np.asarray(x), axes, range(-len(axes), 0))
  np.testing.assert_array_equal(p[0], moved.reshape(d, n))


@pytest.mark.parametrize('shape, spec', [
    ((4, 3, 5), PS(-1, 0)), ((2, 4, 3, 5), PS(-1, (0, 1))),
    ((3, 4, 5), PS(0, 2)), ((4, 2, 3, 5), PS((1, 3), 0)),
])
def test_batched_particle_matrices_are_the_systems(shape, spec):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  norm = particles.normalize_spec(spec, shape)
  p = particles.to_particles(x, norm)
  b, d, n = particles.particle_shape(shape, norm)
  assert p.shape == (b, d, n)
  np.testing.assert_array_equal(particles.from_particles(p, norm, shape), x)
  # System k is the k-th slice along the batch axes, laid out as alone.
  moved = np.moveaxis(np.asarray(x), norm.batch_axes,
                      range(len(norm.batch_axes))).reshape(
                          (b,) + tuple(shape[a] for a in range(len(shape))
                                       if a not in norm.batch_axes))
  rest = [a for a in range(len(shape)) if a not in norm.batch_axes]
  alone_axes = tuple(rest.index(a) for a in norm.particle_axes)
  for k in range(b):
    alone = particles.to_particles(moved[k], PS(alone_axes, ()))
    np.testing.assert_array_equal(p[k], alone[0])


def test_single_particle_spec_skips_leaves_without_enough_axes():
  tree = {'stacked_bias': jnp.zeros((4, 8)), 'stacked': jnp.zeros((4, 3, 8))}
  specs = particles.resolve_particle_axes(PS(-1, 0), tree)
  assert specs == [PS((2,), (0,)), None]


@pytest.mark.parametrize('bad, match', [
    (PS(-1, -1), 'share an axis'),
    (PS((1, 2), 0), 'every axis'),
    (PS((), 0), 'no axis'),
    (PS(-1, 5), 'out of range'),
    (PS('x', 0), 'must be an int'),
])
def test_bad_particle_specs_name_the_leaf(bad, match):
  with pytest.raises((ValueError, TypeError), match=match):
    particles.resolve_particle_axes({'w': bad}, {'w': jnp.zeros((4, 3, 5))})


def test_flax_rules_stacked_leaves_become_systems():
  params = {
      'blocks': {'attn': {'query': {'kernel': jnp.zeros((3, 16, 2, 8)),
                                    'bias': jnp.zeros((3, 2, 8))}},
                 'mlp': {'kernel': jnp.zeros((3, 16, 64)),
                         'bias': jnp.zeros((3, 64))},
                 'ln': {'scale': jnp.zeros((3, 16))}},
      'embed': {'embedding': jnp.zeros((100, 16))},
      'head': {'kernel': jnp.zeros((16, 100))},
  }
  spec = ko_optax.flax_particle_axes(stacked='blocks')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    got = particles.resolve_particle_axes(spec, params)
  # Leaves in order: query bias, query kernel, ln scale, mlp bias, mlp
  # kernel, embedding, head kernel.
  assert got == [None, PS((2, 3), (0,)), None, None, PS((2,), (0,)), None,
                 PS((1,), ())]
  by_predicate = ko_optax.flax_particle_axes(
      stacked=lambda path: "'blocks'" in path)
  assert particles.resolve_particle_axes(by_predicate, params) == got


def test_unstacked_3d_kernel_warns_naming_the_leaf_and_the_fix():
  params = {'blocks': {'mlp': {'kernel': jnp.zeros((3, 16, 64))}}}
  with pytest.warns(UserWarning, match=r"(?s)'mlp'.*flax_particle_axes"):
    got = particles.resolve_particle_axes(None, params)
  assert got == [PS((2,), ())]


def test_flax_particle_axes_rejects_bad_arguments():
  with pytest.raises(TypeError, match='stacked'):
    ko_optax.flax_particle_axes(stacked=[1])
  with pytest.raises(ValueError, match='stack_axes'):
    ko_optax.flax_particle_axes(stack_axes=0)
