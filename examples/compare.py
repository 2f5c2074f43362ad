"""KO against its peers on MNIST-1D, on a laptop CPU in a few minutes.

Trains one model with KO-soft, KO-hard (both on Adam), Adam and SGD with
momentum under the same data, seeds, steps and batch size, on MNIST-1D
(Greydanus 2020; generated offline by the ``mnist1d`` package; the paper's
baselines: about 68% test accuracy for an MLP, 94% for a small CNN). All
seeds of one optimizer train at once (``jax.vmap`` over a ``lax.scan`` of
steps).

Prints one row per optimizer: test accuracy (mean +- std over seeds) at the
last step, final training loss, the condensation of the hidden layers (mean
|cos| between neurons, effective rank; see ``ko_optax.condensation``) and
the wall time per step. Writes to ``--out``: ``results.json``,
``curves.png`` (test accuracy and losses against steps, bands over seeds),
``condensation.png`` (condensation against steps) and ``cosine.png`` (the
first hidden layer's neuron cosine-similarity matrices, Adam vs KO, at the
end).

Usage::

    python examples/compare.py               # MLP, 3000 steps, 3 seeds
    python examples/compare.py --quick       # about a minute
    python examples/compare.py --model cnn --steps 2000

Hyperparameters are the MNIST-1D paper's (Adam, lr 1e-2, batch 100) and the
KO paper's default collision rate 0.1; SGD uses lr 0.05 with momentum 0.9.
None of them was tuned on the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

EXTRA = 'pip install "ko-optax[examples]"'


def _require(module: str):
  try:
    return __import__(module)
  except ImportError as e:
    raise SystemExit(f'compare.py needs the optional package {module!r}: '
                     f'{EXTRA}') from e


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--model', choices=('mlp', 'cnn'), default='mlp',
                 help='mlp: 2 hidden layers of 100 (default); cnn: the '
                 "MNIST-1D paper's 1-D CNN (slower on CPU)")
  p.add_argument('--steps', type=int, default=None,
                 help='optimizer steps (default 3000; --quick: 300)')
  p.add_argument('--seeds', type=int, default=None,
                 help='number of seeds (default 3; --quick: 2)')
  p.add_argument('--quick', action='store_true',
                 help='a short run (about a minute on 2 cores)')
  p.add_argument('--out', default=None,
                 help='output folder (default runs/compare_<model>)')
  p.add_argument('--optimizers', default='ko_soft,ko_hard,adam,sgd',
                 help='comma-separated subset of ko_soft,ko_hard,adam,sgd')
  p.add_argument('--lr', type=float, default=1e-2,
                 help='learning rate of Adam and KO')
  p.add_argument('--sgd-lr', type=float, default=0.05)
  p.add_argument('--collision-rate', type=float, default=0.1)
  p.add_argument('--batch-size', type=int, default=100)
  p.add_argument('--eval-every', type=int, default=None,
                 help='steps between evaluations (default steps / 20)')
  p.add_argument('--no-plots', action='store_true',
                 help='skip the pictures (no matplotlib needed)')
  args = p.parse_args(argv)
  if args.steps is None:
    args.steps = 300 if args.quick else 3000
  if args.seeds is None:
    args.seeds = 2 if args.quick else 3
  if args.eval_every is None:
    args.eval_every = max(1, args.steps // 20)
  if args.out is None:
    args.out = os.path.join('runs', f'compare_{args.model}')
  return args


class _Progress:
  """A tqdm bar, or plain lines when tqdm is missing."""

  def __init__(self, total):
    try:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    except ImportError:
      print(f'(no progress bar: tqdm is not installed; {EXTRA})')
      tqdm = None
    self.bar = None if tqdm is None else tqdm(
        total=total, unit='step', dynamic_ncols=True, file=sys.stderr)
    self.done, self.total = 0, total

  def describe(self, text):
    if self.bar is not None:
      self.bar.set_description(text)
    else:
      print(text, flush=True)

  def __call__(self, n):
    self.done += n
    if self.bar is not None:
      self.bar.update(n)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def summarize(run) -> dict:
  """The table row of one optimizer, as plain Python numbers."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  h = run.history
  layers = sorted({k.rsplit('/', 1)[0] for k in h if k.endswith(
      '/mean_abs_cos')})
  return {
      'test_acc_mean': float(np.mean(h['test_acc'][-1])),
      'test_acc_std': float(np.std(h['test_acc'][-1])),
      'val_acc_mean': float(np.mean(h['val_acc'][-1])),
      'train_loss': float(np.mean(h['train_loss'][-1])),
      'mean_abs_cos': {k: float(np.mean(h[f'{k}/mean_abs_cos'][-1]))
                       for k in layers},
      'effective_rank': {k: float(np.mean(h[f'{k}/effective_rank'][-1]))
                         for k in layers},
      'ms_per_step': 1e3 * run.seconds_per_step,
      'compile_s': run.compile_seconds,
  }


def format_table(rows: dict, seeds: int) -> str:
  from ko_examples import training  # pylint: disable=g-import-not-at-top
  header = (f'{"optimizer":<20} {"test acc (" + str(seeds) + " seeds)":>20} '
            f'{"train loss":>10} {"hidden mean|cos|":>18} {"eff. rank":>14} '
            f'{"ms/step":>8}')
  lines = [header, '-' * len(header)]
  for name, r in rows.items():
    acc = f'{100 * r["test_acc_mean"]:.1f} +- {100 * r["test_acc_std"]:.1f}%'
    cos = '/'.join(f'{v:.3f}' for v in r['mean_abs_cos'].values())
    rank = '/'.join(f'{v:.1f}' for v in r['effective_rank'].values())
    lines.append(f'{training.LABELS.get(name, name):<20} {acc:>20} '
                 f'{r["train_loss"]:>10.4f} {cos:>18} {rank:>14} '
                 f'{r["ms_per_step"]:>8.2f}')
  return '\n'.join(lines)


def make_pictures(runs: dict, out: str, model_name: str) -> list[str]:
  """Writes curves.png, condensation.png and cosine.png; returns the paths."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from ko_examples import training  # pylint: disable=g-import-not-at-top
  import ko_optax  # pylint: disable=g-import-not-at-top
  from ko_optax import plotting  # pylint: disable=g-import-not-at-top

  label = lambda n: training.LABELS.get(n, n)
  first = next(iter(runs.values()))
  steps = first.steps
  seeds = first.history['test_acc'].shape[1]
  title = f'MNIST-1D, {model_name.upper()}, {seeds} seeds (mean +- std)'
  curves = os.path.join(out, 'curves.png')
  plotting.plot_learning_curves(steps, {
      'test accuracy': {label(n): r.history['test_acc'] for n, r in
                        runs.items()},
      'train loss': {label(n): r.history['train_loss'] for n, r in
                     runs.items()},
      'test loss': {label(n): r.history['test_loss'] for n, r in runs.items()},
  }, logy=('train loss',), path=curves, suptitle=title)
  layers = sorted({k.rsplit('/', 1)[0] for k in first.history if k.endswith(
      '/mean_abs_cos')})
  panels = {}
  for layer in layers:
    short = layer.split('/')[-2] if '/' in layer else layer
    panels[f'{short}: mean |cos|'] = {
        label(n): r.history[f'{layer}/mean_abs_cos'] for n, r in runs.items()}
  for layer in layers:
    short = layer.split('/')[-2] if '/' in layer else layer
    panels[f'{short}: effective rank'] = {
        label(n): r.history[f'{layer}/effective_rank'] for n, r in
        runs.items()}
  cond = os.path.join(out, 'condensation.png')
  plotting.plot_learning_curves(steps, panels, path=cond,
                                suptitle=f'Condensation of the hidden layers; '
                                f'{title}', panel_size=(3.2, 2.6))
  paths = [curves, cond]
  heat = [n for n in ('adam', 'ko_soft', 'ko_hard') if n in runs]
  if heat:
    matrices = {}
    for n in heat:
      leaf = training.hidden_leaves(runs[n].params)[layers[0]]
      matrices[label(n)] = np.asarray(ko_optax.cosine_matrix(
          jax.tree.map(lambda a: a[0], leaf)))
    cos = os.path.join(out, 'cosine.png')
    plotting.plot_cosine_matrices(
        matrices, path=cos, title=f'{layers[0]}: neuron cosine similarity '
        f'at step {int(steps[-1])} (seed 0, neurons reordered)')
    paths.append(cos)
  return paths


def main(argv=None) -> dict:
  args = parse_args(argv)
  _require('flax')
  _require('mnist1d')
  import jax  # pylint: disable=g-import-not-at-top

  from ko_examples import data  # pylint: disable=g-import-not-at-top
  from ko_examples import models  # pylint: disable=g-import-not-at-top
  from ko_examples import training  # pylint: disable=g-import-not-at-top

  names = [n.strip() for n in args.optimizers.split(',') if n.strip()]
  for n in names:
    if n not in training.OPTIMIZERS:
      raise SystemExit(f'unknown optimizer {n!r}; choose from '
                       f'{",".join(training.OPTIMIZERS)}')
  os.makedirs(args.out, exist_ok=True)
  seeds = tuple(range(args.seeds))
  print(f'MNIST-1D, model {args.model}, optimizers {",".join(names)}, '
        f'{args.steps} steps x batch {args.batch_size}, seeds {seeds}; '
        f'JAX {jax.__version__} on {jax.devices()[0].platform}')
  start = time.perf_counter()
  ds = data.load_mnist1d(seed=0)
  model = models.MLP() if args.model == 'mlp' else models.CNN1D()
  bar = _Progress(args.steps * len(names))
  runs = {}
  try:
    for n in names:
      bar.describe(training.LABELS[n])
      lr = args.sgd_lr if n == 'sgd' else args.lr
      tx = training.make_optimizer(n, lr, collision_rate=args.collision_rate)
      runs[n] = training.train(model, tx, ds, seeds=seeds, steps=args.steps,
                               batch_size=args.batch_size,
                               eval_every=args.eval_every, progress=bar)
  finally:
    bar.close()
  rows = {n: summarize(r) for n, r in runs.items()}
  table = format_table(rows, len(seeds))
  print(table)
  pictures = []
  if not args.no_plots:
    try:
      pictures = make_pictures(runs, args.out, args.model)
    except ImportError as e:
      print(f'pictures skipped: {e}')
  total = time.perf_counter() - start
  results = {'config': vars(args), 'results': rows, 'total_seconds': total,
             'steps': runs[names[0]].steps.tolist(),
             'history': {n: {k: v.tolist() for k, v in r.history.items()}
                         for n, r in runs.items()}}
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  for path in pictures:
    print(f'wrote {path}')
  print(f'wrote {os.path.join(args.out, "results.json")}; total '
        f'{total:.0f} s')
  return results


if __name__ == '__main__':
  main()
