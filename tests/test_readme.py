"""The README's usage snippets run as written."""

import pathlib
import re

import jax
import jax.numpy as jnp
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks():
  text = (ROOT / 'README.md').read_text()
  return re.findall(r'```python\n(.*?)```', text, flags=re.S)


def test_readme_snippets_run():
  from flax import nnx

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.hidden = nnx.Linear(4, 8, rngs=rngs)
      self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.out(jax.nn.relu(self.hidden(x)))

  def loss_fn(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  params = {'w': jax.random.normal(jax.random.key(0), (4, 8)),
            'b': jnp.zeros(8)}
  namespace = {
      'params': params,
      'grads': jax.tree.map(jnp.ones_like, params),
      'model': Model(nnx.Rngs(0)),
      'loss_fn': loss_fn,
  }
  blocks = _python_blocks()
  assert len(blocks) >= 4
  for block in blocks:
    exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  x = jnp.ones((5, 4))
  y = jnp.arange(5) % 3
  loss = namespace['train_step'](namespace['model'], namespace['optimizer'],
                                 x, y)
  assert jnp.isfinite(loss)
  assert 'metrics' in namespace
