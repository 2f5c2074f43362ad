"""Markdown tables from results/cost_<tag>.json and results/scaling_<tag>.json.

The scaling files are collision_scaling.py's (one leaf, N and D sweeps);
scaling.py's own files (another layout) are left to ``scaling.py --report``.

  python examples/benchmarks/cost/report_cost.py [--dir DIR]
"""

import argparse
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def cost_table(path):
  with open(path) as f:
    d = json.load(f)
  m = d['machine']
  lines = [f'`{os.path.basename(path)}`: {m["platform"]} / {m["device"]}, '
           f'{m["cpu_count"]} CPUs, jax {m["jax"]}, medians of '
           f'{d["repeats"]} repeats', '',
           '| model | params | step | ' + ' | '.join(
               o for o in dict.fromkeys(r['optimizer'] for r in d['rows'])) +
           ' |']
  opts = list(dict.fromkeys(r['optimizer'] for r in d['rows']))
  lines.append('|---|---|---|' + '---|' * len(opts))
  by = {(r['model'], r['step'], r['optimizer']): r for r in d['rows']}
  for model in dict.fromkeys(r['model'] for r in d['rows']):
    for step in ('train', 'opt'):
      row = [by.get((model, step, o)) for o in opts]
      if not any(row):
        continue
      p = next(r for r in row if r)['params']
      cells = [f'{r["median_ms"]:.1f} ms (x{r["ratio_to_adam"]:.2f})'
               if r else '' for r in row]
      lines.append(f'| {model} | {p / 1e6:.2f}M | {step} | ' +
                   ' | '.join(cells) + ' |')
  return lines


def scaling_table(path):
  with open(path) as f:
    d = json.load(f)
  opts = list(dict.fromkeys(r['optimizer'] for r in d['rows']))
  lines = ['| sweep | D | N | ' + ' | '.join(opts) + ' |',
           '|---|---|---|' + '---|' * len(opts)]
  by = {}
  for r in d['rows']:
    by.setdefault((r['sweep'], r['d'], r['n']), {})[r['optimizer']] = r
  for (sweep, dd, n), rs in by.items():
    lines.append(f'| {sweep} | {dd} | {n} | ' + ' | '.join(
        f'{rs[o]["ms"]:.2f} ms' + (f' (x{rs[o]["ratio_to_adam"]:.1f})'
                                   if o != 'adam' else '')
        if o in rs else '' for o in opts) + ' |')
  return lines


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--dir', default=os.path.abspath(
      os.path.join(HERE, '..', 'results')))
  a = ap.parse_args()
  for p in sorted(glob.glob(os.path.join(a.dir, 'cost_*.json'))):
    print('\n'.join(cost_table(p)), '\n')
  for p in sorted(glob.glob(os.path.join(a.dir, 'scaling_*.json'))):
    with open(p) as f:
      if 'rows' not in json.load(f):
        continue
    print('\n'.join(scaling_table(p)), '\n')


if __name__ == '__main__':
  main()
