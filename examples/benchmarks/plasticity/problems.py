"""The continual-learning problems of the plasticity study, as jitted programs.

* Online Permuted MNIST (Dohare et al. 2024): task ``t`` is a fixed random
  permutation of the pixels; its examples are seen once, in minibatches;
  online accuracy is measured on each minibatch before the step that
  learns from it; at the end of the task the network is scored on held-out
  images under the same permutation.
* Slowly-changing regression (their bit-flipping problem): 20 input bits,
  the first 15 change slowly (one flips every ``flip_after`` examples), the
  last 5 are random per example; the target is a fixed random network of
  100 linear threshold units with +-1 weights (beta = 0.7); the learner
  sees each example once (batch 1) and its squared error is logged.

Each program runs one arm for a batch of ``(seed, lr)`` pairs under
``jax.vmap``, ``lax.scan`` over tasks and steps; the task stream depends on
the seed only, so every arm sees the same stream per seed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import learners
import optax

from ko_optax import diagnostics


def _hidden_metrics(params, hidden):
  """Dead units, representation rank, weight size and condensation per layer."""
  out = {}
  for i, h in enumerate(hidden):
    kernel = params['layers'][i]['kernel']
    out[f'dead_{i}'] = jnp.mean(jnp.all(h == 0, axis=0))
    out[f'rep_rank_{i}'] = diagnostics.effective_rank(h)
    out[f'weight_rank_{i}'] = diagnostics.effective_rank(kernel)
    out[f'mean_abs_cos_{i}'] = diagnostics.mean_abs_cos(kernel)
  leaves = [layer['kernel'] for layer in params['layers'].values()]
  out['weight_mag'] = sum(jnp.sum(jnp.abs(w)) for w in leaves) / sum(
      w.size for w in leaves)
  return out


def _train_step(net, tx, arm, cbp_cfg):
  """One minibatch: online score, gradient step, continual backprop."""
  def loss_fn(params, x, y):
    logits, hidden = net.apply(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, hidden)

  def step(carry, batch):
    params, opt_state, cbp_state = carry
    x, y = batch
    (loss, (logits, hidden)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, x, y)
    correct = jnp.mean(jnp.argmax(logits, -1) == y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if arm['kind'] == 'cbp':
      params, opt_state, cbp_state = learners.cbp_step(
          params, opt_state, cbp_state, hidden, net.kernel_init, cbp_cfg)
    return (params, opt_state, cbp_state), (correct, loss)
  return step


def permuted_mnist_program(net, arm: dict[str, Any], data: dict[str, Any],
                           cfg: dict[str, Any]):
  """A jittable ``run(seeds, lrs) -> per-task metrics`` for one arm.

  Args:
    net: a :class:`learners.Network`.
    arm: the arm's description (see ``plasticity_study.ARMS``).
    data: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (jnp arrays).
    cfg: ``tasks``, ``examples`` per task, ``batch``, ``test`` examples.

  Returns:
    A function of int32 ``seeds`` and float32 ``lrs`` (same length) giving
    a dict of ``(len(seeds), tasks)`` arrays.
  """
  steps = cfg['examples'] // cfg['batch']
  n_pool, n_pixels = data['x_train'].shape
  x_probe = data['x_test'][:cfg['test']]
  y_probe = data['y_test'][:cfg['test']]
  cbp_cfg = arm.get('cbp', {})

  def start(seed, lr):
    params = net.init(jax.random.split(jax.random.key(seed))[0])
    tx = learners.make_optimizer(arm, lr, seed)
    return params, tx.init(params), learners.cbp_init(params, seed + 1)

  def stream_task(seed, t):
    """Task ``t`` of seed ``seed``'s stream: its permutation and examples."""
    key_stream = jax.random.split(jax.random.key(seed))[1]
    key_perm, key_pick = jax.random.split(jax.random.fold_in(key_stream, t))
    perm = jax.random.permutation(key_perm, n_pixels)
    picks = jax.random.permutation(key_pick, n_pool)[:steps * cfg['batch']]
    return perm, picks.reshape(steps, cfg['batch'])

  def learn(carry, seed, lr, t):
    perm, picks = stream_task(seed, t)
    step = _train_step(net, learners.make_optimizer(arm, lr, seed), arm,
                       cbp_cfg)
    xs = data['x_train'][picks][..., perm]
    carry, (correct, loss) = jax.lax.scan(step, carry,
                                          (xs, data['y_train'][picks]))
    return carry, jnp.mean(correct), jnp.mean(loss)

  def score(args):
    params, seed, t = args
    perm, _ = stream_task(seed, t)
    logits, hidden = net.apply(params, x_probe[:, perm])
    metrics = _hidden_metrics(params, hidden)
    metrics['test_acc'] = jnp.mean(jnp.argmax(logits, -1) == y_probe)
    return metrics

  def run(seeds, lrs):
    def task(carry, t):
      carry, acc, loss = jax.vmap(learn, in_axes=(0, 0, 0, None))(
          carry, seeds, lrs, t)
      # One run at a time (lax.map, not vmap): batched CPU SVDs running at
      # once can deadlock XLA's thread pool on a 2-core machine.
      metrics = jax.lax.map(score, (carry[0], seeds,
                                    jnp.full(seeds.shape, t)))
      metrics.update(online_acc=acc, online_loss=loss)
      return carry, metrics

    carry = jax.vmap(start)(seeds, lrs)
    _, metrics = jax.lax.scan(task, carry, jnp.arange(cfg['tasks']))
    return {k: jnp.moveaxis(v, 0, 1) for k, v in metrics.items()}
  return run


def _target_network(key, n_inputs: int, n_features: int, beta: float):
  """Dohare's fixed LTU network: +-1 weights, per-unit thresholds."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  sign = lambda k, s: jax.random.bernoulli(k, 0.5, s).astype(jnp.float32
                                                            ) * 2 - 1
  w1, b1 = sign(k1, (n_inputs, n_features)), sign(k2, (n_features,))
  w2, b2 = sign(k3, (n_features,)), sign(k4, ())
  # S counts the -1 input weights, so beta sets the share of matching bits.
  s = (n_inputs - jnp.sum(w1, axis=0) + b1) / 2
  tau = beta * (n_inputs + 1) - s

  def predict(x):
    features = (x @ w1 + b1 > tau).astype(jnp.float32)
    return features @ w2 + b2
  return predict


def regression_program(net, arm: dict[str, Any], cfg: dict[str, Any]):
  """A jittable ``run(seeds, lrs) -> mean squared error per bin``.

  ``cfg``: ``flips`` (number of changes), ``flip_after`` (examples between
  changes), ``bin`` (examples per logged bin, divides ``flip_after``),
  ``inputs``, ``flipping``, ``target_features``, ``beta``.
  """
  n_in, n_flip = cfg['inputs'], cfg['flipping']
  per_bin = cfg['bin']
  bins_per_flip = cfg['flip_after'] // per_bin
  cbp_cfg = arm.get('cbp', {})

  def one(seed, lr):
    key_init, key_target, key_stream, key_bits = jax.random.split(
        jax.random.key(seed), 4)
    target = _target_network(key_target, n_in, cfg['target_features'],
                             cfg['beta'])
    params = net.init(key_init)
    tx = learners.make_optimizer(arm, lr, seed)

    def step(carry, x):
      params, opt_state, cbp_state = carry
      y = target(x)

      def loss_fn(p):
        out, hidden = net.apply(p, x[None])
        return jnp.mean((out[:, 0] - y) ** 2), hidden
      (loss, hidden), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      if arm['kind'] == 'cbp':
        params, opt_state, cbp_state = learners.cbp_step(
            params, opt_state, cbp_state, hidden, net.kernel_init, cbp_cfg)
      return (params, opt_state, cbp_state), loss

    def flip(carry, t):
      state, bits = carry
      key_bit, key_x = jax.random.split(jax.random.fold_in(key_stream, t))
      which = jax.random.randint(key_bit, (), 0, n_flip)
      bits = bits.at[which].set(1.0 - bits[which])
      noise = jax.random.bernoulli(
          key_x, 0.5, (cfg['flip_after'], n_in - n_flip)).astype(jnp.float32)
      xs = jnp.concatenate(
          [jnp.broadcast_to(bits, (cfg['flip_after'], n_flip)), noise], 1)
      state, losses = jax.lax.scan(step, state, xs)
      return (state, bits), losses.reshape(bins_per_flip, per_bin).mean(1)

    bits0 = jax.random.bernoulli(key_bits, 0.5,
                                 (n_flip,)).astype(jnp.float32)
    carry = ((params, tx.init(params), learners.cbp_init(params, seed + 1)),
             bits0)
    _, errors = jax.lax.scan(flip, carry, jnp.arange(cfg['flips']))
    return {'mse': errors.reshape(-1)}
  return jax.vmap(one)
