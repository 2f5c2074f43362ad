"""Data-parallel KO training on a CPU mesh of several host devices.

JAX can split the host CPU into N devices; the count must be set before the
backend starts (this script does it first thing, unless JAX is already
running, as under pytest whose conftest asks for 8). The batch is sharded
over a ``('data',)`` mesh axis, the params and KO's state are replicated;
``jax.jit`` inserts the gradient all-reduce, so KO sees the same full-batch
gradient on every device and its collisions need no extra communication.

The script checks that a sharded step gives the same params as the same step
on one device (up to float rounding), then trains.

Usage::

    python examples/data_parallel.py [--devices 4] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _set_devices(n: int):
  """Asks for n CPU devices; only effective before JAX's backend starts."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update('jax_num_cpu_devices', n)
  except RuntimeError:
    pass  # the backend is already running (e.g. under pytest): keep it


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--devices', type=int, default=4)
  p.add_argument('--steps', type=int, default=500)
  p.add_argument('--batch-size', type=int, default=128,
                 help='global batch (a multiple of the device count)')
  p.add_argument('--quick', action='store_true', help='20 steps')
  args = p.parse_args(argv)
  steps = 20 if args.quick else args.steps
  _set_devices(args.devices)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from ko_examples import data  # pylint: disable=g-import-not-at-top
  from ko_examples import models  # pylint: disable=g-import-not-at-top
  import ko_optax  # pylint: disable=g-import-not-at-top

  n = min(args.devices, jax.device_count())
  if n < args.devices:
    print(f'only {jax.device_count()} devices available; using {n}')
  mesh = jax.make_mesh((n,), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])
  batch_sharding = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  batch_size = max(n, args.batch_size // n * n)

  ds = data.load_mnist1d()
  model = models.MLP(hidden=(100, 100))
  tx = ko_optax.ko(1e-2, collision='soft', collision_rate=0.1)
  params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(ds.x_train[:1]))
  opt_state = jax.jit(tx.init)(params)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, x), y).mean()

  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  sharded_step = jax.jit(
      step, in_shardings=(replicated, replicated, batch_sharding,
                          batch_sharding),
      out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))
  single_step = jax.jit(step)

  stream = data.batches(ds.x_train, ds.y_train, batch_size, seed=0)
  x, y = (jnp.asarray(a) for a in next(stream))
  ref_params, _, _ = single_step(params, opt_state, x, y)
  params = jax.device_put(params, replicated)
  opt_state = jax.device_put(opt_state, replicated)
  xs, ys = jax.device_put(x, batch_sharding), jax.device_put(y, batch_sharding)
  print(f'mesh {dict(mesh.shape)}; batch {batch_size} sharded as '
        f'{xs.sharding.spec}, {len(xs.addressable_shards)} shards of '
        f'{xs.addressable_shards[0].data.shape[0]}')
  params, opt_state, loss = sharded_step(params, opt_state, xs, ys)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(params), jax.tree.leaves(ref_params)))
  print(f'sharded step vs one device: max |params difference| = {diff:.2e}')
  for i in range(1, steps):
    x, y = next(stream)
    xs = jax.device_put(x, batch_sharding)
    ys = jax.device_put(y, batch_sharding)
    params, opt_state, loss = sharded_step(params, opt_state, xs, ys)
    if i % max(1, steps // 5) == 0 or i == steps - 1:
      print(f'step {i:5d}  loss {float(loss):.4f}')
  logits = jax.jit(model.apply)(params, jnp.asarray(ds.x_test))
  test = float(np.mean(np.argmax(np.asarray(logits), -1) == ds.y_test))
  print(f'test accuracy {test:.3f} on {n} devices')
  return {'devices': n, 'max_diff': diff, 'test_acc': test,
          'loss': float(loss),
          'param_sharding': str(jax.tree.leaves(params)[0].sharding.spec)}


if __name__ == '__main__':
  main()
