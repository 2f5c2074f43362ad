"""Measuring condensation: how alike the neurons of a layer have become.

"Parameter condensation" is the collapse of a layer's neurons onto a few
directions; KO's collisions are meant to prevent it. Per particle leaf (see
:mod:`ko_optax.particles`) this module measures:

* ``mean_abs_cos``: the mean off-diagonal ``|cos(w_i, w_j)|`` of the neurons
  (1: all neurons parallel; near 0: spread out);
* ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values
  of the ``N x D`` neuron matrix (Roy and Vetterli, 2007): how many directions
  the layer really uses;
* the kinetic temperature of a velocity field (the gradients): the mean
  squared deviation of the particles' velocities from their mean.

Every function is pure and jit-compatible, so it can be logged inside a
jitted training step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ko_optax import _numerics
from ko_optax import particles as particles_lib


class Condensation(NamedTuple):
  """Condensation metrics of one particle leaf.

  For a leaf with batch axes (a scanned layer stack, see
  :class:`ko_optax.ParticleSpec`) each field has a leading dimension: one
  value per particle system (per layer), in the order of the batch axes.

  Attributes:
    mean_abs_cos: mean off-diagonal |cosine similarity| of the particles.
    effective_rank: exp of the entropy of the normalised singular values.
  """
  mean_abs_cos: jax.Array
  effective_rank: jax.Array


def _matrices(leaf: jax.Array, spec: particles_lib.ParticleSpec) -> jax.Array:
  """The leaf's (B, D, N) particle matrices in the compute dtype."""
  dtype = _numerics.compute_dtype(leaf.dtype)
  return particles_lib.to_particles(jnp.asarray(leaf).astype(dtype), spec)


def _per_system(fn: Callable[[jax.Array], Any], leaf: jax.Array,
                spec: particles_lib.ParticleSpec) -> Any:
  """``fn`` of each system's (D, N) matrix; unbatched leaves give a scalar."""
  out = jax.vmap(fn)(_matrices(leaf, spec))
  _, batch_axes = particles_lib.normalized_axes(spec)
  if not batch_axes:
    return jax.tree.map(lambda x: x[0], out)
  batch = tuple(leaf.shape[a] for a in batch_axes)
  return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), out)


def cosine_matrix(leaf: jax.Array, particle_axes: Any = -1) -> jax.Array:
  """The N x N cosine-similarity matrix of a leaf's particles.

  Args:
    leaf: a parameter array with ndim >= 2.
    particle_axes: the axis or axes indexing the particles (default: last),
      or a :class:`ko_optax.ParticleSpec`.

  Returns:
    Array (N, N); rows and columns of zero particles are 0. With batch axes:
    one matrix per system, shape ``(*batch, N, N)``.
  """
  spec = particles_lib.resolve_particle_axes(particle_axes, leaf)[0]
  if spec is None:
    raise ValueError('cosine_matrix needs a leaf with ndim >= 2.')
  def cosines(p: jax.Array) -> jax.Array:
    p_hat, _ = _numerics.unit_columns(p)
    return p_hat.T @ p_hat
  return _per_system(cosines, leaf, spec)


def mean_abs_cos(p: jax.Array) -> jax.Array:
  """Mean off-diagonal |cos| of the columns of a (D, N) particle matrix."""
  n = p.shape[-1]
  if n < 2:
    return jnp.zeros((), p.dtype)
  p_hat, _ = _numerics.unit_columns(p)
  c = jnp.abs(p_hat.T @ p_hat)
  off_diagonal = jnp.sum(c) - jnp.sum(jnp.diagonal(c))
  return off_diagonal / (n * (n - 1))


def effective_rank(p: jax.Array) -> jax.Array:
  """exp(entropy) of the normalised singular values of a matrix; 0 if zero."""
  s = jnp.linalg.svd(p, compute_uv=False)
  total = jnp.sum(s)
  q = s / jnp.where(total > 0, total, 1.0)
  entropy = -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)),
                               0.0))
  return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def kinetic_temperature_of(p: jax.Array) -> jax.Array:
  """Mean squared deviation of the columns of (D, N) from their mean."""
  centred = p - jnp.mean(p, axis=-1, keepdims=True)
  return jnp.mean(jnp.sum(jnp.square(centred), axis=-2))


def condensation(params: Any, *, particle_axes: Any = None) -> Any:
  """Condensation metrics of every particle leaf of ``params``.

  Args:
    params: a tree of parameters.
    particle_axes: a particle-axes spec (see :mod:`ko_optax.particles`);
      None: :func:`ko_optax.flax_particle_axes`'s rules, as for the
      collisions.

  Returns:
    A tree with the structure of ``params`` whose particle leaves map to a
    :class:`Condensation` (per system for leaves with batch axes) and whose
    other leaves map to None.

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> w = jnp.array([[1.0, 1.0], [0.0, 0.0]])   # two parallel neurons
    >>> m = ko_optax.condensation({'w': w, 'b': jnp.zeros(2)})
    >>> float(m['w'].mean_abs_cos), m['b']
    (1.0, None)
  """
  leaves, treedef = jax.tree.flatten(params)
  specs = particles_lib.resolve_particle_axes(particle_axes, params)
  metrics = lambda p: Condensation(mean_abs_cos(p), effective_rank(p))
  return jax.tree.unflatten(treedef, [
      None if spec is None else _per_system(metrics, leaf, spec)
      for leaf, spec in zip(leaves, specs)])


def kinetic_temperature(updates: Any, *, particle_axes: Any = None) -> Any:
  """Kinetic temperature of the particles of each leaf of a velocity tree.

  Args:
    updates: gradients or updates (the particles' velocities).
    particle_axes: a particle-axes spec; None: the Flax layout.

  Returns:
    A tree with a scalar per particle leaf (one per system for leaves with
    batch axes) and None elsewhere.
  """
  leaves, treedef = jax.tree.flatten(updates)
  specs = particles_lib.resolve_particle_axes(particle_axes, updates)
  return jax.tree.unflatten(treedef, [
      None if spec is None else _per_system(kinetic_temperature_of, leaf, spec)
      for leaf, spec in zip(leaves, specs)])


def condensation_metrics(params: Any, *, particle_axes: Any = None,
                         separator: str = '/') -> dict[str, jax.Array]:
  """Flat condensation metrics, ready to log from inside a jitted step.

  Args:
    params: a tree of parameters.
    particle_axes: a particle-axes spec; None: the Flax layout.
    separator: joins the keys of a leaf's path.

  Returns:
    A dict ``{'<path>/mean_abs_cos': scalar, '<path>/effective_rank':
    scalar}`` with an entry pair per particle leaf (an array of one value
    per system for leaves with batch axes; paths as
    ``jax.tree_util.keystr(path, simple=True, separator=separator)``).

  Example:
    >>> import jax, jax.numpy as jnp, ko_optax
    >>> params = {'dense': {'kernel': jnp.eye(3), 'bias': jnp.zeros(3)}}
    >>> m = jax.jit(ko_optax.condensation_metrics)(params)
    >>> sorted(m)
    ['dense/kernel/effective_rank', 'dense/kernel/mean_abs_cos']
  """
  flat = jax.tree_util.tree_flatten_with_path(
      condensation(params, particle_axes=particle_axes),
      is_leaf=lambda x: isinstance(x, Condensation) or x is None)[0]
  out = {}
  for path, m in flat:
    if isinstance(m, Condensation):
      name = jax.tree_util.keystr(path, simple=True, separator=separator)
      out[f'{name}{separator}mean_abs_cos'] = m.mean_abs_cos
      out[f'{name}{separator}effective_rank'] = m.effective_rank
  return out
