"""A compact, fast training loop for comparing optimizers on small models.

All seeds train at once: the model is initialised once per seed and one
jitted function runs ``chunk`` steps (a ``lax.scan``) for every seed
(``jax.vmap``). Between chunks the loop evaluates test / validation
accuracy, the full training loss and the condensation of every hidden layer
(also jitted and vmapped), so learning curves cost a handful of dispatches.

Example:
  >>> from ko_examples import data, models, training
  >>> ds = data.load_mnist1d()
  >>> tx = training.make_optimizer('ko_soft', 1e-2)
  >>> run = training.train(models.MLP(), tx, ds, seeds=(0, 1), steps=200)
  >>> run.history['test_acc'].shape    # (evaluations, seeds)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ko_optax

OPTIMIZERS = ('ko_soft', 'ko_hard', 'adam', 'sgd')
LABELS = {'ko_soft': 'KO-soft (Adam)', 'ko_hard': 'KO-hard (Adam)',
          'adam': 'Adam', 'sgd': 'SGD (momentum 0.9)'}


def make_optimizer(name: str, learning_rate: float, *,
                   collision_rate: float = 0.1, momentum: float = 0.9,
                   key: int = 0) -> optax.GradientTransformation:
  """One of the compared optimizers.

  Args:
    name: ``'ko_soft'`` / ``'ko_hard'`` (KO on Adam with soft / hard
      collisions), ``'adam'`` or ``'sgd'`` (with momentum).
    learning_rate: the step size.
    collision_rate: KO's collision coefficient gamma_c.
    momentum: SGD's momentum.
    key: KO's seed.

  Returns:
    An optax transformation.
  """
  if name == 'ko_soft':
    return ko_optax.ko(learning_rate, collision='soft',
                       collision_rate=collision_rate, key=key)
  if name == 'ko_hard':
    return ko_optax.ko(learning_rate, collision='hard',
                       collision_rate=collision_rate, key=key)
  if name == 'adam':
    return optax.adam(learning_rate)
  if name == 'sgd':
    return optax.sgd(learning_rate, momentum=momentum)
  raise ValueError(f'Unknown optimizer {name!r}; choose from {OPTIMIZERS}.')


def hidden_leaves(params: Any) -> dict[str, jax.Array]:
  """The particle leaves (kernels, ndim >= 2) of the hidden layers.

  Every kernel except the last one (the classification head), keyed by its
  path, e.g. ``'params/hidden_0/kernel'``.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  named = [(jax.tree_util.keystr(path, simple=True, separator='/'), leaf)
           for path, leaf in flat if jnp.ndim(leaf) >= 2]
  named = [(n, leaf) for n, leaf in named if 'head' not in n] or named
  return dict(named)


def condensation_metrics(params: Any) -> dict[str, jax.Array]:
  """Flat, jit-friendly condensation metrics of the hidden layers.

  Returns:
    ``{'<path>/mean_abs_cos': scalar, '<path>/effective_rank': scalar}`` for
    every hidden kernel (see :func:`ko_optax.condensation`).
  """
  return ko_optax.condensation_metrics(hidden_leaves(params))


@dataclasses.dataclass
class Run:
  """The result of :func:`train` for one optimizer over several seeds.

  Attributes:
    steps: steps at which ``history`` was recorded, shape (T,).
    history: name -> array (T, seeds): ``test_acc``, ``val_acc``,
      ``test_loss``, ``train_loss`` (full training set) and the
      condensation metrics of :func:`condensation_metrics`.
    params: final parameters, stacked over seeds.
    seconds_per_step: median wall time of one step (all seeds together,
      compilation excluded).
    compile_seconds: time of the first chunk (compilation included).
  """
  steps: np.ndarray
  history: dict[str, np.ndarray]
  params: Any
  seconds_per_step: float
  compile_seconds: float


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def batch_indices(num_train: int, seeds: Sequence[int], steps: int,
                  batch_size: int) -> np.ndarray:
  """Shuffled minibatch indices, array (seeds, steps, batch_size).

  Every seed draws its own epochs without replacement; the same seed gives
  the same order whichever optimizer trains.
  """
  out = np.empty((len(seeds), steps, batch_size), np.int32)
  per_epoch = num_train // batch_size
  for s, seed in enumerate(seeds):
    rng = np.random.default_rng(10_000 + seed)
    rows = []
    while len(rows) < steps:
      perm = rng.permutation(num_train)[:per_epoch * batch_size]
      rows.extend(perm.reshape(per_epoch, batch_size))
    out[s] = np.stack(rows[:steps])
  return out


@functools.partial(jax.jit, static_argnums=0)
def _init(model, keys, x):
  return jax.vmap(lambda k: model.init(k, x))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(model, params, arrays):
  """Metrics of every seed's params; compiled once per model and data shape."""

  def one(p):
    out = {'train_loss': cross_entropy(model.apply(p, arrays['x_train']),
                                       arrays['y_train'])}
    for name in ('test', 'val'):
      logits = model.apply(p, arrays[f'x_{name}'])
      y = arrays[f'y_{name}']
      out[f'{name}_acc'] = jnp.mean(jnp.argmax(logits, -1) == y)
      out[f'{name}_loss'] = cross_entropy(logits, y)
    out.update(condensation_metrics(p))
    return out

  return jax.vmap(one)(params)


def train(model, tx: optax.GradientTransformation, dataset, *,
          seeds: Sequence[int] = (0, 1, 2), steps: int = 1000,
          batch_size: int = 100, eval_every: int = 100,
          progress: Callable[[int], Any] | None = None) -> Run:
  """Trains ``model`` with ``tx`` for every seed at once.

  Args:
    model: a ``flax.linen`` module without mutable state.
    tx: the optimizer.
    dataset: a :class:`ko_examples.data.Dataset`.
    seeds: one run per seed (initialisation and data order).
    steps: optimizer steps (rounded up to a multiple of ``eval_every``).
    batch_size: examples per step.
    eval_every: steps between evaluations.
    progress: called with the number of steps just done, after each chunk.

  Returns:
    A :class:`Run`.
  """
  eval_every = max(1, min(eval_every, steps))
  chunks = -(-steps // eval_every)
  arrays = {k: jnp.asarray(getattr(dataset, k)) for k in (
      'x_train', 'y_train', 'x_val', 'y_val', 'x_test', 'y_test')}
  x_train, y_train = arrays['x_train'], arrays['y_train']
  idx = batch_indices(len(dataset.y_train), seeds, chunks * eval_every,
                      batch_size).reshape(len(seeds), chunks, eval_every,
                                          batch_size)
  keys = jnp.stack([jax.random.key(s) for s in seeds])
  params = _init(model, keys, x_train[:1])
  # Every seed gets its own KO key stream (collisions, noise).
  opt_state = jax.jit(jax.vmap(
      lambda p, s: ko_optax.fold_in_keys(tx.init(p), s)))(
          params, jnp.asarray(seeds))

  def loss_fn(p, x, y):
    return cross_entropy(model.apply(p, x), y)

  def step(carry, batch):
    p, s = carry
    grads = jax.grad(loss_fn)(p, x_train[batch], y_train[batch])
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), None

  @jax.jit
  @jax.vmap
  def run_chunk(p, s, batches):
    (p, s), _ = jax.lax.scan(step, (p, s), batches)
    return p, s

  evaluate = lambda p: _evaluate(model, p, arrays)

  records = [jax.device_get(evaluate(params))]
  times = []
  compile_seconds = 0.0
  for c in range(chunks):
    start = time.perf_counter()
    params, opt_state = run_chunk(params, opt_state, jnp.asarray(idx[:, c]))
    jax.block_until_ready(params)
    elapsed = time.perf_counter() - start
    if c == 0:
      compile_seconds = elapsed
    else:
      times.append(elapsed)
    records.append(jax.device_get(evaluate(params)))
    if progress is not None:
      progress(eval_every)
  if not times:  # one chunk only: time a second run of it (compiled now)
    start = time.perf_counter()
    jax.block_until_ready(run_chunk(params, opt_state, jnp.asarray(idx[:, 0])))
    times.append(time.perf_counter() - start)
  history = {k: np.stack([np.asarray(r[k]) for r in records])
             for k in records[0]}
  return Run(steps=np.arange(chunks + 1) * eval_every, history=history,
             params=params,
             seconds_per_step=float(np.median(times)) / eval_every,
             compile_seconds=compile_seconds)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, x):
  return model.apply(params, x)


def accuracy(model, params, x, y, *, batch_size: int = 500) -> float:
  """Accuracy of ``model`` on ``(x, y)``, evaluated in batches.

  The last partial batch is padded, so one compilation serves every split.
  """
  correct = 0
  batch_size = min(batch_size, len(y))
  for start in range(0, len(y), batch_size):
    xb = np.asarray(x[start:start + batch_size])
    pad = batch_size - len(xb)
    if pad:
      xb = np.concatenate([xb, np.repeat(xb[:1], pad, axis=0)])
    logits = _apply(model, params, jnp.asarray(xb))[:batch_size - pad]
    correct += int(jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(
        y[start:start + batch_size])))
  return correct / max(len(y), 1)


def fit(model, tx: optax.GradientTransformation, dataset, *, steps: int,
        batch_size: int = 64, seed: int = 0, log_every: int = 0,
        log: Callable[[str], Any] = print):
  """A plain single-seed training loop (for data on disk, any size).

  Args:
    model: a ``flax.linen`` module without mutable state.
    tx: the optimizer.
    dataset: a :class:`ko_examples.data.Dataset`.
    steps: optimizer steps.
    batch_size: examples per step.
    seed: initialisation and data-order seed.
    log_every: print the loss every this many steps (0: never).
    log: the printing function.

  Returns:
    ``(params, losses)``: the final params and the per-step training losses.
  """
  from ko_examples import data as data_lib  # pylint: disable=g-import-not-at-top
  params = jax.jit(model.init)(jax.random.key(seed),
                               jnp.asarray(dataset.x_train[:1]))
  opt_state = jax.jit(tx.init)(params)

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(
        lambda q: cross_entropy(model.apply(q, x), y))(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  stream = data_lib.batches(dataset.x_train, dataset.y_train, batch_size,
                            seed=seed)
  losses = []
  for i in range(steps):
    x, y = next(stream)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(x),
                                   jnp.asarray(y))
    losses.append(float(loss))
    if log_every and (i % log_every == 0 or i == steps - 1):
      log(f'step {i:5d}  loss {losses[-1]:.4f}')
  return params, losses


def fit_each(model, dataset, optimizers: Sequence[str], *, learning_rate: float,
             collision_rate: float, steps: int, batch_size: int,
             log: Callable[[str], Any] = print) -> dict[str, dict[str, float]]:
  """Trains ``model`` once per optimizer with :func:`fit` and scores it.

  Args:
    model: a ``flax.linen`` module without mutable state.
    dataset: a :class:`ko_examples.data.Dataset`.
    optimizers: names for :func:`make_optimizer`.
    learning_rate, collision_rate: passed to :func:`make_optimizer`.
    steps, batch_size: passed to :func:`fit`.
    log: where progress lines go.

  Returns:
    ``{name: {'val_acc', 'test_acc', 'final_loss'}}``.
  """
  results = {}
  for name in optimizers:
    tx = make_optimizer(name, learning_rate, collision_rate=collision_rate)
    params, losses = fit(model, tx, dataset, steps=steps,
                         batch_size=batch_size, log_every=max(1, steps // 5),
                         log=log)
    val = accuracy(model, params, dataset.x_val, dataset.y_val)
    test = accuracy(model, params, dataset.x_test, dataset.y_test)
    results[name] = {'val_acc': val, 'test_acc': test,
                     'final_loss': losses[-1]}
    log(f'{LABELS.get(name, name)}: val accuracy {val:.3f}  '
        f'test accuracy {test:.3f}')
  return results
