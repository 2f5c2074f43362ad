"""The collision step of KO: similar neurons exchange momentum.

A Boltzmann-equation solver splits each time step into free streaming and
collisions. In KO a particle is an output neuron of a layer: its position ``w_i``
is the neuron's weight vector and its velocity ``g_i`` the neuron's gradient
(see :mod:`ko_optax.particles` for which axes index the neurons). Collisions act
on the gradient before the base optimizer sees it and push apart neurons that
are close and move alike, which keeps them from condensing onto a few
directions.

Two collision operators are implemented, both on ``(D, N)`` particle matrices
whose columns are the particles:

* **soft** (mean-field, deterministic; the paper's practical form)::

      W^, G^ = columns of w, g scaled to unit length (zero columns stay zero)
      S      = (W^T W^) * (G^T G^)          # product of two N x N cosine maps
      S[S < threshold] = 0                   # only sufficiently similar pairs
      S_ii   = 0 unless include_self         # a particle does not hit itself
      g_new  = g - rate * g @ S              # i.e. g_i -= rate sum_j S_ij g_j

  Cost O(N^2 D) time and O(N^2) memory per leaf.

* **hard** (Direct Simulation Monte Carlo)::

      draw a random perfect pairing of the N particles (one idle if N is odd)
      pair (i, j) collides with probability
          p = min(1, rate * |g_i - g_j| / max_pairs |g_i - g_j|
                       * exp(-|w_i - w_j| / length_scale))
      a collision scatters the pair elastically and isotropically in its
      centre-of-mass frame: with v = (g_i + g_j) / 2, r = |g_i - g_j| and n a
      uniform random unit vector in R^D,
          g_i <- v + (r / 2) n,   g_j <- v - (r / 2) n.

  Per pair, momentum ``g_i + g_j`` and energy ``|g_i|^2 + |g_j|^2`` are
  conserved exactly. Cost O(N D) per leaf; no N x N array is formed.

References:
  Feng, Huang, Fu, Wang, Yan, `KO: Kinetics-inspired Neural Optimizer with PDE
  Simulation Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  Bird, *Molecular Gas Dynamics and the Direct Simulation of Gas Flows*, 1994.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_optax import _checks
from ko_optax import cells as cells_lib
from ko_optax import particles as particles_lib

MODES = ('soft', 'hard')
NORMALIZATIONS = (None, 'mean', 'norm')
_TINY = 1e-30


class StochasticCollisionState(NamedTuple):
  """State of :func:`stochastic_collision`.

  Attributes:
    count: number of updates so far (the schedules' step).
    key: typed PRNG key; each update splits it into the next key and the
      step's randomness (hard pairings, collision cells).
  """
  count: chex.Array
  key: chex.Array


def compute_dtype(dtype: Any) -> Any:
  """The dtype collisions are computed in: float32, or float64 if given."""
  return jnp.promote_types(dtype, jnp.float32)


def unit_columns(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Scales the columns of ``x`` (..., D, N) to unit length.

  Returns:
    ``(x_hat, norms)``; zero columns stay zero (never NaN). ``norms`` has
    shape (..., 1, N).
  """
  norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=-2, keepdims=True))
  safe = jnp.where(norms > 0, norms, 1.0)
  return x / safe, norms


def soft_collision_kernel(
    w: jax.Array, g: jax.Array, threshold: Any = 0.0,
    include_self: bool = False,
) -> jax.Array:
  """The soft collision kernel ``S`` of particle matrices ``w, g`` (..., D, N).

  ``S_ij = cos(w_i, w_j) cos(g_i, g_j)``, zeroed where below ``threshold``
  and on the diagonal unless ``include_self``. Shape (..., N, N).
  """
  w_hat, _ = unit_columns(w)
  g_hat, _ = unit_columns(g)
  cos_w = jnp.einsum('...dn,...dm->...nm', w_hat, w_hat)
  cos_g = jnp.einsum('...dn,...dm->...nm', g_hat, g_hat)
  s = cos_w * cos_g
  s = jnp.where(s < threshold, 0.0, s)
  if not include_self:
    n = s.shape[-1]
    s = jnp.where(jnp.eye(n, dtype=bool), 0.0, s)
  return s


def soft_collision(
    w: jax.Array,
    g: jax.Array,
    rate: Any,
    *,
    threshold: Any = 0.0,
    include_self: bool = False,
    normalization: str | None = None,
) -> jax.Array:
  """Soft (mean-field) collision of particle matrices ``w, g`` (..., D, N).

  Args:
    w: positions (weights), columns are particles.
    g: velocities (gradients), same shape as ``w``.
    rate: collision coefficient gamma_c.
    threshold: pairs with ``S_ij < threshold`` do not interact.
    include_self: keep the diagonal ``S_ii`` (each gradient is then also
      scaled by ``1 - rate``).
    normalization: None (the paper: plain sum over partners), ``'mean'``
      (divide the sum by the number of partners, N - 1, or N with
      ``include_self``), or ``'norm'`` (rescale each particle's repulsion to
      length ``|g_i|``, so that ``rate`` is a fraction of the gradient).

  Returns:
    The collided velocities, shape and dtype of ``g``.

  Example:
    Two particles at the same place moving alike push each other apart:

    >>> import jax.numpy as jnp, ko_optax
    >>> w = jnp.ones((2, 2))                      # columns: two particles
    >>> g = jnp.array([[1.0, 1.0], [0.0, 0.1]])
    >>> new = ko_optax.soft_collision(w, g, 0.5)
    >>> [[round(float(x), 3) for x in row] for row in new]
    [[0.502, 0.502], [-0.05, 0.1]]

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  """
  s = soft_collision_kernel(w, g, threshold, include_self)
  repulsion = jnp.einsum('...dm,...mn->...dn', g, s)
  n = g.shape[-1]
  if normalization == 'mean':
    partners = n if include_self else n - 1
    repulsion = repulsion / max(partners, 1)
  elif normalization == 'norm':
    _, g_norms = unit_columns(g)
    r_hat, _ = unit_columns(repulsion)
    repulsion = r_hat * g_norms
  return g - rate * repulsion


def collision_probability(
    w_i: jax.Array, w_j: jax.Array, g_i: jax.Array, g_j: jax.Array,
    rate: Any, length_scale: Any,
) -> tuple[jax.Array, jax.Array]:
  """DSMC acceptance of pairs given as columns of (..., D, M) matrices.

  Returns:
    ``(p, relative_speed)``, each of shape (..., M): the probability that each
    pair collides, ``min(1, rate * r / max r * exp(-|w_i - w_j| / L))``, where
    the maximum runs over the pairs of the same leaf (or cell group).
  """
  relative_speed = jnp.sqrt(jnp.sum(jnp.square(g_i - g_j), axis=-2))
  distance = jnp.sqrt(jnp.sum(jnp.square(w_i - w_j), axis=-2))
  max_speed = jnp.max(relative_speed, axis=-1, keepdims=True)
  speed_ratio = relative_speed / jnp.where(max_speed > 0, max_speed, 1.0)
  p = rate * speed_ratio * jnp.exp(-distance / length_scale)
  return jnp.clip(p, 0.0, 1.0), relative_speed


def unit_directions(keys: jax.Array, d: int, dtype: Any) -> jax.Array:
  """One uniform random unit vector in R^d per key.

  Args:
    keys: typed PRNG keys, any shape K.
    d: the dimension.
    dtype: float dtype of the result.

  Returns:
    Shape ``K + (d,)``: each vector is ``d`` standard normal numbers drawn
    from its own key and scaled to unit length (isotropic on the sphere).
  """
  flat = keys.reshape(-1)
  z = jax.vmap(lambda k: jax.random.normal(k, (d,), dtype))(flat)
  z = z.reshape(keys.shape + (d,))
  norms = jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True))
  return z / jnp.where(norms > 0, norms, 1.0)


def scatter_pairs(
    g_i: jax.Array, g_j: jax.Array, relative_speed: jax.Array,
    collide: jax.Array, key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Elastic isotropic scattering of pairs (columns of (..., D, M) arrays).

  Each colliding pair keeps its centre-of-mass velocity and relative speed;
  the direction of its relative velocity is redrawn uniformly on the sphere.
  Pair ``k`` draws its direction from its own key,
  ``jax.random.split(key, (..., M))[..., k]``, so the direction a pair gets
  does not depend on which other pairs collide: :func:`hard_collision`,
  which draws only for the colliding pairs, uses the same numbers.
  """
  *batch, d, m = g_i.shape
  keys = jax.random.split(key, (*batch, m))
  return _scatter(g_i, g_j, relative_speed, collide, keys)


def _scatter(g_i, g_j, relative_speed, collide, keys):
  """:func:`scatter_pairs` with the pairs' keys given, shape (..., M)."""
  n_hat = jnp.swapaxes(unit_directions(keys, g_i.shape[-2], g_i.dtype),
                       -1, -2)
  centre = 0.5 * (g_i + g_j)
  half = 0.5 * relative_speed[..., None, :] * n_hat
  collide = collide[..., None, :]
  return (jnp.where(collide, centre + half, g_i),
          jnp.where(collide, centre - half, g_j))


def hard_collision_pairs(
    w: jax.Array, g: jax.Array, rate: Any, key: jax.Array, *,
    length_scale: Any = 20.0,
) -> jax.Array:
  """Hard collision of particle pairs laid side by side.

  Args:
    w, g: (..., D, 2M) matrices whose columns ``2k`` and ``2k + 1`` form
      pair ``k``.
    rate: collision coefficient.
    key: typed PRNG key for acceptance and scattering.
    length_scale: proximity length L of ``exp(-|w_i - w_j| / L)``.

  Returns:
    The velocities after collisions, same layout as ``g``.
  """
  pair_shape = g.shape[:-1] + (g.shape[-1] // 2, 2)
  w2 = w.reshape(pair_shape)
  g2 = g.reshape(pair_shape)
  w_i, w_j = w2[..., 0], w2[..., 1]
  g_i, g_j = g2[..., 0], g2[..., 1]
  p, speed = collision_probability(w_i, w_j, g_i, g_j, rate, length_scale)
  accept_key, scatter_key = jax.random.split(key)
  collide = jax.random.uniform(accept_key, p.shape, p.dtype) < p
  g_i, g_j = scatter_pairs(g_i, g_j, speed, collide, scatter_key)
  return jnp.stack([g_i, g_j], axis=-1).reshape(g.shape)


def capacity_rungs(pairs: int, backend: str | None = None) -> tuple[int, ...]:
  """Static sizes for the number of colliding pairs, smallest first.

  Most pairs do not collide in a step (the acceptance probability is at most
  the rate, and at the default 0.1 about 2 % of pairs collide on an MLP), so
  :func:`hard_collision` draws directions and moves memory only for the
  colliding pairs, padded up to the smallest rung that holds them: ``pairs``
  divided by 64, 16 and 4 (rungs under 8 are dropped) and ``pairs`` itself.
  The rung changes only the cost, never the result.

  On GPU and TPU only the top rung is used (no branch): drawing for every
  pair is cheap there, and a data-dependent branch can cost a device-to-host
  round trip per leaf and step.

  Args:
    pairs: the number of pairs M.
    backend: 'cpu', 'gpu', 'tpu'; None means ``jax.default_backend()``.

  Returns:
    The capacities, increasing, the last one ``pairs``.
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != 'cpu':
    return (pairs,)
  rungs = {pairs}
  for divisor in (64, 16, 4):
    rung = -(-pairs // divisor)
    if rung >= 8:
      rungs.add(rung)
  return tuple(sorted(rungs))


def _collide_colliding_pairs(
    g: jax.Array, first: jax.Array, second: jax.Array, speed: jax.Array,
    collide: jax.Array, pair_keys: jax.Array, capacity: int,
) -> jax.Array:
  """Scatters the colliding pairs of ``g`` (D, N), at most ``capacity``.

  The indices of the colliding pairs are compacted to the front (padded with
  the out-of-range pair ``M``, whose reads give 0 and whose writes are
  dropped); only their columns are read, given directions and written back.
  """
  d, n = g.shape
  m = speed.shape[0]
  idx = jnp.nonzero(collide, size=capacity, fill_value=m)[0]
  cols = jnp.concatenate([first.at[idx].get(mode='fill', fill_value=n),
                          second.at[idx].get(mode='fill', fill_value=n)])
  pair = jnp.take(g, cols, axis=1, mode='fill', fill_value=0)
  g_i, g_j = pair[:, :capacity], pair[:, capacity:]
  direction = unit_directions(
      pair_keys.at[jnp.minimum(idx, m - 1)].get(), d, g.dtype).T
  speed = speed.at[idx].get(mode='fill', fill_value=0)
  centre = 0.5 * (g_i + g_j)
  half = 0.5 * speed[None, :] * direction
  return g.at[:, cols].set(
      jnp.concatenate([centre + half, centre - half], axis=1), mode='drop')


def _collide_all_pairs(
    g: jax.Array, first: jax.Array, second: jax.Array, speed: jax.Array,
    collide: jax.Array, pair_keys: jax.Array, capacity: int,
) -> jax.Array:
  """The top rung of :func:`_collide_colliding_pairs`: every pair, dense.

  Reads all pairs, draws a direction for each, keeps the non-colliding ones
  with ``where``: no compaction, so it suits accelerators. Same result.
  """
  del capacity
  new_i, new_j = _scatter(jnp.take(g, first, axis=1, unique_indices=True),
                          jnp.take(g, second, axis=1, unique_indices=True),
                          speed, collide, pair_keys)
  out = g.at[:, first].set(new_i, unique_indices=True)
  return out.at[:, second].set(new_j, unique_indices=True)


def hard_collision(
    w: jax.Array, g: jax.Array, rate: Any, key: jax.Array, *,
    length_scale: Any = 20.0,
) -> jax.Array:
  """Hard (DSMC) collision of (D, N) particle matrices with random pairing.

  Draws a uniformly random perfect pairing of the N particles (one particle
  sits out when N is odd), then collides each pair with the DSMC acceptance
  probability (:func:`collision_probability`) by elastic isotropic
  scattering (:func:`scatter_pairs`, with the same random numbers). O(N D)
  time and memory; directions are drawn and columns moved only for the
  colliding pairs (see :func:`capacity_rungs`).

  Args:
    w: positions (weights), shape (D, N); columns are particles.
    g: velocities (gradients), same shape.
    rate: collision coefficient (>= 0); pairs collide with probability at
      most ``min(1, rate)``.
    key: typed PRNG key (pairing, acceptance, directions).
    length_scale: proximity length L of the acceptance kernel.

  Returns:
    The velocities after the collisions, shape and dtype of ``g``. Each
    colliding pair keeps its momentum ``g_i + g_j`` and energy
    ``|g_i|^2 + |g_j|^2``.

  Example:
    >>> import jax, jax.numpy as jnp, ko_optax
    >>> w = jax.random.normal(jax.random.key(0), (8, 6))
    >>> g = jax.random.normal(jax.random.key(1), (8, 6))
    >>> new = ko_optax.hard_collision(w, g, 1.0, jax.random.key(2))
    >>> bool(jnp.allclose(new.sum(-1), g.sum(-1), atol=1e-5))  # momentum
    True
    >>> bool(jnp.allclose(jnp.sum(new**2), jnp.sum(g**2), rtol=1e-5))  # energy
    True
  """
  n = g.shape[-1]
  if n < 2:
    return g
  perm_key, pair_key = jax.random.split(key)
  order = jax.random.permutation(perm_key, n)
  m = n // 2
  first, second = order[0:2 * m:2], order[1:2 * m:2]
  # The distances of all pairs read rows of the transposed matrices
  # (contiguous memory; XLA fuses the gathers into the reductions).
  wt, gt = w.T, g.T
  p, speed = collision_probability(wt[first].T, wt[second].T, gt[first].T,
                                   gt[second].T, rate, length_scale)
  accept_key, scatter_key = jax.random.split(pair_key)
  collide = jax.random.uniform(accept_key, p.shape, p.dtype) < p
  pair_keys = jax.random.split(scatter_key, m)
  operands = (g, first, second, speed, collide, pair_keys)
  rungs = capacity_rungs(m)
  branches = [functools.partial(_collide_colliding_pairs, capacity=c)
              for c in rungs[:-1]]
  branches.append(functools.partial(_collide_all_pairs, capacity=m))
  if len(branches) == 1:
    return branches[0](*operands)
  # The smallest rung that holds this step's collisions.
  count = jnp.sum(collide)
  index = sum((count > c).astype(jnp.int32) for c in rungs[:-1])
  return jax.lax.switch(index, branches, *operands)


def _collide_leaf(
    w: jax.Array, g: jax.Array, axes: tuple[int, ...], rate: jax.Array,
    key: jax.Array, *, mode: str, threshold: Any, include_self: bool,
    normalization: str | None, length_scale: Any, cell_size: int | None,
    cell_groups: int,
) -> jax.Array:
  """Collides the particles of one leaf; returns the new gradient leaf."""
  if not jnp.issubdtype(g.dtype, jnp.floating):
    raise TypeError(
        f'stochastic_collision needs floating-point gradients, got {g.dtype}.'
        ' Cast the leaf or exclude it with particle_axes / mask.'
    )
  dtype = compute_dtype(g.dtype)
  wp = particles_lib.to_particles(w.astype(dtype), axes)
  gp = particles_lib.to_particles(g.astype(dtype), axes)
  rate = jnp.asarray(rate, dtype)
  n = gp.shape[-1]
  if mode == 'soft':
    collide = lambda w_, g_, k_: soft_collision(
        w_, g_, rate, threshold=threshold, include_self=include_self,
        normalization=normalization)
  else:
    collide = lambda w_, g_, k_: hard_collision_pairs(
        w_, g_, rate, k_, length_scale=length_scale)
  if cell_size is None or (cell_size >= n and cell_groups == 1):
    if mode == 'soft':
      exact = lambda w_, g_: collide(w_, g_, key)
    else:
      exact = lambda w_, g_: hard_collision(
          w_, g_, rate, key, length_scale=length_scale)
    # Explicitly sharded leaves are gathered for the all-pairs form.
    new = cells_lib.unsharded(exact, wp, gp)
  else:
    new = cells_lib.collide_in_cells(
        wp, gp, key, collide, cell_size=cell_size, groups=cell_groups,
        pairs=mode == 'hard')
  return particles_lib.from_particles(new, axes, g.shape).astype(g.dtype)


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

  Args:
    collision_rate: the collision coefficient gamma_c (float or schedule,
      >= 0). 0 is the identity. The paper's code uses 0.1.
    mode: ``'soft'`` (O(N^2 D) per leaf) or ``'hard'`` (O(N D) per leaf).
    key: int seed or typed ``jax.random.key``; the state carries the key.
    particle_axes: which axes of each leaf index the particles; None means
      the last axis of every leaf with ndim >= 2 (Flax layout). An int, a
      tuple of ints, a tree of those (None: the leaf does not collide), or a
      callable of the updates returning such a tree. See
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
      (divide by the number of partners) or ``'norm'`` (repulsion rescaled
      to ``|g_i|``, width independent).
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
    >>> new_grads, state = tx.update(grads, state, params)
    >>> new_grads['w'].shape, bool(jnp.all(new_grads['b'] == 1.0))
    ((3, 4), True)

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  """
  _checks.check_choice('mode', mode, MODES)
  _checks.check_choice('normalization', normalization, NORMALIZATIONS)
  _checks.check_non_negative('collision_rate', collision_rate)
  cell_size = _checks.check_positive_int_or_none('cell_size', cell_size)
  cell_groups = _checks.check_positive_int_or_none('cell_groups',
                                                   cell_groups) or 1
  if _checks.is_concrete(length_scale) and float(length_scale) <= 0:
    raise ValueError(f'length_scale must be > 0, got {length_scale!r}.')
  if not isinstance(include_self, bool):
    raise TypeError(f'include_self must be a bool, got {include_self!r}.')

  def init_fn(params):
    del params
    return StochasticCollisionState(
        count=jnp.zeros([], jnp.int32), key=_checks.canonicalize_key(key))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, updates, 'stochastic_collision')
    rate = collision_rate(state.count) if callable(collision_rate) else (
        collision_rate)
    next_key, step_key = jax.random.split(state.key)
    leaves, treedef = jax.tree.flatten(updates)
    param_leaves = treedef.flatten_up_to(params)
    axes = particles_lib.resolve_particle_axes(particle_axes, updates, mask)
    leaf_keys = jax.random.split(step_key, max(len(leaves), 1))
    active = [i for i, a in enumerate(axes) if a is not None]

    def collide_all(rate):
      return [
          _collide_leaf(
              param_leaves[i], leaves[i], axes[i], rate, leaf_keys[i],
              mode=mode, threshold=threshold, include_self=include_self,
              normalization=normalization, length_scale=length_scale,
              cell_size=cell_size, cell_groups=cell_groups)
          for i in active]

    if _checks.is_concrete(rate):
      if np.any(np.asarray(rate) != 0):
        collided = collide_all(rate)
      else:
        collided = [leaves[i] for i in active]
    else:
      # A traced rate (a schedule, inject_hyperparams) may be 0: skip the
      # work then, and return the gradients untouched, bit for bit.
      collided = jax.lax.cond(
          jnp.asarray(rate) > 0, collide_all,
          lambda rate: [leaves[i] for i in active], rate)
    new_leaves = list(leaves)
    for i, new in zip(active, collided):
      new_leaves[i] = new
    new_state = StochasticCollisionState(
        count=optax.safe_increment(state.count), key=next_key)
    return jax.tree.unflatten(treedef, new_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
