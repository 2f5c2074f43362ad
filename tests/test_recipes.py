"""ko_gpt (the authors' nanoGPT recipe) and last_block_mask."""

import functools

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ko_examples import gpt as gpt_lib
import ko_optax


@functools.cache
def _gpt_params(scan=False, depth=3):
  """The GPT's parameters (random normal, not its initialisation: shapes and
  paths are what matter here; ``eval_shape`` builds no weights)."""
  cfg = gpt_lib.GPTConfig(context=8, width=8, depth=depth, heads=2,
                          mlp_ratio=2, scan_blocks=scan)
  model = nnx.eval_shape(lambda: gpt_lib.GPT(cfg, rngs=nnx.Rngs(0)))
  shapes = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.3, x.dtype), shapes)


def _selected(mask_tree, params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  chosen = jax.tree.leaves(mask_tree)
  return sorted(jax.tree_util.keystr(p) for (p, _), m in zip(flat, chosen)
                if m)


def test_last_block_mask_picks_the_last_blocks_kernels_nnx():
  params = _gpt_params()
  chosen = _selected(ko_optax.last_block_mask()(params), params)
  want = sorted(f"['blocks'][2]['{m}']['kernel']"
                for m in ('q', 'k', 'v', 'o', 'up', 'down'))
  assert chosen == want


def test_last_block_mask_linen_names():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.LayerNorm()(x)
      return nn.Dense(4, name='mlp')(x)

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Embed(10, 4)(x)
      for _ in range(3):
        x = Block()(x)
      return nn.Dense(10, name='head')(x)

  params = Model().init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
  chosen = _selected(ko_optax.last_block_mask()(params), params)
  assert chosen == ["['params']['Block_2']['mlp']['kernel']"]


def test_last_block_mask_refuses_what_it_cannot_select():
  with pytest.raises(ValueError, match='scanned stack'):
    ko_optax.last_block_mask()(_gpt_params(scan=True))
  tie = {'enc': [{'w': jnp.ones((2, 2))}] * 2,
         'dec': [{'w': jnp.ones((2, 2))}] * 2}
  with pytest.raises(ValueError, match='blocks=...'):
    ko_optax.last_block_mask()(tie)
  chosen = _selected(ko_optax.last_block_mask('dec')(tie), tie)
  assert chosen == ["['dec'][1]['w']"]
  with pytest.raises(TypeError, match='blocks'):
    ko_optax.last_block_mask(3)


def _explicit_chain(lr, key):
  mask = ko_optax.last_block_mask()
  root = jax.random.key(key)
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      ko_optax.stochastic_collision(
          0.1, mode='soft', key=jax.random.fold_in(root, 0), mask=mask,
          threshold=0.0, include_self=True, normalization=None),
      ko_optax.thermal_diffusion(5e-9, key=jax.random.fold_in(root, 1),
                                 mask=mask),
      optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                  mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))


def test_ko_gpt_equals_the_explicit_authors_chain():
  params = _gpt_params(depth=2)
  rng = np.random.default_rng(0)
  grads_seq = [jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape) * 3, p.dtype), params)
               for _ in range(2)]
  # Jitted init and apply: one compile each, not one per leaf shape and op.
  apply = jax.jit(optax.apply_updates)
  results = []
  for tx in (ko_optax.ko_gpt(1e-3, key=7), _explicit_chain(1e-3, 7)):
    p, state = params, jax.jit(tx.init)(params)
    step = jax.jit(tx.update)
    for g in grads_seq:
      u, state = step(g, state, p)
      p = apply(p, u)
    results.append(p)
  jax.tree.map(np.testing.assert_array_equal, *results)
  # The recipe really acts: the last block moved differently from AdamW's.
  plain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      1e-3, b1=0.9, b2=0.95, weight_decay=0.1,
      mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  p, state = params, jax.jit(plain.init)(params)
  for g in grads_seq:
    u, state = jax.jit(plain.update)(g, state, p)
    p = apply(p, u)
  last = results[0]['blocks'][1]['up']['kernel']
  first = results[0]['blocks'][0]['up']['kernel']
  assert not np.allclose(last, p['blocks'][1]['up']['kernel'], atol=1e-7)
  np.testing.assert_array_equal(first, p['blocks'][0]['up']['kernel'])


def test_ko_gpt_options_and_errors():
  params = {'w': jnp.ones((4, 4)), 'b': jnp.zeros(4)}
  tx = ko_optax.ko_gpt(1e-3, layers=True, noise_std=0.0, max_grad_norm=None)
  u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params),
                   params)
  assert np.isfinite(u['w']).all()
  for bad in (dict(noise_std=-1.0), dict(noise_std='x'),
              dict(max_grad_norm=0.0)):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
      ko_optax.ko_gpt(1e-3, **bad)
