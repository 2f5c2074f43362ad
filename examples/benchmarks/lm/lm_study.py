"""KO in its authors' regime: a byte-level GPT on the standard library's text.

The study of issue 10: an nnx GPT (pre-LayerNorm, separate q, k, v, o, up,
down kernels as nanoGPT) trained on the Python standard library's own
``.py`` files, bytes as tokens (vocabulary 256, no tokenizer), split into
train / validation / test by file (``ko_examples.gpt.read_text_splits``).
Arms, each on the same AdamW footing (global-norm clip 1.0, betas 0.9 /
0.95, weight decay 0.1 on matrices, warmup + cosine schedule):

* ``adamw``: the authors' baseline;
* ``ko_gpt``: the authors' KO recipe, :func:`ko_optax.ko_gpt` (soft
  collision with the diagonal, rate 0.1, noise 1e-4, last block only);
* ``ko_hard``: ``ko()``'s defaults (hard collision, rate 0.1) on every layer;
* ``ko_soft_norm``: soft collision, ``normalization='norm'``, every layer;
* ``ko_soft_similarity``: soft collision, ``normalization='similarity'``;
* ``muon``: ``optax.contrib.muon`` on the blocks' kernels (Adam at a tenth
  of the learning rate on embeddings and head), the peer that also fights
  condensation;
* ``ko_hard_muon``: KO's collision step as ``ko()`` takes it (hard, rate
  0.1, the default layers) on the gradient, then Muon as above: KO with
  Muon as its advection step.

Every arm runs every learning rate of one grid with the same seeds (same
initialisation and batches per seed across arms); the learning rate of an arm
is chosen on its mean final validation loss, and its test loss at that rate
is reported, in bits per byte, with paired differences against AdamW. All
(seed, learning rate) runs of an arm are one vmapped program: one compile per
arm. Condensation (effective rank and mean |cos| of every block's kernels) is
recorded at every evaluation.

  python examples/benchmarks/lm/lm_study.py --size cpu   # the study (CPU)
  python examples/benchmarks/lm/lm_study.py --size gpu   # a GPU's size
  python examples/benchmarks/lm/lm_study.py --quick      # a check

Writes ``lm_study_<tag>.json`` and pictures ``lm_curves_<tag>.png``,
``lm_condensation_<tag>.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any

# The shared helpers (ko_examples) live in examples/, two folders up.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))

from flax import nnx  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_examples import gpt
import ko_optax

RESULTS = os.path.abspath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', 'results', 'lm'))
KERNELS = ('q', 'k', 'v', 'o', 'up', 'down')
ARMS = ('adamw', 'ko_gpt', 'ko_soft_norm', 'ko_hard', 'muon',
        'ko_soft_similarity', 'ko_hard_muon')


@dataclasses.dataclass(frozen=True)
class Size:
  depth: int
  width: int
  heads: int
  context: int
  batch: int
  steps: int
  eval_every: int
  eval_windows: int      # validation windows at each evaluation
  final_windows: int     # validation and test windows at the end
  max_bytes: int


SIZES = {
    'quick': Size(1, 32, 2, 32, 8, 20, 10, 8, 16, 1_000_000),
    'cpu': Size(4, 128, 4, 128, 16, 1000, 100, 32, 256, 4_000_000),
    'gpu': Size(12, 512, 8, 256, 16, 600, 100, 32, 256, 40_000_000),
}


def _matrices(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _block_kernels(params):
  """Muon's dimension numbers: the blocks' 2-D kernels; None elsewhere."""
  def spec(path, p):
    names = ko_optax.particles.path_names(path)
    if names[0] == 'blocks' and names[-1] == 'kernel' and p.ndim == 2:
      return optax.contrib.MuonDimensionNumbers()
    return None
  return jax.tree_util.tree_map_with_path(spec, params)


def make_tx(arm: str, key: jax.Array) -> optax.GradientTransformation:
  """The arm's optimizer at learning rate 1 (the schedule scales outside).

  Every optimizer here is linear in its learning rate (the weight decay is
  decoupled and multiplied by it, as in AdamW), so running it at 1 and
  applying ``lr * schedule(t) * update`` is the same optimizer at ``lr``,
  and one compiled program trains every learning rate of the grid.
  """
  clip = optax.clip_by_global_norm(1.0)
  adamw_args = dict(b1=0.9, b2=0.95, weight_decay=0.1,
                    weight_decay_mask=_matrices)
  if arm == 'adamw':
    return optax.chain(clip, optax.adamw(1.0, b1=0.9, b2=0.95,
                                         weight_decay=0.1, mask=_matrices))
  if arm == 'ko_gpt':
    return ko_optax.ko_gpt(1.0, key=key)
  if arm == 'ko_hard':
    return optax.chain(clip, ko_optax.ko(1.0, key=key, **adamw_args))
  if arm == 'ko_soft_norm':
    return optax.chain(clip, ko_optax.ko(1.0, collision='soft', key=key,
                                         normalization='norm', **adamw_args))
  if arm == 'ko_soft_similarity':
    return optax.chain(clip, ko_optax.ko(
        1.0, collision='soft', key=key, normalization='similarity',
        **adamw_args))
  muon = lambda: optax.contrib.muon(
      1.0, adam_learning_rate=0.1, beta=0.95, weight_decay=0.1,
      weight_decay_mask=_matrices, adam_b1=0.9, adam_b2=0.95,
      adam_weight_decay=0.1, muon_weight_dimension_numbers=_block_kernels)
  if arm == 'muon':
    return optax.chain(clip, muon())
  if arm == 'ko_hard_muon':
    return optax.chain(
        clip, ko_optax.stochastic_collision(0.1, mode='hard', key=key),
        muon())
  raise ValueError(f'unknown arm {arm!r}; choose from {", ".join(ARMS)}')


def schedule(step, steps):
  """Linear warmup over 5% of the steps, cosine decay to 10% (a factor)."""
  warm = max(1, steps // 20)
  t = jnp.clip((step - warm) / max(1, steps - warm), 0.0, 1.0)
  cosine = 0.1 + 0.45 * (1 + jnp.cos(jnp.pi * t))
  return jnp.where(step < warm, (step + 1) / warm, cosine)


def windows(data, key, batch, context):
  starts = jax.random.randint(key, (batch,), 0, data.shape[0] - context - 1)
  idx = starts[:, None] + jnp.arange(context + 1)[None]
  w = data[idx].astype(jnp.int32)
  return w[:, :-1], w[:, 1:]


def fixed_windows(data: np.ndarray, n: int, context: int):
  """``n`` evenly spaced windows (deterministic, the same for every arm)."""
  starts = np.linspace(0, data.size - context - 2, n).astype(np.int64)
  idx = starts[:, None] + np.arange(context + 1)[None]
  w = data[idx].astype(np.int32)
  return jnp.asarray(w[:, :-1]), jnp.asarray(w[:, 1:])


class Study:
  """One compiled program per arm: every (seed, lr) of the grid, vmapped."""

  def __init__(self, size: Size, seeds: list[int], lrs: list[float],
               splits: dict[str, np.ndarray]):
    self.size, self.seeds, self.lrs = size, seeds, lrs
    self.cfg = gpt.GPTConfig(context=size.context, width=size.width,
                             depth=size.depth, heads=size.heads)
    model = gpt.GPT(self.cfg, rngs=nnx.Rngs(0))
    self.graphdef, _ = nnx.split(model, nnx.Param)
    self.train = jnp.asarray(splits['train'])
    self.eval_sets = {
        'val_running': fixed_windows(splits['val'], size.eval_windows,
                                     size.context),
        'val': fixed_windows(splits['val'], size.final_windows,
                             size.context),
        'test': fixed_windows(splits['test'], size.final_windows,
                              size.context)}
    grid = [(s, lr) for lr in lrs for s in seeds]
    self.grid = grid
    self.grid_seeds = jnp.asarray([g[0] for g in grid], jnp.int32)
    self.grid_lrs = jnp.asarray([g[1] for g in grid], jnp.float32)

  def init_params(self, seed):
    model = gpt.GPT(self.cfg, rngs=nnx.Rngs(jax.random.key(seed)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def loss(self, params, x, y):
    model = nnx.merge(self.graphdef, params)
    return gpt.lm_loss(model(x), y)

  def eval_loss(self, params, xs, ys, chunk):
    def body(c, xy):
      return c + self.loss(params, *xy), None
    xs = xs.reshape(-1, chunk, xs.shape[-1])
    ys = ys.reshape(-1, chunk, ys.shape[-1])
    total, _ = jax.lax.scan(body, jnp.zeros(()), (xs, ys))
    return total / xs.shape[0]

  def condensation(self, params):
    """(mean |cos|, effective rank) per block, averaged over its kernels."""
    cos, rank = [], []
    for b in range(self.size.depth):
      block = params['blocks'][b]
      kernels = {k: block[k]['kernel'] for k in KERNELS}
      cond = ko_optax.condensation(kernels, particle_axes=-1)
      cos.append(jnp.mean(jnp.stack([c.mean_abs_cos for c in cond.values()])))
      rank.append(jnp.mean(jnp.stack(
          [c.effective_rank for c in cond.values()])))
    return jnp.stack(cos), jnp.stack(rank)

  @functools.cached_property
  def init_params_runs(self):
    """Compiled ``seeds -> params``, vmapped: one compile for every arm."""
    return jax.jit(jax.vmap(self.init_params))

  @functools.cached_property
  def evaluate(self):
    """Compiled ``(params, xs, ys) -> loss`` per run, shared by the arms."""
    def evaluate(params, xs, ys):
      return self.eval_loss(params, xs, ys, chunk=min(8, xs.shape[0]))
    return jax.jit(jax.vmap(evaluate, in_axes=(0, None, None)))

  def programs(self, arm: str, chunk: int | None = None):
    """Compiled ``(init, train_chunk)`` of ``arm``, vmapped over runs.

    ``init(seeds, lrs)`` makes the runs (parameters, optimizer state, rate,
    data key); ``train_chunk`` takes ``chunk`` steps (default:
    ``eval_every``) and returns the new runs, their mean training loss over
    the chunk, their validation loss on the running windows and the
    condensation of every block.
    """
    size = self.size
    chunk = chunk or size.eval_every

    def init_run(params, seed, lr):
      tx = make_tx(arm, jax.random.key(seed + 1000))
      return dict(params=params, opt=tx.init(params), lr=lr,
                  data_key=jax.random.key(seed), step=jnp.zeros((), jnp.int32))

    init_runs = jax.jit(jax.vmap(init_run))

    def init(seeds, lrs):
      return init_runs(self.init_params_runs(seeds), seeds, lrs)

    def train_chunk(run):
      tx = make_tx(arm, jax.random.key(0))   # update reads keys from state

      def step(run, _):
        k = jax.random.fold_in(run['data_key'], run['step'])
        x, y = windows(self.train, k, size.batch, size.context)
        loss, grads = jax.value_and_grad(self.loss)(run['params'], x, y)
        updates, opt = tx.update(grads, run['opt'], run['params'])
        scale = run['lr'] * schedule(run['step'], size.steps)
        params = jax.tree.map(lambda p, u: p + scale * u, run['params'],
                              updates)
        return dict(run, params=params, opt=opt,
                    step=run['step'] + 1), loss

      run, losses = jax.lax.scan(step, run, None, length=chunk)
      xs, ys = self.eval_sets['val_running']
      val = self.eval_loss(run['params'], xs, ys, chunk=min(8, xs.shape[0]))
      return run, jnp.mean(losses), val

    def train_and_observe(runs):
      runs, losses, val = jax.vmap(train_chunk)(runs)
      # One run at a time (lax.map, not vmap): jaxlib's CPU SVD splits a
      # batch over XLA's thread pool, and two batched SVDs running at once
      # can deadlock on a 2-core machine.
      cos, rank = jax.lax.map(self.condensation, runs['params'])
      return runs, losses, val, cos, rank

    return init, jax.jit(train_and_observe, donate_argnums=0)

  def final_loss(self, run, which: str) -> np.ndarray:
    """Mean loss of every run on the final ``which`` windows, evaluated in
    pieces of the running evaluation's size (one compile for all arms)."""
    xs, ys = self.eval_sets[which]
    n = self.size.eval_windows
    pieces = [np.asarray(self.evaluate(run['params'], xs[i:i + n],
                                       ys[i:i + n]))
              for i in range(0, xs.shape[0] - n + 1, n)]
    return np.mean(pieces, axis=0)

  def run_arm(self, arm: str) -> dict[str, Any]:
    size = self.size
    t0 = time.time()
    init, train_chunk = self.programs(arm)
    run = init(self.grid_seeds, self.grid_lrs)
    chunks = size.steps // size.eval_every
    curves: dict[str, list] = {'step': [], 'train': [], 'val': [],
                               'cos': [], 'rank': []}
    compile_s = None
    for c in range(chunks):
      t1 = time.time()
      run, train_loss, val, cos, rank = train_chunk(run)
      train_loss = np.asarray(train_loss)
      if compile_s is None:
        compile_s = time.time() - t1
      curves['step'].append((c + 1) * size.eval_every)
      curves['train'].append(train_loss.tolist())
      curves['val'].append(np.asarray(val).tolist())
      curves['cos'].append(np.asarray(cos).tolist())
      curves['rank'].append(np.asarray(rank).tolist())
      if not np.all(np.isfinite(train_loss)):
        print(f'  {arm}: non-finite training loss at step '
              f'{curves["step"][-1]} for some runs', flush=True)
    val = self.final_loss(run, 'val')
    test = self.final_loss(run, 'test')
    return dict(arm=arm, seeds=[g[0] for g in self.grid],
                lrs=[g[1] for g in self.grid], final_val=val.tolist(),
                final_test=test.tolist(), curves=curves,
                wall_s=time.time() - t0, first_chunk_s=compile_s)


def step_time(study: Study, arm: str, repeats: int) -> float:
  """Seconds per training step of one run (not vmapped), after compiling."""
  init, train_chunk = study.programs(arm, chunk=1)
  run = init(jnp.zeros(1, jnp.int32), jnp.full(1, 1e-3, jnp.float32))
  run, loss, *_ = train_chunk(run)
  jax.block_until_ready(loss)
  t0 = time.perf_counter()
  for _ in range(repeats):
    run, loss, *_ = train_chunk(run)
  jax.block_until_ready(loss)
  return (time.perf_counter() - t0) / repeats


def _runs_at(r: dict[str, Any], lr: float, seeds: list[int]) -> list[int]:
  """Indices of an arm's runs at ``lr``, in the order of ``seeds``."""
  where = {(s, x): i for i, (s, x) in enumerate(zip(r['seeds'], r['lrs']))}
  return [where[(s, lr)] for s in seeds if (s, lr) in where]


def summarize(results: dict[str, dict], seeds: list[int]) -> dict[str, Any]:
  """Chooses each arm's learning rate on validation; pairs test with AdamW.

  Each arm's runs are ``(seed, lr)`` pairs (``r['seeds']``, ``r['lrs']``);
  arms may have different grids (merged runs). A rate is a candidate when
  every seed ran at it and ended finite; the one with the lowest mean final
  validation loss is chosen. Test losses at that rate are paired by seed
  with AdamW's at its own chosen rate.
  """
  table = {}
  for arm, r in results.items():
    val, test = np.asarray(r['final_val']), np.asarray(r['final_test'])
    by_lr = {}
    for lr in sorted(set(r['lrs'])):
      idx = _runs_at(r, lr, seeds)
      v = val[idx]
      ok = len(idx) == len(seeds) and bool(np.isfinite(v).all())
      by_lr[lr] = (float(v.mean()) if ok else float('inf'), idx)
    best = min(by_lr, key=lambda x: by_lr[x][0])
    idx = by_lr[best][1]
    table[arm] = dict(lr=best, val_by_lr={f'{k:g}': v for k, (v, _) in
                                          by_lr.items()},
                      val=val[idx].tolist(), test=test[idx].tolist(),
                      runs=idx)
  if 'adamw' in table:
    base = np.asarray(table['adamw']['test'])
    base_val = np.asarray(table['adamw']['val'])
    for row in table.values():
      if len(row['test']) == len(base):
        row['test_minus_adamw'] = (np.asarray(row['test']) - base).tolist()
        row['val_minus_adamw'] = (np.asarray(row['val']) - base_val).tolist()
  return table


def merge(paths: list[str]) -> dict[str, Any]:
  """One record from several runs of the study on the same data and size.

  Runs of the same arm are concatenated (a learning rate run twice keeps
  the first); the data, size and seeds must agree.
  """
  records = []
  for path in paths:
    with open(path) as f:
      records.append(json.load(f))
  first = records[0]
  for rec, path in zip(records[1:], paths[1:]):
    for key in ('size', 'seeds', 'data'):
      if rec[key] != first[key]:
        raise ValueError(f"{path}: its {key} differs from {paths[0]}'s")
  runs: dict[str, Any] = {}
  step_s: dict[str, float] = {}
  for rec in records:
    step_s.update(rec.get('step_s', {}))
    for arm, r in rec['runs'].items():
      if arm not in runs:
        runs[arm] = json.loads(json.dumps(r))
        continue
      m = runs[arm]
      have = set(zip(m['seeds'], m['lrs']))
      keep = [i for i, sl in enumerate(zip(r['seeds'], r['lrs']))
              if sl not in have]
      for key in ('seeds', 'lrs', 'final_val', 'final_test'):
        m[key] += [r[key][i] for i in keep]
      for key in ('train', 'val', 'cos', 'rank'):
        m['curves'][key] = [a + [b[i] for i in keep] for a, b in
                            zip(m['curves'][key], r['curves'][key])]
      m['wall_s'] += r['wall_s']
  arms = [a for a in ARMS if a in runs] + [a for a in runs if a not in ARMS]
  runs = {a: runs[a] for a in arms}
  merged = dict(first, runs=runs, arms=arms, step_s=step_s,
                lrs=sorted({x for r in runs.values() for x in r['lrs']}),
                merged_from=[name for rec, p in zip(records, paths)
                             for name in rec.get('merged_from',
                                                 [os.path.basename(p)])])
  merged['table'] = summarize(runs, first['seeds'])
  return merged


def print_table(table, step_s):
  print(f'\n{"arm":20s} {"lr":>7s} {"val bpb":>15s} {"test bpb":>15s} '
        f'{"test - adamw (paired)":>22s} {"step x adamw":>12s}')
  base = step_s.get('adamw')
  for arm, row in table.items():
    test, val = np.asarray(row['test']), np.asarray(row['val'])
    d = np.asarray(row.get('test_minus_adamw', [np.nan]))
    ratio = (f'{step_s[arm] / base:12.2f}' if base and arm in step_s
             else f'{"":12s}')
    print(f'{arm:20s} {row["lr"]:7.0e} {val.mean():7.4f} +- {val.std():.4f} '
          f'{test.mean():7.4f} +- {test.std():.4f} '
          f'{d.mean():+9.4f} +- {d.std():.4f}     {ratio}')


def plot(results, table, seeds, out, tag):
  """Learning curves and condensation of each arm at its chosen rate."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  for arm, r in results.items():
    sl = table[arm]['runs']
    steps = np.asarray(r['curves']['step'])
    for i, key in enumerate(('train', 'val')):
      y = np.asarray(r['curves'][key])[:, sl]
      m, s = y.mean(1), y.std(1)
      ax[i].plot(steps, m, label=f'{arm} (lr {table[arm]["lr"]:.0e})')
      ax[i].fill_between(steps, m - s, m + s, alpha=0.2)
  for i, key in enumerate(('train', 'validation')):
    ax[i].set_xlabel('step')
    ax[i].set_ylabel(f'{key} loss (bits per byte)')
    ax[i].set_title(f'{key}: mean +- std over {len(seeds)} seeds')
  for i, key in enumerate(('train', 'val')):
    lo = min(np.nanmin(np.asarray(r['curves'][key])) for r in results.values())
    ax[i].set_ylim(lo - 0.05, lo + 1.0)
  ax[1].legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(out, f'lm_curves_{tag}.png'))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  depth = len(next(iter(results.values()))['curves']['cos'][0][0])
  fig, ax = plt.subplots(2, depth, figsize=(3.2 * depth, 5.5), squeeze=False)
  for arm, r in results.items():
    sl = table[arm]['runs']
    steps = np.asarray(r['curves']['step'])
    for row, key in enumerate(('rank', 'cos')):
      y = np.asarray(r['curves'][key])[:, sl, :].mean(1)
      for blk in range(depth):
        ax[row, blk].plot(steps, y[:, blk], label=arm)
  for blk in range(depth):
    ax[0, blk].set_title(f'block {blk}')
    ax[1, blk].set_xlabel('step')
  ax[0, 0].set_ylabel('effective rank (mean of kernels)')
  ax[1, 0].set_ylabel('mean |cos| between neurons')
  ax[0, -1].legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(out, f'lm_condensation_{tag}.png'))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--size', choices=sorted(SIZES), default='cpu')
  p.add_argument('--quick', action='store_true', help='--size quick (one '
                 "block), 2 seeds, 2 learning rates, AdamW and the authors' "
                 'recipe: a check that runs in seconds')
  p.add_argument('--arms', default=','.join(ARMS))
  p.add_argument('--seeds', type=int, default=5)
  p.add_argument('--lrs', default='1e-3,3e-3,1e-2,3e-2,1e-1')
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--step-repeats', type=int, default=20,
                 help='steps timed per arm for the cost column (0: skip)')
  p.add_argument('--out', default=RESULTS)
  p.add_argument('--tag', default=None)
  p.add_argument('--no-plots', action='store_true')
  p.add_argument('--max-minutes', type=float, default=None,
                 help='start no new arm after this many minutes (the JSON '
                 'is rewritten after every arm, so a cut run keeps its arms)')
  p.add_argument('--step-only', action='store_true',
                 help='time one training step of one run per arm (no '
                 'study): writes lm_steps_<tag>.json')
  p.add_argument('--merge', nargs='+', metavar='JSON', default=None,
                 help='merge these study records (same data, size and '
                 'seeds) into lm_study_<tag>.json with its table and '
                 'pictures, training nothing')
  args = p.parse_args(argv)
  if args.merge:
    record = merge(args.merge)
    tag = args.tag or 'merged'
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f'lm_study_{tag}.json')
    with open(path, 'w') as f:
      json.dump(record, f)
    print(f'merged {len(args.merge)} records into {path}; '
          f'data {record["data"]}')
    print_table(record['table'], record['step_s'])
    if not args.no_plots:
      for pic in plot(record['runs'], record['table'], record['seeds'],
                      args.out, tag):
        print(f'wrote {pic}')
    return record
  if args.quick:
    args.size, args.seeds = 'quick', 2
    if args.lrs == p.get_default('lrs'):
      args.lrs = '3e-3,1e-2'
    if args.arms == ','.join(ARMS):
      args.arms = 'adamw,ko_gpt'
    args.step_repeats = min(args.step_repeats, 2)
  size = SIZES[args.size]
  if args.steps:
    size = dataclasses.replace(size, steps=args.steps)
  tag = args.tag or args.size
  arms = args.arms.split(',')
  for arm in arms:
    make_tx(arm, jax.random.key(0))   # unknown names fail before training
  seeds = list(range(args.seeds))
  lrs = [float(x) for x in args.lrs.split(',')]
  splits, info = gpt.read_text_splits(gpt.stdlib_dir(),
                                      max_bytes=size.max_bytes)
  print(f'devices: {jax.devices()}')
  print(f'data: {info}')
  print(f'size: {size}; {len(seeds)} seeds x {len(lrs)} learning rates '
        f'{lrs}; arms {arms}', flush=True)
  study = Study(size, seeds, lrs, splits)
  os.makedirs(args.out, exist_ok=True)
  if args.step_only:
    step_s = {}
    for arm in arms:
      step_s[arm] = step_time(study, arm, max(args.step_repeats, 1))
      print(f'{arm:20s} {1e3 * step_s[arm]:8.1f} ms/step  '
            f'{step_s[arm] / step_s[arms[0]]:5.2f}x {arms[0]}', flush=True)
    path = os.path.join(args.out, f'lm_steps_{tag}.json')
    with open(path, 'w') as f:
      json.dump(dict(size=dataclasses.asdict(size), step_s=step_s,
                     repeats=args.step_repeats,
                     devices=[str(d) for d in jax.devices()],
                     jax=jax.__version__), f)
    print(f'wrote {path}')
    return dict(step_s=step_s)
  path = os.path.join(args.out, f'lm_study_{tag}.json')
  results: dict[str, Any] = {}
  step_s: dict[str, float] = {}
  record: dict[str, Any] = {}
  started = time.time()

  def save():
    table = summarize(results, seeds)
    record.update(size=dataclasses.asdict(size), seeds=seeds, lrs=lrs,
                  data=info, devices=[str(d) for d in jax.devices()],
                  arms=list(results), table=table, step_s=step_s,
                  runs=results, jax=jax.__version__, optax=optax.__version__)
    with open(path, 'w') as f:
      json.dump(record, f)
    return table

  for arm in arms:
    if args.max_minutes and time.time() - started > 60 * args.max_minutes:
      print(f'time budget spent: {arm} and later arms not run', flush=True)
      break
    r = study.run_arm(arm)
    results[arm] = r
    if args.step_repeats:
      step_s[arm] = step_time(study, arm, args.step_repeats)
    val = np.asarray(r['final_val']).reshape(len(lrs), len(seeds))
    print(f'{arm:20s} {r["wall_s"]:6.0f} s (first chunk, with compile: '
          f'{r["first_chunk_s"]:.0f} s); val bpb by lr: '
          + ', '.join(f'{lr:.0e}: {v:.4f}' for lr, v in zip(lrs, val.mean(1)))
          + (f'; {1e3 * step_s[arm]:.1f} ms/step' if arm in step_s else ''),
          flush=True)
    save()
  table = save()
  print_table(table, step_s)
  print(f'wrote {path}')
  if not args.no_plots and results:
    for pic in plot(results, table, seeds, args.out, tag):
      print(f'wrote {pic}')
  return record


if __name__ == '__main__':
  main()
