"""The particle view of a parameter leaf: which axes index the neurons.

KO treats every output neuron of a layer as a particle of a gas: its position
is the neuron's weight vector, its velocity the neuron's gradient. For a Flax
leaf the output features sit on the LAST axis (Dense kernel ``(in, out)``,
Conv kernel ``(kh, kw, in, out)``), so a kernel of shape ``(..., N)`` holds
``N`` particles of dimension ``D = prod(...)``.

A leaf's layout is a :class:`ParticleSpec`: its ``particle_axes`` index the
particles, its ``batch_axes`` index independent particle systems (the layer
axis of a scanned stack ``(L, in, out)``, the expert axis of a mixture of
experts), and every other axis is the particle dimension. Layouts are chosen
per leaf with a *particle-axes spec*, in the manner of
``optax.contrib.muon``'s ``weight_dimension_numbers``:

* ``None`` (the default): :func:`flax_particle_axes`'s rules for Flax's
  standard layers, read from each leaf's name and shape: kernels collide
  along their output axes (both output axes of an attention query, key or
  value kernel ``(features, heads, head_dim)``), biases, norm scales and
  embedding tables do not collide, and a kernel whose layout the rules cannot
  tell is treated as a Conv kernel with a warning naming it.
* an ``int``, a tuple of ints or a :class:`ParticleSpec`: that layout for
  every leaf that has enough axes (``ndim >= 2`` beside the batch axes).
* a tree with the structure of the params whose leaves are any of those or
  ``None`` (this leaf does not collide).
* a callable of the updates returning such a tree, resolved from the shapes
  at each call (so it also works inside ``optax.masked``).

Internally a leaf becomes a *particle matrix* of shape ``(B, D, N)``: ``B``
independent systems (1 without batch axes) whose COLUMNS are particles. For
the default layout this is a free reshape of the leaf (no transpose).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import Any, cast, NamedTuple, Union
import warnings

import jax
import jax.numpy as jnp

Axes = Union[int, tuple[int, ...]]


class ParticleSpec(NamedTuple):
  """The layout of one parameter leaf as a gas of particles.

  Attributes:
    particle_axes: the axis or axes that index the particles (output
      neurons). ``-1`` (the default) is Flax's layout, output features last;
      ``(-2, -1)`` is an attention kernel ``(features, heads, head_dim)``
      whose neurons are its (head, channel) pairs.
    batch_axes: axes whose every index is an independent particle system:
      the layer axis of a scanned stack ``(L, in, out)`` (``batch_axes=0``),
      the expert axis of ``(experts, in, out)``. Particles of different
      systems never collide with each other. ``()``: one system.

  The remaining axes form the particle dimension D; at least one must
  remain.

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> stacked = {'kernel': jnp.zeros((12, 64, 256))}   # 12 scanned layers
    >>> spec = ko_optax.ParticleSpec(particle_axes=-1, batch_axes=0)
    >>> ko_optax.resolve_particle_axes(spec, stacked)
    [ParticleSpec(particle_axes=(2,), batch_axes=(0,))]
  """
  particle_axes: Axes = -1
  batch_axes: Axes = ()


ParticleAxesSpec = Union[None, Axes, ParticleSpec, Any, Callable[[Any], Any]]
MaskSpec = Union[None, bool, Any, Callable[[Any], Any]]

# Flax parameter names whose leaves are not neurons (see flax_particle_axes).
_NOT_PARTICLES = ('bias', 'scale', 'embed')
_ATTENTION_INPUTS = ('query', 'key', 'value')
_MAX_SPATIAL = 7  # a conv kernel's spatial extent is rarely above 7


def _as_tuple(axes: Any, path: str, what: str) -> tuple[int, ...]:
  if isinstance(axes, bool) or not isinstance(axes, (int, tuple, list)):
    raise TypeError(
        f'{what} for leaf {path} must be an int or a tuple of ints, got '
        f'{axes!r}.'
    )
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  for axis in axes:
    if isinstance(axis, bool) or not isinstance(axis, int):
      raise TypeError(f'{what} for leaf {path}: {axis!r} is no int.')
  return axes


def _normalize_axes(axes: tuple[int, ...], shape: tuple[int, ...], path: str,
                    what: str) -> tuple[int, ...]:
  ndim = len(shape)
  out = []
  for axis in axes:
    if not -ndim <= axis < ndim:
      raise ValueError(
          f'{what} {axis} is out of range for leaf {path} with shape '
          f'{shape} (ndim {ndim}): use an axis in [-{ndim}, {ndim}).'
      )
    out.append(axis % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f'{what} {axes} for leaf {path} repeats an axis.')
  return tuple(sorted(out))


def normalize_spec(entry: Any, shape: tuple[int, ...],
                   path: str = '') -> ParticleSpec | None:
  """Checks one leaf's spec and returns it with sorted non-negative axes.

  Args:
    entry: None, an int, a tuple of ints or a :class:`ParticleSpec`.
    shape: the leaf's shape.
    path: the leaf's path, for error messages.

  Returns:
    ``ParticleSpec(particle_axes, batch_axes)`` with tuples of sorted
    non-negative axes, or None when the leaf does not collide.

  Raises:
    TypeError, ValueError: naming the leaf, for a spec that does not fit it.
  """
  if entry is None:
    return None
  particle_axes: int | Sequence[int]  # checked by _as_tuple below
  batch_axes: int | Sequence[int]
  if isinstance(entry, ParticleSpec):
    particle_axes, batch_axes = entry
  elif isinstance(entry, (int, tuple, list)) and not isinstance(entry, bool):
    particle_axes, batch_axes = entry, ()
  else:
    raise TypeError(
        f'particle_axes for leaf {path} must be None, an int, a tuple of '
        f'ints or a ko_optax.ParticleSpec, got {entry!r}.'
    )
  particle_axes = _as_tuple(particle_axes, path, 'particle_axes')
  batch_axes = _as_tuple(batch_axes, path, 'batch_axes')
  if len(shape) - len(batch_axes) < 2:
    raise ValueError(
        f'particle_axes selects axes {particle_axes} of leaf {path} with '
        f'shape {shape} and batch_axes {batch_axes}, but only leaves with '
        'ndim >= 2 beside the batch axes hold particles; map this leaf to '
        'None.'
    )
  particle_axes = _normalize_axes(particle_axes, shape, path, 'particle_axes')
  batch_axes = _normalize_axes(batch_axes, shape, path, 'batch_axes')
  if set(particle_axes) & set(batch_axes):
    raise ValueError(
        f'leaf {path}: particle_axes {particle_axes} and batch_axes '
        f'{batch_axes} share an axis.'
    )
  if not particle_axes:
    raise ValueError(f'leaf {path}: particle_axes selects no axis.')
  if len(particle_axes) + len(batch_axes) == len(shape):
    raise ValueError(
        f'particle_axes {particle_axes} with batch_axes {batch_axes} for leaf '
        f'{path} use every axis of shape {shape}: at least one axis must '
        'remain for the particle dimension.'
    )
  return ParticleSpec(particle_axes, batch_axes)


def _is_single_spec(spec: Any) -> bool:
  if isinstance(spec, (ParticleSpec, int)):
    return True
  return isinstance(spec, tuple) and not hasattr(spec, '_fields') and all(
      isinstance(a, int) for a in spec)


def _spec_leaves(spec: Any, updates: Any, name: str) -> list[Any]:
  """Flattens a per-leaf spec tree against the structure of ``updates``."""
  treedef = jax.tree.structure(updates)
  if callable(spec) and not isinstance(spec, ParticleSpec):
    spec = spec(updates)
  # jaxlib ships no type stub for PyTreeDef: mypy cannot see its methods.
  if spec is None or isinstance(spec, bool) or _is_single_spec(spec):
    return [spec] * treedef.num_leaves  # type: ignore[attr-defined]
  try:
    return treedef.flatten_up_to(spec)  # type: ignore[attr-defined]
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'{name} must be a single spec, a tree with the structure of the '
        f'params, or a callable returning one. The updates have structure '
        f'{treedef}; {name} did not match it: {e}'
    ) from None


def mask_leaves(mask: MaskSpec, updates: Any) -> list[bool]:
  """A mask (None, a bool, a tree of bools or a callable) as one bool per
  leaf of ``updates``, in ``jax.tree.leaves`` order."""
  if mask is None:
    return [True] * len(jax.tree.leaves(updates))
  keep = _spec_leaves(mask, updates, 'mask')
  leaves_with_path = jax.tree_util.tree_flatten_with_path(updates)[0]
  for k, (path, _) in zip(keep, leaves_with_path):
    if not isinstance(k, bool):
      raise TypeError(f'mask for leaf {jax.tree_util.keystr(path)} must be '
                      f'a Python bool, got {k!r}.')
  return keep


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
  """The names along a pytree path, without nnx's ``.value`` accessors."""
  names = []
  for entry in path:
    if isinstance(entry, jax.tree_util.GetAttrKey):
      if entry.name not in ('value', 'raw_value'):
        names.append(entry.name)
    elif isinstance(entry, jax.tree_util.SequenceKey):
      names.append(str(entry.idx))
    else:   # DictKey and FlattenedIndexKey name their key
      names.append(str(getattr(entry, 'key', entry)))
  return tuple(names)


def _flax_layer_spec(names: tuple[str, ...], shape: tuple[int, ...],
                     path: str) -> Axes | None:
  """The particle axes of one unstacked Flax leaf, from its name and shape."""
  ndim = len(shape)
  name = names[-1].lower() if names else ''
  parent = names[-2].lower() if len(names) > 1 else ''
  if ndim < 2 or any(word in name for word in _NOT_PARTICLES):
    return None
  if ndim == 2:
    return -1
  if ndim == 3 and parent in _ATTENTION_INPUTS:
    return (-2, -1)     # (features, heads, head_dim): a neuron per head dim
  if ndim == 3 and parent == 'out':
    return -1           # (heads, head_dim, features)
  if any('conv' in n.lower() for n in names) or (
      ndim >= 4 and max(shape[:-2]) <= _MAX_SPATIAL):
    return -1           # (*spatial, in // groups, out)
  warnings.warn(
      f'ko_optax: the layout of leaf {path} with shape {shape} is ambiguous '
      '(a Conv kernel, a DenseGeneral kernel with several input or output '
      'axes, or a stacked layer?). It is treated as a Conv kernel: one '
      'particle per index of its last axis. If its leading axis stacks '
      "layers (nnx.scan, nn.scan), use particle_axes=ko_optax."
      "flax_particle_axes(stacked='<the stack's name>'); otherwise give its "
      'layout with a ko_optax.ParticleSpec in a particle_axes tree or '
      'callable.', stacklevel=2)
  return -1


def flax_particle_axes(
    stacked: str | Sequence[str] | Callable[[str], bool] | None = None,
    *,
    stack_axes: int = 1,
) -> Callable[[Any], Any]:
  """The particle layouts of Flax's standard layers, by name and shape.

  The rules, for each leaf (its name is the last key of its path):

  * ``ndim < 2``, and names containing ``bias``, ``scale`` or ``embed``: no
    particles (biases, norm scales, ``nnx.Embed`` / ``nn.Embed`` tables and
    learned position embeddings do not collide; the authors never collide
    embeddings, and a token table's "neurons" are its columns, not tokens);
  * 2-D kernels (Dense, Linear, Einsum with one input and output axis): the
    last axis, one particle per output feature;
  * 3-D kernels under a ``query``, ``key`` or ``value`` module (Flax's
    ``MultiHeadAttention`` and ``DenseGeneral(features=(heads, head_dim))``):
    the last two axes, one particle per (head, channel); under ``out``
    (``(heads, head_dim, features)``): the last axis;
  * kernels of ndim >= 3 under a module whose name contains ``conv`` (any
    case), or of ndim >= 4 whose leading axes are all <= 7 (the spatial
    extents of a Conv kernel ``(kh, kw, in, out)``): the last axis;
  * any other kernel of ndim >= 3: the last axis, with a warning naming the
    leaf and the fix (give a :class:`ParticleSpec`).

  ``ConvTranspose(transpose_kernel=True)`` stores ``(kh, kw, out, in)``,
  which the rules cannot tell from a Conv kernel: give it
  ``ParticleSpec(-2)``.

  Args:
    stacked: which leaves are layer stacks (``nnx.scan`` / ``nnx.vmap``,
      ``nn.scan``, MaxText-style scanned blocks): a name that appears in the
      leaf's path (e.g. ``'blocks'``), several names, or a predicate on the
      leaf's path string (``jax.tree_util.keystr``). Their first
      ``stack_axes`` axes become batch axes: every layer is its own gas,
      and the rules above apply to the rest of the shape (so stacked biases
      still do not collide).
    stack_axes: the number of leading stack axes of a stacked leaf.

  Returns:
    A callable particle-axes spec (updates -> tree of
    :class:`ParticleSpec` or None) for ``particle_axes=`` of
    :func:`ko_optax.ko`, :func:`ko_optax.stochastic_collision` and
    :func:`ko_optax.condensation`. ``particle_axes=None`` means
    ``flax_particle_axes()``.

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> params = {'embed': {'embedding': jnp.zeros((256, 64))},
    ...           'blocks': {'mlp': {'kernel': jnp.zeros((4, 64, 256)),
    ...                              'bias': jnp.zeros((4, 256))}},
    ...           'head': {'kernel': jnp.zeros((64, 256))}}
    >>> spec = ko_optax.flax_particle_axes(stacked='blocks')
    >>> for s in ko_optax.resolve_particle_axes(spec, params):
    ...   print(s)
    None
    ParticleSpec(particle_axes=(2,), batch_axes=(0,))
    None
    ParticleSpec(particle_axes=(1,), batch_axes=())
  """
  if isinstance(stacked, str):
    stacked = (stacked,)
  if stacked is not None and not callable(stacked):
    stacked = tuple(stacked)
    if not all(isinstance(s, str) for s in stacked):
      raise TypeError(
          'stacked must be a name, a sequence of names or a predicate on the '
          f'leaf path, got {stacked!r}.')
  if isinstance(stack_axes, bool) or not isinstance(stack_axes, int) or (
      stack_axes < 1):
    raise ValueError(f'stack_axes must be an int >= 1, got {stack_axes!r}.')

  def is_stacked(path: str, names: tuple[str, ...]) -> bool:
    if stacked is None:
      return False
    if callable(stacked):
      return bool(stacked(path))
    return any(s in names for s in stacked)

  def spec(updates: Any) -> Any:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
    out: list[ParticleSpec | None] = []
    for p, leaf in leaves_with_path:
      shape = tuple(jnp.shape(leaf))
      path, names = jax.tree_util.keystr(p), path_names(p)
      batch = stack_axes if is_stacked(path, names) else 0
      axes = _flax_layer_spec(names, shape[batch:], path)
      if axes is None or len(shape) - batch < 2:
        out.append(None)
      else:
        out.append(ParticleSpec(axes, tuple(range(batch))))
    return jax.tree.unflatten(treedef, out)

  return spec


def resolve_particle_axes(
    particle_axes: ParticleAxesSpec,
    updates: Any,
    mask: MaskSpec = None,
) -> list[ParticleSpec | None]:
  """Resolves a particle-axes spec (and a mask) to one layout per leaf.

  Args:
    particle_axes: a particle-axes spec (see the module docstring); None
      means :func:`flax_particle_axes` ``()``.
    updates: the tree of updates (or params); only shapes and paths are
      read.
    mask: None (every particle leaf), a bool, a tree of bools with the
      structure of ``updates``, or a callable of ``updates`` returning one.
      Leaves mapped to False do not collide.

  Returns:
    A list, in ``jax.tree.leaves(updates)`` order, of
    ``ParticleSpec(particle_axes, batch_axes)`` with sorted non-negative
    axes per leaf, or None where the leaf holds no particles.

  Raises:
    ValueError, TypeError: if the spec does not fit the tree or a leaf's
      shape; the message names the leaf.

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> params = {'b': jnp.zeros(4), 'w': jnp.zeros((3, 4))}
    >>> ko_optax.resolve_particle_axes(None, params)
    [None, ParticleSpec(particle_axes=(1,), batch_axes=())]
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(updates)[0]
  paths = [jax.tree_util.keystr(p) for p, _ in leaves_with_path]
  shapes = [tuple(jnp.shape(leaf)) for _, leaf in leaves_with_path]
  if particle_axes is None:
    particle_axes = flax_particle_axes()
  single = _is_single_spec(particle_axes)
  entries = _spec_leaves(particle_axes, updates, 'particle_axes')
  if single:
    # A single spec applies to the leaves that have enough axes only.
    nbatch = 0
    if isinstance(particle_axes, ParticleSpec):
      batch = particle_axes.batch_axes
      nbatch = 1 if isinstance(batch, int) else len(batch)
    entries = [e if len(s) - nbatch >= 2 else None
               for e, s in zip(entries, shapes)]
  keep = [True] * len(shapes) if mask is None else _spec_leaves(
      mask, updates, 'mask')
  resolved = []
  for e, s, path, k in zip(entries, shapes, paths, keep):
    if not isinstance(k, bool):
      raise TypeError(f'mask for leaf {path} must be a Python bool, got {k!r}.')
    resolved.append(normalize_spec(e, s, path) if k else None)
  return resolved


def particle_shape(shape: tuple[int, ...],
                   spec: ParticleSpec) -> tuple[int, int, int]:
  """``(B, D, N)``: systems, particle dimension, particles per system."""
  particle_axes, batch_axes = normalized_axes(spec)
  b = math.prod(shape[a] for a in batch_axes)
  n = math.prod(shape[a] for a in particle_axes)
  return b, math.prod(shape) // max(b * n, 1), n


def normalized_axes(
    spec: ParticleSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(particle_axes, batch_axes)`` of a spec :func:`normalize_spec` made.

  The functions below take normalized specs only, whose axes are tuples.
  """
  return (cast(tuple[int, ...], spec.particle_axes),
          cast(tuple[int, ...], spec.batch_axes))


def _permutation(ndim: int, spec: ParticleSpec) -> tuple[int, ...]:
  particle_axes, batch_axes = normalized_axes(spec)
  rest = tuple(a for a in range(ndim)
               if a not in particle_axes and a not in batch_axes)
  return batch_axes + rest + particle_axes


def to_particles(x: jax.Array, spec: ParticleSpec) -> jax.Array:
  """Reshapes a leaf into its ``(B, D, N)`` particle matrices.

  Each of the ``B`` systems is a ``(D, N)`` matrix whose columns are
  particles. When the particle axes are the trailing axes and the batch
  axes the leading ones (Flax's layout, scanned stacks) this is a reshape.
  """
  b, d, n = particle_shape(x.shape, spec)
  perm = _permutation(x.ndim, spec)
  if perm != tuple(range(x.ndim)):
    x = jnp.transpose(x, perm)
  return x.reshape(b, d, n)


def from_particles(p: jax.Array, spec: ParticleSpec,
                   shape: tuple[int, ...]) -> jax.Array:
  """Inverse of :func:`to_particles` for a leaf of the given ``shape``."""
  perm = _permutation(len(shape), spec)
  x = p.reshape(tuple(shape[a] for a in perm))
  if perm != tuple(range(len(shape))):
    x = jnp.transpose(x, tuple(perm.index(i) for i in range(len(shape))))
  return x
