"""What does KO cost? Optimizer step and full train step against optax.adam.

For every model and optimizer, two jitted functions are timed:

* ``opt``: ``tx.update`` plus ``optax.apply_updates`` for a fixed gradient;
* ``train``: forward, backward, update (one full training step).

All optimizers of one model are timed round-robin in ONE process (median of
``--repeats`` calls after warm-up), and reported as ratios to ``optax.adam``
timed beside them. The compiled programs' temporary memory (XLA's
``memory_analysis``) and, on GPU, the device's peak memory are recorded too.

  PYTHONPATH=. python examples/benchmarks/cost/cost_benchmark.py \
      --models mlp512,cnn,transformer
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The shared helpers (ko_examples) live in examples/, two folders up.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))

from ko_examples import models as models_lib
from ko_examples import timing
import ko_optax

RESULTS = os.path.abspath(os.path.join(os.path.dirname(
    os.path.abspath(__file__)), '..', 'results'))


def model_zoo():
  """name -> (model, input batch, labels, num_classes)."""
  def images(b, h, w, c):
    return np.random.default_rng(0).normal(size=(b, h, w, c)).astype(
        np.float32)
  zoo = {
      'mlp512': (models_lib.MLP(hidden=(512, 512, 512)),
                 np.random.default_rng(0).normal(size=(512, 784)).astype(
                     np.float32), 10),
      'cnn': (models_lib.DigitsCNN(channels=(32, 64), hidden=256),
              images(256, 28, 28, 1), 10),
      'resnet18': (models_lib.ResNet18(width=64), images(128, 32, 32, 3), 10),
      'resnet18_w16': (models_lib.ResNet18(width=16), images(128, 32, 32, 3),
                       10),
      'transformer': (models_lib.SmallTransformer(
          vocab_size=4096, num_classes=2, width=256, depth=4, heads=4,
          max_len=128),
                      np.random.default_rng(0).integers(
                          1, 4096, size=(32, 128)).astype(np.int32), 2),
      'transformer_small': (models_lib.SmallTransformer(
          vocab_size=2048, num_classes=2, width=128, depth=2, heads=4,
          max_len=64),
                            np.random.default_rng(0).integers(
                                1, 2048, size=(32, 64)).astype(np.int32), 2),
  }
  return zoo


def optimizers(lr=1e-3):
  return {
      'adam': optax.adam(lr),
      'sgd': optax.sgd(lr, momentum=0.9),
      'muon': optax.contrib.muon(lr),
      'ko_soft': ko_optax.ko(lr, collision='soft'),
      'ko_hard': ko_optax.ko(lr, collision='hard'),
  }


def bench_model(name, repeats, warmup, which):
  model, x, classes = model_zoo()[name]
  x = jnp.asarray(x)
  y = jnp.asarray(np.arange(x.shape[0]) % classes)
  params = model.init(jax.random.key(0), x[:2])
  n_params = sum(p.size for p in jax.tree.leaves(params))

  def loss_fn(p):
    logits = model.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grads = jax.grad(loss_fn)(params)
  thunks, memory = {}, {}
  for opt_name, tx in optimizers().items():
    state = tx.init(params)

    def opt_step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    def train_step(p, s, tx=tx):
      loss, g = jax.value_and_grad(loss_fn)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss

    if 'opt' in which:
      c = jax.jit(opt_step).lower(params, state, grads).compile()
      thunks[(opt_name, 'opt')] = (
          lambda c=c, s=state: c(params, s, grads))
      memory[(opt_name, 'opt')] = _temp_bytes(c)
    if 'train' in which:
      c = jax.jit(train_step).lower(params, state).compile()
      thunks[(opt_name, 'train')] = (lambda c=c, s=state: c(params, s))
      memory[(opt_name, 'train')] = _temp_bytes(c)
  times = timing.interleaved_medians(thunks, repeats=repeats, warmup=warmup)
  rows = []
  for (opt_name, kind), t in times.items():
    base = times[('adam', kind)]
    rows.append(dict(model=name, params=n_params, optimizer=opt_name,
                     step=kind, median_ms=t * 1e3, ratio_to_adam=t / base,
                     temp_bytes=memory[(opt_name, kind)]))
  return rows


def _temp_bytes(compiled):
  try:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', default='mlp512,cnn,transformer_small')
  ap.add_argument('--steps', default='opt,train')
  ap.add_argument('--repeats', type=int, default=20)
  ap.add_argument('--warmup', type=int, default=3)
  ap.add_argument('--out', default=RESULTS)
  ap.add_argument('--tag', default='cpu')
  a = ap.parse_args()
  info = timing.machine()
  print(f'# {info}')
  rows = []
  path = os.path.join(a.out, f'cost_{a.tag}.json')
  for name in a.models.split(','):
    t0 = time.time()
    new = bench_model(name, a.repeats, a.warmup, a.steps.split(','))
    rows += new
    peak = timing.peak_memory_bytes()
    for r in new:
      print(f'{r["model"]:13s} {r["step"]:5s} {r["optimizer"]:8s} '
            f'{r["median_ms"]:9.2f} ms  x{r["ratio_to_adam"]:5.2f}  '
            f'temp {((r["temp_bytes"] or 0) / 2**20):8.1f} MiB', flush=True)
    print(f'# {name}: {time.time() - t0:.0f}s, device peak bytes {peak}',
          flush=True)
    timing.write_json(path, dict(machine=info, repeats=a.repeats,
                                 device_peak_bytes=peak, rows=rows))


if __name__ == '__main__':
  main()
