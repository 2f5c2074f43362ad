"""How the collision cost grows with N (neurons) and D (their dimension).

One (D, N) parameter leaf in Flax layout; times the optimizer-only step of
optax.adam, KO-soft and KO-hard (adam base) and the soft collision in
collision cells, over a sweep of N at fixed D and of D at fixed N (medians,
round-robin per size). Writes results/scaling_<tag>.json (tables:
cost/report_cost.py) and, with --plot, docs/bench_scaling_<tag>.png.
scaling.py times the soft collision alone, all pairs against cells, to
larger N.

  PYTHONPATH=. python examples/benchmarks/scaling/collision_scaling.py --plot
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import optax

# The shared helpers (ko_examples) live in examples/, two folders up.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))

from ko_examples import timing
import ko_optax

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.abspath(os.path.join(HERE, '..', 'results'))
DOCS = os.path.abspath(os.path.join(HERE, '..', '..', '..', 'docs'))


def optimizers(n):
  out = {
      'adam': optax.adam(1e-3),
      'ko_soft': ko_optax.ko(1e-3, collision='soft'),
      'ko_hard': ko_optax.ko(1e-3, collision='hard'),
  }
  if n > 128:
    out['ko_soft_cells128'] = ko_optax.ko(1e-3, collision='soft',
                                          cell_size=128)
  return out


def time_leaf(d, n, repeats):
  w = jax.random.normal(jax.random.key(0), (d, n)) / jnp.sqrt(d)
  g = jax.random.normal(jax.random.key(1), (d, n))
  thunks = {}
  for name, tx in optimizers(n).items():
    state = tx.init(w)
    f = jax.jit(lambda g, s, w, tx=tx: tx.update(g, s, w))
    thunks[name] = lambda f=f, s=state: f(g, s, w)
  return timing.interleaved_medians(thunks, repeats=repeats, warmup=2)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--ns', default='64,128,256,512,1024,2048')
  ap.add_argument('--ds', default='64,256,1024,4096')
  ap.add_argument('--fixed-d', type=int, default=512)
  ap.add_argument('--fixed-n', type=int, default=512)
  ap.add_argument('--repeats', type=int, default=10)
  ap.add_argument('--tag', default='cpu')
  ap.add_argument('--out', default=RESULTS)
  ap.add_argument('--plot', action='store_true')
  a = ap.parse_args()
  rows = []
  sweeps = [('N', a.fixed_d, int(n)) for n in a.ns.split(',')] + [
      ('D', int(d), a.fixed_n) for d in a.ds.split(',')]
  for sweep, d, n in sweeps:
    t = time_leaf(d, n, a.repeats)
    for name, sec in t.items():
      rows.append(dict(sweep=sweep, d=d, n=n, optimizer=name, ms=sec * 1e3,
                       ratio_to_adam=sec / t['adam']))
    print(f'{sweep} D={d:5d} N={n:5d} ' + '  '.join(
        f'{k} {v * 1e3:8.2f}ms' for k, v in t.items()), flush=True)
    timing.write_json(os.path.join(a.out, f'scaling_{a.tag}.json'),
                      dict(machine=timing.machine(), rows=rows))
  if a.plot:
    plot(rows, os.path.join(DOCS, f'bench_scaling_{a.tag}.png'))


def plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, sweep, key, fixed in ((axes[0], 'N', 'n', 'd'),
                                (axes[1], 'D', 'd', 'n')):
    sub = [r for r in rows if r['sweep'] == sweep]
    for name in dict.fromkeys(r['optimizer'] for r in sub):
      pts = sorted((r[key], r['ms']) for r in sub if r['optimizer'] == name)
      ax.loglog([p[0] for p in pts], [p[1] for p in pts], 'o-', label=name)
    ax.set_xlabel(f'{sweep} ({"neurons" if sweep == "N" else "dimension"}; '
                  f'{fixed.upper()} = {sub[0][fixed]})')
    ax.set_ylabel('optimizer step, ms (median)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
  fig.suptitle('Cost of one optimizer step on one (D, N) leaf')
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100)
  print('wrote', path)


if __name__ == '__main__':
  main()
