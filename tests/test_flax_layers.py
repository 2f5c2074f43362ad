"""The default particles of Flax's standard layers, nnx and linen.

``particle_axes=None`` reads each leaf's name and shape
(:func:`ko_optax.flax_particle_axes`); every standard layer must get the
right particles, or none, without a warning.
"""

import warnings

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import pytest

import ko_optax

PS = ko_optax.ParticleSpec


def _layouts(params):
  """{path: resolved spec} for the default rules, failing on any warning."""
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    specs = ko_optax.resolve_particle_axes(None, params)
  paths = [jax.tree_util.keystr(p, simple=True, separator='/')
           for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return dict(zip(paths, specs))


def _nnx_params(make):
  """The Param shapes of an nnx module, without running its initialisers."""
  module = nnx.eval_shape(make)
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def test_nnx_standard_layers():

  class Model(nnx.Module):

    def __init__(self):
      rngs = nnx.Rngs(0)
      self.linear = nnx.Linear(8, 16, rngs=rngs)
      self.general = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
      self.conv = nnx.Conv(3, 16, (3, 3), rngs=rngs)
      self.conv_t = nnx.ConvTranspose(3, 16, (3, 3), rngs=rngs)
      self.embed = nnx.Embed(100, 8, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8,
                                         qkv_features=8, decode=False,
                                         rngs=rngs)
      self.norm = nnx.LayerNorm(8, rngs=rngs)

  with pytest.warns(UserWarning, match="'general'"):
    ko_optax.resolve_particle_axes(None, _nnx_params(Model))
  params = _nnx_params(Model)
  del params['general']          # a bare LinearGeneral is ambiguous: it warns
  got = _layouts(params)
  assert got == {
      'attn/key/bias': None, 'attn/key/kernel': PS((1, 2), ()),
      'attn/out/bias': None, 'attn/out/kernel': PS((2,), ()),
      'attn/query/bias': None, 'attn/query/kernel': PS((1, 2), ()),
      'attn/value/bias': None, 'attn/value/kernel': PS((1, 2), ()),
      'conv/bias': None, 'conv/kernel': PS((3,), ()),
      'conv_t/bias': None, 'conv_t/kernel': PS((3,), ()),
      'embed/embedding': None,
      'linear/bias': None, 'linear/kernel': PS((1,), ()),
      'norm/bias': None, 'norm/scale': None,
  }


class _Linen(nn.Module):

  @nn.compact
  def __call__(self, x, tokens):
    h = nn.Dense(8)(x)
    h = nn.DenseGeneral((2, 4), name='query')(h).reshape(h.shape)
    h = nn.MultiHeadDotProductAttention(num_heads=2)(h[:, None])[:, 0]
    h = nn.LayerNorm()(h + nn.Embed(100, 8)(tokens))
    img = nn.Conv(4, (3, 3))(jnp.zeros((1, 6, 6, 3)))
    img = nn.ConvTranspose(4, (3, 3))(img)
    return h, img


def test_linen_standard_layers():
  params = jax.eval_shape(_Linen().init, jax.random.key(0),
                          jnp.zeros((2, 8)), jnp.zeros((2,), jnp.int32))
  params = params['params']
  got = _layouts(params)
  assert got == {
      'Conv_0/bias': None, 'Conv_0/kernel': PS((3,), ()),
      'ConvTranspose_0/bias': None, 'ConvTranspose_0/kernel': PS((3,), ()),
      'Dense_0/bias': None, 'Dense_0/kernel': PS((1,), ()),
      'Embed_0/embedding': None,
      'LayerNorm_0/bias': None, 'LayerNorm_0/scale': None,
      'MultiHeadDotProductAttention_0/key/bias': None,
      'MultiHeadDotProductAttention_0/key/kernel': PS((1, 2), ()),
      'MultiHeadDotProductAttention_0/out/bias': None,
      'MultiHeadDotProductAttention_0/out/kernel': PS((2,), ()),
      'MultiHeadDotProductAttention_0/query/bias': None,
      'MultiHeadDotProductAttention_0/query/kernel': PS((1, 2), ()),
      'MultiHeadDotProductAttention_0/value/bias': None,
      'MultiHeadDotProductAttention_0/value/kernel': PS((1, 2), ()),
      'query/bias': None, 'query/kernel': PS((1, 2), ()),
  }


def test_ko_leaves_embeddings_and_2d_biases_untouched():
  # The reviewer's probe: with ko() defaults, rows of tokens absent from the
  # batch must not move, and attention biases (heads, head_dim) do not
  # collide.
  params = {'embed': {'embedding': jax.random.normal(jax.random.key(0),
                                                     (50, 8))},
            'query': {'kernel': jax.random.normal(jax.random.key(1),
                                                  (8, 2, 4)),
                      'bias': jnp.zeros((2, 4))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  grads['embed']['embedding'] = grads['embed']['embedding'].at[:4].set(1.0)
  grads['query']['bias'] = jnp.ones((2, 4))
  grads['query']['kernel'] = jax.random.normal(jax.random.key(2), (8, 2, 4))
  for collision in ('hard', 'soft'):
    tx = ko_optax.ko(1e-3, collision=collision, collision_rate=1.0,
                     base='sgd', momentum=None)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert bool(jnp.all(updates['embed']['embedding'][4:] == 0))
    assert bool(jnp.all(updates['query']['bias'] == -1e-3))
    assert not bool(jnp.allclose(updates['query']['kernel'],
                                 -1e-3 * grads['query']['kernel']))
