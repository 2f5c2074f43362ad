"""KO with Flax NNX: ``nnx.Optimizer`` in an ``nnx.jit`` training loop.

Shows, on MNIST-1D (generated offline):

* ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` with ``tx`` built from
  ``ko_optax.ko``; ``optimizer.update(model, grads)`` passes the params, which
  KO's collisions need;
* a learning-rate schedule (warm-up then cosine decay);
* ``optax.inject_hyperparams(ko_optax.ko)`` so that ``collision_rate`` lives
  in the optimizer state and can be changed mid-run without recompiling
  (here: collisions on for the first half, then switched off).

Usage::

    python examples/nnx_training.py            # 2000 steps
    python examples/nnx_training.py --quick    # 40 steps
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flax import nnx
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import optax

from ko_examples import data
import ko_optax


class MLP(nnx.Module):
  """Two hidden layers; kernels (in, out): one KO particle per output unit."""

  def __init__(self, din: int, hidden: int, dout: int, *, rngs: nnx.Rngs):
    self.hidden_0 = nnx.Linear(din, hidden, rngs=rngs)
    self.hidden_1 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, dout, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.hidden_0(x))
    x = nnx.relu(self.hidden_1(x))
    return self.head(x)


def loss_fn(model, x, y):
  logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, logits


@nnx.jit
def train_step(model, optimizer, x, y):
  (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
  optimizer.update(model, grads)  # KO gets grads, state and params
  return loss


@nnx.jit
def accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), -1) == y)


def make_optimizer(model, steps: int, lr: float, collision_rate: float):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=max(1, steps // 20), decay_steps=steps)
  # inject_hyperparams: the schedule stays a schedule, the numeric
  # collision_rate becomes a state hyperparameter; strings stay static.
  tx = optax.inject_hyperparams(ko_optax.ko)(
      learning_rate=schedule, collision='soft', collision_rate=collision_rate,
      key=0)
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _build(ds, steps, args):
  model = MLP(ds.x_train.shape[1], 100, ds.num_classes, rngs=nnx.Rngs(0))
  return model, make_optimizer(model, steps, args.lr, args.collision_rate)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--batch-size', type=int, default=100)
  p.add_argument('--lr', type=float, default=1e-2)
  p.add_argument('--collision-rate', type=float, default=0.1)
  p.add_argument('--quick', action='store_true', help='40 steps')
  args = p.parse_args(argv)
  steps = 40 if args.quick else args.steps

  ds = data.load_mnist1d()
  # Built under nnx.jit: one compilation instead of one per eager op.
  model, optimizer = nnx.jit(lambda: _build(ds, steps, args))()
  hyper = optimizer.opt_state.hyperparams
  batches = data.batches(ds.x_train, ds.y_train, args.batch_size, seed=0)
  log = {'loss': [], 'collision_rate': [], 'learning_rate': []}
  for step in range(steps):
    if step == steps // 2:
      # Change a hyperparameter mid-run: no recompilation, same state tree.
      hyper['collision_rate'][...] = jnp.zeros_like(
          hyper['collision_rate'][...])
      print(f'step {step}: collision_rate -> 0 (plain Adam from here on)')
    x, y = next(batches)
    loss = train_step(model, optimizer, jnp.asarray(x), jnp.asarray(y))
    log['loss'].append(float(loss))
    log['collision_rate'].append(float(hyper['collision_rate'][...]))
    log['learning_rate'].append(float(hyper['learning_rate'][...]))
    if step % max(1, steps // 5) == 0 or step == steps - 1:
      print(f'step {step:5d}  loss {float(loss):.4f}  lr '
            f'{log["learning_rate"][-1]:.2e}  collision_rate '
            f'{log["collision_rate"][-1]:.2f}')
  val = float(accuracy(model, jnp.asarray(ds.x_val), jnp.asarray(ds.y_val)))
  test = float(accuracy(model, jnp.asarray(ds.x_test),
                        jnp.asarray(ds.y_test)))
  # Condensation metrics, jit-compatible, flat keys for logging.
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  cond = jax.jit(ko_optax.condensation_metrics)(params)
  cos = float(cond['hidden_0/kernel/mean_abs_cos'])
  print(f'val accuracy {val:.3f}  test accuracy {test:.3f}  hidden_0 mean '
        f'|cos| {cos:.3f}')
  return {'val_acc': val, 'test_acc': test, 'log': log, 'mean_abs_cos': cos}


if __name__ == '__main__':
  main()
