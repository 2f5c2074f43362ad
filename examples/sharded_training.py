r"""Data- and model-parallel KO training on a 2 x 4 device mesh, with orbax.

Runs on one CPU host with 8 virtual devices (the script asks JAX for them),
and unchanged on 8 accelerators or several hosts (see docs/scaling.md):

* a ``('data', 'model')`` mesh of 2 x 4 devices;
* a 3-layer MLP on scikit-learn's digits, with the hidden layers
  column-parallel (their output neurons, KO's particles, sharded over
  ``'model'``: Megatron-style model parallelism) and the head row-parallel;
  the batch is sharded over ``'data'``;
* KO with soft collisions in cells aligned to the shards
  (``cell_groups`` = 4), so the collision needs no cross-device traffic; the
  script checks the compiled HLO of the optimizer step for collectives;
* a checkpoint of the sharded train state (params, KO state with its typed
  keys, step) written with orbax half-way, restored onto the mesh, and
  training resumed from it; the resumed run matches the uninterrupted one.

Usage::

  python examples/sharded_training.py            # 400 steps
  python examples/sharded_training.py --quick    # 20 steps, for tests
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import tempfile

import jax

if __name__ == '__main__':
  # Must happen before JAX starts its backend; harmless if it already did
  # (e.g. under pytest, whose conftest asks for the same 8 devices).
  jax.config.update('jax_num_cpu_devices', 8)

import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp

import ko_optax

COLLECTIVES = re.compile(r'\b(all-gather|all-to-all|collective-permute|'
                         r'all-reduce|reduce-scatter)(-start)?\(')


# KO's mask: the hidden kernels collide; the 10-way head cannot be split
# into 4 cell groups, and biases are not particles.
COLLIDING = {'w1': True, 'b1': False, 'w2': True, 'b2': False, 'w3': False,
             'b3': False}


def make_mesh(data: int = 2, model: int = 4) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh; Auto axes let XLA place the activations."""
  return jax.make_mesh((data, model), ('data', 'model'),
                       axis_types=(AxisType.Auto, AxisType.Auto))


def param_specs() -> dict[str, P]:
  """Column-parallel hidden layers (particles sharded), row-parallel head."""
  return {
      'w1': P(None, 'model'), 'b1': P('model'),
      'w2': P(None, 'model'), 'b2': P('model'),
      'w3': P('model', None), 'b3': P(),
  }


def init_params(key: jax.Array, sizes: tuple[int, ...]) -> dict[str, jax.Array]:
  params = {}
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes, sizes[1:]), 1):
    params[f'w{i}'] = jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in)
    params[f'b{i}'] = jnp.zeros(fan_out)
  return params


def forward(params, x):
  h = jax.nn.relu(x @ params['w1'] + params['b1'])
  h = jax.nn.relu(h @ params['w2'] + params['b2'])
  return h @ params['w3'] + params['b3']


def loss_fn(params, x, y):
  logits = forward(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_optimizer(cell_size: int, shards: int) -> optax.GradientTransformation:
  return ko_optax.ko(3e-3, collision='soft', collision_rate=0.1,
                     normalization='mean', cell_size=cell_size,
                     cell_groups=shards, mask=COLLIDING, key=0)


def state_shardings(mesh, tx, params_abstract):
  """Shardings of (params, opt_state, step): Adam's moments follow params."""
  specs = param_specs()
  p_shard = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  replicated = NamedSharding(mesh, P())
  opt_abstract = jax.eval_shape(tx.init, params_abstract)
  o_shard = optax.tree_utils.tree_map_params(
      tx, lambda _, s: s, opt_abstract, p_shard,
      transform_non_params=lambda _: replicated)
  return {'params': p_shard, 'opt_state': o_shard, 'step': replicated}


def train_step(tx, state, x, y):
  """One step on a batch; returns the new train state and the loss."""
  loss, grads = jax.value_and_grad(loss_fn)(state['params'], x, y)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return {'params': params, 'opt_state': opt_state,
          'step': state['step'] + 1}, loss


def make_train_step(tx, shardings, batch_sharding):
  return jax.jit(
      functools.partial(train_step, tx),
      in_shardings=(shardings, batch_sharding, batch_sharding),
      out_shardings=(shardings, NamedSharding(batch_sharding.mesh, P())),
      donate_argnums=0)


def collision_collectives(mesh, tx, state) -> list[str]:
  """Collectives in the compiled KO update alone (grads sharded as params)."""
  with jax.set_mesh(mesh):
    hlo = jax.jit(tx.update).lower(
        state['params'], state['opt_state'], state['params']).compile()
  return sorted({m[0] for m in COLLECTIVES.findall(hlo.as_text())})


@jax.jit
def _correct(params, x, y):
  return jnp.mean(jnp.argmax(forward(params, x), -1) == y)


def accuracy(params, x, y) -> float:
  return float(_correct(params, x, y))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='20 steps and a small hidden layer (for tests).')
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--hidden', type=int, default=None)
  parser.add_argument('--cell-size', type=int, default=16)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--checkpoint-dir', default=None,
                      help='Where orbax writes (default: a temporary dir).')
  args = parser.parse_args(argv)
  steps = args.steps or (20 if args.quick else 400)
  hidden = args.hidden or (64 if args.quick else 512)

  if jax.device_count() < 8:
    raise SystemExit(
        f'needs 8 devices, found {jax.device_count()}: run as a script (it '
        'asks for 8 CPU devices) or set XLA_FLAGS='
        '--xla_force_host_platform_device_count=8 before JAX starts.')
  mesh = make_mesh()
  shards = mesh.shape['model']

  from sklearn import datasets  # here: multihost.py's workers skip it
  digits = datasets.load_digits()
  x_all = (digits.data / 16.0).astype(np.float32)
  y_all = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x_all))
  train, test = perm[:1400], perm[1400:]

  tx = make_optimizer(args.cell_size, shards)
  # Jitted: one compile instead of one per random-number operation.
  params = jax.jit(init_params, static_argnums=1)(jax.random.key(0),
                                                  (64, hidden, hidden, 10))
  shardings = state_shardings(mesh, tx, params)
  batch_sharding = NamedSharding(mesh, P('data'))
  init = jax.jit(lambda p: {'params': p, 'opt_state': tx.init(p),
                            'step': jnp.zeros([], jnp.int32)},
                 out_shardings=shardings)
  state = init(jax.device_put(params, shardings['params']))
  train_step = make_train_step(tx, shardings, batch_sharding)

  collectives = collision_collectives(mesh, tx, state)
  print(f'mesh {dict(mesh.shape)}; hidden kernel sharding '
        f'{state["params"]["w2"].sharding.spec}; collectives in the KO '
        f'update: {collectives or "none"}')

  rng = np.random.default_rng(1)
  batches = [rng.choice(train, args.batch, replace=False)
             for _ in range(steps)]

  def run(state, first, last):
    losses = []
    for i in range(first, last):
      x = jax.device_put(x_all[batches[i]], batch_sharding)
      y = jax.device_put(y_all[batches[i]], batch_sharding)
      state, loss = train_step(state, x, y)
      losses.append(float(loss))
    return state, losses

  half = steps // 2
  state, losses = run(state, 0, half)
  ckpt_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix='ko_sharded_')
  path = ocp.test_utils.erase_and_create_empty(ckpt_dir) / 'state'
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, state)
    ckpt.wait_until_finished()
    # Restore onto the mesh: the target carries shapes, dtypes and shardings.
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state, shardings)
    restored = ckpt.restore(path, target)
  same = all(
      bool(jnp.array_equal(jax.random.key_data(a), jax.random.key_data(b))
           if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
           else jnp.array_equal(a, b))
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)))
  same_shardings = all(
      a.sharding == b.sharding
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)))
  print(f'checkpoint at step {int(restored["step"])}: restored equal: {same}, '
        f'shardings equal: {same_shardings}')

  continued, tail = run(state, half, steps)
  resumed, tail_resumed = run(restored, half, steps)
  resumed_equal = bool(np.allclose(tail, tail_resumed, rtol=1e-6))
  params = resumed['params']
  result = {
      'steps': steps,
      'first_loss': losses[0] if losses else float('nan'),
      'final_loss': (losses + tail_resumed)[-1],
      'train_accuracy': accuracy(params, x_all[train], y_all[train]),
      'test_accuracy': accuracy(params, x_all[test], y_all[test]),
      'collectives_in_ko_update': collectives,
      'restored_equal': same,
      'restored_shardings_equal': same_shardings,
      'resumed_equal': resumed_equal,
      'kernel_sharding': str(params['w2'].sharding.spec),
  }
  del continued
  print(f'loss {result["first_loss"]:.3f} -> {result["final_loss"]:.3f}; '
        f'train acc {result["train_accuracy"]:.3f}, test acc '
        f'{result["test_accuracy"]:.3f}; resumed run equals uninterrupted: '
        f'{resumed_equal}')
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
