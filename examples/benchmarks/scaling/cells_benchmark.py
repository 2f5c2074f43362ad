r"""Collision cells: speed against the exact soft collision, and fidelity.

Two measurements of ``ko_optax.collide_in_cells`` with the soft collision,
written to ``examples/benchmarks/results/cells_<label>.json``:

1. ``speed``: one soft collision (rate 0.1) of a (D, N) particle matrix,
   exact (all N x N pairs) against cells of C, median wall time of
   interleaved repeats in one process (so that load from other processes
   hits both alike), their ratio, and XLA's temporary memory.
2. ``fidelity``: how local the cells are and how much of the all-pairs
   collision they keep, against cells drawn at random:

   * ``clusters``: 8 tight clusters of 16 directions (D = 32), C = 16, over
     several data sets and keys: the fraction of in-cell partners from the
     particle's own cluster (``share``; 1 is perfect, random cells give
     15/127 = 0.12) and their mean cosine similarity (``cos``).
   * ``condensed``: N = 4096, D = 256, 16 clusters with noise (condensed
     neurons with correlated gradients), C = 256; and ``random`` Gaussian
     weights. Besides ``share`` and ``cos``, the repulsion ``g - g_new`` of
     one soft collision at rate 1 against the exact one: relative error
     ``|r_cells - r_exact| / |r_exact|``, cosine and norm ratio.

   Cell membership is read through ``collide_in_cells`` itself (a probe
   ``collide`` that sums labels and directions over each cell), so any
   version of it can be measured: ``--baseline path/to/cells.py`` (e.g.
   ``git show <commit>:ko_optax/cells.py``) adds that module's
   ``collide_in_cells`` to both measurements, timed in the same
   interleaved loop.

Usage (from the repository root, ko_optax importable)::

  # the full set, about 5 min on 2 cores
  python examples/benchmarks/scaling/cells_benchmark.py
  # tiny sizes, seconds
  python examples/benchmarks/scaling/cells_benchmark.py --quick
  # on a shared machine: every round waits for the others to go quiet
  python examples/benchmarks/scaling/cells_benchmark.py --quiet 0.1
  git show HEAD~1:ko_optax/cells.py > /tmp/old_cells.py
  python examples/benchmarks/scaling/cells_benchmark.py \
      --baseline /tmp/old_cells.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# The shared helpers (ko_examples) live in examples/, two folders up.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))

from ko_examples import timing
import ko_optax

RESULTS = pathlib.Path(__file__).resolve().parents[1] / 'results'


# -- 1. speed ----------------------------------------------------------------


def _temp_mib(fn, *args) -> float | None:
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  if stats is None:
    return None
  return stats.temp_size_in_bytes / 2**20


def _others_busy(seconds: float = 0.5) -> float:
  """Cores busy with other processes over ``seconds`` (Linux /proc)."""
  def snapshot():
    with open('/proc/stat') as f:
      ticks = [int(t) for t in f.readline().split()[1:]]
    with open('/proc/self/stat') as f:
      mine = f.read().rsplit(')', 1)[1].split()
    return sum(ticks) - ticks[3] - ticks[4], int(mine[11]) + int(mine[12])
  busy0, mine0 = snapshot()
  time.sleep(seconds)
  busy1, mine1 = snapshot()
  return (busy1 - busy0 - (mine1 - mine0)) / os.sysconf('SC_CLK_TCK') / seconds


def _interleaved(thunks: dict, repeats: int, warmup: int,
                 quiet: float | None) -> tuple[dict, list]:
  """Median wall times of round-robin repeats (timing.interleaved_medians).

  With ``quiet``, every round first waits (up to 60 s) until other
  processes use less than ``quiet`` cores, so that on a shared machine the
  rounds run on an otherwise idle CPU; the load seen is returned per round.
  """
  if quiet is None:
    return timing.interleaved_medians(thunks, repeats, warmup), []
  loads: list[float] = []

  def wait_for_quiet():
    deadline = time.time() + 60
    while (load := _others_busy()) > quiet and time.time() < deadline:
      pass
    loads.append(load)

  times = timing.interleaved_medians(thunks, repeats, warmup,
                                     before_round=wait_for_quiet)
  return times, loads


def bench_speed(n: int, d: int, cell_sizes: list[int], repeats: int,
                warmup: int, schemes: dict,
                quiet: float | None = None) -> list[dict]:
  """Exact against cells, interleaved; one row per scheme and cell size."""
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
  key = jax.random.key(0)
  soft = lambda w_, g_, k_: ko_optax.soft_collision(w_, g_, 0.1)
  exact = lambda w_, g_: ko_optax.soft_collision(w_, g_, 0.1)
  fns = {'exact': (exact, (w, g))}
  for scheme, cells_fn in schemes.items():
    for c in cell_sizes:
      fns[scheme, c] = (
          lambda w_, g_, k_, c=c, f=cells_fn: f(w_, g_, k_, soft, cell_size=c),
          (w, g, key))
  compiled = {k: jax.jit(f) for k, (f, _) in fns.items()}
  thunks = {k: (lambda k=k: compiled[k](*fns[k][1])) for k in fns}
  times, loads = _interleaved(thunks, repeats, warmup, quiet)
  rows = []
  for scheme in schemes:
    for c in cell_sizes:
      name = scheme, c
      rows.append({
          'cells': scheme, 'n': n, 'd': d, 'cell_size': c,
          'exact_ms': times['exact'] * 1e3, 'cells_ms': times[name] * 1e3,
          'ratio': times['exact'] / times[name],
          'exact_temp_mib': _temp_mib(fns['exact'][0], *fns['exact'][1]),
          'cells_temp_mib': _temp_mib(fns[name][0], *fns[name][1]),
          'other_load_per_round': loads,
      })
  return rows


# -- 2. fidelity -------------------------------------------------------------


def _unit(x):
  return x / np.linalg.norm(x, axis=0, keepdims=True)


def _probe(w_, g_, k_):
  """Sum over each cell of the probe columns, minus the particle's own."""
  del w_, k_
  return jnp.sum(g_, axis=-1, keepdims=True) - g_


def random_cells(w, g, key, collide, *, cell_size):
  """Applies ``collide`` to cells of a random permutation of the particles.

  The baseline of the fidelity study ("random batch method", Jin, Li and
  Liu, J. Comput. Phys. 2020).
  """
  d, n = g.shape
  cells = -(-n // cell_size)
  pad = cells * cell_size - n
  order = jax.random.permutation(key, n)
  to_cells = lambda x: jnp.pad(x[:, order], ((0, 0), (0, pad))).reshape(
      x.shape[0], cells, cell_size).transpose(1, 0, 2)
  new = collide(to_cells(w), to_cells(g), key)
  new = new.transpose(1, 0, 2).reshape(g.shape[0], cells * cell_size)[:, :n]
  return jnp.zeros_like(g).at[:, order].set(new)


def _locality(w, labels, key, cell_size, cells_fn):
  """(share, cos): same-cluster fraction and mean cosine of cell partners."""
  n = w.shape[1]
  w_hat = _unit(w)
  parts = [np.ones((1, n)), w_hat]
  if labels is not None:
    parts.append(np.eye(labels.max() + 1)[labels].T)
  probe = np.concatenate(parts)
  # w and g must have the same shape: pad w with zero dimensions (they do
  # not change any direction or projection).
  w_padded = np.pad(w, ((0, probe.shape[0] - w.shape[0]), (0, 0)))
  args = jnp.asarray(w_padded), jnp.asarray(probe, jnp.float32), key
  out = cells_fn(*args, _probe, cell_size=cell_size)
  # Row 0: number of partners; then the sum of the partners' directions and
  # the count of partners per cluster.
  out = np.asarray(out, np.float64)
  d = w.shape[0]
  partners = out[0].sum()
  cos = np.sum(out[1:1 + d] * w_hat) / partners
  share = float('nan')
  if labels is not None:
    share = np.sum(out[1 + d:] * probe[1 + d:]) / partners
  return float(share), float(cos)


def repulsion(w, g, key, cell_size, cells_fn, exact):
  """The cells' repulsion ``g - g_new`` (rate 1) against ``exact``'s."""
  soft = lambda w_, g_, k_: ko_optax.soft_collision(w_, g_, 1.0)
  new = cells_fn(w, g, key, soft, cell_size=cell_size)
  rep = np.asarray(g - new, np.float64)
  return {
      'rel_err': float(np.linalg.norm(rep - exact) / np.linalg.norm(exact)),
      'rep_cos': float(np.sum(rep * exact) / (
          np.linalg.norm(rep) * np.linalg.norm(exact))),
      'norm_ratio': float(np.linalg.norm(rep) / np.linalg.norm(exact)),
  }


def clusters_data(seed, clusters=8, size=16, d=32, noise=0.05):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(clusters), size)
  centres = rng.normal(size=(clusters, d))
  w = centres[labels] + noise * rng.normal(size=(clusters * size, d))
  return w.T.astype(np.float32), labels


def condensed_data(kind, n, d, clusters, seed=0):
  rng = np.random.default_rng(seed)
  if kind == 'random':
    w, g = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    return w.T.astype(np.float32), g.T.astype(np.float32), None
  centres = rng.normal(size=(clusters, d))
  labels = rng.integers(0, clusters, n)
  w = centres[labels] + 0.3 * rng.normal(size=(n, d))
  g = centres[labels] @ rng.normal(size=(d, d)) / np.sqrt(d) + (
      0.3 * rng.normal(size=(n, d)))
  return w.T.astype(np.float32), g.T.astype(np.float32), labels


def bench_fidelity(data_sets: int, keys: int, n: int, d: int,
                   cell_size: int, schemes: dict) -> list[dict]:
  """Locality and kept repulsion of each scheme; one row per data set."""
  schemes = dict(schemes, random=random_cells)
  rows = []
  for scheme, cells_fn in schemes.items():
    shares, coss = [], []
    for s in range(data_sets):
      w, labels = clusters_data(100 + s)
      for k in range(keys):
        share, cos = _locality(w, labels, jax.random.key(k), 16, cells_fn)
        shares.append(share)
        coss.append(cos)
    rows.append({'data': 'clusters', 'cells': scheme, 'n': 128, 'd': 32,
                 'cell_size': 16, 'share': float(np.mean(shares)),
                 'cos': float(np.mean(coss))})
  for kind in ('condensed', 'random'):
    w, g, labels = condensed_data(kind, n, d, clusters=16)
    wj, gj = jnp.asarray(w), jnp.asarray(g)
    exact = np.asarray(gj - ko_optax.soft_collision(wj, gj, 1.0), np.float64)
    for scheme, cells_fn in schemes.items():
      acc = []
      for k in range(keys):
        key = jax.random.key(k)
        share, cos = _locality(w, labels, key, cell_size, cells_fn)
        acc.append(dict(share=share, cos=cos,
                        **repulsion(wj, gj, key, cell_size, cells_fn, exact)))
      row = {'data': kind, 'cells': scheme, 'n': n, 'd': d,
             'cell_size': cell_size}
      row.update({m: float(np.mean([a[m] for a in acc])) for m in acc[0]})
      rows.append(row)
  return rows


# -- report ------------------------------------------------------------------


def _fmt(x, digits=3):
  return '-' if x is None or x != x else f'{x:.{digits}f}'


def report(results) -> str:
  lines = ['| cells | N | D | C | exact: ms | cells: ms | exact / cells | '
           'temp MiB exact / cells |', '|---|---|---|---|---|---|---|---|']
  for r in results['speed']:
    lines.append(
        f"| {r['cells']} | {r['n']} | {r['d']} | {r['cell_size']} | "
        f"{r['exact_ms']:.1f} | "
        f"{r['cells_ms']:.1f} | {r['ratio']:.2f} | "
        f"{_fmt(r['exact_temp_mib'], 0)} / {_fmt(r['cells_temp_mib'], 0)} |")
  lines += ['', '| data | cells | C | share | cos | rel. error | '
            'repulsion cos | norm ratio |',
            '|---|---|---|---|---|---|---|---|']
  for r in results['fidelity']:
    lines.append(
        f"| {r['data']} | {r['cells']} | {r['cell_size']} | "
        f"{_fmt(r['share'])} | {_fmt(r['cos'])} | "
        f"{_fmt(r.get('rel_err'))} | {_fmt(r.get('rep_cos'))} | "
        f"{_fmt(r.get('norm_ratio'))} |")
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny sizes and few repeats (a smoke test)')
  parser.add_argument('--label', default='cpu',
                      help='results go to results/cells_<label>.json')
  parser.add_argument('--repeats', type=int, default=15)
  parser.add_argument('--baseline', default=None,
                      help='a cells.py whose collide_in_cells is measured '
                      "too, as 'baseline'")
  parser.add_argument('--quiet', type=float, default=None, metavar='CORES',
                      help='before each round of the speed test, wait until '
                      'other processes use fewer than CORES cores')
  parser.add_argument('--no-write', action='store_true')
  a = parser.parse_args(argv)
  schemes = {'cells': ko_optax.collide_in_cells}
  if a.baseline:
    spec = importlib.util.spec_from_file_location('baseline_cells', a.baseline)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schemes['baseline'] = module.collide_in_cells
  if a.quick:
    speed = bench_speed(512, 64, [64], repeats=3, warmup=1, schemes=schemes)
    fidelity = bench_fidelity(data_sets=2, keys=2, n=512, d=32, cell_size=64,
                              schemes=schemes)
  else:
    speed = bench_speed(4096, 1024, [256, 64], repeats=a.repeats, warmup=2,
                        schemes=schemes, quiet=a.quiet)
    fidelity = bench_fidelity(data_sets=20, keys=5, n=4096, d=256,
                              cell_size=256, schemes=schemes)
  results = {'machine': timing.machine(), 'label': a.label,
             'baseline': a.baseline, 'repeats': a.repeats, 'quiet': a.quiet,
             'speed': speed,
             'fidelity': fidelity}
  print(report(results))
  if not a.no_write:
    path = RESULTS / f'cells_{a.label}.json'
    timing.write_json(str(path), results)
    print(f'wrote {path}')
  return results


if __name__ == '__main__':
  main()
