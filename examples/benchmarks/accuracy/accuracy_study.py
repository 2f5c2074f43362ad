"""Accuracy and mechanism study: does KO beat its base optimizer?

Protocol (never selects on test): for every optimizer configuration, a grid
of learning rates (and, for KO, collision rates) is trained with ``--seeds``
seeds (the same seeds 0..S-1 for every optimizer: initialisation, batch order
and KO's key, so differences are paired). The final validation accuracy,
averaged over seeds, picks the grid point; the test accuracy of that point's
runs is then reported (mean +- std), with the paired difference to the base
optimizer compared with its seed noise (report_accuracy.py).

Every configuration trains ``len(grid) x seeds`` models in ONE jitted,
vmapped program (pure-functional training loop with ``lax.scan``), so a
whole grid costs one compilation. The condensation of every particle leaf
(mean |cos| of its neurons, effective rank) is logged along training.

Results go to ``examples/benchmarks/results/accuracy_<task>.json`` (one
record per configuration and stage, appended as they finish, so partial runs
survive); ``report_accuracy.py`` turns them into tables and plots.

``--refit`` (the ``*_paper`` tasks): after the grid point is chosen on
validation, its seeds are trained again on the whole training set (train +
validation, the 4000 examples the MNIST-1D paper trains on) and the test
accuracy of those runs is the reported one (``refit`` in the record); the
choice itself still sees only the validation split.

  PYTHONPATH=. python examples/benchmarks/accuracy/accuracy_study.py \
      --task mnist1d_mlp --groups main
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# The shared helpers (ko_examples) live in examples/, two folders up.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))

from ko_examples import data as data_lib
from ko_examples import models as models_lib
import ko_optax

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.abspath(os.path.join(HERE, '..', 'results'))


# ------------------------------------------------------------------ tasks

class Task(NamedTuple):
  name: str
  load: Any
  model: nn.Module
  steps: int
  batch: int
  evals: int
  # The main-study task whose chosen collision rates the 'paper' group
  # reuses (configurations with rates='chosen').
  origin: str = ''


# PyTorch's default kernel initialisation (kaiming_uniform with a = sqrt(5):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in))), which the MNIST-1D paper's models use.
TORCH_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def load_synthetic(seed: int = 0) -> data_lib.Dataset:
  """A generated task for machines without mnist1d / scikit-learn (GPU run):
  10 classes labelled by a random two-layer teacher on 40-d Gaussian inputs
  (3600 / 400 / 1000 examples)."""
  rng = np.random.default_rng(1234)
  x = rng.normal(size=(5000, 40)).astype(np.float32)
  h = np.tanh(x @ rng.normal(size=(40, 64)) / np.sqrt(40))
  y = np.argmax(h @ rng.normal(size=(64, 10)), axis=1).astype(np.int32)
  return data_lib.split_validation(x[:4000], y[:4000], x[4000:], y[4000:], 10,
                                   seed=seed)


def tasks() -> dict[str, Task]:
  small = nn.initializers.normal(1e-3)
  return {
      'mnist1d_mlp': Task('mnist1d_mlp', data_lib.load_mnist1d,
                          models_lib.MLP(hidden=(100, 100)), 1500, 128, 10),
      'mnist1d_cnn': Task('mnist1d_cnn', data_lib.load_mnist1d,
                          models_lib.CNN1D(), 1500, 128, 10),
      'digits_cnn': Task('digits_cnn', data_lib.load_digits,
                         models_lib.DigitsCNN(), 1000, 64, 10),
      'synthetic_mlp': Task('synthetic_mlp', load_synthetic,
                            models_lib.MLP(hidden=(100, 100)), 1500, 128, 10),
      # Condensation regime: small initialisation, where neurons condense.
      'condense_mlp': Task('condense_mlp', data_lib.load_mnist1d,
                           models_lib.MLP(hidden=(100, 100), kernel_init=small),
                           1500, 128, 10),
      # The MNIST-1D paper's setup (Greydanus 2020; the mnist1d project's
      # notebooks/train.py and models.py): its residual MLP and its CNN
      # (convolutions as patch matmuls: same function, ~7x faster on CPU) with
      # PyTorch's kernel initialisation, batch 100, 6000 steps at a constant
      # learning rate, no weight decay; with --refit the final runs train on
      # all 4000 training examples.
      'mnist1d_mlp_paper': Task(
          'mnist1d_mlp_paper', data_lib.load_mnist1d,
          models_lib.MLP(hidden=(100, 100), residual=True,
                         kernel_init=TORCH_INIT), 6000, 100, 12,
          origin='mnist1d_mlp'),
      'mnist1d_cnn_paper': Task(
          'mnist1d_cnn_paper', data_lib.load_mnist1d,
          models_lib.CNN1D(kernel_init=TORCH_INIT, patches=True), 6000,
          100, 12,
          origin='mnist1d_cnn'),
  }


# ------------------------------------------------------------- optimizers

ADAM_LRS = (1e-3, 3e-3, 1e-2)
SGD_LRS = (0.03, 0.1, 0.3)
MUON_LRS = (3e-3, 1e-2, 3e-2)
# The 'paper' group's grids (the paper itself uses Adam at 1e-2).
PAPER_ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
PAPER_SGD_LRS = (0.01, 0.03, 0.1, 0.3)


def _muon_dims(params):
  return jax.tree.map(
      lambda x: optax.contrib.MuonDimensionNumbers(
          tuple(range(x.ndim - 1)), x.ndim - 1) if x.ndim >= 2 else None,
      params)


def muon_direction():
  """Muon without learning rate (a descent direction like a gradient).

  ``optax.contrib.muon`` ends in ``scale_by_learning_rate``, which multiplies
  by ``-lr``; with ``lr = -1`` the result is the un-negated direction, usable
  as KO's advection base or scaled by ``-lr`` outside."""
  return optax.contrib.muon(-1.0, muon_weight_dimension_numbers=_muon_dims)


def make_direction(cfg: dict, rate) -> optax.GradientTransformation:
  """The optimizer of a configuration WITHOUT learning rate: its update is a
  descent direction d; the training loop applies ``-lr * d``."""
  kind = cfg['opt']
  if kind == 'adam':
    return optax.scale_by_adam()
  if kind == 'adamw':
    return optax.chain(optax.scale_by_adam(),
                       optax.add_decayed_weights(cfg.get('wd', 1e-2)))
  if kind == 'sgd':
    return optax.trace(decay=0.9)
  if kind == 'muon':
    return muon_direction()
  if kind == 'ko':
    base = cfg.get('base', 'adam')
    if base == 'muon':
      base = muon_direction()
    mask = None
    if cfg.get('last_only'):
      mask = lambda p: jax.tree_util.tree_map_with_path(
          lambda path, x: 'head' in jax.tree_util.keystr(path), p)
    rate_fn = (lambda count: rate)  # a traced rate: vmapped over the grid
    tx = ko_optax.ko(
        1.0, base=base, collision=cfg.get('collision', 'soft'),
        collision_rate=rate_fn, temperature=cfg.get('temperature', 0.0),
        key=cfg['_seed'], threshold=cfg.get('threshold', 0.0),
        include_self=cfg.get('include_self', False),
        normalization=cfg.get('normalization'), mask=mask,
        collide_on=cfg.get('collide_on', 'gradient'))
    return optax.chain(tx, optax.scale(-1.0))  # ko(1.0) ends in * -1.0
  raise ValueError(kind)


def configs(group: str) -> list[dict]:
  """Named optimizer configurations with their tuning grids."""
  soft_rates = (0.03, 0.1, 0.3)
  hard_rates = (0.1, 0.3, 1.0)
  out = []
  if group == 'main':
    out += [
        dict(name='adam', opt='adam', lrs=ADAM_LRS),
        dict(name='adamw', opt='adamw', lrs=ADAM_LRS),
        dict(name='sgdm', opt='sgd', lrs=SGD_LRS),
        dict(name='muon', opt='muon', lrs=MUON_LRS),
    ]
    for base, lrs in (('adam', ADAM_LRS), ('sgd', SGD_LRS)):
      out += [
          dict(name=f'ko_soft_{base}', opt='ko', base=base, lrs=lrs,
               rates=soft_rates),
          dict(name=f'ko_hard_{base}', opt='ko', base=base, collision='hard',
               lrs=lrs, rates=hard_rates),
      ]
    out.append(dict(name='ko_soft_muon', opt='ko', base='muon', lrs=MUON_LRS,
                    rates=(0.1,)))
  elif group == 'variants':
    for base, lrs in (('adam', ADAM_LRS),):
      out += [
          dict(name=f'ko_soft_{base}+diag', opt='ko', base=base, lrs=lrs,
               rates=soft_rates, include_self=True),
          dict(name=f'ko_soft_{base}-threshold', opt='ko', base=base, lrs=lrs,
               rates=soft_rates, threshold=-2.0),
          dict(name=f'ko_soft_{base}/mean', opt='ko', base=base, lrs=lrs,
               rates=(1.0, 3.0, 10.0), normalization='mean'),
          dict(name=f'ko_soft_{base}/norm', opt='ko', base=base, lrs=lrs,
               rates=soft_rates, normalization='norm'),
          dict(name=f'ko_soft_{base}@last', opt='ko', base=base, lrs=lrs,
               rates=soft_rates, last_only=True),
          dict(name=f'ko_soft_{base}+noise', opt='ko', base=base, lrs=lrs,
               rates=soft_rates, temperature=5e-9),
      ]
  elif group == 'velocity':
    # An open question of the method (docs/method.md): collide the base
    # optimizer's velocity (Adam's first moment, SGD's trace; kept collided
    # in the state) instead of the gradient. Same grids as the 'main' KO rows.
    for base, lrs in (('adam', ADAM_LRS), ('sgd', SGD_LRS)):
      out += [
          dict(name=f'ko_soft_{base}~velocity', opt='ko', base=base,
               lrs=lrs, rates=soft_rates, collide_on='velocity'),
          dict(name=f'ko_hard_{base}~velocity', opt='ko', base=base,
               collision='hard', lrs=lrs, rates=hard_rates,
               collide_on='velocity'),
      ]
    out.append(dict(name='ko_soft_adam/norm~velocity', opt='ko', base='adam',
                    lrs=ADAM_LRS, rates=soft_rates, normalization='norm',
                    collide_on='velocity'))
  elif group == 'paper':
    # Baselines at the MNIST-1D paper's setup, and KO on the same budget:
    # the same learning-rate grid as Adam at ONE collision rate, the rate
    # chosen for that configuration in the main study ('chosen', read from
    # the origin task's results) or ko()'s default 0.1 for soft 'norm'.
    out += [
        dict(name='adam', opt='adam', lrs=PAPER_ADAM_LRS),
        dict(name='sgdm', opt='sgd', lrs=PAPER_SGD_LRS),
        dict(name='ko_soft_adam', opt='ko', base='adam', lrs=PAPER_ADAM_LRS,
             rates='chosen'),
        dict(name='ko_hard_adam', opt='ko', base='adam', collision='hard',
             lrs=PAPER_ADAM_LRS, rates='chosen'),
        dict(name='ko_soft_adam/norm', opt='ko', base='adam',
             lrs=PAPER_ADAM_LRS, rates=(0.1,), normalization='norm'),
    ]
  elif group == 'stability':
    out += [
        dict(name='ko_soft_adam:big', opt='ko', base='adam', lrs=ADAM_LRS,
             rates=(0.5, 1.0, 2.0)),
        dict(name='ko_soft_sgd:big', opt='ko', base='sgd', lrs=SGD_LRS,
             rates=(0.5, 1.0, 2.0)),
    ]
  else:
    raise ValueError(group)
  return out


# ---------------------------------------------------------------- training

def particle_leaves(params):
  """The particle leaves (ndim >= 2) of ``params``, keyed by path."""
  return {jax.tree_util.keystr(path).replace("['params']", ''): x
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
          if x.ndim >= 2}


def condensation_of(leaf: np.ndarray) -> tuple[float, float]:
  """(mean |cos|, effective rank) of one leaf's neurons (last axis), with
  ko_optax's definitions, computed in numpy outside the training program."""
  p = leaf.reshape(-1, leaf.shape[-1]).astype(np.float64)
  m = ko_optax.condensation({'w': jnp.asarray(p, jnp.float32)})['w']
  return float(m.mean_abs_cos), float(m.effective_rank)


def build_run(task: Task, ds, cfg: dict):
  """Returns run(seed, lr, rate) -> dict of results, to be vmapped."""
  model = task.model
  n_train = ds.y_train.shape[0]
  chunk = task.steps // task.evals

  def loss_fn(params, x, y):
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def accuracy_of(params, x, y):
    return jnp.mean(jnp.argmax(model.apply(params, x), -1) == y)

  def run(seed, lr, rate, arrays):
    # The data are arguments, not closed-over constants: constants would be
    # embedded in the program and make XLA's compilation very slow.
    xtr, ytr, xva, yva, xte, yte = arrays
    key = jax.random.key(seed)
    init_key, data_key = jax.random.split(key)
    params = model.init(init_key, xtr[:2])
    c = dict(cfg, _seed=jax.random.fold_in(key, 7))
    tx = make_direction(c, rate)
    state = tx.init(params)

    def accuracy(params, x, y):
      return accuracy_of(params, x, y)

    def step(carry, k):
      params, state = carry
      idx = jax.random.randint(k, (task.batch,), 0, n_train)
      loss, grads = jax.value_and_grad(loss_fn)(params, xtr[idx], ytr[idx])
      d, state = tx.update(grads, state, params)
      params = jax.tree.map(lambda p, u: p - lr * u, params, d)
      return (params, state), loss

    def evaluate(carry, k):
      (params, state), losses = jax.lax.scan(
          step, carry, jax.random.split(k, chunk))
      # test_acc along training is logged for diagnosis only (what a
      # number picked on test would be); nothing is chosen on it.
      metrics = dict(train_loss=jnp.mean(losses),
                     val_acc=accuracy(params, xva, yva),
                     test_acc=accuracy(params, xte, yte),
                     params=particle_leaves(params))
      return (params, state), metrics

    params0 = particle_leaves(params)
    (params, state), curve = jax.lax.scan(
        evaluate, (params, state), jax.random.split(data_key, task.evals))
    return dict(curve=curve, params0=params0,
                val_acc=accuracy(params, xva, yva),
                test_acc=accuracy(params, xte, yte))

  return run


def cond_curves(out, i):
  """Condensation of run ``i`` at initialisation and every evaluation."""
  curves = {}
  for k, leaf0 in out['params0'].items():
    snaps = ([np.asarray(leaf0)[i]]
             + list(np.asarray(out['curve']['params'][k])[i]))
    vals = [condensation_of(s) for s in snaps]
    curves[k] = dict(cos=[round(v[0], 5) for v in vals],
                     erank=[round(v[1], 4) for v in vals])
  return curves


def run_grid(task, ds, cfg, seeds, lrs, rates, sequential=False,
             refit=False):
  """Trains every (lr, rate) x seed; ``refit``: ``ds``'s validation split is
  part of its training set, so no validation accuracy is recorded."""
  grid = [(s, lr, r) for lr in lrs for r in rates for s in seeds]
  s_arr = jnp.asarray([g[0] for g in grid], jnp.uint32)
  lr_arr = jnp.asarray([g[1] for g in grid], jnp.float32)
  r_arr = jnp.asarray([g[2] for g in grid], jnp.float32)
  arrays = tuple(jnp.asarray(a) for a in (
      ds.x_train, ds.y_train, ds.x_val, ds.y_val, ds.x_test, ds.y_test))
  run = build_run(task, ds, cfg)
  if sequential:
    # One run after the other (lax.map): a vmapped convolution becomes a
    # grouped convolution, which is slow on CPU.
    fn = jax.jit(lambda s, lr, r, arrays: jax.lax.map(
        lambda t: run(*t, arrays), (s, lr, r)))
  else:
    fn = jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None)))
  t0 = time.time()
  compiled = fn.lower(s_arr, lr_arr, r_arr, arrays).compile()
  compile_secs = time.time() - t0
  out = jax.device_get(compiled(s_arr, lr_arr, r_arr, arrays))
  secs = time.time() - t0
  print(f'  compile {compile_secs:.1f}s run {secs - compile_secs:.1f}s',
        flush=True)
  records = []
  pick = lambda a, i: np.round(np.asarray(a, np.float64)[i], 5).tolist()
  for i, (s, lr, r) in enumerate(grid):
    records.append(dict(
        seed=s, lr=lr, rate=r,
        val_acc=None if refit else pick(out['val_acc'], i),
        test_acc=pick(out['test_acc'], i),
        val_curve=None if refit else pick(out['curve']['val_acc'], i),
        test_curve=pick(out['curve']['test_acc'], i),
        loss_curve=pick(out['curve']['train_loss'], i),
        cond=cond_curves(out, i)))
  return records, secs


def public(cfg):
  return {k: v for k, v in cfg.items() if k not in ('lrs', 'rates')}


def best_point(records):
  """The (lr, rate) with the best mean final validation accuracy (NaN-safe)."""
  by = {}
  for r in records:
    v = r['val_acc']
    by.setdefault((r['lr'], r['rate']), []).append(
        v if np.isfinite(v) else 0.0)
  return max(by, key=lambda k: np.mean(by[k]))


def chosen_rate(origin: str, name: str) -> float:
  """The collision rate chosen on validation for configuration ``name`` in
  the main study of task ``origin`` (results/accuracy_<origin>.json)."""
  path = os.path.join(RESULTS, f'accuracy_{origin}.json')
  with open(path) as f:
    recs = {r['name']: r for r in json.load(f)}
  if name not in recs:
    raise ValueError(f'{name} has no chosen rate in {path}')
  return best_point(recs[name]['records'])[1]


def with_validation_trained(ds: data_lib.Dataset) -> data_lib.Dataset:
  """The whole training set (train + validation) as the training split; the
  validation arrays stay (unused for any choice: they are training data)."""
  x = np.concatenate([ds.x_train, ds.x_val])
  y = np.concatenate([ds.y_train, ds.y_val])
  return ds._replace(x_train=x, y_train=y)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--task', required=True, choices=sorted(tasks()))
  ap.add_argument('--groups', default='main')
  ap.add_argument('--only', default='', help='comma list of config names')
  ap.add_argument('--seeds', type=int, default=5)
  ap.add_argument('--steps', type=int, default=0)
  ap.add_argument('--out', default=RESULTS)
  ap.add_argument('--sequential', action='store_true',
                  help='lax.map over runs instead of vmap (CNNs on CPU)')
  ap.add_argument('--name-suffix', default='',
                  help='appended to every configuration name (e.g. a rerun '
                  'of the same configurations on newer code)')
  ap.add_argument('--ko-lr-from-base', action='store_true',
                  help="KO keeps its base optimizer's chosen learning rate "
                  'and tunes only the collision rate (same grid size as the '
                  'base)')
  ap.add_argument('--refit', action='store_true',
                  help='retrain the point chosen on validation on train + '
                  'validation (same seeds) and report its test accuracy')
  a = ap.parse_args()
  task = tasks()[a.task]
  if a.steps:
    task = task._replace(steps=a.steps)
  ds = (task.load(seed=0))
  path = os.path.join(a.out, f'accuracy_{a.task}.json')
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      done = {r['name']: r for r in json.load(f)}
  # Base optimizers' results in the main results folder (--ko-lr-from-base).
  main_results = {}
  main_path = os.path.join(RESULTS, f'accuracy_{a.task}.json')
  if os.path.exists(main_path):
    with open(main_path) as f:
      main_results = {r['name']: r for r in json.load(f)}
  only = set(filter(None, a.only.split(',')))
  for group in a.groups.split(','):
    for cfg in configs(group):
      if only and cfg['name'] not in only:
        continue
      cfg = dict(cfg, name=cfg['name'] + a.name_suffix)
      rates = cfg.get('rates', (0.0,))
      if rates == 'chosen':
        rates = (chosen_rate(task.origin, cfg['name']),)
        cfg = dict(cfg, rates=rates)
      if cfg['name'] in done:
        continue
      seeds = list(range(a.seeds))
      lrs = cfg['lrs']
      base = {'adam': 'adam', 'sgd': 'sgdm', 'muon': 'muon'}.get(
          cfg.get('base', 'adam'))
      base_rec = done.get(base) or main_results.get(base)
      if a.ko_lr_from_base and cfg['opt'] == 'ko' and base_rec:
        lrs = (best_point(base_rec['records'])[0],)
        cfg = dict(cfg, lrs=lrs)
      records, secs = run_grid(task, ds, cfg, seeds, lrs, rates,
                               a.sequential)
      rec = dict(name=cfg['name'], group=group, config=public(cfg),
                 task=a.task, steps=task.steps, batch=task.batch,
                 seconds=secs, records=records)
      if a.refit:
        lr, rate = best_point(records)
        rec['refit'], rec['refit_seconds'] = run_grid(
            task, with_validation_trained(ds), cfg, seeds, (lr,), (rate,),
            a.sequential, refit=True)
        rec['refit_train_size'] = int(ds.y_train.shape[0] +
                                      ds.y_val.shape[0])
      done[cfg['name']] = rec
      os.makedirs(a.out, exist_ok=True)
      with open(path + '.tmp', 'w') as f:
        json.dump(list(done.values()), f)
      os.replace(path + '.tmp', path)
      lr, rate = best_point(records)
      val = [r['val_acc'] for r in records
             if (r['lr'], r['rate']) == (lr, rate)]
      test = [r['test_acc'] for r in records
              if (r['lr'], r['rate']) == (lr, rate)]
      if a.refit:
        test = [r['test_acc'] for r in rec['refit']]
      print(f'{a.task} {cfg["name"]:26s} {len(records):3d} runs {secs:6.1f}s'
            f' best lr={lr:g} rate={rate:g} val {np.mean(val):.3f} '
            f'test{" (refit)" if a.refit else ""} '
            f'{np.mean(test):.3f}+-{np.std(test):.3f}', flush=True)


if __name__ == '__main__':
  main()
