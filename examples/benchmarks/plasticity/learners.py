"""The learners of the plasticity study: an nnx MLP and every arm's optimizer.

Every arm is an optax chain built with a unit learning rate and scaled by a
traced ``lr`` afterwards, so one compiled program can vmap over seeds and a
grid of learning rates. Continual backprop (Dohare et al. 2024) is not an
optax transformation (it rewrites weights and Adam's moments), so it is a
pure function applied after each step, vectorised over units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import optax

import ko_optax

Params = Any


class MLP(nnx.Module):
  """A fully connected network that also returns its hidden activations."""

  def __init__(self, sizes: Sequence[int], activation: str, rngs: nnx.Rngs):
    init = nnx.initializers.he_uniform() if activation == 'relu' else (
        nnx.initializers.lecun_uniform())
    self.layers = nnx.List([nnx.Linear(a, b, kernel_init=init, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.activation = activation

  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    act = jax.nn.relu if self.activation == 'relu' else jnp.tanh
    hidden = []
    for layer in self.layers[:-1]:
      x = act(layer(x))
      hidden.append(x)
    return self.layers[-1](x), hidden


class Network(NamedTuple):
  """A pure view of the MLP: ``init(key) -> params``, ``apply(params, x)``."""
  init: Any
  apply: Any
  kernel_init: Any


def make_network(sizes: Sequence[int], activation: str) -> Network:
  """Pure ``init`` and ``apply`` functions of :class:`MLP` over dict params."""
  graphdef, template = nnx.split(MLP(sizes, activation, nnx.Rngs(0)))

  def init(key: jax.Array) -> Params:
    model = MLP(sizes, activation, nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def apply(params: Params, x: jax.Array):
    state = jax.tree.map(lambda v: v, template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)(x)

  kernel_init = (nnx.initializers.he_uniform() if activation == 'relu'
                 else nnx.initializers.lecun_uniform())
  return Network(init, apply, kernel_init)


class AnchorState(NamedTuple):
  """The initial weights that L2-init pulls towards."""
  anchor: Params


def l2_init(strength: float) -> optax.GradientTransformation:
  """Kumar et al. 2023: adds ``strength * (params - params_0)`` to gradients."""
  def init(params):
    return AnchorState(jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None):
    updates = jax.tree.map(lambda g, p, a: g + strength * (p - a), updates,
                           params, state.anchor)
    return updates, state
  return optax.GradientTransformation(init, update)


class PerturbState(NamedTuple):
  """The key of shrink and perturb's noise."""
  key: jax.Array


def shrink_perturb(shrink: float, noise: float, seed: jax.Array
                   ) -> optax.GradientTransformation:
  """Ash and Adams 2020, every step: ``p <- (1 - shrink) p + noise * xi``.

  Appended after the learning rate, so it acts on the weights directly.
  """
  def init(params):
    del params
    return PerturbState(jax.random.key(seed))

  def update(updates, state, params=None):
    key, draw = jax.random.split(state.key)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(draw, len(leaves))
    xi = [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)]
    updates = jax.tree.map(lambda u, p, x: u - shrink * p + noise * x,
                           updates, params, jax.tree.unflatten(tree, xi))
    return updates, PerturbState(key)
  return optax.GradientTransformation(init, update)


def unit_lr_optimizer(arm: dict[str, Any], seed: jax.Array
                      ) -> optax.GradientTransformation:
  """The arm's optimizer with learning rate 1 (descending: ``-direction``)."""
  kind, base = arm['kind'], arm.get('base', 'adam')
  base_kw: dict[str, Any] = (dict(base='sgd', momentum=None)
                             if base == 'sgd' else {})
  if kind == 'base':
    return (optax.sgd(1.0) if base == 'sgd' else optax.adam(1.0))
  if kind == 'ko':
    return ko_optax.ko(1.0, key=seed, **base_kw, **arm.get('ko', {}))
  if kind == 'muon':
    return optax.contrib.muon(1.0)
  if kind in ('cbp', 'snp'):
    return optax.adam(1.0) if base == 'adam' else optax.sgd(1.0)
  if kind == 'l2init':
    inner = optax.adam(1.0) if base == 'adam' else optax.sgd(1.0)
    return optax.chain(l2_init(arm['strength']), inner)
  raise ValueError(f'unknown arm kind {kind!r}')


def make_optimizer(arm: dict[str, Any], lr: jax.Array, seed: jax.Array
                   ) -> optax.GradientTransformation:
  """The arm's optimizer at learning rate ``lr`` (a traced scalar)."""
  parts = [unit_lr_optimizer(arm, seed), optax.scale(lr)]
  if arm['kind'] == 'snp':
    parts.append(shrink_perturb(arm['shrink'], arm['noise'], seed + 7919))
  return optax.chain(*parts)


class CBPState(NamedTuple):
  """Continual backprop's bookkeeping, one entry per hidden layer."""
  utility: list[jax.Array]
  age: list[jax.Array]
  to_replace: list[jax.Array]
  key: jax.Array


def cbp_init(params: Params, seed: jax.Array) -> CBPState:
  """Zero utility and age for every hidden unit."""
  widths = [params['layers'][i]['bias'].shape[0]
            for i in range(len(params['layers']) - 1)]
  zeros = [jnp.zeros((n,)) for n in widths]
  return CBPState(zeros, [jnp.zeros((n,), jnp.int32) for n in widths],
                  [jnp.zeros(()) for _ in widths], jax.random.key(seed))


def _replaced_units(utility, age, to_replace, cfg):
  """Dohare's choice: the lowest-utility mature units, a fraction per step."""
  mature = age > cfg['maturity']
  budget = to_replace + cfg['replacement_rate'] * jnp.sum(mature)
  count = jnp.floor(budget)
  score = jnp.where(mature, utility, jnp.inf)
  rank = jnp.argsort(jnp.argsort(score))
  return mature & (rank < count), budget - count


def _reset_rows_cols(tree, layer, fresh_mask, col, row):
  """Zeroes a unit's incoming column, bias and outgoing row in ``tree``."""
  tree = jax.tree.map(lambda x: x, tree)
  lay, nxt = tree['layers'][layer], tree['layers'][layer + 1]
  lay['kernel'] = jnp.where(col, 0.0, lay['kernel'])
  lay['bias'] = jnp.where(fresh_mask, 0.0, lay['bias'])
  nxt['kernel'] = jnp.where(row, 0.0, nxt['kernel'])
  return tree


def cbp_step(params: Params, opt_state: Any, state: CBPState,
             hidden: list[jax.Array], kernel_init: Any, cfg: dict[str, Any]):
  """One generate-and-test step of continual backprop (Dohare et al. 2024).

  Utility is the running mean of ``|h_i| * sum_k |w_out[i, k]|`` ("the
  contribution"), bias-corrected by age; each step a ``replacement_rate``
  share of the mature units (age > ``maturity``) is due for replacement,
  the lowest-utility ones are re-drawn from the initial distribution,
  their outgoing weights are zeroed and their Adam moments reset.
  """
  decay = cfg['decay']
  utilities, ages, budgets = [], [], []
  key = state.key
  for i, h in enumerate(hidden):
    out_w = jnp.sum(jnp.abs(params['layers'][i + 1]['kernel']), axis=1)
    util = decay * state.utility[i] + (1 - decay) * out_w * jnp.mean(
        jnp.abs(h), axis=0)
    age = state.age[i] + 1
    corrected = util / (1 - decay ** age.astype(util.dtype))
    replace, budget = _replaced_units(corrected, age, state.to_replace[i],
                                      cfg)
    key, draw = jax.random.split(key)
    kernel = params['layers'][i]['kernel']
    # One fresh column a step suffices (at most one unit is due per step at
    # the rates used), and drawing a whole kernel every step is costly.
    fresh = kernel_init(draw, (kernel.shape[0], 1), kernel.dtype)
    col, row = replace[None, :], replace[:, None]
    params = _reset_rows_cols(params, i, replace, col, row)
    params['layers'][i]['kernel'] = jnp.where(col, fresh,
                                              params['layers'][i]['kernel'])
    opt_state = _reset_moments(opt_state, i, replace, col, row)
    utilities.append(jnp.where(replace, 0.0, util))
    ages.append(jnp.where(replace, 0, age))
    budgets.append(budget)
  return params, opt_state, CBPState(utilities, ages, budgets, key)


def _reset_moments(opt_state: Any, layer: int, replace, col, row):
  """Zeroes Adam's moments of a replaced unit's weights (a no-op for SGD)."""
  def reset(s):
    if isinstance(s, optax.ScaleByAdamState):
      return s._replace(
          mu=_reset_rows_cols(s.mu, layer, replace, col, row),
          nu=_reset_rows_cols(s.nu, layer, replace, col, row))
    return s
  return jax.tree.map(reset, opt_state,
                      is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
