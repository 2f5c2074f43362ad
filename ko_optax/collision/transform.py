"""``stochastic_collision``: KO's collision step as an optax transformation.

Its ``update`` resolves which leaves collide and their particle layout
(:mod:`ko_optax.particles`), plans groups of leaves of one shape
(:mod:`ko_optax.collision.grouping`) and collides them with the soft
(:mod:`ko_optax.collision.soft`) or hard (:mod:`ko_optax.collision.hard`)
operator, on the skeleton it shares with the thermal diffusion
(:mod:`ko_optax._leafwise`).
"""

from __future__ import annotations

from typing import Any, NamedTuple
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_optax import _backend
from ko_optax import _checks
from ko_optax import _leafwise
from ko_optax import _numerics
from ko_optax import leaf_cuts
from ko_optax import particles as particles_lib
from ko_optax.collision import grouping

MODES = ('soft', 'hard')
NORMALIZATIONS = (None, 'mean', 'norm', 'similarity')

# The size of one N x N soft kernel (over the systems of a leaf) from which
# stochastic_collision warns, at trace time, that all pairs are costly.
MEMORY_WARNING_BYTES = 2**30


class StochasticCollisionState(NamedTuple):
  """State of :func:`stochastic_collision`.

  Attributes:
    count: number of updates so far (the schedules' step).
    key: typed PRNG key; each update splits it into the next key and the
      step's randomness (hard pairings, collision cells).
  """
  # The field shadows tuple.count, as ``count`` does in optax's states.
  count: chex.Array  # type: ignore[assignment]
  key: chex.Array


def _warn_memory(leaves: list[jax.Array],
                 specs: list[particles_lib.ParticleSpec], paths: list[str],
                 cell_size: int | None, cell_groups: int) -> None:
  """Warns for every leaf whose all-pairs soft kernel is 1 GiB or more."""
  for leaf, spec, path in zip(leaves, specs, paths):
    b, _, n = particles_lib.particle_shape(leaf.shape, spec)
    if grouping.uses_cells(n, cell_size, cell_groups):
      continue
    size = b * n * n * jnp.dtype(_numerics.compute_dtype(leaf.dtype)).itemsize
    if size >= MEMORY_WARNING_BYTES:
      warnings.warn(
          f'ko_optax: the all-pairs soft collision of leaf {path} (shape '
          f'{tuple(leaf.shape)}, {n} particles) needs an N x N kernel of '
          f'{size / 2**30:.1f} GiB per step, and O(N^2 D) time. Collide in '
          'cells (cell_size=256, O(N C D)), use collision="hard" (O(N D)), '
          'or leave the leaf out with mask / particle_axes.', stacklevel=4)


def check_options(threshold: Any, length_scale: Any) -> None:
  """Type and value checks of the collision's numeric options."""
  _checks.check_scalar('threshold', threshold, schedule=False)
  _checks.check_scalar('length_scale', length_scale, schedule=False)
  if _checks.is_static_number(threshold) and np.isnan(threshold):
    raise ValueError('threshold must not be NaN (no pair would be cut).')
  if _checks.is_static_number(length_scale) and not (
      float(length_scale) > 0):
    raise ValueError(f'length_scale must be > 0, got {length_scale!r}.')


def _check_factory_options(mode: str, normalization: str | None,
                           collision_rate: Any, threshold: Any,
                           length_scale: Any, cell_size: int | None,
                           cell_groups: int | None,
                           include_self: bool) -> tuple[int | None, int]:
  """Checks :func:`stochastic_collision`'s arguments; returns the checked
  ``(cell_size, cell_groups)``."""
  _checks.check_choice('mode', mode, MODES)
  _checks.check_choice('normalization', normalization, NORMALIZATIONS)
  _checks.check_non_negative('collision_rate', collision_rate)
  _checks.check_finite('collision_rate', collision_rate)
  check_options(threshold, length_scale)
  cell_size = _checks.check_positive_int_or_none('cell_size', cell_size)
  if cell_groups is not None and cell_size is None:
    _checks.warn_ineffective(
        'cell_groups', cell_groups, 'it splits collision cells, and '
        'cell_size is None (all pairs collide)', stacklevel=3)
  cell_groups = _checks.check_positive_int_or_none('cell_groups',
                                                   cell_groups) or 1
  if not isinstance(include_self, bool):
    raise TypeError(f'include_self must be a bool, got {include_self!r}.')
  return cell_size, cell_groups


def _collide_tree(
    step_key: jax.Array, w_leaves: list[jax.Array],
    g_leaves: list[jax.Array], rate: Any, rate_is_bad: Any, count: Any,
    threshold: Any, length_scale: Any, *,
    specs: tuple[particles_lib.ParticleSpec, ...],
    groups: tuple[grouping.CollisionGroup, ...], mode: str,
    include_self: bool, normalization: str | None, cell_size: int | None,
    cell_groups: int,
) -> list[jax.Array]:
  """One collision step of the colliding leaves: the step's random numbers
  and every group's collision."""
  randomness = grouping.group_randomness(
      step_key, list(groups), mode=mode, cell_size=cell_size,
      cell_groups=cell_groups)
  return grouping.collide_groups(
      w_leaves, g_leaves, list(specs), list(groups), randomness, rate,
      rate_is_bad, unfoldable_one=leaf_cuts.run_time_one(count), mode=mode,
      threshold=threshold, include_self=include_self,
      normalization=normalization, length_scale=length_scale,
      cell_size=cell_size, cell_groups=cell_groups)


_collide_tree_compiled = _leafwise.compiled_when_eager(
    _collide_tree,
    static_argnames=('specs', 'groups', 'mode', 'include_self',
                     'normalization', 'cell_size', 'cell_groups'))


def stochastic_collision(
    collision_rate: optax.ScalarOrSchedule,
    *,
    mode: str = 'soft',
    key: Any = 0,
    particle_axes: particles_lib.ParticleAxesSpec = None,
    mask: particles_lib.MaskSpec = None,
    threshold: float = 0.0,
    include_self: bool = False,
    length_scale: float = 20.0,
    normalization: str | None = None,
    cell_size: int | None = None,
    cell_groups: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""KO's collision step: neurons that are alike exchange momentum.

  Treats the output neurons of each parameter leaf as particles (position:
  the neuron's weights; velocity: its gradient) and collides them, either
  with the deterministic mean-field ``'soft'`` operator or the Direct
  Simulation Monte Carlo ``'hard'`` operator (see the module docstring for
  the formulas). Leaves with ``ndim < 2`` and leaves excluded by
  ``particle_axes`` or ``mask`` pass through untouched. Needs params.

  Leaves whose particle systems have the same shape (D, N) and dtype are
  collided together by one batched kernel (``jax.vmap`` over the stacked
  systems; leaves of one N are zero-padded to a common D while that costs
  at most 1.5x their work); the random numbers of all of them are one draw,
  and the result equals colliding each system alone with its share of that
  draw.

  Args:
    collision_rate: the collision coefficient gamma_c (float or schedule,
      >= 0). 0 is the identity. The paper's code uses 0.1.
    mode: ``'soft'`` (O(N^2 D) per leaf) or ``'hard'`` (O(N D) per leaf).
    key: int seed or typed ``jax.random.key``; the state carries the key.
    particle_axes: which axes of each leaf index the particles, as a
      :class:`ko_optax.ParticleSpec` (particle axes and batch axes: each
      index of the batch axes, e.g. the layer axis of a scanned stack, is
      its own gas), an int or tuple of ints (particle axes), a tree of those
      (None: the leaf does not collide), or a callable of the updates
      returning such a tree. None means :func:`ko_optax.flax_particle_axes`
      ``()``: Flax's standard layers by name (kernels collide along their
      output axes; biases, norm scales and embeddings do not). See
      :mod:`ko_optax.particles`.
    mask: which leaves collide: None (all particle leaves), a tree of bools
      with the structure of the params, or a callable returning one.
    threshold: soft mode: pairs with kernel ``S_ij < threshold`` do not
      interact (0: only pairs moving alike and placed alike act).
    include_self: soft mode: keep the diagonal ``S_ii = 1`` (the reference
      code's default, which also scales each gradient by ``1 - rate``).
    length_scale: hard mode: proximity length L of the acceptance kernel
      ``exp(-|w_i - w_j| / L)``; the reference code's 0.05 per unit distance
      is L = 20.
    normalization: soft mode: None (plain sum, as in the paper), ``'mean'``
      (divide by the number of partners), ``'norm'`` (repulsion rescaled
      to ``|g_i|``, width independent, the same push whatever the
      similarity) or ``'similarity'`` (divide by ``max(1, sum_j |S_ij|)``:
      the push grows with similarity and stays bounded); see
      :func:`soft_collision`.
    cell_size: None collides all pairs of a leaf. An int C sorts the
      particles into collision cells of at most C by a random-hyperplane
      hash of their weight directions, re-drawn each step, and collides only
      within a cell: O(N C D) time, O(N C) memory. ``C >= N`` is exactly the
      all-pairs collision. See :mod:`ko_optax.cells`.
    cell_groups: with cells, split the particles into this many contiguous
      blocks first (e.g. the number of shards of the particle axis) and form
      cells inside each block, so a sharded leaf needs no communication.
      None means 1. ``cell_size`` and ``cell_groups`` fix array shapes: with
      ``optax.inject_hyperparams`` name them in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` requires
    ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, ko_optax
    >>> params = {'w': jnp.ones((3, 4)) + jnp.eye(3, 4), 'b': jnp.zeros(4)}
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> tx = ko_optax.stochastic_collision(0.1)
    >>> state = tx.init(params)
    >>> new_grads, state = jax.jit(tx.update)(grads, state, params)
    >>> new_grads['w'].shape, bool(jnp.all(new_grads['b'] == 1.0))
    ((3, 4), True)

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  """
  cell_size, cell_groups = _check_factory_options(
      mode, normalization, collision_rate, threshold, length_scale,
      cell_size, cell_groups, include_self)

  def step(updates: optax.Updates, state: StochasticCollisionState,
           params: optax.Params | None, step_key: jax.Array) -> optax.Updates:
    _checks.check_params(params, updates, 'stochastic_collision')
    rate = _leafwise.scheduled('collision_rate', collision_rate, state.count)
    leaf_specs = particles_lib.resolve_particle_axes(particle_axes, updates,
                                                     mask)
    tree = _leafwise.Leaves.of(updates, leaf_specs)
    specs = [s for s in leaf_specs if s is not None]
    w, g = tree.selected(params), tree.selected()
    paths = [tree.paths[i] for i in tree.active]
    if mode == 'soft':
      _warn_memory(g, specs, paths, cell_size, cell_groups)
    groups = grouping.plan_groups(
        g, specs, cell_size, cell_groups, paths,
        stack=(_backend.small_soft_system
               if _backend.soft_stacks_small_systems_only(mode, cell_size)
               else None))
    # A rate that is NaN, infinite or negative at run time makes the
    # colliding leaves NaN, so that optax.apply_if_finite skips the step.
    collided = _leafwise.unless_zero(rate, lambda rate: _collide_tree_compiled(
        step_key, w, g, rate, _checks.bad_rate(rate), state.count, threshold,
        length_scale, specs=tuple(specs), groups=tuple(groups), mode=mode,
        include_self=include_self, normalization=normalization,
        cell_size=cell_size, cell_groups=cell_groups), g)
    return tree.splice(collided)

  return _leafwise.transformation(StochasticCollisionState, key, step)
