"""A small GPT language model in ``flax.nnx``, and byte-level text to train it.

The model (:class:`GPT`) is a pre-LayerNorm decoder: token and learned position
embeddings, ``depth`` blocks of causal self-attention and an MLP, a final
LayerNorm and an output head. Every projection is its own ``nnx.Linear``
(kernel ``(in, out)``): the attention's ``q``, ``k``, ``v`` and ``o``, the
MLP's ``up`` and ``down``; so each kernel is a plain matrix whose last axis
indexes neurons, as ``ko_optax`` expects by default.

``scan_blocks=True`` builds the blocks with ``nnx.vmap`` and applies them with
``nnx.scan`` (Flax's "scan over layers"): every block parameter is then ONE
leaf with a leading layer axis, e.g. ``blocks/attn/q/kernel`` of shape
``(depth, width, width)``, and the model compiles in time independent of its
depth. ``scan_blocks=False`` keeps a list of blocks (``blocks/0/attn/q/...``).
Both compute the same function of the same weights:
:func:`stack_blocks` turns the parameters of one into the other's.

The data helpers read a folder of text files as bytes (vocabulary 256), split
them into train and validation by file with a fixed rule, and sample random
context windows; :func:`stdlib_corpus` uses the Python standard library's own
sources, which are on every machine.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
from typing import Any
import zlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Sizes of a :class:`GPT`.

  Args:
    vocab_size: tokens (256 for bytes).
    context: longest sequence (rows of the position embedding).
    width: model width.
    depth: number of blocks.
    heads: attention heads (must divide ``width``).
    mlp_ratio: MLP hidden width over ``width``.
    scan_blocks: stack the blocks into one set of ``(depth, ...)`` leaves and
      apply them with ``nnx.scan`` instead of a Python list.
  """
  vocab_size: int = 256
  context: int = 64
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 4
  scan_blocks: bool = False


class Block(nnx.Module):
  """Pre-LayerNorm Transformer block: causal self-attention, then an MLP.

  Args:
    width: model width.
    heads: attention heads (must divide ``width``).
    mlp_ratio: MLP hidden width over ``width``.
    rngs: random streams for the initialisation.
  """

  def __init__(self, width: int, heads: int, mlp_ratio: int, *,
               rngs: nnx.Rngs):
    if width % heads:
      raise ValueError(f'heads={heads} must divide width={width}')
    self.heads = heads
    self.ln1 = nnx.LayerNorm(width, rngs=rngs)
    self.q = nnx.Linear(width, width, rngs=rngs)
    self.k = nnx.Linear(width, width, rngs=rngs)
    self.v = nnx.Linear(width, width, rngs=rngs)
    self.o = nnx.Linear(width, width, rngs=rngs)
    self.ln2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, mlp_ratio * width, rngs=rngs)
    self.down = nnx.Linear(mlp_ratio * width, width, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, w = x.shape
    hd = w // self.heads
    h = self.ln1(x)
    q, k, v = (f(h).reshape(b, t, self.heads, hd)
               for f in (self.q, self.k, self.v))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(hd).astype(x.dtype)
    causal = jnp.tril(jnp.ones((t, t), bool))
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    att = jax.nn.softmax(logits, axis=-1)
    x = x + self.o(jnp.einsum('bhqk,bkhd->bqhd', att, v).reshape(b, t, w))
    return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class GPT(nnx.Module):
  """A decoder-only Transformer returning next-token logits.

  Parameter paths: ``embed/embedding``, ``pos_embed``, ``blocks/...``,
  ``ln_f/...``, ``head/kernel``, ``head/bias``. With ``scan_blocks`` every
  block parameter is one stacked leaf under ``blocks`` with leading axis
  ``depth``; without, the blocks are ``blocks/0``, ``blocks/1``, ...

  Args:
    config: the sizes.
    rngs: random streams for the initialisation.
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embed = nnx.Embed(c.vocab_size, c.width, rngs=rngs)
    self.pos_embed = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (c.context, c.width)))
    if c.scan_blocks:
      @nnx.split_rngs(splits=c.depth)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make_blocks(rngs):
        return Block(c.width, c.heads, c.mlp_ratio, rngs=rngs)
      self.blocks = make_blocks(rngs)
    else:
      self.blocks = nnx.List([Block(c.width, c.heads, c.mlp_ratio, rngs=rngs)
                              for _ in range(c.depth)])
    self.ln_f = nnx.LayerNorm(c.width, rngs=rngs)
    self.head = nnx.Linear(c.width, c.vocab_size, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Logits ``(B, T, vocab_size)`` for int tokens ``(B, T)``, T <= context."""
    t = tokens.shape[1]
    x = self.embed(tokens) + self.pos_embed[:t][None]
    if self.config.scan_blocks:
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def run(x, block):
        return block(x)
      x = run(x, self.blocks)
    else:
      for block in self.blocks:
        x = block(x)
    return self.head(self.ln_f(x))


def stack_blocks(unscanned: GPT, scanned: GPT) -> None:
  """Copies the weights of a list-of-blocks GPT into a scanned one, in place.

  Args:
    unscanned: a :class:`GPT` with ``scan_blocks=False``.
    scanned: a :class:`GPT` of the same sizes with ``scan_blocks=True``; its
      parameters are overwritten, block ``i`` at index ``i`` of every leaf.
  """
  src = nnx.to_pure_dict(nnx.state(unscanned, nnx.Param))
  depth = unscanned.config.depth
  blocks = [src['blocks'][i] for i in range(depth)]
  src['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  state = nnx.state(scanned, nnx.Param)
  nnx.replace_by_pure_dict(state, src)
  nnx.update(scanned, state)


def lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token cross entropy in bits per token (bits per byte)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return nll.mean() / jnp.log(2.0)


# ----------------------------------------------------------------------------
# byte-level text


def stdlib_dir() -> str:
  """The folder of the running Python's standard library sources."""
  return sysconfig.get_paths()['stdlib']


def _read_by_file(root: str, suffix: str, max_bytes: int | None,
                  split_of: Any, names: tuple[str, ...]) -> dict[str, list]:
  """The files under ``root`` ending in ``suffix``, as bytes per split.

  Walks ``root`` (skipping ``site-packages`` and ``__pycache__``), reads the
  files in sorted order, each followed by a NUL byte, until ``max_bytes``
  are read; ``split_of(crc)`` names the split of a file from the CRC-32 of
  its path relative to ``root``. Returns lists of bytes per name.
  """
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in ('site-packages', '__pycache__'))
    paths += [os.path.join(dirpath, f) for f in sorted(filenames)
              if f.endswith(suffix)]
  parts: dict[str, list[bytes]] = {k: [] for k in names}
  total = 0
  for path in sorted(paths):
    rel = os.path.relpath(path, root)
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError:
      continue
    parts[split_of(zlib.crc32(rel.encode()))].append(data + b'\0')
    total += len(data) + 1
    if max_bytes is not None and total >= max_bytes:
      break
  return parts


def read_text_splits(root: str, *, suffix: str = '.py',
                     heldout_every: int = 10, max_bytes: int | None = None,
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads the files under ``root`` as bytes, split into train, val and test.

  The split is by file, with a fixed rule: with ``r`` the CRC-32 of a file's
  path relative to ``root`` modulo ``heldout_every``, ``r == 0`` goes to
  validation, ``r == 1`` to test, the rest to train. So the same files give
  the same split on every machine, no file is in two splits, and the
  validation files are those of :func:`read_text_folder`. Files are read in
  sorted order, each followed by a NUL byte, until ``max_bytes`` are read.

  Args:
    root: folder to walk (recursively; ``site-packages`` and
      ``__pycache__`` are skipped).
    suffix: which files to read.
    heldout_every: one file in about ``heldout_every`` goes to validation,
      one to test (at least 3).
    max_bytes: stop after this many bytes in all (None: read everything).

  Returns:
    ``(splits, info)``: ``splits`` maps 'train', 'val', 'test' to uint8
    arrays; ``info`` counts their files and bytes and names the root.

  Raises:
    ValueError: when a split would be empty.
  """
  if heldout_every < 3:
    raise ValueError(f'heldout_every must be >= 3, got {heldout_every}')
  parts = _read_by_file(
      root, suffix, max_bytes, names=('train', 'val', 'test'),
      split_of=lambda crc: ('val', 'test', 'train')[
          min(crc % heldout_every, 2)])
  empty = [k for k, v in parts.items() if not v]
  if empty:
    raise ValueError(f'too few {suffix} files under {root} for a split: '
                     f'{", ".join(empty)} would be empty')
  arrays = {k: np.frombuffer(b''.join(v), np.uint8) for k, v in parts.items()}
  info: dict[str, Any] = {'root': root, 'suffix': suffix,
                          'heldout_every': heldout_every}
  for k in parts:
    info[f'{k}_files'] = len(parts[k])
    info[f'{k}_bytes'] = int(arrays[k].size)
  return arrays, info


def read_text_folder(root: str, *, suffix: str = '.py',
                     val_every: int = 10, max_bytes: int | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Reads the files under ``root`` as bytes, split into train and val.

  A file goes to validation when the CRC-32 of its path relative to ``root``
  is divisible by ``val_every`` (a fixed rule: the same split on every
  machine with the same files, no file in both). Files are read in sorted
  order, each followed by a NUL byte, until ``max_bytes`` are read.
  :func:`read_text_splits` also holds out a test split.

  Args:
    root: folder to walk (recursively; ``site-packages`` is skipped).
    suffix: which files to read.
    val_every: one file in about ``val_every`` goes to validation.
    max_bytes: stop after this many bytes in all (None: read everything).

  Returns:
    ``(train, val, info)``: two uint8 arrays and counts of files and bytes.
  """
  parts = _read_by_file(
      root, suffix, max_bytes, names=('train', 'val'),
      split_of=lambda crc: 'val' if crc % val_every == 0 else 'train')
  if not parts['train'] or not parts['val']:
    raise ValueError(f'too few {suffix} files under {root} for a split')
  arrays = {k: np.frombuffer(b''.join(v), np.uint8) for k, v in parts.items()}
  info = {'root': root, 'train_files': len(parts['train']),
          'val_files': len(parts['val']), 'train_bytes': arrays['train'].size,
          'val_bytes': arrays['val'].size}
  return arrays['train'], arrays['val'], info


def stdlib_corpus(max_bytes: int | None = 4_000_000):
  """:func:`read_text_folder` on the standard library's ``.py`` files."""
  return read_text_folder(stdlib_dir(), max_bytes=max_bytes)


def sample_windows(data: np.ndarray, batch: int, context: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Random context windows: inputs and next-byte targets, int32 ``(B, T)``.

  Args:
    data: uint8 bytes.
    batch: windows.
    context: window length T.
    rng: numpy generator (the starts are drawn from it).
  """
  starts = rng.integers(0, data.size - context - 1, size=batch)
  idx = starts[:, None] + np.arange(context + 1)[None]
  windows = data[idx].astype(np.int32)
  return windows[:, :-1], windows[:, 1:]
