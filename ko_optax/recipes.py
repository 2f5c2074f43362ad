"""Recipes: KO as its authors configure it, in one call.

The only public code of KO is its first author's nanoGPT training script.
Its optimizer step, checked against that code, is::

    optax.chain(
        optax.clip_by_global_norm(1.0),
        ko_optax.stochastic_collision(      # soft, diagonal kept, plain sum
            0.1, mode='soft', include_self=True, threshold=0.0,
            normalization=None, mask=last_block),
        ko_optax.thermal_diffusion(         # noise std 1e-4: T = 5e-9
            5e-9, mask=last_block),
        optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.1,
                    mask=ndim >= 2),
    )

where ``last_block`` selects the projection kernels of the LAST transformer
block only (attention q, k, v, o and the MLP's kernels; not the embeddings,
the output head, the other blocks or any bias). :func:`ko_gpt` builds that
chain; :func:`last_block_mask` finds the last block of a Flax model's
parameter tree by its numbered path (``blocks/11/...`` in nnx,
``blocks_11/...`` in linen).

References:
  Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
  Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
"""

from __future__ import annotations

from collections.abc import Callable
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ko_optax import _checks
from ko_optax import diffusion
from ko_optax import particles as particles_lib
from ko_optax.collision import transform as collision_lib

_NUMBERED = re.compile(r'^(?P<stem>.+)_(?P<index>\d+)$')
_NOT_KERNELS = ('bias', 'scale', 'embed')


def _block_of(names: tuple[str, ...]) -> tuple[tuple[str, ...], int] | None:
  """The (container, index) of the first numbered entry of a leaf's path.

  ``('blocks', '3', 'attn', 'kernel')`` -> ``(('blocks',), 3)`` (nnx lists,
  dicts of ints); ``('params', 'blocks_3', 'q', 'kernel')`` ->
  ``(('params', 'blocks'), 3)`` (linen's ``name_i`` submodules).
  """
  for i, name in enumerate(names[:-1]):
    if name.isdigit():
      return names[:i], int(name)
    match = _NUMBERED.match(name)
    if match:
      return names[:i] + (match.group('stem'),), int(match.group('index'))
  return None


def last_block_mask(
    blocks: str | None = None,
) -> Callable[[Any], Any]:
  """A mask of the projection kernels of a model's last numbered block.

  A leaf belongs to block ``i`` of a container when its path holds a numbered
  entry: a key ``'3'`` / index 3 under the container (``nnx.List``, dicts of
  int) or a name ``'blocks_3'`` (linen's ``nn.Module`` lists). The mask
  selects the leaves of the highest index whose ``ndim >= 2`` and whose name
  contains none of ``bias``, ``scale``, ``embed``: the last block's attention
  and MLP kernels, as the authors' script collides.

  Args:
    blocks: the container's name (e.g. ``'blocks'``, ``'h'``, ``'layers'``);
      None picks the container with the most numbered blocks, and refuses a
      tie.

  Returns:
    A callable ``params -> tree of bool`` for the ``mask`` of
    :func:`ko_optax.stochastic_collision`, :func:`ko_optax.thermal_diffusion`
    or :func:`ko_optax.ko`. It raises ``ValueError`` on a tree without
    numbered blocks (for instance a scanned stack, whose last block is a
    slice of every stacked leaf, which a mask cannot select).

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> params = {'embed': {'embedding': jnp.zeros((256, 8))},
    ...           'blocks': {str(i): {'q': {'kernel': jnp.zeros((8, 8)),
    ...                                     'bias': jnp.zeros(8)}}
    ...                      for i in range(3)},
    ...           'head': {'kernel': jnp.zeros((8, 256))}}
    >>> mask = ko_optax.last_block_mask()(params)
    >>> mask['blocks']['2']['q'], mask['blocks']['1']['q']['kernel']
    ({'bias': False, 'kernel': True}, False)
  """
  if blocks is not None and not isinstance(blocks, str):
    raise TypeError(f'blocks must be a container name or None, got {blocks!r}.')

  def mask(params: Any) -> Any:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    found = []
    containers: dict[tuple[str, ...], set[int]] = {}
    for path, _ in leaves_with_path:
      block = _block_of(particles_lib.path_names(path))
      if block is not None and (blocks is None or block[0][-1:] == (blocks,)):
        containers.setdefault(block[0], set()).add(block[1])
      found.append(block)
    if not containers:
      where = '' if blocks is None else f" named '{blocks}'"
      raise ValueError(
          f'last_block_mask found no numbered blocks{where} in the parameter '
          "tree (paths like 'blocks/11/...' or 'blocks_11/...'). A scanned "
          'stack keeps every block in one leaf, and a mask cannot select a '
          'slice of it: pass layers= (a tree of bools or a callable) to '
          'ko_optax.ko_gpt, or build the model with a list of blocks.')
    sizes = sorted(((len(v), k) for k, v in containers.items()), reverse=True)
    if blocks is None and len(sizes) > 1 and sizes[0][0] == sizes[1][0]:
      names = ', '.join('/'.join(k) for _, k in sizes)
      raise ValueError(
          f'last_block_mask found several block containers of equal depth '
          f'({names}); name one with last_block_mask(blocks=...).')
    container = sizes[0][1]
    last = max(containers[container])
    out = []
    for (path, leaf), block in zip(leaves_with_path, found):
      name = particles_lib.path_names(path)[-1].lower()
      out.append(block == (container, last) and jnp.ndim(leaf) >= 2
                 and not any(w in name for w in _NOT_KERNELS))
    return jax.tree.unflatten(treedef, out)

  return mask


def _matrices(params: Any) -> Any:
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def ko_gpt(
    learning_rate: optax.ScalarOrSchedule,
    *,
    layers: Any = None,
    collision_rate: optax.ScalarOrSchedule = 0.1,
    noise_std: float = 1e-4,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    max_grad_norm: float | None = 1.0,
    particle_axes: particles_lib.ParticleAxesSpec = None,
    key: Any = 0,
) -> optax.GradientTransformationExtraArgs:
  """KO as its authors train GPT language models (their nanoGPT script).

  The chain, in order: clip the global gradient norm; a soft collision with
  the diagonal kept, no threshold and no normalisation (the script's
  default variant) on ``layers``; Gaussian noise of std ``noise_std`` on the
  same leaves' gradients; AdamW with the script's betas, decaying the
  weights of ``ndim >= 2`` leaves only. ``update`` needs ``params``.

  Args:
    learning_rate: AdamW's learning rate (float or schedule).
    layers: which leaves collide and receive noise: None (the projection
      kernels of the last numbered block, :func:`last_block_mask`), a block
      container's name (``'h'``: its last block), a tree of bools or a
      callable ``params -> tree of bool`` (e.g. ``True`` for every layer).
    collision_rate: the soft collision's rate (float or schedule).
    noise_std: standard deviation of the gradient noise (temperature
      ``noise_std ** 2 / 2``); 0 leaves it out.
    b1, b2, eps: AdamW's moments and epsilon.
    weight_decay: decoupled weight decay on ``ndim >= 2`` leaves.
    max_grad_norm: the global-norm clip; None leaves it out.
    particle_axes: the particle layout (None: Flax's rules,
      :func:`ko_optax.flax_particle_axes`).
    key: int seed or typed ``jax.random.key``; the collision and the noise
      draw from independent streams (``fold_in(key, 0)``, ``fold_in(key,
      1)``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, ko_optax
    >>> params = {'blocks': [{'up': {'kernel': jnp.ones((4, 8)) / 2,
    ...                              'bias': jnp.zeros(8)}} for _ in range(2)]}
    >>> tx = ko_optax.ko_gpt(1e-3)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> updates['blocks'][1]['up']['kernel'].shape
    (4, 8)

  References:
    Feng et al., `KO: Kinetics-inspired Neural Optimizer with PDE Simulation
    Approaches <https://arxiv.org/abs/2505.14777>`_, 2025 (its authors'
    nanoGPT fork is the configuration reproduced here).
  """
  if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or (
      noise_std < 0):
    raise ValueError(f'noise_std must be a float >= 0, got {noise_std!r}.')
  if max_grad_norm is not None and (
      isinstance(max_grad_norm, bool)
      or not isinstance(max_grad_norm, (int, float)) or max_grad_norm <= 0):
    raise ValueError(
        f'max_grad_norm must be a float > 0 or None, got {max_grad_norm!r}.')
  if layers is None or isinstance(layers, str):
    layers = last_block_mask(layers)
  root = _checks.canonicalize_key(key)
  steps = []
  if max_grad_norm is not None:
    steps.append(optax.clip_by_global_norm(max_grad_norm))
  steps.append(collision_lib.stochastic_collision(
      collision_rate, mode='soft', key=jax.random.fold_in(root, 0),
      particle_axes=particle_axes, mask=layers, threshold=0.0,
      include_self=True, normalization=None))
  if noise_std > 0:
    steps.append(diffusion.thermal_diffusion(
        noise_std ** 2 / 2, key=jax.random.fold_in(root, 1), mask=layers))
  steps.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                           weight_decay=weight_decay, mask=_matrices))
  return optax.chain(*steps)
