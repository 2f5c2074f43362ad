"""Tables and pictures of the plasticity study from its JSON record.

``python report.py RECORD.json`` redraws them from a finished run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

BASELINES = ('cbp_adam', 'snp_adam', 'l2init_adam')
# One colour per arm, the same in every picture; the plasticity baselines
# dashed, so that KO's arms and the baselines read apart.
COLORS = dict(sgd='tab:gray', adam='black', ko_hard_adam='tab:red',
              ko_hard_sgd='tab:pink', ko_hard_diffusion_adam='tab:orange',
              diffusion_adam='tab:brown', ko_soft_similarity_adam='tab:purple',
              cbp_adam='tab:blue', snp_adam='tab:cyan',
              l2init_adam='tab:green', muon='tab:olive', cbp_sgd='tab:blue',
              ko_hard_diffusion_sgd='tab:orange')


def style(name: str) -> dict[str, Any]:
  """Matplotlib line style of an arm."""
  dashed = name.split('_')[0] in ('cbp', 'snp', 'l2init')
  return dict(color=COLORS.get(name, 'tab:olive'),
              ls='--' if dashed else '-', label=name)


def _rounded(value: Any) -> Any:
  """``value`` with floats to 6 significant digits (the metrics' noise is
  far larger), which keeps a record of 11 arms x 5 seeds x 200 tasks small."""
  if isinstance(value, float):
    return float(f'{value:.6g}')
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_rounded(v) for v in value]
  return value


def write_json(path: str, record: dict[str, Any]) -> None:
  """Writes ``record`` atomically (a crash never leaves half a file)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_rounded(record), f, default=float)
  os.replace(tmp, path)


def _edge(tasks: int) -> int:
  """How many tasks make the first / last 10% of the stream (at least 1)."""
  return max(1, tasks // 10)


def per_seed(metrics: dict[str, list]) -> dict[str, np.ndarray]:
  """Per-seed summaries of one arm's stream (arrays over seeds)."""
  acc = np.asarray(metrics['online_acc'])
  k = _edge(acc.shape[1])
  layers = sorted(int(m.split('_')[-1]) for m in metrics if
                  m.startswith('dead_'))
  last = lambda name: np.mean([np.asarray(metrics[f'{name}_{i}'])[:, -k:]
                               for i in layers], axis=(0, 2))
  return dict(
      first=acc[:, :k].mean(1), last=acc[:, -k:].mean(1),
      kept=acc[:, -k:].mean(1) / acc[:, :k].mean(1),
      test_last=np.asarray(metrics['test_acc'])[:, -k:].mean(1),
      dead=last('dead'), rep_rank=last('rep_rank'),
      weight_rank=last('weight_rank'), cos=last('mean_abs_cos'),
      weight_mag=np.asarray(metrics['weight_mag'])[:, -k:].mean(1))


def summarize(record: dict[str, Any]) -> dict[str, Any]:
  """Mean and std over seeds of every arm, and paired differences."""
  mnist = record['mnist']
  seeds = {name: per_seed(r['metrics']) for name, r in mnist.items()}
  # Round-robin step times (step_cost.py) where measured, else run times.
  step_ms = record.get('step_ms') or {
      name: r['times']['step_ms'] for name, r in mnist.items()}
  adam_ms = step_ms.get('adam')
  present = [b for b in BASELINES if b in seeds]
  best = (max(present, key=lambda b: seeds[b]['last'].mean()) if present
          else None)
  rows = {}
  for name, s in seeds.items():
    row: dict[str, Any] = {k: (float(v.mean()), float(v.std()))
                           for k, v in s.items()}
    row['step_cost'] = step_ms[name] / adam_ms if adam_ms else float('nan')
    for ref, label in (('adam', 'vs_adam'), (best, 'vs_best')):
      if ref in seeds and ref != name:
        for k in ('kept', 'last'):
          d = s[k] - seeds[ref][k]
          row[f'{label}_{k}'] = (float(d.mean()), float(d.std()))
    rows[name] = row
  return dict(rows=rows, best_baseline=best)


def _pm(pair, digits=3) -> str:
  """``mean ± std``."""
  return f'{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}'


def table(record: dict[str, Any]) -> str:
  """The Markdown table of the study."""
  summary = summarize(record)
  best = summary['best_baseline'] or 'best baseline'
  head = ('| arm | lr | setting | first 10% acc | last 10% acc'
          ' | plasticity kept'
          ' | last 10% test acc | dead units | rep. eff. rank | mean abs cos'
          ' | weight mag. | step cost | kept − Adam | last − Adam |'
          f' kept − {best} | last − {best} |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for name, row in summary['rows'].items():
    r = record['mnist'][name]
    setting = f"{r['setting']}={r['value']:g}" if r['setting'] else '-'
    diff = lambda key, row=row: _pm(row[key]) if key in row else '-'
    lines.append(
        f"| {name} | {r['lr']:g} | {setting} | {_pm(row['first'])} | "
        f"{_pm(row['last'])} | {_pm(row['kept'])} | {_pm(row['test_last'])} | "
        f"{_pm(row['dead'])} | {_pm(row['rep_rank'], 1)} | {_pm(row['cos'])} | "
        f"{_pm(row['weight_mag'])} | {row['step_cost']:.2f} | "
        f"{diff('vs_adam_kept')} | {diff('vs_adam_last')} | "
        f"{diff('vs_best_kept')} | {diff('vs_best_last')} |")
  return '\n'.join(lines)


def regression_table(record: dict[str, Any]) -> str:
  """MSE of the regression arms: first bins, best bin, last 10% of bins."""
  reg = record.get('regression')
  if not reg:
    return ''
  lines = ['| arm | lr | first 10% MSE | min (mean curve) | last 10% MSE |',
           '|---|---|---|---|---|']
  for name, r in reg['arms'].items():
    mse = np.asarray(r['mse'])
    k = _edge(mse.shape[1])
    lines.append(f"| {name} | {r['lr']:g} | "
                 f"{_pm((mse[:, :k].mean(), mse[:, :k].mean(1).std()))} | "
                 f'{mse.mean(0).min():.3f} | '
                 f"{_pm((mse[:, -k:].mean(), mse[:, -k:].mean(1).std()))} |")
  return '\n'.join(lines)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
  """Moving average over the last axis (valid part)."""
  if width <= 1 or x.shape[-1] < width:
    return x
  kernel = np.ones(width) / width
  return np.apply_along_axis(lambda r: np.convolve(r, kernel, 'valid'), -1, x)


def plot(record: dict[str, Any], docs: str, tag: str) -> list[str]:
  """Accuracy along the stream; dead units and effective rank; regression."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(docs, exist_ok=True)
  mnist = record['mnist']
  width = max(1, _edge(record['config']['tasks']) // 2)
  paths = []
  if not mnist:
    return [_plot_regression(plt, record['regression'], docs, tag)]
  panels = (('online_acc', 'online accuracy per task'),
            ('test_acc', 'held-out accuracy at the end of each task'))
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for ax, (key, title) in zip(axes, panels):
    for name, r in mnist.items():
      curve = _smooth(np.asarray(r['metrics'][key]), width)
      x = np.arange(curve.shape[1]) + width // 2
      ax.plot(x, curve.mean(0), lw=1.3, **style(name))
      ax.fill_between(x, curve.mean(0) - curve.std(0),
                      curve.mean(0) + curve.std(0), alpha=0.12,
                      color=style(name)['color'])
    ax.set(title=title, xlabel='task', ylabel='accuracy')
  axes[1].legend(fontsize=7, ncol=2)
  fig.suptitle(f"Online Permuted MNIST ({record['data']}), mean ± std over "
               f"{len(next(iter(mnist.values()))['metrics']['online_acc'])} "
               f'seeds, moving average over {width} tasks')
  paths.append(_save(fig, docs, f'bench_plasticity_accuracy_{tag}.png'))
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, key, title in zip(axes, ('dead_1', 'rep_rank_1', 'mean_abs_cos_1'),
                            ('dead units (2nd hidden layer)',
                             'effective rank of its representation',
                             'mean |cos| of its neurons')):
    for name, r in mnist.items():
      curve = np.asarray(r['metrics'][key])
      ax.plot(curve.mean(0), lw=1.2, **style(name))
    ax.set(title=title, xlabel='task')
  axes[0].legend(fontsize=7, ncol=2)
  paths.append(_save(fig, docs, f'bench_plasticity_units_{tag}.png'))
  if record.get('regression'):
    paths.append(_plot_regression(plt, record['regression'], docs, tag))
  return paths


def _plot_regression(plt, reg, docs, tag) -> str:
  """Mean squared error along the slowly-changing regression stream."""
  fig, ax = plt.subplots(figsize=(7, 4.2))
  # Bins of 20,000 examples as in Dohare et al.'s plots (or the log's own).
  group = max(1, 20000 // reg['config']['bin'])
  per_bin = reg['config']['bin'] * group
  for name, r in reg['arms'].items():
    mse = np.asarray(r['mse'])
    mse = mse[:, :mse.shape[1] // group * group]
    mse = mse.reshape(mse.shape[0], -1, group).mean(-1)
    x = (np.arange(mse.shape[1]) + 1) * per_bin
    ax.plot(x, mse.mean(0), lw=1.2,
            **dict(style(name), label=f"{name} (lr {r['lr']:g})"))
  ax.set(xlabel='examples', ylabel=f'squared error (bins of {per_bin})',
         title='Slowly-changing regression, 5 hidden ReLU units')
  ax.legend(fontsize=8)
  return _save(fig, docs, f'bench_plasticity_regression_{tag}.png')


def _save(fig, docs: str, name: str) -> str:
  """Saves and closes ``fig``; returns its path."""
  path = os.path.join(docs, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  fig.clf()
  return path


def write_report(record: dict[str, Any], out: str, docs: str, tag: str) -> str:
  """Writes ``plasticity_<tag>.md`` (tables) and the pictures."""
  mnist_table = table(record) if record['mnist'] else ''
  text = (f"# Plasticity study ({tag}): data {record['data']}, "
          f"activation {record['activation']}\n\n{mnist_table}\n\n"
          f'{regression_table(record)}\n')
  path = os.path.join(out, f'plasticity_{tag}.md')
  with open(path, 'w') as f:
    f.write(text)
  if docs:
    plot(record, docs, tag)
  print(text)
  return path


if __name__ == '__main__':
  with open(sys.argv[1]) as f:
    loaded = json.load(f)
  name = os.path.basename(sys.argv[1])[len('plasticity_'):-len('.json')]
  write_report(loaded, os.path.dirname(sys.argv[1]),
               sys.argv[2] if len(sys.argv) > 2 else 'docs', name)
