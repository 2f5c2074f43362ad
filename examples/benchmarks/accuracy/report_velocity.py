"""Collisions on the velocity against collisions on the gradient (tables).

Reads the accuracy study's results (results/accuracy_<task>.json, the
'main' and 'variants' groups, and results/velocity/accuracy_<task>.json,
the 'velocity' group), picks each configuration's grid point on validation
(report_accuracy.best) and prints, per task, test accuracy mean +- std and
the paired differences (same seeds) of every velocity configuration to its
base optimizer and to the same collision on the gradient.

  python examples/benchmarks/accuracy/report_velocity.py
"""

import math
import os

import numpy as np

import report_accuracy as ra

TASKS = ('mnist1d_mlp', 'condense_mlp')


def paired(runs, other):
  by_seed = {r['seed']: ra.safe(r['test_acc']) for r in other}
  d = np.array([ra.safe(r['test_acc']) - by_seed[r['seed']] for r in runs
                if r['seed'] in by_seed]) * 100
  sd = d.std(ddof=1)
  t = d.mean() / (sd / math.sqrt(len(d))) if sd > 0 else float('inf')
  star = ' **' if abs(t) > ra.T_975.get(len(d), 2.0) else ''
  return f'{d.mean():+.2f} ± {sd:.2f}{star}'


def main():
  lines = []
  for task in TASKS:
    recs = {}
    for sub in ('', 'variants', 'variants2', 'velocity'):
      path = os.path.join(ra.RESULTS, sub, f'accuracy_{task}.json')
      if os.path.exists(path):
        recs.update(ra.load(path))
    chosen = {name: ra.best(rec) for name, rec in recs.items()}
    lines += [f'#### {task}', '',
              '| velocity config | lr | rate | test acc | Δ vs base | '
              'Δ vs same on gradient | gradient config: test acc |',
              '|---|---|---|---|---|---|---|']
    for name in recs:
      if '~velocity' not in name:
        continue
      (lr, rate), runs = chosen[name]
      grad = name.replace('~velocity', '')
      base = ra.base_of(name)
      test = np.array([ra.safe(r['test_acc']) for r in runs]) * 100
      g_runs = chosen[grad][1] if grad in chosen else None
      g_test = (np.array([ra.safe(r['test_acc']) for r in g_runs]) * 100
                if g_runs else None)
      lines.append(
          f'| {name} | {lr:g} | {rate:g} | {test.mean():.2f} ± '
          f'{test.std(ddof=1):.2f} | {paired(runs, chosen[base][1])} | '
          f'{paired(runs, g_runs) if g_runs else "-"} | '
          + (f'{g_test.mean():.2f} ± {g_test.std(ddof=1):.2f}'
             if g_runs else '-') + ' |')
    b = {k: np.array([ra.safe(r['test_acc']) for r in chosen[k][1]]) * 100
         for k in ('adam', 'sgdm')}
    lines += ['', f'(bases: adam {b["adam"].mean():.2f} ± '
              f'{b["adam"].std(ddof=1):.2f}, sgdm {b["sgdm"].mean():.2f} ± '
              f'{b["sgdm"].std(ddof=1):.2f}; paired differences in points over '
              'the 5 seeds, ** beyond the 95% t-interval)', '']
  out = os.path.join(ra.RESULTS, 'velocity', 'velocity_tables.md')
  with open(out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
