"""The particle view of a parameter leaf: which axes index the neurons.

KO treats every output neuron of a layer as a particle of a gas: its position is
the neuron's weight vector, its velocity the neuron's gradient. For a Flax leaf
the output features sit on the LAST axis (Dense kernel ``(in, out)``, Conv
kernel ``(kh, kw, in, out)``), so by default a leaf of ``ndim >= 2`` with
shape ``(..., N)`` holds ``N`` particles of dimension ``D = prod(...)``.

Other layouts are chosen per leaf with a *particle-axes spec*, in the manner
of ``optax.contrib.muon``'s ``weight_dimension_numbers``:

* ``None`` (the default for the whole tree): the last axis of every leaf with
  ``ndim >= 2``; leaves with ``ndim < 2`` (biases, norm scales) do not collide.
* an ``int`` or a tuple of ints: those axes of every leaf with ``ndim >= 2``.
* a tree with the structure of the params whose leaves are ``None`` (this
  leaf does not collide), an ``int`` or a tuple of ints (several output axes,
  as in an attention kernel ``(features, heads, head_dim)``: ``(-2, -1)``).
* a callable of the updates returning such a tree, resolved from the shapes
  at each call (so it also works inside ``optax.masked``).

Internally a leaf becomes a *particle matrix* of shape ``(D, N)`` whose
COLUMNS are the particles. For the default layout this is a free reshape of
the leaf (no transpose), and the Gram matrices the collisions need are
contractions over the first axis.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any, Union

import jax
import jax.numpy as jnp

Axes = Union[int, tuple[int, ...], None]
ParticleAxesSpec = Union[Axes, Any, Callable[[Any], Any]]
MaskSpec = Union[None, bool, Any, Callable[[Any], Any]]


def _normalize_axes(axes: Axes, shape: tuple[int, ...], path: str) -> tuple[
    int, ...] | None:
  """Returns sorted non-negative axes, or None; raises on a bad spec."""
  if axes is None:
    return None
  if isinstance(axes, bool) or not isinstance(axes, (int, tuple, list)):
    raise TypeError(
        f'particle_axes for leaf {path} must be None, an int or a tuple of '
        f'ints, got {axes!r}.'
    )
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  ndim = len(shape)
  if ndim < 2:
    raise ValueError(
        f'particle_axes selects axes {axes} of leaf {path} with shape {shape},'
        ' but only leaves with ndim >= 2 hold particles; map this leaf to None.'
    )
  normalized = []
  for axis in axes:
    if isinstance(axis, bool) or not isinstance(axis, int):
      raise TypeError(f'particle_axes for leaf {path}: {axis!r} is no int.')
    if not -ndim <= axis < ndim:
      raise ValueError(
          f'particle_axes {axis} is out of range for leaf {path} with shape '
          f'{shape} (ndim {ndim}): use an axis in [-{ndim}, {ndim}).'
      )
    normalized.append(axis % ndim)
  if len(set(normalized)) != len(normalized):
    raise ValueError(f'particle_axes {axes} for leaf {path} repeats an axis.')
  if len(normalized) == ndim:
    raise ValueError(
        f'particle_axes {axes} for leaf {path} uses every axis of shape '
        f'{shape}: at least one axis must remain for the particle dimension.'
    )
  return tuple(sorted(normalized))


def _spec_leaves(spec: Any, updates: Any, name: str) -> list[Any]:
  """Flattens a per-leaf spec tree against the structure of ``updates``."""
  treedef = jax.tree.structure(updates)
  if callable(spec):
    spec = spec(updates)
  if spec is None or isinstance(spec, (int, bool)) or (
      isinstance(spec, tuple) and all(isinstance(a, int) for a in spec)
      and not hasattr(spec, '_fields')
  ):
    return [spec] * treedef.num_leaves
  try:
    return treedef.flatten_up_to(spec)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'{name} must be a single spec, a tree with the structure of the '
        f'params, or a callable returning one. The updates have structure '
        f'{treedef}; {name} did not match it: {e}'
    ) from None


def resolve_particle_axes(
    particle_axes: ParticleAxesSpec,
    updates: Any,
    mask: MaskSpec = None,
) -> list[tuple[int, ...] | None]:
  """Resolves a particle-axes spec (and a mask) to one entry per leaf.

  Args:
    particle_axes: a particle-axes spec (see the module docstring).
    updates: the tree of updates (or params); only shapes are read.
    mask: None (every particle leaf), a bool, a tree of bools with the
      structure of ``updates``, or a callable of ``updates`` returning one.
      Leaves mapped to False do not collide.

  Returns:
    A list, in ``jax.tree.leaves(updates)`` order, of sorted non-negative
    particle axes per leaf, or None where the leaf holds no particles.

  Raises:
    ValueError: if the spec does not fit the tree or a leaf's shape.
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(updates)[0]
  paths = [jax.tree_util.keystr(p) for p, _ in leaves_with_path]
  shapes = [tuple(jnp.shape(leaf)) for _, leaf in leaves_with_path]
  if particle_axes is None:
    axes = [-1 if len(s) >= 2 else None for s in shapes]
  else:
    axes = _spec_leaves(particle_axes, updates, 'particle_axes')
    if not callable(particle_axes) and isinstance(particle_axes, (int, tuple)):
      # A single spec applies to the particle leaves only.
      axes = [a if len(s) >= 2 else None for a, s in zip(axes, shapes)]
  keep = [True] * len(shapes) if mask is None else _spec_leaves(
      mask, updates, 'mask')
  resolved = []
  for a, s, path, k in zip(axes, shapes, paths, keep):
    if not isinstance(k, bool):
      raise TypeError(f'mask for leaf {path} must be a Python bool, got {k!r}.')
    resolved.append(_normalize_axes(a, s, path) if k else None)
  return resolved


def particle_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[
    int, int]:
  """Returns ``(D, N)``: particle dimension and number of particles."""
  n = math.prod(shape[a] for a in axes)
  return math.prod(shape) // max(n, 1), n


def _permutation(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
  rest = tuple(a for a in range(ndim) if a not in axes)
  return rest + axes


def to_particles(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Reshapes a leaf into its ``(D, N)`` particle matrix (columns = particles).

  When ``axes`` are the trailing axes (the Flax layout) this is a reshape only.
  """
  perm = _permutation(x.ndim, axes)
  d, n = particle_shape(x.shape, axes)
  if perm != tuple(range(x.ndim)):
    x = jnp.transpose(x, perm)
  return x.reshape(d, n)


def from_particles(p: jax.Array, axes: tuple[int, ...],
                   shape: tuple[int, ...]) -> jax.Array:
  """Inverse of :func:`to_particles` for a leaf of the given ``shape``."""
  perm = _permutation(len(shape), axes)
  x = p.reshape(tuple(shape[a] for a in perm))
  if perm != tuple(range(len(shape))):
    x = jnp.transpose(x, tuple(perm.index(i) for i in range(len(shape))))
  return x
