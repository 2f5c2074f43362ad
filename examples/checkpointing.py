"""Save and resume KO training with orbax: identical updates after restore.

A linen ``TrainState`` holds the params and the optimizer state; KO's state
includes a typed PRNG key (here used by the thermal diffusion and, with
``--collision hard``, by the random pairings). ``orbax``'s
``StandardCheckpointer`` saves the whole state, key included, and restores
it into an abstract target built with ``jax.eval_shape``. The script trains
``2k`` steps in one go, and separately ``k`` steps, saves, restores into a
fresh process-like state and trains ``k`` more, then checks that both runs
end with bit-identical params and optimizer state.

(orbax-checkpoint >= 0.12 handles typed keys; for msgpack or numpy, convert
them with ``jax.random.key_data`` / ``optax.tree.unwrap_random_key_data``.)

Usage::

    python examples/checkpointing.py [--dir /tmp/ko_ckpt] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flax.training import train_state
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from ko_examples import data
from ko_examples import models
import ko_optax


def _orbax():
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit('checkpointing.py needs orbax-checkpoint: pip install '
                     '"ko-optax[flax]"') from e
  return ocp


def make_tx(collision: str, seed: int = 0):
  return ko_optax.ko(1e-2, collision=collision, collision_rate=0.1,
                     temperature=1e-6, key=seed)


@functools.partial(jax.jit, static_argnums=0)
def _init(model, key, x):
  return model.init(key, x)


def new_state(model, x, tx, seed: int = 0):
  # The same tx object for every state: TrainState keeps tx as a static
  # field, so a new tx would make jax.jit compile train_step again. The step
  # is an int32 array from the start (a Python 0 is weakly typed and would
  # cost a second compilation).
  params = _init(model, jax.random.key(seed), x)
  return train_state.TrainState(
      step=jnp.zeros([], jnp.int32), apply_fn=model.apply, params=params,
      tx=tx, opt_state=jax.jit(tx.init)(params))


@jax.jit
def train_step(state, x, y):
  def loss_fn(params):
    logits = state.apply_fn(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


def run(state, batches):
  for x, y in batches:
    state, _ = train_step(state, x, y)
  return state


def save(state, directory: str) -> str:
  """Saves the array part of ``state`` (step, params, opt_state with key)."""
  ocp = _orbax()
  path = os.path.join(os.path.abspath(directory), f'step_{int(state.step)}')
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {'step': state.step, 'params': state.params,
                      'opt_state': state.opt_state}, force=True)
  return path


def restore(path: str, template):
  """Restores into the structure of ``template`` (a freshly built state)."""
  ocp = _orbax()
  target = jax.eval_shape(lambda s: {'step': s.step, 'params': s.params,
                                     'opt_state': s.opt_state}, template)
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path, target)
  return template.replace(**tree)


def trees_equal(a, b) -> bool:
  a = optax.tree.unwrap_random_key_data(a)
  b = optax.tree.unwrap_random_key_data(b)
  return all(jax.tree.leaves(jax.tree.map(
      lambda u, v: bool(np.array_equal(np.asarray(u), np.asarray(v))), a, b)))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dir', default=None,
                 help='checkpoint folder (default: a temporary folder)')
  p.add_argument('--steps', type=int, default=200,
                 help='steps before the checkpoint (as many after)')
  p.add_argument('--collision', choices=('soft', 'hard'), default='soft')
  p.add_argument('--quick', action='store_true', help='10 + 10 steps')
  args = p.parse_args(argv)
  k = 10 if args.quick else args.steps

  ds = data.load_mnist1d()
  model = models.MLP(hidden=(32,))
  x0 = jnp.asarray(ds.x_train[:1])
  stream = data.batches(ds.x_train, ds.y_train, 100, seed=0)
  batches = [tuple(map(jnp.asarray, next(stream))) for _ in range(2 * k)]

  tx = make_tx(args.collision)
  straight = run(new_state(model, x0, tx), batches)

  first = run(new_state(model, x0, tx), batches[:k])
  with tempfile.TemporaryDirectory() as tmp:
    path = save(first, args.dir or tmp)
    print(f'saved step {int(first.step)} to {path}')
    # A fresh state (as a new process would build it), then the checkpoint.
    # (Its key differs from the saved one: the restore must bring it back.)
    fresh = new_state(model, x0, tx, seed=123)
    fresh = fresh.replace(opt_state=jax.jit(make_tx(args.collision, 123).init)(
        fresh.params))
    restored = restore(path, fresh)
  same_at_save = trees_equal(restored.opt_state, first.opt_state)
  resumed = run(restored, batches[k:])
  same = (trees_equal(resumed.params, straight.params)
          and trees_equal(resumed.opt_state, straight.opt_state)
          and int(resumed.step) == int(straight.step))
  print(f'restored state equals saved state: {same_at_save}')
  print(f'resumed run equals uninterrupted run after {2 * k} steps: {same}')
  if not same:
    raise SystemExit('resume mismatch')
  return {'same': same, 'same_at_save': same_at_save, 'path': path,
          'step': int(resumed.step)}


if __name__ == '__main__':
  main()
