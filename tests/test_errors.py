"""Bad input fails early with a message that names the argument or leaf.

Arguments are checked at construction (``ko``, ``stochastic_collision``,
``thermal_diffusion``, ``kinetic_advection``); trees and layouts at the
first update; settings that do nothing, and layouts that would be slow,
warn. Errors of the particle layouts (``ParticleSpec``) are in
test_particles.py, those of the recipes in test_recipes.py.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax

# -- at construction ---------------------------------------------------------


@pytest.mark.parametrize('kwargs, match', [
    (dict(base='rmsprop'), 'base must be one of'),
    (dict(base=3), 'base must be'),
    (dict(collision='elastic'), 'collision must be one of'),
    (dict(learning_rate=-1.0), 'learning_rate must be >= 0'),
    (dict(temperature=-1.0), 'temperature must be >= 0'),
    (dict(collision_rate=-0.5), 'collision_rate must be >= 0'),
    (dict(weight_decay=-0.5), 'weight_decay must be >= 0'),
])
def test_ko_bad_arguments(kwargs, match):
  kwargs = {'learning_rate': 1e-2, **kwargs}
  with pytest.raises((ValueError, TypeError), match=match):
    ko_optax.ko(**kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(collision_rate=-0.1), 'collision_rate must be >= 0'),
    (dict(collision_rate=0.1, mode='elastic'), 'mode must be one of'),
    (dict(collision_rate=0.1, normalization='l2'), 'normalization must be'),
    (dict(collision_rate=0.1, length_scale=0.0), 'length_scale must be > 0'),
    (dict(collision_rate=0.1, cell_size=0), 'cell_size must be'),
    (dict(collision_rate=0.1, key=jax.random.PRNGKey(0)), 'legacy'),
])
def test_stochastic_collision_bad_arguments(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    tx = ko_optax.stochastic_collision(**kwargs)
    tx.init(jnp.ones((2, 2)))


def test_negative_temperature_is_rejected():
  with pytest.raises(ValueError, match='temperature must be >= 0'):
    ko_optax.thermal_diffusion(-1.0)


@pytest.mark.parametrize('make', [
    lambda: ko_optax.ko(1e-3, collision_rate=np.inf),
    lambda: ko_optax.ko(1e-3, temperature=np.inf),
    lambda: ko_optax.stochastic_collision(np.inf),
    lambda: ko_optax.thermal_diffusion(np.inf),
])
def test_an_infinite_rate_is_rejected(make):
  with pytest.raises(ValueError, match='must be finite'):
    make()


@pytest.mark.parametrize('make,name', [
    (lambda: ko_optax.ko(1e-3, collision_rate='hot'), 'collision_rate'),
    (lambda: ko_optax.ko(1e-3, collision_rate=None), 'collision_rate'),
    (lambda: ko_optax.ko(1e-3, collision=None, collision_rate='hot'),
     'collision_rate'),
    (lambda: ko_optax.ko(1e-3, temperature='warm'), 'temperature'),
    (lambda: ko_optax.ko('fast'), 'learning_rate'),
    (lambda: ko_optax.ko(1e-3, b1='0.9'), 'b1'),
    (lambda: ko_optax.ko(1e-3, momentum='high', base='sgd'), 'momentum'),
    (lambda: ko_optax.ko(1e-3, threshold='0'), 'threshold'),
    (lambda: ko_optax.ko(1e-3, length_scale=None), 'length_scale'),
    (lambda: ko_optax.ko(1e-3, collision_rate=jnp.ones(3)), 'collision_rate'),
    (lambda: ko_optax.stochastic_collision('hot'), 'collision_rate'),
    (lambda: ko_optax.thermal_diffusion(None), 'temperature'),
    (lambda: ko_optax.kinetic_advection(eps='tiny'), 'eps'),
])
def test_type_errors_come_at_construction_and_name_the_argument(make, name):
  with pytest.raises(TypeError, match=name):
    make()


def test_a_nan_threshold_is_rejected():
  with pytest.raises(ValueError, match='threshold'):
    ko_optax.ko(1e-3, collision='soft', threshold=float('nan'))
  with pytest.raises(ValueError, match='threshold'):
    ko_optax.stochastic_collision(0.1, threshold=float('nan'))


@pytest.mark.parametrize('base', [optax.adam(1e-3), optax.sgd(0.1)])
def test_a_base_with_a_learning_rate_is_rejected(base):
  with pytest.raises(ValueError, match='complete optimizer'):
    ko_optax.ko(1e-3, base=base)
  ko_optax.ko(1e-3, base=optax.scale_by_adam())   # the right form


@pytest.mark.parametrize('kwargs, match', [
    (dict(base=optax.scale_by_lion()), 'momentum buffer'),
    (dict(base='sgd', momentum=None), 'momentum buffer'),
    (dict(collide_on='momentum'), 'collide_on'),
])
def test_velocity_collision_bad_input(kwargs, match):
  kwargs = {'collide_on': 'velocity', **kwargs}
  with pytest.raises(ValueError, match=match):
    ko_optax.ko(1e-2, **kwargs)


def test_the_advected_collision_must_be_a_transformation():
  with pytest.raises(TypeError, match='stochastic_collision'):
    ko_optax.kinetic_advection('adam', collision=0.1)


# -- warnings at construction ------------------------------------------------


@pytest.mark.parametrize('make,name', [
    (lambda: ko_optax.ko(1e-3, cell_groups=2), 'cell_groups'),
    (lambda: ko_optax.stochastic_collision(0.1, cell_groups=2), 'cell_groups'),
    (lambda: ko_optax.ko(1e-3, collision=None, normalization='mean'),
     'normalization'),
    (lambda: ko_optax.ko(1e-3, collision=None, collide_on='velocity'),
     'collide_on'),
])
def test_settings_that_do_nothing_warn(make, name):
  with pytest.warns(UserWarning, match=f'{name}=.* has no effect'):
    make()


def test_hard_velocity_collision_on_adam_warns():
  with pytest.warns(UserWarning, match='unstable'):
    ko_optax.ko(1e-3, collide_on='velocity')   # hard and adam are defaults


# -- at the first update -----------------------------------------------------


@pytest.mark.parametrize('make, grads', [
    (lambda: ko_optax.stochastic_collision(0.1), jnp.ones((3, 3))),
    (ko_optax.ko, {'dense': {'kernel': jnp.ones((5, 8)), 'bias': jnp.ones(8)},
                   'conv': {'kernel': jnp.ones((3, 3, 2, 4))}}),
], ids=['stochastic_collision', 'ko'])
def test_missing_params_raises(make, grads):
  tx = make(1e-2) if make is ko_optax.ko else make()
  with pytest.raises(ValueError, match='needs the current params'):
    tx.update(grads, tx.init(grads))


def test_mismatched_params_raise():
  tx = ko_optax.stochastic_collision(0.1)
  g = {'a': jnp.ones((3, 3))}
  with pytest.raises(ValueError, match='params must have the same tree'):
    tx.update(g, tx.init(g), {'b': jnp.ones((3, 3))})
  with pytest.raises(ValueError, match='different shapes'):
    tx.update(g, tx.init(g), {'a': jnp.ones((3, 4))})


def test_particle_axes_out_of_range_raises_at_update():
  tx = ko_optax.stochastic_collision(0.1, particle_axes=2)
  g = jnp.ones((3, 3))
  with pytest.raises(ValueError, match='out of range'):
    tx.update(g, tx.init(g), g)


def test_cell_groups_must_divide_n():
  params = {'w': jnp.asarray(np.random.default_rng(16).normal(
      size=(4, 10)).astype(np.float32))}
  tx = ko_optax.stochastic_collision(0.1, cell_size=2, cell_groups=3)
  with pytest.raises(ValueError, match='cell_groups=3 must divide'):
    tx.update(params, tx.init(params), params)


def test_integer_gradients_are_rejected():
  tx = ko_optax.stochastic_collision(0.1)
  g = jnp.ones((3, 3), jnp.int32)
  with pytest.raises(TypeError, match='floating-point'):
    tx.update(g, tx.init(g), g)


def test_integer_leaves_are_rejected_naming_the_leaf():
  params = {'layer': {'kernel': jnp.ones((4, 3), jnp.int32)}}
  tx = ko_optax.ko(1e-3, mask=True, temperature=1e-8, collision=None)
  with pytest.raises(TypeError, match=r"\['layer'\]\['kernel'\]"):
    tx.update(params, tx.init(params), params)


def test_a_huge_all_pairs_soft_kernel_warns_once_at_trace_time():
  tx = ko_optax.ko(1e-3, collision='soft')
  params = {'head': {'kernel': jax.ShapeDtypeStruct((8, 16384), jnp.float32)}}
  state = jax.eval_shape(tx.init, params)
  with pytest.warns(UserWarning, match=r"\['head'\]\['kernel'\].*1\.0 GiB"
                    r".*cell_size=.*collision=\"hard\""):
    jax.eval_shape(tx.update, params, state, params)
  cells = ko_optax.ko(1e-3, collision='soft', cell_size=256)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    jax.eval_shape(cells.update, params, jax.eval_shape(cells.init, params),
                   params)
