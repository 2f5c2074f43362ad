"""Small ``flax.linen`` models for the examples and benchmarks.

Every model is a plain ``nn.Module`` without mutable collections (no
BatchNorm; the ResNet uses GroupNorm), so ``model.apply(params, x)`` is a
pure function of ``params`` and easy to ``jax.vmap`` over seeds. Every model
takes an optional ``kernel_init`` (for instance
``nn.initializers.normal(1e-3)``, a small initialisation under which neurons
condense) applied to its Dense, Conv (and Embed) kernels; None keeps Flax's
defaults.

Kernels follow Flax's layout: Dense ``(in, out)``, Conv ``(kh, kw, in, out)``,
Embed ``(vocab, features)``; the attention of :class:`SmallTransformer` is
built from Dense layers, so every kernel is a plain matrix whose last axis
indexes neurons, as ``ko_optax`` expects by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Init = Callable[..., Any] | None


def _kw(kernel_init: Init) -> dict[str, Any]:
  return {} if kernel_init is None else {'kernel_init': kernel_init}


def _ew(kernel_init: Init) -> dict[str, Any]:
  return {} if kernel_init is None else {'embedding_init': kernel_init}


class MLP(nn.Module):
  """Multi-layer perceptron on flattened inputs.

  The MNIST-1D paper's MLP (``MLPBase`` of the ``mnist1d`` project's
  notebooks) is ``MLP(hidden=(100, 100), residual=True)``: its second hidden
  layer adds its input, ``h = h + relu(W2 h)``.

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: outputs.
    kernel_init: optional kernel initializer.
    residual: hidden layers after the first add their input when the widths
      match (``x + relu(W x)``); False (the default) is a plain MLP.
  """
  hidden: Sequence[int] = (100, 100)
  num_classes: int = 10
  kernel_init: Init = None
  residual: bool = False

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      y = nn.relu(nn.Dense(width, name=f'hidden_{i}',
                           **_kw(self.kernel_init))(x))
      x = x + y if self.residual and i > 0 and x.shape[-1] == width else y
    return nn.Dense(self.num_classes, name='head', **_kw(self.kernel_init))(x)


class PatchConv1D(nn.Module):
  """A 1-D convolution computed as patches @ kernel (im2col).

  The same parameters (``kernel`` ``(k, in, out)``, ``bias``), initialisers
  and function as ``nn.Conv(features, (k,), strides=(stride,),
  padding=((padding, padding),))``; on a CPU the matmul form of a small
  convolution is several times faster, and it vmaps to a batched matmul
  instead of a grouped convolution.

  Attributes:
    features: output channels.
    kernel_size: taps.
    stride: stride.
    padding: zeros added on each side.
    kernel_init: optional kernel initializer (None: ``nn.Conv``'s default).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  kernel_init: Init = None

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    init = self.kernel_init or nn.initializers.lecun_normal()
    kernel = self.param('kernel', init, (k, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x = jnp.pad(x, ((0, 0), (self.padding, self.padding), (0, 0)))
    n_out = (x.shape[1] - k) // self.stride + 1
    span = self.stride * (n_out - 1) + 1
    patches = jnp.stack([x[:, j:j + span:self.stride] for j in range(k)],
                        axis=-2).reshape(x.shape[0], n_out, k * c)
    return patches @ kernel.reshape(k * c, self.features) + bias


class CNN1D(nn.Module):
  """The MNIST-1D paper's small 1-D CNN (Greydanus, 2020).

  Three convolutions of ``channels`` channels (kernel 5 then 3, 3; stride 2,
  padding 1) with ReLU, flattened into a linear head; about 5k parameters.
  Inputs ``(B, L)`` or ``(B, L, 1)``.

  Attributes:
    channels: channels of every convolution.
    num_classes: outputs.
    kernel_init: optional kernel initializer.
    patches: compute the convolutions as :class:`PatchConv1D` (same
      parameters and function, several times faster on a CPU).
  """
  channels: int = 25
  num_classes: int = 10
  kernel_init: Init = None
  patches: bool = False

  @nn.compact
  def __call__(self, x):
    if x.ndim == 2:
      x = x[..., None]
    for i, k in enumerate((5, 3, 3)):
      if self.patches:
        conv = PatchConv1D(self.channels, k, stride=2, padding=1,
                           name=f'conv_{i}', kernel_init=self.kernel_init)
      else:
        conv = nn.Conv(self.channels, (k,), strides=(2,), padding=((1, 1),),
                       name=f'conv_{i}', **_kw(self.kernel_init))
      x = nn.relu(conv(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, name='head', **_kw(self.kernel_init))(x)


class DigitsCNN(nn.Module):
  """A small CNN for 8x8 digits: two 3x3 convolutions, a hidden Dense layer.

  Inputs ``(B, 8, 8, 1)`` or ``(B, 64)``.

  Attributes:
    channels: channels of the two convolutions.
    hidden: width of the hidden Dense layer.
    num_classes: outputs.
    kernel_init: optional kernel initializer.
  """
  channels: Sequence[int] = (16, 32)
  hidden: int = 64
  num_classes: int = 10
  kernel_init: Init = None

  @nn.compact
  def __call__(self, x):
    if x.ndim == 2:
      x = x.reshape((x.shape[0], 8, 8, 1))
    for i, c in enumerate(self.channels):
      x = nn.relu(nn.Conv(c, (3, 3), name=f'conv_{i}',
                          **_kw(self.kernel_init))(x))
      if i == 0:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name='hidden',
                         **_kw(self.kernel_init))(x))
    return nn.Dense(self.num_classes, name='head', **_kw(self.kernel_init))(x)


class ResidualBlock(nn.Module):
  """A ResNet basic block (two 3x3 convolutions) with GroupNorm."""
  features: int
  strides: int = 1
  kernel_init: Init = None

  @nn.compact
  def __call__(self, x):
    groups = min(8, self.features)
    y = nn.Conv(self.features, (3, 3), strides=self.strides, use_bias=False,
                **_kw(self.kernel_init))(x)
    y = nn.relu(nn.GroupNorm(num_groups=groups)(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False,
                **_kw(self.kernel_init))(y)
    y = nn.GroupNorm(num_groups=groups)(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False,
                  name='shortcut', **_kw(self.kernel_init))(x)
      x = nn.GroupNorm(num_groups=groups)(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 for 32x32x3 images (CIFAR stem: 3x3 conv, no max-pool).

  GroupNorm replaces BatchNorm so the model has no mutable state. ``width``
  scales every stage (64: the standard ResNet-18, 11M parameters; 8 or 16
  for CPU runs).

  Attributes:
    num_classes: outputs.
    width: channels of the first stage (then 2x, 4x, 8x).
    stage_sizes: blocks per stage.
    kernel_init: optional kernel initializer.
  """
  num_classes: int = 10
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  kernel_init: Init = None

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.width, (3, 3), use_bias=False, name='stem',
                **_kw(self.kernel_init))(x)
    x = nn.relu(nn.GroupNorm(num_groups=min(8, self.width))(x))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(self.width * 2**stage, strides=strides,
                          kernel_init=self.kernel_init)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name='head', **_kw(self.kernel_init))(x)


class TextClassifier(nn.Module):
  """Embedding bag: mean of the token embeddings (padding ignored), an MLP.

  Inputs: int token ids ``(B, T)`` with 0 as padding.

  Attributes:
    vocab_size: vocabulary size (padding id 0 included).
    num_classes: outputs.
    embed_dim: embedding width.
    hidden: width of the hidden layer.
    kernel_init: optional initializer of the kernels and the embedding.
  """
  vocab_size: int
  num_classes: int = 2
  embed_dim: int = 64
  hidden: int = 64
  kernel_init: Init = None

  @nn.compact
  def __call__(self, tokens):
    emb = nn.Embed(self.vocab_size, self.embed_dim, name='embed',
                   **_ew(self.kernel_init))(tokens)
    mask = (tokens != 0)[..., None].astype(emb.dtype)
    x = jnp.sum(emb * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    x = nn.relu(nn.Dense(self.hidden, name='hidden',
                         **_kw(self.kernel_init))(x))
    return nn.Dense(self.num_classes, name='head', **_kw(self.kernel_init))(x)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm block; attention from Dense layers (plain 2-D kernels)."""
  width: int
  heads: int
  mlp_ratio: int = 4
  causal: bool = False
  kernel_init: Init = None

  @nn.compact
  def __call__(self, x, pad_mask):
    b, t, _ = x.shape
    hd = self.width // self.heads
    h = nn.LayerNorm()(x)
    qkv = nn.Dense(3 * self.width, name='qkv', **_kw(self.kernel_init))(h)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.heads, hd), 3, axis=2)
    q, k, v = (a[:, :, 0] for a in (q, k, v))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(hd).astype(x.dtype)
    allowed = pad_mask[:, None, None, :]
    if self.causal:
      allowed = allowed & jnp.tril(jnp.ones((t, t), bool))[None, None]
    logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
    att = nn.softmax(logits, axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', att, v).reshape(b, t, self.width)
    x = x + nn.Dense(self.width, name='proj', **_kw(self.kernel_init))(out)
    h = nn.LayerNorm()(x)
    h = nn.gelu(nn.Dense(self.mlp_ratio * self.width, name='mlp_in',
                         **_kw(self.kernel_init))(h))
    return x + nn.Dense(self.width, name='mlp_out', **_kw(self.kernel_init))(h)


class SmallTransformer(nn.Module):
  """A few-layer Transformer: sequence classifier or causal language model.

  With ``num_classes`` set: an encoder over token ids ``(B, T)`` (0 is
  padding and is masked out), mean-pooled into a classification head.
  With ``num_classes=None``: a causal decoder returning next-token logits
  ``(B, T, vocab_size)``.

  Attributes:
    vocab_size: vocabulary size.
    num_classes: classes, or None for a language model.
    width: model width.
    depth: number of blocks.
    heads: attention heads (must divide ``width``).
    max_len: longest sequence (learned positional embeddings).
    kernel_init: optional initializer of the kernels and embeddings.
  """
  vocab_size: int
  num_classes: int | None = 2
  width: int = 64
  depth: int = 2
  heads: int = 4
  max_len: int = 256
  kernel_init: Init = None

  @nn.compact
  def __call__(self, tokens):
    t = tokens.shape[1]
    lm = self.num_classes is None
    x = nn.Embed(self.vocab_size, self.width, name='embed',
                 **_ew(self.kernel_init))(tokens)
    pos = self.param('pos_embed', nn.initializers.normal(0.02),
                     (self.max_len, self.width))
    x = x + pos[:t][None]
    pad_mask = jnp.ones_like(tokens, bool) if lm else tokens != 0
    for i in range(self.depth):
      x = TransformerBlock(self.width, self.heads, causal=lm,
                           kernel_init=self.kernel_init, name=f'block_{i}')(
                               x, pad_mask)
    x = nn.LayerNorm()(x)
    if lm:
      return nn.Dense(self.vocab_size, name='head', **_kw(self.kernel_init))(x)
    m = pad_mask[..., None].astype(x.dtype)
    x = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    return nn.Dense(self.num_classes, name='head', **_kw(self.kernel_init))(x)


class SmallCNN(nn.Module):
  """A small image CNN (e.g. CIFAR-10): conv stages with pooling, a head.

  Each stage is two 3x3 convolutions with ReLU, then 2x2 average pooling;
  global average pooling before the Dense head.

  Attributes:
    channels: channels of each stage.
    num_classes: outputs.
    kernel_init: optional kernel initializer.
  """
  channels: Sequence[int] = (32, 64, 128)
  num_classes: int = 10
  kernel_init: Init = None

  @nn.compact
  def __call__(self, x):
    for i, c in enumerate(self.channels):
      for j in range(2):
        x = nn.relu(nn.Conv(c, (3, 3), name=f'conv_{i}_{j}',
                            **_kw(self.kernel_init))(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name='head', **_kw(self.kernel_init))(x)
