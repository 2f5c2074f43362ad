r"""Scaling of KO's soft collision: all pairs against collision cells.

Three measurements, written to examples/benchmarks/results/scaling.json and
plotted to docs/scaling_collision.png and docs/scaling_train_step.png:

1. ``collision``: one soft collision of a (D, N) leaf, D = 1024, N from 256
   to 16384, exact (all pairs) against cells of C particles: median wall
   time and XLA's compiled memory (temporaries + arguments + outputs, from
   ``compiled.memory_analysis()``; the exact form's N x N matrices dominate).
2. ``train_step``: the full jitted train step (forward, backward, optimizer)
   of a small transformer with a large vocabulary head (d_model 256, one
   block, vocabulary V = 4096 .. 16384, 512 tokens per batch) with
   optax.adam, KO-soft on all pairs, KO-soft in cells, KO-hard; every
   kernel collides (the head has V particles). Times are medians of
   interleaved repeats, so that load from other processes hits all
   optimizers alike.
3. ``fidelity``: how much of the all-pairs repulsion the cells keep, on
   weights with condensed (clustered) neurons and on random weights, for
   the hyperplane-hash cells against cells drawn at random: cosine and norm
   ratio between the cells' and the exact repulsion ``g - g_new``
   (cells_benchmark.py's measure, which it extends with the cells' locality
   and a baseline version of the cells).

collision_scaling.py times the whole optimizer step of every mode on one
leaf instead, over N and D.

Usage (from the repository root, ko_optax importable)::

  python examples/benchmarks/scaling/scaling.py          # the full set
  python examples/benchmarks/scaling/scaling.py --quick  # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The shared helpers (ko_examples) live in examples/, two folders up.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))

import cells_benchmark
from ko_examples import timing
import ko_optax
from ko_optax import cells as cells_lib
from ko_optax import collision as collision_lib

ROOT = pathlib.Path(__file__).resolve().parents[3]
RESULTS = ROOT / 'examples' / 'benchmarks' / 'results'
DOCS = ROOT / 'docs'


def _memory_bytes(compiled) -> int | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
             + stats.output_size_in_bytes)


def _interleaved(fns: dict, repeats: int, budget_s: float) -> dict:
  """Median seconds per thunk, timed round-robin; stops early on budget."""
  return timing.interleaved_medians(fns, repeats, warmup=0,
                                    budget_s=budget_s)


# -- 1. one soft collision ---------------------------------------------------


def collision_fn(cell_size):
  def fn(w, g, key):
    if cell_size is None:
      return collision_lib.soft_collision(w, g, 0.1)
    collide = lambda w_, g_, k_: collision_lib.soft_collision(w_, g_, 0.1)
    return cells_lib.collide_in_cells(w, g, key, collide, cell_size=cell_size)
  return fn


def bench_collision(ns, d, cell_sizes, max_exact_n, repeats, budget_s):
  rows = []
  for n in ns:
    rng = np.random.default_rng(n)
    w = jnp.asarray(rng.normal(size=(d, n)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(d, n)).astype(np.float32))
    key = jax.random.key(0)
    for c in [None] + list(cell_sizes):
      if c is None and n > max_exact_n:
        rows.append({'n': n, 'd': d, 'cell_size': None, 'skipped': True})
        continue
      if c is not None and c >= n:
        continue
      compiled = jax.jit(collision_fn(c)).lower(w, g, key).compile()
      run = functools.partial(compiled, w, g, key)
      t = _interleaved({'x': run}, repeats, budget_s)['x']
      rows.append({'n': n, 'd': d, 'cell_size': c, 'seconds': t,
                   'memory_bytes': _memory_bytes(compiled)})
      print(f'collision N={n:6d} D={d} C={c}: {t * 1e3:9.1f} ms, '
            f'{rows[-1]["memory_bytes"] / 2**20:9.1f} MiB', flush=True)
  return rows


# -- 2. the train step of a transformer with a large vocabulary head ---------


def init_transformer(key, vocab, d_model, seq):
  keys = jax.random.split(key, 8)
  normal = lambda k, shape, fan_in: jax.random.normal(k, shape) / math.sqrt(
      fan_in)
  return {
      'embed': normal(keys[0], (vocab, d_model), 1.0) * 0.02,
      'pos': normal(keys[1], (seq, d_model), 1.0) * 0.02,
      'qkv': normal(keys[2], (d_model, 3 * d_model), d_model),
      'proj': normal(keys[3], (d_model, d_model), d_model),
      'mlp_in': normal(keys[4], (d_model, 4 * d_model), d_model),
      'mlp_out': normal(keys[5], (4 * d_model, d_model), 4 * d_model),
      'head': normal(keys[6], (d_model, vocab), d_model),
      'ln1': jnp.ones(d_model), 'ln2': jnp.ones(d_model),
      'ln_f': jnp.ones(d_model),
  }


def _norm(x, scale):
  x = x - x.mean(-1, keepdims=True)
  return scale * x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-5)


def transformer_loss(params, tokens, heads=4):
  x = params['embed'][tokens[:, :-1]] + params['pos'][None]
  b, t, d = x.shape
  h = _norm(x, params['ln1'])
  q, k, v = jnp.split(h @ params['qkv'], 3, axis=-1)
  split = lambda a: a.reshape(b, t, heads, d // heads)
  att = jax.nn.dot_product_attention(split(q), split(k), split(v),
                                     is_causal=True)
  x = x + att.reshape(b, t, d) @ params['proj']
  h = _norm(x, params['ln2'])
  x = x + jax.nn.gelu(h @ params['mlp_in']) @ params['mlp_out']
  logits = _norm(x, params['ln_f']) @ params['head']
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, tokens[:, 1:]).mean()


def optimizers(cell_size):
  """Optimizers of the train-step benchmark: name -> (transformation, C)."""
  no_embed = lambda p: {k: k != 'embed' for k in p}
  return {
      'adam': (optax.adam(1e-3), None),
      'ko_soft_exact': (ko_optax.ko(1e-3, collision='soft'), None),
      'ko_soft_cells': (ko_optax.ko(1e-3, collision='soft',
                                    cell_size=cell_size), cell_size),
      'ko_soft_cells_small': (ko_optax.ko(1e-3, collision='soft',
                                          cell_size=32), 32),
      'ko_soft_cells_no_embed': (ko_optax.ko(
          1e-3, collision='soft', cell_size=64, mask=no_embed), 64),
      'ko_hard': (ko_optax.ko(1e-3, collision='hard'), None),
  }


def bench_train_step(vocabs, d_model, batch, seq, cell_size, max_exact_vocab,
                     repeats, budget_s):
  rows = []
  for vocab in vocabs:
    params = init_transformer(jax.random.key(0), vocab, d_model, seq)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, vocab)
    thunks, memory = {}, {}
    for name, (tx, _) in optimizers(cell_size).items():
      if name == 'ko_soft_exact' and vocab > max_exact_vocab:
        continue

      def step(params, state, tokens, tx=tx):
        loss, grads = jax.value_and_grad(transformer_loss)(params, tokens)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

      state = tx.init(params)
      compiled = jax.jit(step).lower(params, state, tokens).compile()
      memory[name] = _memory_bytes(compiled)
      thunks[name] = functools.partial(compiled, params, state, tokens)
    times = _interleaved(thunks, repeats, budget_s)
    for name, (_, c) in optimizers(cell_size).items():
      row = {'vocab': vocab, 'd_model': d_model, 'tokens': batch * seq,
             'optimizer': name, 'cell_size': c}
      if name in times:
        row.update(seconds=times[name], memory_bytes=memory[name],
                   vs_adam=times[name] / times['adam'])
        print(f'train step V={vocab:6d} {name:22s}: '
              f'{times[name] * 1e3:9.1f} ms ({row["vs_adam"]:.2f}x adam), '
              f'{memory[name] / 2**20:8.1f} MiB', flush=True)
      else:
        row['skipped'] = True
      rows.append(row)
  return rows


# -- 3. fidelity of the cells ------------------------------------------------


def bench_fidelity(n, d, cell_size, clusters, trials):
  rows = []
  rng = np.random.default_rng(0)
  for kind in ('condensed', 'random'):
    if kind == 'condensed':
      centres = rng.normal(size=(clusters, d))
      labels = rng.integers(0, clusters, n)
      w = centres[labels] + 0.3 * rng.normal(size=(n, d))
      g = centres[labels] @ rng.normal(size=(d, d)) / np.sqrt(d) + (
          0.3 * rng.normal(size=(n, d)))
    else:
      w, g = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    w = jnp.asarray(w.T, jnp.float32)
    g = jnp.asarray(g.T, jnp.float32)
    exact = np.asarray(g - collision_lib.soft_collision(w, g, 1.0),
                       np.float64)
    # The same measure as cells_benchmark's (hash cells against cells drawn
    # at random), on this study's weights and trials.
    schemes = {'hash': cells_lib.collide_in_cells,
               'random': cells_benchmark.random_cells}
    for scheme, cells_fn in schemes.items():
      cos, ratio = [], []
      for t in range(trials):
        m = cells_benchmark.repulsion(w, g, jax.random.key(t), cell_size,
                                      cells_fn, exact)
        cos.append(m['rep_cos'])
        ratio.append(m['norm_ratio'])
      rows.append({'weights': kind, 'cells': scheme, 'n': n, 'd': d,
                   'cell_size': cell_size, 'cosine': float(np.mean(cos)),
                   'norm_ratio': float(np.mean(ratio))})
      print(f'fidelity {kind:9s} {scheme:6s}: cos {rows[-1]["cosine"]:.3f}, '
            f'|cells| / |exact| {rows[-1]["norm_ratio"]:.3f}', flush=True)
  return rows


# -- plots -------------------------------------------------------------------


def plot(results, suffix=''):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = [r for r in results['collision'] if not r.get('skipped')]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for c in sorted({r['cell_size'] for r in rows}, key=lambda c: c or 0):
    sel = sorted((r for r in rows if r['cell_size'] == c),
                 key=lambda r: r['n'])
    label = 'exact (all pairs)' if c is None else f'cells, C = {c}'
    style = 'k-o' if c is None else '-o'
    axes[0].loglog([r['n'] for r in sel], [r['seconds'] for r in sel], style,
                   label=label)
    axes[1].loglog([r['n'] for r in sel],
                   [r['memory_bytes'] / 2**20 for r in sel], style,
                   label=label)
  d = rows[0]['d']
  axes[0].set(xlabel='particles N', ylabel='seconds per collision',
              title=f'soft collision time (D = {d})')
  axes[1].set(xlabel='particles N', ylabel='compiled memory (MiB)',
              title='soft collision memory')
  for ax in axes:
    ax.legend()
    ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(DOCS / f'scaling_collision{suffix}.png', dpi=110)
  plt.close(fig)

  rows = [r for r in results['train_step'] if not r.get('skipped')]
  vocabs = sorted({r['vocab'] for r in rows})
  names = ['adam', 'ko_soft_cells', 'ko_soft_cells_small',
           'ko_soft_cells_no_embed', 'ko_hard', 'ko_soft_exact']
  fig, ax = plt.subplots(figsize=(8, 4.5))
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    xs, ys = [], []
    for j, v in enumerate(vocabs):
      for r in rows:
        if r['vocab'] == v and r['optimizer'] == name:
          xs.append(j + i * width)
          ys.append(r['vs_adam'])
    cell = [r['cell_size'] for r in rows if r['optimizer'] == name]
    label = name + (f' (C = {cell[0]})' if cell and cell[0] else '')
    ax.bar(xs, ys, width, label=label)
  ax.axhline(1.3, color='k', ls='--', lw=1, label='1.3 x adam')
  ax.set_xticks([j + 0.4 - width / 2 for j in range(len(vocabs))])
  ax.set_xticklabels([f'V = {v}' for v in vocabs])
  ax.set_yscale('log')
  ax.set(ylabel='train step time / adam', title='full train step, '
         'transformer with vocabulary head')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(DOCS / f'scaling_train_step{suffix}.png', dpi=110)
  plt.close(fig)


def markdown(results) -> str:
  """The three result tables in Markdown (for docs/scaling.md)."""
  lines = ['| N | D | exact: ms | exact: MiB | ' + ' | '.join(
      f'C = {c}: ms | C = {c}: MiB'
      for c in results['config']['cell_sizes']) + ' |']
  lines.append('|' + '---|' * (4 + 2 * len(results['config']['cell_sizes'])))
  for n in results['config']['ns']:
    row = [str(n), str(results['config']['d'])]
    for c in [None] + list(results['config']['cell_sizes']):
      r = [r for r in results['collision']
           if r['n'] == n and r['cell_size'] == c]
      if not r or r[0].get('skipped'):
        row += ['-', '-']
      else:
        row += [f'{r[0]["seconds"] * 1e3:.1f}',
                f'{r[0]["memory_bytes"] / 2**20:.0f}']
    lines.append('| ' + ' | '.join(row) + ' |')
  lines += ['', '| V | optimizer | ms per step | x adam | compiled MiB |',
            '|---|---|---|---|---|']
  for r in results['train_step']:
    if r.get('skipped'):
      lines.append(f'| {r["vocab"]} | {r["optimizer"]} | skipped | | |')
      continue
    name = r['optimizer'] + (f' (C = {r["cell_size"]})'
                             if r.get('cell_size') else '')
    lines.append(f'| {r["vocab"]} | {name} | {r["seconds"] * 1e3:.0f} | '
                 f'{r["vs_adam"]:.2f} | {r["memory_bytes"] / 2**20:.0f} |')
  if 'fidelity' in results:
    lines += ['', '| weights | cells | cosine to exact | norm ratio |',
              '|---|---|---|---|']
    for r in results['fidelity']:
      lines.append(f'| {r["weights"]} | {r["cells"]} | {r["cosine"]:.3f} | '
                   f'{r["norm_ratio"]:.3f} |')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--max-exact-n', type=int, default=16384)
  parser.add_argument('--out', default=None)
  parser.add_argument('--parts', default='collision,train_step,fidelity')
  parser.add_argument('--merge', action='store_true',
                      help='Update the parts run in an existing results '
                      'JSON instead of starting a new one.')
  parser.add_argument('--report', default=None,
                      help='Only print the tables and redraw the plots of '
                      'this results JSON.')
  args = parser.parse_args(argv)
  if args.report:
    results = json.loads(pathlib.Path(args.report).read_text())
    plot(results)
    print(markdown(results))
    return results
  parts = args.parts.split(',')
  if args.quick:
    config = dict(ns=[64, 256], d=64, cell_sizes=[16], vocabs=[512],
                  d_model=32, batch=2, seq=16, train_cell=32, repeats=2,
                  fidelity_n=256, fidelity_d=32, fidelity_c=32, trials=2)
  else:
    config = dict(ns=[256, 1024, 4096, 16384], d=1024, cell_sizes=[64, 256],
                  vocabs=[4096, 16384], d_model=256, batch=8, seq=64,
                  train_cell=128, repeats=7, fidelity_n=4096, fidelity_d=256,
                  fidelity_c=256, trials=4)
  suffix = '_quick' if args.quick else ''
  out = (pathlib.Path(args.out) if args.out
         else RESULTS / f'scaling{suffix}.json')
  old = json.loads(out.read_text()) if args.merge and out.exists() else {}
  results = {
      **old,
      'machine': f'{platform.machine()} CPU, {os.cpu_count()} cores '
                 '(shared with other jobs)',
      'jax': jax.__version__, 'config': config,
  }
  t0 = time.time()
  if 'collision' in parts:
    results['collision'] = bench_collision(
        config['ns'], config['d'], config['cell_sizes'], args.max_exact_n,
        config['repeats'], budget_s=20.0)
  if 'train_step' in parts:
    results['train_step'] = bench_train_step(
        config['vocabs'], config['d_model'], config['batch'], config['seq'],
        config['train_cell'], max_exact_vocab=16384,
        repeats=config['repeats'], budget_s=60.0)
  if 'fidelity' in parts:
    results['fidelity'] = bench_fidelity(
        config['fidelity_n'], config['fidelity_d'], config['fidelity_c'],
        clusters=16, trials=config['trials'])
  results['wall_seconds'] = time.time() - t0
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  if not args.quick and 'collision' in results and 'train_step' in results:
    plot(results)
  print(f'wrote {out} in {results["wall_seconds"]:.0f} s')
  return results


if __name__ == '__main__':
  main(sys.argv[1:])
