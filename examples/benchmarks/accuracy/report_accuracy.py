"""Tables and plots from the accuracy study's results (no training).

Reads results/accuracy_<task>.json, picks every configuration's grid point
on VALIDATION accuracy (mean over seeds), and writes

* results/accuracy_tables.md: per task, test accuracy mean +- std at the
  chosen point, the paired difference to the configuration's base optimizer
  (same seeds) with its t statistic, and the condensation at the end of
  training (mean |cos|, effective rank of the first hidden layer);
* results/rate_table.md: validation gain over the base per collision rate,
  averaged over tasks (what the defaults are chosen from);
* docs/bench_condensation_<task>.png: condensation over training, KO against
  its base, on the same seeds.

Records with a ``refit`` (accuracy_study.py --refit, the ``*_paper`` tasks)
are reported on their refit runs (the chosen point retrained on train +
validation, same seeds): test accuracy, paired differences and condensation;
the table adds the test accuracy of the tuning runs and, as a diagnostic
only, the mean over seeds of each run's best test accuracy along training
(what a number read off the test curve would be; nothing is chosen on it).
These tasks stay out of the per-rate table (one rate each).

  python examples/benchmarks/accuracy/report_accuracy.py
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.abspath(os.path.join(HERE, '..', 'results'))
DOCS = os.path.abspath(os.path.join(HERE, '..', '..', '..', 'docs'))
T_975 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36,
         9: 2.31, 10: 2.26}


def base_of(name: str) -> str | None:
  if not name.startswith('ko_'):
    return None
  if '_muon' in name:
    return 'muon'
  return 'sgdm' if '_sgd' in name else 'adam'


def points(rec):
  """{(lr, rate): [records sorted by seed]}."""
  by = collections.defaultdict(list)
  for r in rec['records']:
    by[(r['lr'], r['rate'])].append(r)
  return {k: sorted(v, key=lambda r: r['seed']) for k, v in by.items()}


def safe(v):
  return v if v is not None and np.isfinite(v) else 0.0


def best(rec):
  pts = points(rec)
  key = max(pts, key=lambda k: np.mean([safe(r['val_acc']) for r in pts[k]]))
  return key, pts[key]


def first_layer(cond: dict) -> str:
  """The probed layer: the second hidden layer (square for the MLPs) or the
  second convolution, where there is one."""
  keys = list(cond)
  for pattern in ('hidden_1', 'conv_1', 'hidden', 'conv'):
    for k in keys:
      if pattern in k:
        return k
  return keys[0]


def load(task_file):
  with open(task_file) as f:
    return {r['name']: r for r in json.load(f)}


def final_runs(rec, runs):
  """The runs whose test accuracy is reported: the refit, if any."""
  return sorted(rec['refit'], key=lambda r: r['seed']) if 'refit' in rec \
      else runs


def task_table(task, recs):
  refit = any('refit' in rec for rec in recs.values())
  extra = (' test acc, tuning runs | peak test along training (diag.) |'
           if refit else '')
  lines = [f'### {task}', '',
           '| optimizer | chosen lr | rate | val acc | test acc (mean ± std) '
           '| Δ test vs base (paired) | t | mean abs cos: max / end | '
           'eff. rank: min / end | runs |' + extra,
           '|---|---|---|---|---|---|---|---|---|---|' +
           ('---|---|' if refit else '')]
  chosen = {name: best(rec) for name, rec in recs.items()}
  final = {name: final_runs(recs[name], chosen[name][1]) for name in recs}
  for name in recs:
    (lr, rate), tuning = chosen[name]
    runs = final[name]
    val = np.array([safe(r['val_acc']) for r in tuning])
    test = np.array([safe(r['test_acc']) for r in runs])
    layer = first_layer(runs[0]['cond'])
    cos_c = np.mean([r['cond'][layer]['cos'] for r in runs], 0)
    er_c = np.mean([r['cond'][layer]['erank'] for r in runs], 0)
    diff, tstat = '', ''
    base = base_of(name)
    if base in chosen:
      b_runs = final[base]
      b_test = {r['seed']: safe(r['test_acc']) for r in b_runs}
      d = np.array([safe(r['test_acc']) - b_test[r['seed']] for r in runs
                    if r['seed'] in b_test])
      if len(d) > 1:
        sd = d.std(ddof=1)
        t = d.mean() / (sd / math.sqrt(len(d))) if sd > 0 else float('inf')
        sig = abs(t) > T_975.get(len(d), 2.0)
        diff = f'{d.mean() * 100:+.2f} ± {sd * 100:.2f}' + (
            ' **' if sig else '')
        tstat = f'{t:+.1f}'
    cells = ''
    if refit:
      t_tune = np.array([safe(r['test_acc']) for r in tuning])
      peak = [max(r['test_curve']) for r in runs if r.get('test_curve')]
      cells = (f' {t_tune.mean() * 100:.2f} ± {t_tune.std(ddof=1) * 100:.2f}'
               f' | {np.mean(peak) * 100:.2f} |' if peak else
               f' {t_tune.mean() * 100:.2f} |  |')
    lines.append(
        f'| {name} | {lr:g} | {rate:g} | {val.mean() * 100:.1f} | '
        f'{test.mean() * 100:.2f} ± {test.std(ddof=1) * 100:.2f} | {diff} | '
        f'{tstat} | {cos_c.max():.2f} / {cos_c[-1]:.2f} | '
        f'{er_c.min():.1f} / {er_c[-1]:.1f} | {len(runs)} |' + cells)
  lines += ['', f'(condensation of `{layer}`, mean over the seeds, at '
            'initialisation and every evaluation; accuracies in %; ** : '
            'paired difference beyond the 95% t-interval of the seed noise)',
            '']
  if refit:
    lines[-1:-1] = ['', '(refit: test accuracy, paired differences and '
                    'condensation are those of the chosen point retrained on '
                    'train + validation with the same seeds; "val acc" and '
                    '"test acc, tuning runs" are the tuning runs\'; the peak '
                    'along training is a diagnostic, never a choice)']
  return lines, chosen


def plot_rates(all_recs, task):
  """Validation gain over the base against the collision rate, per variant."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  recs = all_recs.get(task)
  if not recs:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  drawn = 0
  for name, rec in recs.items():
    base = base_of(name)
    if base not in recs or '@rerun' in name:  # reruns: tables only
      continue
    b_val = np.mean([safe(r['val_acc']) for r in best(recs[base])[1]])
    pts = points(rec)
    rates = sorted({k[1] for k in pts})
    if len(rates) < 2:
      continue
    gain = [(max(np.mean([safe(r['val_acc']) for r in pts[k]])
                 for k in pts if k[1] == rate) - b_val) * 100
            for rate in rates]
    style = 's--' if '~velocity' in name else 'o-'  # velocity: dashed
    ax.semilogx(rates, gain, style, label=name)
    drawn += 1
  if not drawn:  # one rate per configuration (the *_paper tasks)
    plt.close(fig)
    return None
  ax.axhline(0, color='k', lw=0.8)
  ax.set_ylim(-55, 5)
  ax.set_xlabel('collision rate')
  ax.set_ylabel('val. accuracy - base, points (lr tuned)')
  ax.set_title(f'{task}: gain over the base optimizer by collision rate')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  path = os.path.join(DOCS, f'bench_rates_{task}.png')
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def rate_table(all_recs):
  """Mean validation gain over the base per (configuration, rate), with the
  learning rate tuned per rate: the evidence for the defaults."""
  gains = collections.defaultdict(dict)
  all_recs = {t: r for t, r in all_recs.items() if not t.endswith('_paper')}
  for task, recs in all_recs.items():
    for name, rec in recs.items():
      base = base_of(name)
      if base not in recs:
        continue
      b_val = np.mean([safe(r['val_acc']) for r in best(recs[base])[1]])
      pts = points(rec)
      for rate in sorted({k[1] for k in pts}):
        v = max(np.mean([safe(r['val_acc']) for r in pts[k]])
                for k in pts if k[1] == rate)
        gains[(name, rate)][task] = (v - b_val) * 100
  tasks = sorted(all_recs)
  lines = ['| configuration | rate | ' + ' | '.join(tasks) +
           ' | mean over tasks run |', '|---|---|' + '---|' * len(tasks) +
           '---|']
  for (name, rate), by_task in sorted(gains.items()):
    vals = [by_task[t] for t in tasks if t in by_task]
    lines.append(f'| {name} | {rate:g} | ' + ' | '.join(
        f'{by_task[t]:+.2f}' if t in by_task else '' for t in tasks) +
                 f' | {np.mean(vals):+.2f} ({len(vals)}) |')
  return lines


def plot_condensation(task, recs, chosen, pairs):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  pairs = [(k, b) for k, b in pairs if k in chosen and b in chosen]
  if not pairs:
    return None
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for name in dict.fromkeys(x for p in pairs for x in p):
    runs = chosen[name][1]
    layer = first_layer(runs[0]['cond'])
    steps = recs[name]['steps']
    n_ev = len(runs[0]['cond'][layer]['cos'])
    x = np.linspace(0, steps, n_ev)
    cos = np.mean([r['cond'][layer]['cos'] for r in runs], 0)
    er = np.mean([r['cond'][layer]['erank'] for r in runs], 0)
    val = np.mean([r['val_curve'] for r in runs], 0)
    style = '-' if name.startswith('ko') else '--'
    axes[0].plot(x, cos, style, label=name)
    axes[1].plot(x, er, style, label=name)
    axes[2].plot(x[1:], val * 100, style, label=name)
  axes[0].set_title(f'mean |cos| of {layer} neurons')
  axes[1].set_title(f'effective rank of {layer}')
  axes[2].set_title('validation accuracy, %')
  for ax in axes:
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[2].legend(fontsize=8)
  fig.suptitle(f'{task}: KO against its base, chosen points, mean of seeds')
  fig.tight_layout()
  path = os.path.join(DOCS, f'bench_condensation_{task}.png')
  os.makedirs(DOCS, exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def main():
  all_recs = {}
  out = ['# Accuracy study: tables (generated by report_accuracy.py)', '']
  merged = collections.defaultdict(dict)
  for f in sorted(glob.glob(os.path.join(RESULTS, 'accuracy_*.json')) +
                  glob.glob(os.path.join(RESULTS, '*', 'accuracy_*.json'))):
    task = os.path.basename(f)[len('accuracy_'):-len('.json')]
    merged[task].update(load(f))
  for task, recs in sorted(merged.items()):
    if not recs:
      continue
    all_recs[task] = recs
    lines, chosen = task_table(task, recs)
    out += lines
    p = plot_condensation(task, recs, chosen, [
        ('ko_soft_adam', 'adam'), ('ko_hard_adam', 'adam'),
        ('ko_soft_sgd', 'sgdm'), ('muon', 'adam')])
    if p:
      print('wrote', p)
  for task in all_recs:
    p = plot_rates(all_recs, task)
    if p:
      print('wrote', p)
  out += ['## Validation gain over the base per collision rate', '',
          '(percentage points; learning rate tuned per rate on validation)',
          ''] + rate_table(all_recs)
  path = os.path.join(RESULTS, 'accuracy_tables.md')
  with open(path, 'w') as f:
    f.write('\n'.join(out) + '\n')
  print('\n'.join(out))


if __name__ == '__main__':
  main()
