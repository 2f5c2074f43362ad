"""``ko``: the Kinetics-inspired Optimizer as one optax chain.

One KO step is one time step of a split Boltzmann-equation solver::

    optax.chain(
        stochastic_collision(...),      # similar neurons exchange momentum
        thermal_diffusion(...),         # optional temperature-driven noise
        kinetic_advection(base, ...),   # Adam / SGD turns force into velocity
        add_decayed_weights(...),       # optional, decoupled as in AdamW
        scale_by_learning_rate(lr),     # the time step of free streaming
    )

With the collision and the diffusion switched off it is exactly its base
optimizer (``optax.adam``, ``optax.sgd`` or ``optax.adamw``). With
``collide_on='velocity'`` the collision moves into the advection step and
acts on the base's momentum buffer instead of the gradient.
"""

from __future__ import annotations

from typing import Any
import warnings

import jax
import optax

from ko_optax import _checks
from ko_optax import advection
from ko_optax import diffusion
from ko_optax import particles as particles_lib
from ko_optax.collision import transform as collision_lib

COLLISIONS = ('soft', 'hard', None)
COLLIDE_ON = ('gradient', 'velocity')


def _is_python_zero(value: Any) -> bool:
  # Only Python numbers: arrays may be tracers in inject_hyperparams' update
  # while concrete in its init, and the chain must have the same structure in
  # both.
  return isinstance(value, (int, float)) and not isinstance(
      value, bool) and value == 0


def _check_arguments(collision: Any, collide_on: Any, normalization: Any,
                     *numbers: Any) -> None:
  """Checks :func:`ko`'s choices and numbers, whatever the mode, so that a
  bad value is reported by name at construction, not inside update
  (docs/method.md, "Bad values")."""
  (learning_rate, collision_rate, temperature, weight_decay, threshold,
   length_scale) = numbers
  _checks.check_choice('collision', collision, COLLISIONS)
  _checks.check_choice('collide_on', collide_on, COLLIDE_ON)
  for name, value in (('learning_rate', learning_rate),
                      ('collision_rate', collision_rate),
                      ('temperature', temperature),
                      ('weight_decay', weight_decay)):
    _checks.check_non_negative(name, value)
  _checks.check_finite('collision_rate', collision_rate)
  _checks.check_finite('temperature', temperature)
  collision_lib.check_options(threshold, length_scale)
  if collision is None:
    if normalization != 'norm':
      _checks.warn_ineffective('normalization', normalization,
                               'collision is None', stacklevel=3)
    if collide_on != 'gradient':
      _checks.warn_ineffective('collide_on', collide_on, 'collision is None',
                               stacklevel=3)


def _check_unused_collision(normalization: Any, cell_size: Any,
                            cell_groups: Any) -> None:
  """Checks the collision's options when no collision step is built."""
  _checks.check_choice('normalization', normalization,
                       collision_lib.NORMALIZATIONS)
  _checks.check_positive_int_or_none('cell_size', cell_size)
  if cell_groups is not None and cell_size is None:
    _checks.warn_ineffective(
        'cell_groups', cell_groups, 'it splits collision cells, and '
        'cell_size is None (all pairs collide)', stacklevel=3)


def _warn_if_unstable(collision: str, base: Any) -> None:
  """Warns about collisions of the velocity that Adam cannot take."""
  if collision != 'hard' or not (isinstance(base, str) and base == 'adam'):
    return
  warnings.warn(
      "ko(collision='hard', collide_on='velocity', base='adam') is "
      "unstable: scattering Adam's first moment gives it components where "
      'the second moment is ~0, and m / sqrt(v) explodes '
      "(docs/benchmarks.md). Use collide_on='gradient', collision='soft' or "
      "base='sgd'.", stacklevel=4)


def ko(
    learning_rate: optax.ScalarOrSchedule,
    *,
    base: str | optax.GradientTransformation = 'adam',
    collision: str | None = 'hard',
    collision_rate: optax.ScalarOrSchedule = 0.1,
    temperature: optax.ScalarOrSchedule = 0.0,
    key: Any = 0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    momentum: float | None = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mask: particles_lib.MaskSpec = None,
    particle_axes: particles_lib.ParticleAxesSpec = None,
    threshold: float = 0.0,
    include_self: bool = False,
    length_scale: float = 20.0,
    normalization: str | None = 'norm',
    cell_size: int | None = None,
    cell_groups: int | None = None,
    collide_on: str = 'gradient',
) -> optax.GradientTransformationExtraArgs:
  """The Kinetics-inspired Optimizer (KO): collisions, diffusion, advection.

  Every argument is explicit (no ``**kwargs``), so
  ``optax.inject_hyperparams(ko_optax.ko)(...)`` can change
  ``learning_rate``, ``collision_rate``, ``temperature`` and
  ``weight_decay`` between steps under jit. Pass callables that are not
  schedules (a ``mask`` or ``particle_axes`` function) through
  ``inject_hyperparams``'s ``static_args``.

  Args:
    learning_rate: the time step (float or optax schedule).
    base: the advection: ``'adam'``, ``'sgd'`` (with ``momentum``) or any
      ``optax.GradientTransformation`` without learning rate
      (``optax.scale_by_adam()``, not ``optax.adam(1e-3)``: a base whose
      probe update descends is rejected with a ``ValueError``).
    collision: ``'hard'`` (DSMC, O(N D) per leaf; the default, chosen on
      validation accuracy, see docs/benchmarks.md), ``'soft'`` (mean-field,
      O(N^2 D) per leaf, the paper's practical form) or None (no
      collisions).
    collision_rate: the collision coefficient gamma_c (float or schedule);
      0.1, the reference code's value, was also the best rate on
      validation for both modes.
    temperature: diffusion temperature T (float or schedule); 0 (the
      default) leaves the diffusion step out.
    key: int seed or typed ``jax.random.key``; the collision and the
      diffusion draw from independent streams derived from it, with the
      tree's leaf paths folded in at ``init`` (two ``ko()`` on different
      leaves, e.g. under ``optax.multi_transform``, draw different numbers).
    b1, b2, eps, eps_root, mu_dtype: Adam's arguments (``base='adam'``).
    momentum: SGD momentum (``base='sgd'``); None for plain SGD.
    nesterov: Nesterov momentum (both bases).
    weight_decay: decoupled weight decay, as in ``optax.adamw``; 0 leaves it
      out.
    weight_decay_mask: ``optax.adamw``'s ``mask`` for the weight decay.
    mask: which leaves KO's collisions and noise act on (tree of bools or
      callable); the advection acts on all leaves.
    particle_axes: which axes index the neurons of each leaf (a
      :class:`ko_optax.ParticleSpec`, a tree of them or a callable); None
      reads Flax's standard layers by name
      (:func:`ko_optax.flax_particle_axes`). For scanned layer stacks pass
      ``ko_optax.flax_particle_axes(stacked='<stack name>')``; see
      :func:`ko_optax.stochastic_collision`.
    normalization: soft mode only. ``'norm'`` (the default here) rescales
      each particle's repulsion to exactly ``rate * |g_i|``, however alike
      or unlike the particles are; ``'similarity'`` divides the plain sum
      by ``max(1, sum_j |S_ij|)``, so the push grows with similarity and
      is bounded; None is the paper's plain sum,
      which reverses the gradient of condensed layers once
      ``rate * (N - 1) > 1``, and amplifies it past 2 (docs/method.md);
      ``'mean'`` divides it by
      ``N - 1``. ``stochastic_collision`` keeps the paper's None default.
    threshold, include_self, length_scale, cell_size, cell_groups: the
      collision's options; see :func:`ko_optax.stochastic_collision`.
    collide_on: ``'gradient'`` (the paper: collide the force before the
      base optimizer) or ``'velocity'`` (collide the base's momentum buffer,
      Adam's first moment or SGD's trace, and keep the collided value, as a
      gas particle keeps its velocity; needs ``base='adam'`` or ``'sgd'``
      with momentum). See :func:`ko_optax.kinetic_advection`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs params
    whenever collisions are on. Bad values (docs/method.md): a neuron
    holding a NaN or an Inf does not collide and passes through; a finite
    entry never becomes non-finite; a NaN, infinite or negative run-time
    ``collision_rate`` or ``temperature`` makes the updates NaN, with and
    without jit; every number is type-checked here, naming the argument.

  Example:
    >>> import jax, jax.numpy as jnp, optax, ko_optax
    >>> params = {'w': jax.random.normal(jax.random.key(0), (8, 16))}
    >>> loss = lambda p: jnp.sum((jnp.ones(8) @ p['w'] - 1.0) ** 2)
    >>> tx = ko_optax.ko(1e-2, collision_rate=0.1)
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(3):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params['w'].shape
    (8, 16)

  References:
    Feng, Huang, Fu, Wang, Yan, `KO: Kinetics-inspired Neural Optimizer with
    PDE Simulation Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  """
  _check_arguments(collision, collide_on, normalization, learning_rate,
                   collision_rate, temperature, weight_decay, threshold,
                   length_scale)
  steps: list[optax.GradientTransformation] = []
  collide = collision is not None and not _is_python_zero(collision_rate)
  diffuse = not _is_python_zero(temperature)
  if collide or diffuse:
    root = _checks.canonicalize_key(key)
  collide_velocity = None
  if collide and collision is not None:
    collision_step = collision_lib.stochastic_collision(
        collision_rate, mode=collision, key=jax.random.fold_in(root, 0),
        particle_axes=particle_axes, mask=mask, threshold=threshold,
        include_self=include_self, length_scale=length_scale,
        normalization=normalization if collision == 'soft' else None,
        cell_size=cell_size, cell_groups=cell_groups)
    if collide_on == 'gradient':
      steps.append(collision_step)
    else:
      collide_velocity = collision_step
      _warn_if_unstable(collision, base)
  else:
    _check_unused_collision(normalization, cell_size, cell_groups)
  if diffuse:
    steps.append(diffusion.thermal_diffusion(
        temperature, key=jax.random.fold_in(root, 1), mask=mask))
  steps.append(advection.kinetic_advection(
      base, b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
      momentum=momentum, nesterov=nesterov, collision=collide_velocity))
  if not _is_python_zero(weight_decay):
    steps.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
  steps.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*steps)
