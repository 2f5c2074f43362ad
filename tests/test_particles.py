"""The particle view: which axes of a leaf index the neurons."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ko_optax import particles


TREE = {
    'dense': jnp.zeros((3, 5)),
    'conv': jnp.zeros((2, 2, 3, 4)),
    'bias': jnp.zeros(5),
    'scalar': jnp.zeros(()),
}


def test_default_is_last_axis_of_matrices():
  axes = particles.resolve_particle_axes(None, TREE)
  # jax.tree.leaves sorts dict keys: bias, conv, dense, scalar.
  assert axes == [None, (3,), (1,), None]


def test_single_int_applies_to_matrix_leaves_only():
  axes = particles.resolve_particle_axes(0, TREE)
  assert axes == [None, (0,), (0,), None]


def test_tree_spec_tuple_axes_and_none():
  spec = {'dense': None, 'conv': (-2, -1), 'bias': None, 'scalar': None}
  axes = particles.resolve_particle_axes(spec, TREE)
  assert axes == [None, (2, 3), None, None]


def test_callable_spec_is_resolved_from_updates():
  calls = []

  def spec(updates):
    calls.append(jax.tree.map(jnp.shape, updates))
    return jax.tree.map(lambda x: 0 if x.ndim == 2 else None, updates)

  axes = particles.resolve_particle_axes(spec, TREE)
  assert axes == [None, None, (0,), None]
  assert calls


def test_mask_switches_leaves_off():
  mask = {'dense': False, 'conv': True, 'bias': True, 'scalar': True}
  axes = particles.resolve_particle_axes(None, TREE, mask)
  assert axes == [None, (3,), None, None]


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
  p = particles.to_particles(x, axes)
  d, n = particles.particle_shape(shape, axes)
  assert p.shape == (d, n)
  np.testing.assert_array_equal(particles.from_particles(p, axes, shape), x)
  # Column k is the k-th particle: the slice at index k of the particle axes.
  moved = np.moveaxis(np.asarray(x), axes, range(-len(axes), 0))
  np.testing.assert_array_equal(p, moved.reshape(d, n))
