"""Small particle systems, jitted colliders and hypothesis cases.

Shared by the property tests, so that a system or a compiled collision is
built once per worker, whichever test asks for it first.
"""

import functools

from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ko_optax
from ko_optax import _random


def small_params():
  """A dense layer (kernel and bias) and a conv kernel: the small tree the
  transformation tests train."""
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
      'dense': {'kernel': jax.random.normal(k1, (5, 8)),
                'bias': jnp.zeros(8)},
      'conv': {'kernel': jax.random.normal(k2, (3, 3, 2, 4))},
  }


PARAMS = small_params()


def loss(params, step):
  """A smooth loss whose gradient changes with the step."""
  leaves = jax.tree.leaves(params)
  return sum(jnp.sum(jnp.sin(x * (1.0 + 0.1 * step)) ** 2) for x in leaves)


# Jitted once per worker: eager gradients and sums compile op by op.
grad = jax.jit(jax.grad(loss))
apply_updates = jax.jit(optax.apply_updates)


def train(tx, steps=4, params=PARAMS, jit=True):
  """``steps`` updates of ``tx`` on :func:`loss`: the update trees and the
  last state."""
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  out = []
  for step in range(steps):
    updates, state = update(grad(params, step), state, params)
    params = apply_updates(params, updates)
    out.append(updates)
  return out, state


def velocity_problem(seed=0, d=6, n=10):
  """A (d, n) kernel and a bias, and four gradients that move alike: what a
  collision of the base optimizer's velocity acts on."""
  kw, _ = jax.random.split(jax.random.key(seed))
  params = {'w': jax.random.normal(kw, (d, n)), 'b': jnp.zeros(n)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1.0)) + 0.3, params)
           for i in range(4)]
  return params, grads


def assert_bitwise(a, b):
  """Every leaf of ``a`` equals that of ``b`` bit for bit."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def normal(shape, seed, scale=1.0):
  """float32 NumPy normals from ``np.random.default_rng(seed)``."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * (
      scale)


def keyed(seed=0, n=6, d=5):
  """A (D, N) system ``(w, g)`` of JAX normals from ``jax.random.key``."""
  kw, kg = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kw, (d, n)), jax.random.normal(kg, (d, n)))


def complex_keyed(seed=0):
  """A complex64 (5, 6) system built from two real ones."""
  w, g = keyed(seed)
  w2, g2 = keyed(seed + 10)
  return (w + 1j * w2).astype(jnp.complex64), (g + 1j * g2).astype(
      jnp.complex64)


def apply(tx, grads, params, steps=1):
  """``steps`` eager updates from a fresh state: (updates, state)."""
  state = tx.init(params)
  for _ in range(steps):
    grads, state = tx.update(grads, state, params)
  return grads, state


@functools.lru_cache(maxsize=None)
def _collider(mode, rate, items):
  """A jitted stochastic_collision update of one (D, N) leaf: one compile
  per configuration and shape, reused for every input of that shape."""
  tx = ko_optax.stochastic_collision(rate, mode=mode, key=3, **dict(items))

  @jax.jit
  def collide(w, g):
    p = {'w': w}
    return tx.update({'w': g}, tx.init(p), p)[0]['w']
  return collide


def collide(mode, w, g, rate=0.9, **kw):
  """One collision step of a (D, N) leaf (key 3), as a NumPy array."""
  return np.asarray(_collider(mode, rate, tuple(sorted(kw.items())))(w, g))


@functools.lru_cache(maxsize=None)
def traced_collider(mode):
  """One jitted collision update with a traced rate (one compile per
  shape and dtype, cached by jit)."""

  @jax.jit
  def run(w, g, rate):
    tx = ko_optax.stochastic_collision(rate, mode=mode, key=1,
                                       normalization='norm' if mode == 'soft'
                                       else None)
    p = {'kernel': w}
    return tx.update({'kernel': g}, tx.init(p), p)[0]['kernel']
  return run


# Hypothesis cases: (D, N) of a Dense kernel. Hypothesis starts from the
# first entries: the first examples then already collide (and a complex
# leaf).
SHAPES = [(3, 5), (1, 1), (1, 2), (4, 2)]
DTYPES = ['complex64', 'float32', 'bfloat16'] + (
    ['float64'] if jax.config.jax_enable_x64 else [])


def draw(data, shape, dtype, exponent):
  """Weights, gradients and a key of ``shape`` and ``dtype``, scaled by
  ``10 ** exponent``."""
  key = jax.random.key(data.draw(st.integers(0, 2**16), label='seed'))
  kw, kg, ki = jax.random.split(key, 3)
  scale = 10.0 ** exponent

  def sample(k):
    x = jax.random.normal(k, (2,) + shape, jnp.float32)
    x = x[0] + 1j * x[1] if dtype == 'complex64' else x[0]
    return (x * scale).astype(dtype)
  return sample(kw), sample(kg), ki


@functools.partial(jax.jit, static_argnames=('n', 'd'))
def hard_step(key, rate, n=40, d=6):
  """The public hard collision of a fixed (6, 40) system, and the random
  order its pairs are cut from."""
  kw, kg = jax.random.split(jax.random.key(123))
  w = jax.random.normal(kw, (d, n))
  g = jax.random.normal(kg, (d, n))
  systems = [_random.Systems(1, n, d)]
  bits = _random.random_words(key, (_random.hard_words(systems),))
  order = _random.hard_draws(bits, systems)[0].order[0]
  new = ko_optax.hard_collision(w, g, rate, key, length_scale=20.0)
  return w, g, new, order
