"""KO's state, typed PRNG keys included, survives a checkpoint round trip.

Every path's state (hard, soft in cells, the velocity variant, diffusion
alone) in one orbax checkpoint, with and without a restore target; the
key data round trip for msgpack users. The examples checkpointing.py and
sharded_training.py resume from a checkpoint too (test_examples.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import ko_optax

# One KO per path, side by side: every kind of state in one checkpoint.
PATHS = {
    'hard': dict(collision='hard', collision_rate=1.0, temperature=1e-4),
    'soft-cells': dict(collision='soft', collision_rate=1.0, cell_size=2),
    'velocity': dict(base='sgd', collision='soft', collide_on='velocity',
                     collision_rate=1.0),
    'diffusion': dict(collision=None, temperature=1e-4),
}
TX = optax.multi_transform(
    {name: ko_optax.ko(1e-2, key=11, **kw) for name, kw in PATHS.items()},
    {name: name for name in PATHS})
PARAMS = {name: {'w': jax.random.normal(jax.random.key(k), (6, 5)),
                 'b': jnp.zeros(5)} for k, name in enumerate(PATHS)}
UPDATE = jax.jit(TX.update)


@pytest.mark.parametrize('with_target', [True, False])
def test_orbax_round_trip_resumes_identically(tmp_path, with_target):
  params = PARAMS
  grads = jax.tree.map(lambda x: jnp.cos(x) + 0.1, params)
  state = TX.init(params)
  _, state = UPDATE(grads, state, params)          # advance the keys

  path = tmp_path / 'state'
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, state)
    ckpt.wait_until_finished()
    target = jax.eval_shape(lambda: state) if with_target else None
    restored = ckpt.restore(path, target)
  if not with_target:
    restored = jax.tree.unflatten(jax.tree.structure(state),
                                  jax.tree.leaves(restored))

  expected, _ = UPDATE(grads, state, params)
  resumed, _ = UPDATE(grads, restored, params)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  keys = [x for x in jax.tree.leaves(restored)
          if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
  assert keys, 'the restored state should hold typed keys'


def test_key_data_round_trip_for_msgpack_users():
  tx = ko_optax.ko(1e-2, collision='hard', temperature=1e-3)
  params = {'w': jnp.ones((4, 3))}
  state = tx.init(params)
  raw = optax.tree.unwrap_random_key_data(state)
  assert all(not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
             for x in jax.tree.leaves(raw))
  back = jax.tree.map(
      lambda r, s: jax.random.wrap_key_data(r) if jnp.issubdtype(
          s.dtype, jax.dtypes.prng_key) else r, raw, state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
    np.testing.assert_array_equal(jax.random.key_data(a) if jnp.issubdtype(
        a.dtype, jax.dtypes.prng_key) else a, jax.random.key_data(b)
                                  if jnp.issubdtype(b.dtype,
                                                    jax.dtypes.prng_key) else b)
