"""KO on a scanned GPT: one particle system per layer of a stacked leaf.

A byte-level GPT (``ko_examples.gpt``) whose blocks are built with
``nnx.vmap`` and applied with ``nnx.scan``: every block parameter is one leaf
with a leading layer axis, e.g. ``blocks/q/kernel`` of shape
``(depth, width, width)``. KO has to be told that this axis stacks layers
(each layer's neurons collide among themselves, never with another layer's):

    tx = ko_optax.ko(lr, particle_axes=ko_optax.flax_particle_axes(
        stacked='blocks'))

``flax_particle_axes`` also keeps biases, LayerNorm scales and the
embeddings out of the collisions. The example trains the same model, from the
same initialisation and on the same batches, with KO (on AdamW's moments and
decoupled weight decay) and with ``optax.adamw``, through
``nnx.Optimizer(model, tx, wrt=nnx.Param)``, on the Python standard library's
own ``.py`` files read as bytes (on every machine, nothing to download; one
file in ten, by a fixed rule on its path, is held out for validation). It
prints train and validation loss in bits per byte side by side, and the
condensation (mean |cos| between neurons, effective rank) of the last block's
kernels.

Usage::

    python examples/gpt_scanned.py            # 6 blocks x 128, 2000 steps
    python examples/gpt_scanned.py --quick    # 2 blocks x 32, 12 steps
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flax import nnx
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from ko_examples import gpt
import ko_optax

KERNELS = ('q', 'k', 'v', 'o', 'up', 'down')


def particle_axes():
  """KO's particle layout for the scanned GPT (None: the library's default,
  for a ko_optax that predates ``flax_particle_axes``)."""
  if hasattr(ko_optax, 'flax_particle_axes'):
    return ko_optax.flax_particle_axes(stacked='blocks')
  return None


def make_tx(name: str, lr: float, steps: int, weight_decay: float):
  """AdamW, or KO on AdamW (same betas, decay and schedule).

  Args:
    name: 'adamw' or 'ko' (KO-hard, the default collision).
    lr: peak learning rate.
    steps: training steps (length of the cosine schedule).
    weight_decay: decoupled weight decay on kernels (ndim >= 2) only.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=max(1, steps // 20), decay_steps=steps)
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
  if name == 'adamw':
    return optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay,
                       mask=decay_mask)
  return ko_optax.ko(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay,
                     weight_decay_mask=decay_mask,
                     particle_axes=particle_axes())


def loss_fn(model, x, y):
  return gpt.lm_loss(model(x), y)


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def eval_loss(model, x, y):
  return loss_fn(model, x, y)


@jax.jit
def _condensation(kernels):
  return ko_optax.condensation(kernels, particle_axes=-1)   # (in, out) kernels


def block_condensation(model: gpt.GPT, index: int) -> dict[str, tuple]:
  """(mean |cos|, effective rank) of each kernel of block ``index``."""
  blocks = nnx.to_pure_dict(nnx.state(model.blocks, nnx.Param))
  one = {name: blocks[name]['kernel'][index] for name in KERNELS}
  # One compiled program for every kernel, instead of one per operation.
  cond = _condensation(one)
  return {k: (float(c.mean_abs_cos), float(c.effective_rank))
          for k, c in cond.items()}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--depth', type=int, default=6)
  p.add_argument('--width', type=int, default=128)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--context', type=int, default=128)
  p.add_argument('--batch-size', type=int, default=32)
  p.add_argument('--lr', type=float, default=3e-3)
  p.add_argument('--weight-decay', type=float, default=0.1)
  p.add_argument('--eval-every', type=int, default=250)
  p.add_argument('--eval-batches', type=int, default=20)
  p.add_argument('--max-bytes', type=int, default=4_000_000,
                 help='bytes of the standard library to read')
  p.add_argument('--optimizers', default='ko,adamw')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--quick', action='store_true',
                 help='2 blocks x 32, context 32, 12 steps')
  args = p.parse_args(argv)
  if args.quick:
    args.steps, args.depth, args.width, args.context = 12, 2, 32, 32
    args.batch_size, args.eval_every, args.eval_batches = 16, 6, 2
    args.max_bytes, args.lr = 1_000_000, 1e-2

  train, val, info = gpt.stdlib_corpus(max_bytes=args.max_bytes)
  print(f'data: {info["train_files"]} train files ({info["train_bytes"]} '
        f'bytes), {info["val_files"]} val files ({info["val_bytes"]} bytes) '
        f'from {info["root"]}')
  cfg = gpt.GPTConfig(context=args.context, width=args.width,
                      depth=args.depth, heads=args.heads, scan_blocks=True)
  names = args.optimizers.split(',')
  runs = {}
  # Built under nnx.jit: one compile instead of one per initialiser op.
  build = nnx.jit(lambda: gpt.GPT(cfg, rngs=nnx.Rngs(args.seed)))
  for name in names:
    if name not in ('ko', 'adamw'):
      raise SystemExit(f'unknown optimizer {name!r}: ko, adamw')
    model = build()
    tx = make_tx(name, args.lr, args.steps, args.weight_decay)
    runs[name] = (model, nnx.Optimizer(model, tx, wrt=nnx.Param))
  if 'ko' in runs:
    how = ("flax_particle_axes(stacked='blocks')" if particle_axes()
           else 'the default particle axes (no flax_particle_axes here)')
    print(f'KO-hard on AdamW, {how}')
  val_rng = np.random.default_rng(args.seed + 1)
  val_batches = [gpt.sample_windows(val, args.batch_size, args.context,
                                    val_rng) for _ in range(args.eval_batches)]
  rng = np.random.default_rng(args.seed)
  history = {n: {'step': [], 'train_bpb': [], 'val_bpb': []} for n in names}
  window = {n: [] for n in names}
  print(f'{"step":>6s} ' + ' '.join(f'{n + " train":>12s} {n + " val":>10s}'
                                    for n in names) + '   (bits per byte)')
  t0 = time.time()
  for step in range(1, args.steps + 1):
    x, y = (jnp.asarray(a) for a in gpt.sample_windows(
        train, args.batch_size, args.context, rng))
    for n, (model, opt) in runs.items():   # same batch for every optimizer
      window[n].append(train_step(model, opt, x, y))
    if step % args.eval_every == 0 or step == args.steps:
      cells = []
      for n, (model, _) in runs.items():
        tr = float(np.mean(jax.device_get(window[n])))
        va = float(np.mean([eval_loss(model, jnp.asarray(bx), jnp.asarray(by))
                            for bx, by in val_batches]))
        window[n] = []
        history[n]['step'].append(step)
        history[n]['train_bpb'].append(tr)
        history[n]['val_bpb'].append(va)
        cells.append(f'{tr:12.3f} {va:10.3f}')
      print(f'{step:6d} ' + ' '.join(cells), flush=True)
  print(f'{args.steps} steps in {time.time() - t0:.0f}s')
  last = args.depth - 1
  cond = {}
  print(f'condensation of block {last} (mean |cos| between neurons / '
        'effective rank):')
  for n, (model, _) in runs.items():
    cond[n] = block_condensation(model, last)
    print(f'  {n:6s} ' + '  '.join(f'{k} {c:.3f}/{r:.1f}'
                                   for k, (c, r) in cond[n].items()))
  return {'history': history, 'condensation': cond, 'data': info,
          'particle_axes': particle_axes() is not None}


if __name__ == '__main__':
  main()
