"""Learning-rate robustness: validation against learning rate, per arm.

No training: reads the grids the studies already ran, every arm at every
learning rate with the same seeds,

* the language model (results/lm/lm_study_h200.json): final validation loss
  in bits per byte, 5 rates x 6 arms x 5 seeds;
* the accuracy study (results/accuracy_<task>.json and its folders) on the
  MNIST-1D tasks whose KO arms ran a learning-rate grid: final validation
  ACCURACY (the study stores no validation loss), in %. KO arms are read at
  the default collision rate 0.1 (the rate a user who does not tune gets;
  an arm that ran one other rate only is read there and labelled so), and
  KO-hard from its rerun on the current code where there is one, as in the
  accuracy table.

The rule for "a rate trains": with ``chance`` the score of an untrained
model (a uniform guess: 8 bits per byte for bytes, 10 % for 10 classes) and
``ref`` the base optimizer's best mean validation score on the task (AdamW
for the language model, Adam for the classifiers), a run trains when its
score keeps at least a fraction ``frac`` (default 0.9) of the way from
chance to ref, i.e. is at or past ``chance + frac * (ref - chance)``. The
threshold is the same for every arm of a task. A rate trains for an arm
when the mean over seeds does; per seed, each run is judged on its own
(a non-finite score never trains). The range of an arm is its set of rates
that train; its width is the number of grid rates in it (the grids step by
about half a decade). Writes

* results/lr_robustness.json: per task and arm, mean and std per rate,
  seeds that train per rate, the range (mean rule), each seed's width, the
  paired width difference to the base (same seeds) and the paired score
  difference to the base per rate; the widths under other fractions;
* results/lr_robustness.md: the same as tables;
* docs/bench_lr_robustness.png: one panel per task, mean +- std over seeds.

  python examples/benchmarks/accuracy/report_lr_robustness.py
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import glob
import json
import os

import numpy as np

import report_accuracy as ra

LM = dict(name='lm', label='GPT 4 x 128, val. bits per byte (lower: better)',
          chance=8.0, base='adamw', lower=True)
ACC_TASKS = ('mnist1d_mlp', 'condense_mlp', 'mnist1d_mlp_paper',
             'mnist1d_cnn_paper')
ACC_ARMS = ('adam', 'adamw', 'ko_hard_adam', 'ko_soft_adam/norm',
            'ko_soft_adam', 'sgdm', 'ko_hard_sgd', 'ko_soft_sgd', 'muon',
            'ko_soft_muon')
DEFAULT_RATE = 0.1
SWEEP = (0.8, 0.9, 0.95)

Curve = dict[float, dict[int, float]]  # lr -> seed -> validation score


def lr_key(lr: float) -> float:
  """Rates stored as float32 and as float64 (merged runs) made one key."""
  return float(f'{lr:.3g}')


def lm_curves(path: str) -> dict[str, Curve]:
  """{arm: {lr: {seed: final validation bits per byte}}} of the LM study."""
  with open(path) as f:
    runs = json.load(f)['runs']
  out: dict[str, Curve] = {}
  for arm, r in runs.items():
    curve: Curve = {}
    for seed, lr, v in zip(r['seeds'], r['lrs'], r['final_val']):
      curve.setdefault(lr_key(lr), {})[int(seed)] = float(v)
    out[arm] = curve
  return out


def _collision_rate(rec: dict) -> float:
  rates = sorted({r['rate'] for r in rec['records']})
  return DEFAULT_RATE if DEFAULT_RATE in rates else rates[0]


def accuracy_curves(results: str, task: str) -> dict[str, Curve]:
  """{arm label: {lr: {seed: validation accuracy in %}}} of one task.

  Reads every accuracy_<task>.json under ``results`` (the velocity group
  aside); KO arms at the default collision rate (the label says another),
  a ``@rerun`` record in place of its original.
  """
  recs: dict[str, dict] = {}
  files = [os.path.join(results, f'accuracy_{task}.json')] + sorted(
      glob.glob(os.path.join(results, '*', f'accuracy_{task}.json')))
  for f in files:
    if os.path.exists(f) and os.sep + 'velocity' + os.sep not in f:
      recs.update(ra.load(f))
  out: dict[str, Curve] = {}
  for arm in ACC_ARMS:
    rec = recs.get(arm + '@rerun', recs.get(arm))
    if rec is None:
      continue
    rate = _collision_rate(rec)
    label = arm if rate in (0.0, DEFAULT_RATE) else f'{arm} @{rate:g}'
    curve: Curve = {}
    for r in rec['records']:
      if r['rate'] == rate:
        curve.setdefault(lr_key(r['lr']), {})[int(r['seed'])] = (
            100.0 * ra.safe(r['val_acc']))
    out[label] = curve
  return out


def threshold(ref: float, chance: float, frac: float) -> float:
  """The score a run must reach: ``frac`` of the way from chance to ref."""
  return chance + frac * (ref - chance)


def trains(v: float, thr: float, lower: bool) -> bool:
  """Whether a score is at or past the threshold (never if not finite)."""
  return bool(np.isfinite(v)) and (v <= thr if lower else v >= thr)


def mean_std(vals: Sequence[float]) -> tuple[float, float]:
  a = np.asarray(vals, float)
  if not np.all(np.isfinite(a)):
    return float('nan'), float('nan')
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def best_mean(curve: Curve, lower: bool) -> float:
  means = [mean_std(list(s.values()))[0] for s in curve.values()]
  means = [m for m in means if np.isfinite(m)]
  return min(means) if lower else max(means)


def arm_range(curve: Curve, thr: float, lower: bool) -> dict:
  """Per rate: mean, std, seeds that train; the range by the mean rule and
  each seed's width (rates at which that seed's run trains)."""
  lrs = sorted(curve)
  seeds = sorted(set.intersection(*(set(curve[lr]) for lr in lrs)))
  per_lr, in_range = {}, []
  for lr in lrs:
    m, s = mean_std([curve[lr][k] for k in seeds])
    ok = [k for k in seeds if trains(curve[lr][k], thr, lower)]
    per_lr[f'{lr:g}'] = dict(mean=m, std=s, seeds_train=len(ok),
                             seeds=len(seeds))
    if trains(m, thr, lower):
      in_range.append(lr)
  width = {k: sum(trains(curve[lr][k], thr, lower) for lr in lrs)
           for k in seeds}
  return dict(per_lr=per_lr, range=[f'{lr:g}' for lr in in_range],
              width=len(in_range), grid=[f'{lr:g}' for lr in lrs],
              seed_width={str(k): w for k, w in width.items()})


def paired(curve: Curve, base: Curve, thr: float, lower: bool) -> dict:
  """Arm minus base on the same seeds: the score at every shared rate and
  the width (rates that train), mean and std over the seeds."""
  lrs = sorted(set(curve) & set(base))
  seeds = sorted(set.intersection(
      *(set(curve[lr]) & set(base[lr]) for lr in lrs)))
  diff = {f'{lr:g}': mean_std([curve[lr][k] - base[lr][k] for k in seeds])
          for lr in lrs}
  width = [sum(trains(curve[lr][k], thr, lower) for lr in lrs) -
           sum(trains(base[lr][k], thr, lower) for lr in lrs) for k in seeds]
  return dict(score=diff, width=mean_std(width), seeds=len(seeds))


def base_name(arm: str, spec: dict) -> str | None:
  """The base an arm is paired with: the LM's AdamW for every LM arm, else
  the base of a KO arm (report_accuracy.base_of)."""
  if spec['name'] == 'lm':
    return None if arm == spec['base'] else spec['base']
  return ra.base_of(arm.split(' @')[0])


def summarize(spec: dict, curves: dict[str, Curve], frac: float) -> dict:
  """One task: threshold, every arm's range, paired differences, sweep."""
  lower = spec['lower']
  ref = best_mean(curves[spec['base']], lower)
  thr = threshold(ref, spec['chance'], frac)
  arms = {}
  for arm, curve in curves.items():
    a = arm_range(curve, thr, lower)
    a['seed_width_mean_std'] = mean_std(list(a['seed_width'].values()))
    thrs = {f'{f:g}': threshold(ref, spec['chance'], f) for f in SWEEP}
    a['width_by_frac'] = {f: arm_range(curve, t, lower)['width']
                          for f, t in thrs.items()}
    b = base_name(arm, spec)
    if b in curves:
      a['base'] = b
      a['vs_base'] = paired(curve, curves[b], thr, lower)
      a['vs_base_width_by_frac'] = {
          f: paired(curve, curves[b], t, lower)['width']
          for f, t in thrs.items()}
    arms[arm] = a
  return dict(task=spec['name'], label=spec['label'], lower=lower,
              chance=spec['chance'], base=spec['base'], ref=ref, frac=frac,
              threshold=thr, arms=arms)


def _fmt(x: float, lower: bool, sign: str = '') -> str:
  return f'{x:{sign}.3f}' if lower else f'{x:{sign}.1f}'


def beyond_noise(mean: float, sd: float, n: int) -> bool:
  """A paired mean difference beyond the 95% t-interval of its seeds."""
  if n < 2 or not np.isfinite(mean) or mean == 0:
    return False
  return sd == 0 or abs(mean) / (sd / np.sqrt(n)) > ra.T_975.get(n, 2.0)


def _diff(m: float, sd: float, n: int, lower: bool) -> str:
  return (f'{_fmt(m, lower, "+")} ± {_fmt(sd, lower)}' +
          (' **' if beyond_noise(m, sd, n) else ''))


def markdown(summaries: list[dict]) -> list[str]:
  """The range table of every task, then the LM's paired differences."""
  fr = ' / '.join(f'{f:g}' for f in SWEEP)
  out = ['# Learning-rate robustness (generated by report_lr_robustness.py)',
         '']
  for s in summaries:
    lo = s['lower']
    out += [f'## {s["task"]}: {s["label"]}', '',
            f'A rate trains when the score is at or past '
            f'{_fmt(s["threshold"], lo)} (chance {s["chance"]:g}, '
            f'{s["base"]}\'s best {_fmt(s["ref"], lo)}, fraction '
            f'{s["frac"]:g}).', '',
            '| arm | mean ± std per rate (seeds that train) | rates that '
            f'train (mean) | width per seed | Δ width vs base, paired | '
            f'width at {fr} (paired Δ) |', '|---|---|---|---|---|---|']
    for arm, a in s['arms'].items():
      cells = '; '.join(
          f'{lr}: {_fmt(p["mean"], lo)} ± {_fmt(p["std"], lo)} '
          f'({p["seeds_train"]}/{p["seeds"]})' for lr, p in a['per_lr'].items())
      rng = ('-'.join(dict.fromkeys((a['range'][0], a['range'][-1])))
             if a['range'] else 'none')
      m, sd = a['seed_width_mean_std']
      vs = a.get('vs_base')
      dw = (f'{_diff(vs["width"][0], vs["width"][1], vs["seeds"], False)} '
            f'({a["base"]})' if vs else '')
      sweep = ' / '.join(str(w) for w in a['width_by_frac'].values())
      if vs:
        sweep += ' (paired Δ ' + ' / '.join(
            _diff(dm, dsd, vs['seeds'], False)
            for dm, dsd in a['vs_base_width_by_frac'].values()) + ')'
      out.append(f'| {arm} | {cells} | {rng} ({a["width"]} of '
                 f'{len(a["grid"])}) | {m:.1f} ± {sd:.1f} | {dw} | {sweep} |')
    out.append('')
    out += _paired_lines(s)
  return out


def _paired_lines(s: dict) -> list[str]:
  """Score minus the base's, same seeds, per rate (mean ± std), for the
  arms on their base's grid."""
  rows = []
  grid = s['arms'][s['base']]['grid']
  for arm, a in s['arms'].items():
    if 'vs_base' in a and a['grid'] == grid:
      n = a['vs_base']['seeds']
      rows.append(f'| {arm} - {a["base"]} | ' + ' | '.join(
          _diff(m, sd, n, s['lower'])
          for m, sd in a['vs_base']['score'].values()) + ' |')
  if not rows:
    return []
  return [f'Score minus {s["base"]}\'s on the same seeds, per rate (** : '
          'beyond the 95% t-interval of the seeds):', '',
          '| arm | ' + ' | '.join(grid) + ' |',
          '|---|' + '---|' * len(grid)] + rows + ['']


def arm_style(arm: str) -> tuple[str, str, str]:
  """(colour, marker, line) of an arm, alike across panels: colour by the
  collision (black: none), marker by the base (o Adam/AdamW, s SGD, ^
  Muon), solid for KO."""
  colours = (('similarity', 'tab:purple'), ('norm', 'tab:green'),
             ('hard', 'tab:red'), ('ko_gpt', 'tab:orange'),
             ('ko_soft', 'tab:orange'), ('muon', 'tab:blue'),
             ('adamw', 'tab:gray'))
  colour = next((c for k, c in colours if k in arm), 'black')
  marker = 's' if 'sgd' in arm else '^' if 'muon' in arm else 'o'
  return colour, marker, '-' if arm.startswith('ko') else '--'


def plot(summaries: list[dict], path: str) -> str:
  """One panel per task: mean ± std over seeds against the rate, per arm,
  the threshold dashed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(summaries)
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows),
                           squeeze=False)
  for ax, s in zip(axes.flat, summaries):
    for i, (arm, a) in enumerate(s['arms'].items()):
      lrs = np.array([float(x) for x in a['per_lr']])
      m = np.array([p['mean'] for p in a['per_lr'].values()])
      sd = np.array([p['std'] for p in a['per_lr'].values()])
      colour, marker, line = arm_style(arm)
      ax.errorbar(lrs * 1.04 ** (i - len(s['arms']) / 2), m, yerr=sd,
                  fmt=marker + line, color=colour, ms=3, capsize=2, lw=1,
                  label=arm)
    ax.axhline(s['threshold'], color='k', ls=':', lw=1)
    ax.set_xscale('log')
    ax.set_xlabel('learning rate')
    ax.set_ylabel('val. bits per byte' if s['lower'] else 'val. accuracy, %')
    ax.set_title(s['task'], fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  for ax in list(axes.flat)[n:]:
    ax.axis('off')
  fig.suptitle('Validation against learning rate, mean ± std over seeds '
               '(dotted: the "trains" threshold)')
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def main(argv: list[str] | None = None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--results', default=ra.RESULTS)
  p.add_argument('--lm', default='lm/lm_study_h200.json',
                 help='the LM study, relative to --results ("" to skip)')
  p.add_argument('--docs', default=ra.DOCS)
  p.add_argument('--frac', type=float, default=0.9)
  args = p.parse_args(argv)
  summaries = []
  lm_path = os.path.join(args.results, args.lm) if args.lm else ''
  if lm_path and os.path.exists(lm_path):
    summaries.append(summarize(LM, lm_curves(lm_path), args.frac))
  for task in ACC_TASKS:
    curves = accuracy_curves(args.results, task)
    if 'adam' in curves:
      spec = dict(name=task, label='val. accuracy, % (higher: better)',
                  chance=10.0, base='adam', lower=False)
      summaries.append(summarize(spec, curves, args.frac))
  with open(os.path.join(args.results, 'lr_robustness.json'), 'w') as f:
    json.dump(summaries, f, indent=1)
  lines = markdown(summaries)
  with open(os.path.join(args.results, 'lr_robustness.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  print('wrote', plot(summaries,
                      os.path.join(args.docs, 'bench_lr_robustness.png')))
  return summaries


if __name__ == '__main__':
  main()
