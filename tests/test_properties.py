"""Property-based tests of the "Bad values" policy (docs/method.md).

Hypothesis draws leaf shapes (one particle, two, an odd number; D = 1),
dtypes (float32, bfloat16, complex64; float64 when x64 is on), magnitudes
from 1e-30 to 1e30 and rates, and checks: finite in, finite out; a poisoned
neuron does not spread; KO switched off is its base bit for bit; hard
collisions conserve momentum and energy. Few examples, derandomized, and
every jitted function is cached per (shape, dtype, mode): one compile each.
"""

import functools

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ko_optax

# (D, N) of a Dense kernel. Hypothesis starts from the first entries: the
# first examples then already collide (and a complex leaf).
SHAPES = [(3, 5), (1, 1), (1, 2), (4, 2)]
DTYPES = ['complex64', 'float32', 'bfloat16'] + (
    ['float64'] if jax.config.jax_enable_x64 else [])
MODES = ['soft', 'hard']
FEW = settings(max_examples=3, deadline=None, derandomize=True)


@functools.lru_cache(maxsize=None)
def _collider(mode):
  """One jitted collision update with a traced rate (one compile per
  shape and dtype, cached by jit)."""

  @jax.jit
  def collide(w, g, rate):
    tx = ko_optax.stochastic_collision(rate, mode=mode, key=1,
                                       normalization='norm' if mode == 'soft'
                                       else None)
    p = {'kernel': w}
    return tx.update({'kernel': g}, tx.init(p), p)[0]['kernel']
  return collide


def _draw(data, shape, dtype, exponent):
  key = jax.random.key(data.draw(st.integers(0, 2**16), label='seed'))
  kw, kg, ki = jax.random.split(key, 3)
  scale = 10.0 ** exponent

  def sample(k):
    x = jax.random.normal(k, (2,) + shape, jnp.float32)
    x = x[0] + 1j * x[1] if dtype == 'complex64' else x[0]
    return (x * scale).astype(dtype)
  return sample(kw), sample(kg), ki


case = dict(shape=st.sampled_from(SHAPES), dtype=st.sampled_from(DTYPES),
            mode=st.sampled_from(MODES), exponent=st.integers(-30, 30),
            rate=st.floats(0.1, 3.0))


@FEW
@given(data=st.data(), **case)
def test_finite_in_finite_out_and_a_poisoned_neuron_stays_put(
    data, shape, dtype, mode, exponent, rate):
  w, g, _ = _draw(data, shape, dtype, exponent)
  collide = _collider(mode)
  out = np.asarray(collide(w, g, rate).astype(jnp.complex64))
  assert out.dtype == np.complex64 and np.isfinite(out).all()
  assert collide(w, g, rate).dtype == jnp.dtype(dtype)
  bad = data.draw(st.integers(0, shape[1] - 1), label='poisoned neuron')
  poisoned = g.at[0, bad].set(jnp.nan)
  out = np.asarray(collide(w, poisoned, rate).astype(jnp.complex64))
  np.testing.assert_array_equal(
      out[:, bad], np.asarray(poisoned[:, bad].astype(jnp.complex64)))
  assert np.isfinite(np.delete(out, bad, axis=1)).all()


@FEW
@given(data=st.data(), shape=st.sampled_from(SHAPES),
       dtype=st.sampled_from(['float32', 'complex64']),
       exponent=st.integers(-30, 30), rate=st.floats(0.1, 3.0))
def test_hard_collisions_conserve_momentum_and_energy(
    data, shape, dtype, exponent, rate):
  w, g, _ = _draw(data, shape, dtype, exponent)
  out = _collider('hard')(w, g, rate)
  assert np.isfinite(np.asarray(out)).all()
  tol = 1e-5 * float(jnp.max(jnp.abs(g))) * shape[1]
  np.testing.assert_allclose(out.sum(-1), g.sum(-1), atol=tol, rtol=0)
  energy = lambda x: float(jnp.sum(jnp.abs(x.astype(jnp.complex64)) ** 2))
  np.testing.assert_allclose(energy(out), energy(g), rtol=1e-5)


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
@given(data=st.data(), shape=st.just(SHAPES[0]),
       dtype=st.sampled_from(DTYPES), exponent=st.integers(-30, 30))
def test_ko_switched_off_is_adam_bit_for_bit(data, shape, dtype, exponent):
  w, g, _ = _draw(data, shape, dtype, exponent)
  ko_u, adam_u = _ko_off_and_adam()(w, g, jnp.float32(0.0))
  assert ko_u.dtype == jnp.dtype(dtype)
  np.testing.assert_array_equal(np.asarray(ko_u.astype(jnp.complex64)),
                                np.asarray(adam_u.astype(jnp.complex64)))
