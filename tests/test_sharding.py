"""KO on a sharded mesh of 8 CPU devices (tests/conftest.py asks for them).

The particle axis (the last axis of a Dense kernel) is sharded over the
'model' axis of a 2 x 4 mesh, as in model parallelism. KO under jit must give
the result it gives on one device, keep the optimizer state's shardings, and,
with cells aligned to the shards (``cell_groups`` = 4), compile to a program
without any cross-device collective.
"""

import functools
import re

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import ko_optax

SHARDS = 4  # size of the 'model' axis, which shards the particles
COLLECTIVES = re.compile(r'\b(all-gather|all-to-all|collective-permute|'
                         r'all-reduce|reduce-scatter)(-start)?\(')

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason='needs 8 (virtual CPU) devices')


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {
      'kernel': rng.normal(size=(16, 32)).astype(np.float32),
      'bias': rng.normal(size=(32,)).astype(np.float32),
  }


PARAMS, GRADS = _tree(0), _tree(1)
SPECS = {'kernel': P(None, 'model'), 'bias': P('model')}


def _mesh(axis_type):
  return jax.make_mesh((2, SHARDS), ('data', 'model'),
                       axis_types=(axis_type, axis_type))


def _tx(collision, cell_size):
  return ko_optax.ko(
      1e-2, collision=collision, collision_rate=0.5, temperature=1e-4, key=7,
      cell_size=cell_size, cell_groups=SHARDS if cell_size else None)


def _one_step(tx):
  """One KO step from a fresh state; returns (updates, next state's keys)."""
  def run(grads, params):
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    keys = [jax.random.key_data(k) for k in jax.tree.leaves(state)
            if jnp.issubdtype(k.dtype, jax.dtypes.prng_key)]
    return updates, keys
  return run


@functools.cache
def _unsharded(collision, cell_size):
  return jax.jit(_one_step(_tx(collision, cell_size)))(GRADS, PARAMS)


def _sharded(mesh, collision, cell_size, specs=None):
  """Runs two sharded steps; returns (outputs, compiled HLO text)."""
  specs = specs or SPECS
  with jax.set_mesh(mesh):
    put = lambda t: jax.tree.map(
        lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs)
    grads, params = put(GRADS), put(PARAMS)
    compiled = jax.jit(_one_step(_tx(collision, cell_size))).lower(
        grads, params).compile()
    return compiled(grads, params), compiled.as_text()


def _assert_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize('collision', ['soft', 'hard'])
@pytest.mark.parametrize('cell_size', [None, 4])
def test_explicit_mesh_matches_one_device(collision, cell_size):
  (first, keys), hlo = _sharded(_mesh(AxisType.Explicit), collision,
                                  cell_size)
  _assert_close((first, keys), _unsharded(collision, cell_size))
  assert first['kernel'].sharding.spec == P(None, 'model')
  assert first['bias'].sharding.spec == P('model')
  if cell_size:
    # Cells aligned with the shards: no cross-device traffic at all.
    assert not COLLECTIVES.search(hlo), COLLECTIVES.findall(hlo)
  elif collision == 'soft':
    # The all-pairs kernel needs every particle: KO gathers them.
    assert 'all-gather' in hlo


@pytest.mark.parametrize('collision', ['soft', 'hard'])
@pytest.mark.parametrize('cell_size', [None, 4])
def test_auto_mesh_matches_one_device(collision, cell_size):
  (first, keys), hlo = _sharded(_mesh(AxisType.Auto), collision, cell_size)
  _assert_close((first, keys), _unsharded(collision, cell_size))
  if cell_size:
    # Hard cells too: each block draws its own random words from its own
    # key, so the partitioner has nothing to move between devices.
    assert not COLLECTIVES.search(hlo), COLLECTIVES.findall(hlo)


def test_two_dimensional_sharding_matches_one_device():
  # Kernel sharded over both axes (FSDP-like on D, model-parallel on N):
  # cells gather D inside each shard of particles, results stay sharded.
  specs = {'kernel': P('data', 'model'), 'bias': P('model')}
  (first, keys), hlo = _sharded(_mesh(AxisType.Explicit), 'soft', 4, specs)
  _assert_close((first, keys), _unsharded('soft', 4))
  assert first['kernel'].sharding.spec == P('data', 'model')
  assert 'all-to-all' not in hlo and 'collective-permute' not in hlo


def test_state_shardings_stable_and_multisteps_work():
  mesh = _mesh(AxisType.Explicit)
  tx = optax.MultiSteps(_tx('soft', 4), every_k_schedule=2)
  with jax.set_mesh(mesh):
    put = lambda t: jax.tree.map(
        lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, SPECS)
    grads, params = put(GRADS), put(PARAMS)
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)
    for _ in range(2):
      updates, new_state = update(grads, state, params)
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert a.sharding == b.sharding and a.shape == b.shape
        assert a.dtype == b.dtype
      state = new_state
  # MultiSteps emits the mean of the two (identical) gradients' KO update.
  want = jax.jit(_one_step(_tx('soft', 4)))(GRADS, PARAMS)[0]
  _assert_close(updates, want)  # the mean of two equal gradients
  assert updates['kernel'].sharding.spec == P(None, 'model')
