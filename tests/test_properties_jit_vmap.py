"""jit, eager calls and vmap give the same results, on every path.

An update runs eagerly (outside any trace, as a compiled copy of itself),
under jax.jit (traced once, its state stable through lax.cond and
jax.eval_shape) and under jax.vmap (an ensemble of models, or of particle
systems): the results agree.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ko_optax
from ko_optax import cells
import systems

PARAMS = systems.PARAMS   # the small shared tree

SMALL = {'w': PARAMS['dense']['kernel'], 'b': PARAMS['dense']['bias']}


def _run(tx, steps, params, jit):
  return systems.train(tx, steps, params, jit)[0]


PATHS = {
    'soft': dict(collision='soft'),
    'hard': dict(collision='hard'),
    'soft-cells': dict(collision='soft', cell_size=4),
    'hard-cells': dict(collision='hard', cell_size=4),
    'velocity': dict(collision='soft', base='sgd', collide_on='velocity'),
}


@pytest.mark.parametrize('path', list(PATHS))
def test_jit_and_eager_agree(path):
  tx = ko_optax.ko(1e-2, collision_rate=0.5, temperature=1e-4, key=3,
                   **PATHS[path])
  jitted = _run(tx, 2, SMALL, jit=True)
  eager = _run(tx, 2, SMALL, jit=False)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('mode', ['hard', 'soft'])
def test_eager_update_runs_one_compiled_collision(mode):
  # Called outside any trace, the update runs the collision as one compiled
  # program (cached by layout and settings), not operation by operation:
  # its first call compiles a handful of programs (the collision and a few
  # small operations around it), a later one none, also when
  # inject_hyperparams rebuilds the transformation at every call. The
  # result is the jitted update's.
  compiles = []
  def listener(name, secs, **kwargs):
    del secs, kwargs
    if name == '/jax/core/compile/backend_compile_duration':
      compiles.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # Shapes no other test uses, so that no earlier compile is reused.
    params = {'w': systems.normal((5, 11), 40),
              'v': systems.normal((3, 11, 6), 41), 'b': jnp.ones(6)}
    grads = jax.tree.map(lambda x: 0.5 * x + 0.1, params)
    spec = {'w': -1, 'v': ko_optax.ParticleSpec(-1, 0), 'b': None}
    tx = optax.inject_hyperparams(ko_optax.stochastic_collision,
                                  static_args=('mode', 'particle_axes'))(
        0.5, mode=mode, key=3, particle_axes=spec)
    state = tx.init(params)
    del compiles[:]
    eager, state_1 = tx.update(grads, state, params)
    assert 0 < len(compiles) <= 10, len(compiles)
    del compiles[:]
    tx.update(grads, state_1, params)
    assert not compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  jitted, _ = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)


def test_jitted_step_traces_once():
  tx = ko_optax.ko(1e-2, collision='hard', temperature=1e-4)
  traces = []

  @jax.jit
  def step(params, state, i):
    traces.append(None)
    grads = jax.grad(systems.loss)(params, i)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for i in range(4):
    params, state = step(params, state, i)
  assert len(traces) == 1


def test_init_on_shape_dtype_structs():
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        PARAMS)
  tx = ko_optax.ko(1e-2, collision='hard', temperature=1e-3)
  abstract = jax.eval_shape(tx.init, shapes)
  concrete = tx.init(PARAMS)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)


def test_state_is_stable_through_lax_cond():
  tx = ko_optax.ko(1e-2, collision='hard', temperature=1e-3)
  state = tx.init(PARAMS)
  grads = jax.grad(systems.loss)(PARAMS, 0)

  @jax.jit
  def maybe_update(pred, state):
    return jax.lax.cond(pred, lambda s: tx.update(grads, s, PARAMS)[1],
                        lambda s: s, state)

  new = maybe_update(True, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
  assert jax.tree.structure(new) == jax.tree.structure(state)


def _member(tree, i):
  """Member ``i`` of a vmapped ensemble."""
  return jax.tree.map(lambda x: x[i], tree)


# Cells under vmap: test_vmap_over_cell_systems_matches_one_system_at_a_time.
@pytest.mark.parametrize('path', ['soft', 'hard'])
def test_vmap_over_an_ensemble_matches_a_loop(path):
  tx = ko_optax.ko(1e-2, collision_rate=0.5, temperature=1e-4,
                   **PATHS[path])
  params = jax.vmap(lambda k: {'w': jax.random.normal(k, (4, 6))})(
      jax.random.split(jax.random.key(0), 3))
  grads = jax.tree.map(jnp.cos, params)
  states = jax.vmap(tx.init)(params)
  batched, _ = jax.jit(jax.vmap(tx.update))(grads, states, params)
  update = jax.jit(tx.update)
  for i in range(3):
    single, _ = update(_member(grads, i), _member(states, i),
                       _member(params, i))
    chex.assert_trees_all_close(_member(batched, i), single, rtol=1e-5,
                                atol=1e-7)


def _mix(w, g, k):
  """A cheap stand-in for a collision: depends on the partners and the key."""
  mean = jnp.mean(g, axis=-1, keepdims=True)
  return g + jax.random.uniform(k) * (mean - g) + 0.1 * w


def test_vmap_over_cell_systems_matches_one_system_at_a_time():
  # 3 systems of 2 blocks of 15 (odd blocks: padded cells, an idle particle
  # in each block of pairs), one key per system.
  w = jnp.asarray(systems.normal((3, 5, 30), 21))
  g = jnp.asarray(systems.normal((3, 5, 30), 22))
  keys = jax.random.split(jax.random.key(6), 3)
  fns = [functools.partial(cells.collide_in_cells, collide=_mix, cell_size=4,
                           groups=2, pairs=pairs) for pairs in (False, True)]
  # vmap against lax.map (one system after the other, unbatched); one
  # compile for all four.
  both = jax.jit(lambda a: [(jax.vmap(fn)(*a), jax.lax.map(
      lambda x, f=fn: f(*x), a)) for fn in fns])
  for batched, one_by_one in both((w, g, keys)):
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-6, atol=1e-6)


def test_vmap_of_the_public_operators_matches_a_loop():
  w = jnp.asarray(systems.normal((3, 4, 6), 30))
  g = jnp.asarray(systems.normal((3, 4, 6), 31))
  keys = jax.random.split(jax.random.key(8), 3)
  soft = jax.jit(jax.vmap(lambda w, g: ko_optax.soft_collision(w, g, 0.5)))
  hard = jax.jit(jax.vmap(lambda w, g, k: ko_optax.hard_collision(
      w, g, 2.0, k)))
  soft_out, hard_out = soft(w, g), hard(w, g, keys)
  one_soft = jax.jit(lambda w, g: ko_optax.soft_collision(w, g, 0.5))
  one_hard = jax.jit(lambda w, g, k: ko_optax.hard_collision(w, g, 2.0, k))
  for i in range(3):
    np.testing.assert_allclose(soft_out[i], one_soft(w[i], g[i]), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(hard_out[i], one_hard(w[i], g[i], keys[i]),
                               rtol=1e-5, atol=1e-7)
