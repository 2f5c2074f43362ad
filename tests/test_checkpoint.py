"""KO's state, typed PRNG keys included, survives an orbax round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import ko_optax


@pytest.mark.parametrize('with_target', [True, False])
def test_orbax_round_trip_resumes_identically(tmp_path, with_target):
  params = {'w': jax.random.normal(jax.random.key(0), (6, 5)),
            'b': jnp.zeros(5)}
  tx = ko_optax.ko(1e-2, collision='hard', collision_rate=1.0,
                   temperature=1e-4, key=11)
  update = jax.jit(tx.update)
  grads = jax.tree.map(lambda x: jnp.cos(x) + 0.1, params)
  state = tx.init(params)
  _, state = update(grads, state, params)          # advance the keys

  path = tmp_path / 'state'
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, state)
    ckpt.wait_until_finished()
    target = jax.eval_shape(lambda: state) if with_target else None
    restored = ckpt.restore(path, target)
  if not with_target:
    restored = jax.tree.unflatten(jax.tree.structure(state),
                                  jax.tree.leaves(restored))

  expected, _ = update(grads, state, params)
  resumed, _ = update(grads, restored, params)
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
