"""KO with Flax Linen: ``TrainState``, and KO on chosen layers only.

Shows, on MNIST-1D (generated offline), two ways to give KO's collisions to
some layers and plain Adam to the rest:

* ``--mode multi_transform`` (default): ``optax.multi_transform`` with a
  label per leaf: ``'ko'`` for the hidden layers, ``'adam'`` for the head;
  the two optimizers keep separate states.
* ``--mode mask``: one ``ko_optax.ko(..., mask=...)``; the mask selects the
  leaves that collide, and Adam's advection runs on every leaf. This is the
  cheaper form when the base optimizer is the same everywhere.

``flax.training.train_state.TrainState.apply_gradients`` calls
``tx.update(grads, opt_state, params)``, so KO receives the params it needs;
KO's random key lives in its state, so nothing else has to be threaded
through the step.

Usage::

    python examples/linen_training.py [--mode mask] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flax import traverse_util
from flax.training import train_state
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import optax

from ko_examples import data
from ko_examples import models
import ko_optax


def ko_layers(params, layers=('hidden_0', 'hidden_1')):
  """A tree of bools: True on the kernels of ``layers`` (those collide)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      path: any(layer in path for layer in layers) and path[-1] == 'kernel'
      for path in flat})


def make_tx(params, mode: str, lr: float, collision_rate: float):
  """Adam everywhere, KO's collisions on the hidden kernels only."""
  chosen = ko_layers(params)
  if mode == 'multi_transform':
    labels = jax.tree.map(lambda c: 'ko' if c else 'adam', chosen)
    return optax.multi_transform(
        {'ko': ko_optax.ko(lr, collision='soft',
                           collision_rate=collision_rate),
         'adam': optax.adam(lr)}, labels)
  if mode == 'mask':
    return ko_optax.ko(lr, collision='soft', collision_rate=collision_rate,
                       mask=chosen)
  raise ValueError(f'unknown mode {mode!r}')


def create_state(model, x, tx_fn, seed=0):
  params = jax.jit(model.init)(jax.random.key(seed), x)
  tx = tx_fn(params)
  # Same as TrainState.create, with tx.init jitted (one compilation).
  return train_state.TrainState(
      step=jnp.zeros([], jnp.int32), apply_fn=model.apply, params=params,
      tx=tx, opt_state=jax.jit(tx.init)(params))


@jax.jit
def train_step(state, x, y):
  def loss_fn(params):
    logits = state.apply_fn(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss  # tx.update(g, s, params)


@jax.jit
def accuracy(state, x, y):
  return jnp.mean(jnp.argmax(state.apply_fn(state.params, x), -1) == y)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--mode', choices=('multi_transform', 'mask'),
                 default='multi_transform')
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--batch-size', type=int, default=100)
  p.add_argument('--lr', type=float, default=1e-2)
  p.add_argument('--collision-rate', type=float, default=0.1)
  p.add_argument('--quick', action='store_true', help='40 steps')
  args = p.parse_args(argv)
  steps = 40 if args.quick else args.steps

  ds = data.load_mnist1d()
  model = models.MLP(hidden=(100, 100), num_classes=ds.num_classes)
  state = create_state(
      model, jnp.asarray(ds.x_train[:1]),
      lambda params: make_tx(params, args.mode, args.lr, args.collision_rate))
  chosen = [jax.tree_util.keystr(path, simple=True, separator='/')
            for path, c in
            jax.tree_util.tree_flatten_with_path(ko_layers(state.params))[0]
            if c]
  print(f'mode {args.mode}: KO collisions on {", ".join(chosen)}; Adam on '
        'every leaf')
  batches = data.batches(ds.x_train, ds.y_train, args.batch_size, seed=0)
  losses = []
  for step in range(steps):
    x, y = next(batches)
    state, loss = train_step(state, jnp.asarray(x), jnp.asarray(y))
    losses.append(float(loss))
    if step % max(1, steps // 5) == 0 or step == steps - 1:
      print(f'step {step:5d}  loss {float(loss):.4f}')
  val = float(accuracy(state, jnp.asarray(ds.x_val), jnp.asarray(ds.y_val)))
  test = float(accuracy(state, jnp.asarray(ds.x_test),
                        jnp.asarray(ds.y_test)))
  cond = jax.jit(ko_optax.condensation_metrics)(state.params)
  cos = {k.split('/')[1]: float(v) for k, v in cond.items()
         if k.endswith('mean_abs_cos')}
  print(f'val accuracy {val:.3f}  test accuracy {test:.3f}  mean |cos| '
        + '  '.join(f'{k} {v:.3f}' for k, v in cos.items()))
  return {'val_acc': val, 'test_acc': test, 'losses': losses,
          'chosen': chosen, 'state': state}


if __name__ == '__main__':
  main()
