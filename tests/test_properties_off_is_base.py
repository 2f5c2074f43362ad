"""KO switched off is its base, bit for bit, on every path.

Off means no collision, a zero collision rate or temperature (Python zeros,
skipped at build time, and traced zeros, compiled and skipped at run time),
or a mask that selects nothing. The updates must then equal the base
optimizer's (or the identity, for a single step) bit for bit.
"""

import functools

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax
import systems

PARAMS = systems.PARAMS   # the small shared tree


def _run(tx, steps=4, params=PARAMS):
  """``steps`` jitted updates on a moving loss: the list of update trees."""
  return systems.train(tx, steps, params)[0]


ADAM = dict(b1=0.8, b2=0.99, eps=1e-7)


@pytest.mark.parametrize('off', [
    dict(collision=None),
    dict(collision_rate=0.0),
    dict(collision_rate=jnp.asarray(0.0)),          # computed, not skipped
    dict(collision='hard', collision_rate=jnp.asarray(0.0),
         temperature=jnp.asarray(0.0)),
    dict(collision='soft', collision_rate=jnp.asarray(0.0)),
    dict(collision='soft', collision_rate=jnp.asarray(0.0), cell_size=2),
    dict(collision='hard', collision_rate=jnp.asarray(0.0), cell_size=2),
], ids=['none', 'zero', 'hard-traced', 'hard-traced-t', 'soft-traced',
        'soft-cells', 'hard-cells'])
def test_ko_off_is_adam(off):
  systems.assert_bitwise(_run(ko_optax.ko(1e-2, **ADAM, **off)), _adam())


@functools.cache
def _adam():
  """Adam's updates, computed once for every way of switching KO off."""
  return _run(optax.adam(1e-2, **ADAM))


@pytest.mark.parametrize('momentum, nesterov', [(0.9, False), (0.8, True),
                                                (None, False)])
def test_ko_off_is_sgd(momentum, nesterov):
  ko = _run(ko_optax.ko(0.05, base='sgd', momentum=momentum,
                        nesterov=nesterov, collision_rate=0.0))
  sgd = _run(optax.sgd(0.05, momentum=momentum, nesterov=nesterov))
  systems.assert_bitwise(ko, sgd)


def test_ko_off_is_adamw():
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  ko = _run(ko_optax.ko(1e-2, collision=None, weight_decay=0.1,
                        weight_decay_mask=mask))
  adamw = _run(optax.adamw(1e-2, weight_decay=0.1, mask=mask))
  systems.assert_bitwise(ko, adamw)


def test_ko_off_with_a_learning_rate_schedule_is_adam():
  sched = optax.linear_schedule(1e-2, 1e-3, 4)
  systems.assert_bitwise(_run(ko_optax.ko(sched, collision=None)),
                  _run(optax.adam(sched)))


def test_ko_off_on_a_custom_base_is_that_base():
  ko = _run(ko_optax.ko(1e-2, base=optax.scale_by_lion(), collision=None))
  lion = _run(optax.lion(1e-2, weight_decay=0.0))
  systems.assert_bitwise(ko, lion)


def test_a_bool_mask_reaches_the_diffusion():
  params = {'w': jnp.ones((4, 3)), 'b': jnp.ones(3)}
  for mask, noisy in ((True, True), (False, False)):
    tx = ko_optax.ko(1e-3, collision=None, mask=mask, temperature=1e-2)
    u, _ = tx.update(params, tx.init(params), params)
    adam, _ = optax.adam(1e-3).update(params, optax.adam(1e-3).init(params))
    same = all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(u), jax.tree.leaves(adam)))
    assert same != noisy


@pytest.mark.parametrize('base, reference', [
    ('adam', optax.adam(1e-2)),
    ('sgd', optax.sgd(1e-2, momentum=0.9)),
])
def test_velocity_collision_at_zero_rate_is_the_base(base, reference):
  # A traced rate of 0 (a schedule) runs the collision's lax.cond, which
  # returns the momentum untouched: the base optimizer, bit for bit.
  params, grads = systems.velocity_problem()
  tx = ko_optax.ko(1e-2, base=base, collide_on='velocity', collision='soft',
                   collision_rate=lambda count: 0.0 * count)
  outs = []
  for t in (tx, reference):
    step, state, out = jax.jit(t.update), t.init(params), []
    for g in grads:
      u, state = step(g, state, params)
      out.append(u)
    outs.append(out)
  for a, b in zip(*outs):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _gpt_like():
  rng = np.random.default_rng(0)
  leaf = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {'blocks': [{'up': {'kernel': leaf(4, 8), 'bias': leaf(8)},
                      'down': {'kernel': leaf(8, 4)}} for _ in range(2)],
          'head': {'kernel': leaf(4, 6)}}


def test_ko_gpt_off_is_its_clipped_adamw():
  params = _gpt_like()
  grads = jax.tree.map(lambda x: jnp.cos(x) * 3.0, params)
  off = ko_optax.ko_gpt(1e-3, collision_rate=jnp.asarray(0.0),
                        noise_std=0.0, key=7)
  plain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      1e-3, b1=0.9, b2=0.95, weight_decay=0.1,
      mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  outs = []
  for tx in (off, plain):
    p, state, step = params, tx.init(params), jax.jit(tx.update)
    for _ in range(2):
      u, state = step(grads, state, p)
      p = optax.apply_updates(p, u)
    outs.append(p)
  systems.assert_bitwise(*outs)


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_a_zero_collision_rate_is_the_identity(mode):
  w, g = systems.normal((5, 8), 0), systems.normal((5, 8), 1)
  out, _ = systems.apply(ko_optax.stochastic_collision(0.0, mode=mode),
                         jnp.asarray(g), jnp.asarray(w), steps=3)
  np.testing.assert_array_equal(out, g)


def test_a_zero_temperature_is_the_identity():
  g = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  tx = ko_optax.thermal_diffusion(0.0)
  out, _ = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(out, g)


def test_complex_ko_off_is_adam():
  w, g = systems.complex_keyed()
  params = {'w': w, 'b': w[0]}
  grads = {'w': g, 'b': g[0]}
  zero = lambda count: 0.0 * count   # traced zeros: both branches compile
  opts = [ko_optax.ko(1e-2, collision_rate=zero, temperature=zero),
          optax.adam(1e-2)]
  outs = []
  for tx in opts:
    state, p = tx.init(params), params
    step = jax.jit(tx.update)
    for _ in range(3):
      u, state = step(grads, state, p)
      p = optax.apply_updates(p, u)
    outs.append(p)
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    assert a.dtype == jnp.complex64
    np.testing.assert_array_equal(a, b)


@functools.lru_cache(maxsize=None)
def _ko_off_and_adam():
  """KO with traced zero rate and temperature (its collisions and noise are
  compiled and skipped at run time) and optax.adam, one step each."""
  adam = optax.adam(1e-2)

  @jax.jit
  def steps(w, g, zero):
    tx = ko_optax.ko(1e-2, collision_rate=zero, temperature=zero)
    p = {'kernel': w}
    ko_u = tx.update({'kernel': g}, tx.init(p), p)[0]
    adam_u = adam.update({'kernel': g}, adam.init(p), p)[0]
    return ko_u['kernel'], adam_u['kernel']
  return steps


@settings(max_examples=2, deadline=None, derandomize=True)
@given(data=st.data(), shape=st.just(systems.SHAPES[0]),
       dtype=st.sampled_from(systems.DTYPES), exponent=st.integers(-30, 30))
def test_ko_off_is_adam_at_any_magnitude_and_dtype(data, shape, dtype,
                                                   exponent):
  w, g, _ = systems.draw(data, shape, dtype, exponent)
  ko_u, adam_u = _ko_off_and_adam()(w, g, jnp.float32(0.0))
  assert ko_u.dtype == jnp.dtype(dtype)
  np.testing.assert_array_equal(np.asarray(ko_u.astype(jnp.complex64)),
                                np.asarray(adam_u.astype(jnp.complex64)))
