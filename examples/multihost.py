r"""KO under JAX's multi-controller runtime: several processes, one global mesh.

One process per host is how JAX runs on several machines: each process calls
``jax.distributed.initialize``, sees its own devices, feeds its own shard of
the global batch, and runs the same jitted step on a mesh of all devices.
This script does that on one machine by default, with 2 processes of 4 CPU
devices each talking over localhost (JAX's CPU collectives, gloo), and
checks three things:

* **a checkpoint written by all processes together** (orbax) and restored
  by a fresh set of processes continues training exactly: the resumed run
  equals the uninterrupted one bit for bit;
* **the same numbers as one process** (all 8 devices, the same mesh): one
  KO update of the same gradient is the same bit for bit (noise, pairings,
  cells); trained, the gradient's reductions run in another order across
  processes, so even Adam differs in the last bits, and KO must not add
  more than a small factor to that (``TOLERANCE``);
* **no communication in the collision**: with cells aligned with the shards
  of the particle axis (``cell_groups`` = 4 on a ``('data': 2, 'model': 4)``
  mesh), the compiled KO update holds no collective.

The model is the 3-layer MLP of ``sharded_training.py`` on scikit-learn's
digits: batch over ``'data'`` (which spans the processes), hidden layers
column-parallel over ``'model'`` (inside each process).

Usage::

  python examples/multihost.py            # 2 x 4 CPU devices, 200 steps
  python examples/multihost.py --quick    # 6 steps, small layers (tests)

On a cluster, start the same file once per host with ``--cluster`` (e.g.
``srun python examples/multihost.py --cluster --out /shared/run``):
``jax.distributed.initialize()`` then finds the coordinator from SLURM, Open
MPI or the TPU environment, and the run saves its checkpoint under
``--out`` (a path every host can reach).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import sharded_training as st

ARMS = ('adam', 'hard_cells', 'hard', 'diffusion', 'soft_cells')
# The quick mode's: the hard collision with the diffusion in one arm.
QUICK_ARMS = ('adam', 'hard_cells', 'soft_cells')
SHARDS = 4                    # the 'model' axis: shards of the particles
DEVICES = 8
BATCH = 64                    # global batch, split over 'data'
# KO's distance between the multi- and the single-process run may be at most
# TOLERANCE times Adam's own (or times float32's resolution of the params
# when Adam's is smaller): the order of the reductions differs, and KO reads
# the gradient in a few more places than Adam does.
TOLERANCE = 10.0


def make_optimizer(arm: str):
  """The optimizers compared: Adam and KO's sharded paths on Adam."""
  import optax

  import ko_optax
  cells = dict(cell_size=8, cell_groups=SHARDS)
  options = {
      'hard_cells': dict(collision='hard', temperature=1e-4, **cells),
      'hard': dict(collision='hard'),
      'diffusion': dict(collision=None, temperature=1e-4),
      'soft_cells': dict(collision='soft', normalization='mean', **cells),
  }
  if arm == 'adam':
    return optax.adam(3e-3)
  return ko_optax.ko(3e-3, collision_rate=0.1, mask=st.COLLIDING, key=0,
                     **options[arm])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(args, phase: str, processes: int, out: pathlib.Path) -> list:
  """Starts ``processes`` workers of this script for ``phase``."""
  port = free_port()
  common = [sys.executable, os.path.abspath(__file__), '--worker', phase,
            '--num-processes', str(processes), '--port', str(port),
            '--steps', str(args.steps), '--hidden', str(args.hidden),
            '--arms', ','.join(args.arms),
            '--out', str(out)]
  # Local runs are CPU runs, also on a machine with an accelerator.
  env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  return [subprocess.Popen(common + ['--process-id', str(i)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
          for i in range(processes)]


def wait(procs: list, what: str, timeout: float = 600.0) -> None:
  """Waits for the workers; a hung one (a lost peer) fails the run instead
  of blocking it."""
  deadline = time.monotonic() + timeout
  for p in procs:
    try:
      output, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      output = p.communicate()[0]
      raise SystemExit(f'{what}: no result after {timeout:.0f} s; killed '
                       f'the workers. Output:\n{output[-4000:]}') from None
    if p.returncode:
      raise SystemExit(f'{what}: a worker failed (exit {p.returncode}):\n'
                       + output[-4000:])


def max_difference(a: dict, b: dict) -> float:
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k])))
             for k in a)


def compare(out: pathlib.Path) -> dict:
  """Reads the runs the workers wrote and compares them."""
  load = lambda name: dict(np.load(out / f'{name}.npz'))
  multi, single, resumed = load('multi'), load('single'), load('resumed')
  with open(out / 'multi.json') as f:
    info = json.load(f)
  arms = {}
  for arm in info['losses']:
    prefix = f"['trained']['{arm}']['params']"
    ours = {k: v for k, v in multi.items() if k.startswith(prefix)}
    update = [k for k in multi if k.startswith(f"['update']['{arm}']")]
    arms[arm] = {
        'same_update': all(np.array_equal(multi[k], single[k])
                           for k in update),
        'max_abs_diff': max_difference(ours, single),
        'param_scale': max(float(np.max(np.abs(v))) for v in ours.values())}
  floor = np.finfo(np.float32).eps * max(a['param_scale']
                                         for a in arms.values())
  allowed = TOLERANCE * max(arms['adam']['max_abs_diff'], floor)
  for row in arms.values():
    row['within_tolerance'] = row['max_abs_diff'] <= allowed
  trained = [k for k in resumed if k.startswith("['trained']")]
  return {
      'arms': arms, 'allowed': allowed,
      'resumed_equal': all(np.array_equal(multi[k], resumed[k])
                           for k in trained),
      'resumed_leaves': len(trained),
      'collectives': info['collectives'], 'losses': info['losses'],
      'processes': info['processes'], 'devices': info['devices'],
  }


def report(result: dict, seconds: float) -> None:
  header = 'trained: max |multi - single|'
  print(f'{"arm":<11} {"same update":>11}  {header:>29}  {"x Adam":>7}')
  adam = max(result['arms']['adam']['max_abs_diff'], 1e-30)
  for arm, row in result['arms'].items():
    print(f'{arm:<11} {str(row["same_update"]):>11}  '
          f'{row["max_abs_diff"]:>29.2e}  {row["max_abs_diff"] / adam:>7.1f}')
  print(f'(same update: one update of the same gradient, bit for bit; '
        f'trained: after {len(result["losses"]["adam"])} steps, where the '
        f'reductions of the gradient run in another order)')
  for arm, found in result['collectives'].items():
    print(f'collectives in the KO update, {arm}: {found or "none"}')
  print(f'checkpoint saved by the processes together, restored by fresh '
        f'ones: resumed run equals uninterrupted, all '
        f'{result["resumed_leaves"]} leaves of every arm bit for bit: '
        f'{result["resumed_equal"]}')
  for arm, losses in result['losses'].items():
    print(f'{arm} loss {losses[0]:.3f} -> {losses[-1]:.3f}', end='; ')
  print(f'{seconds:.0f} s')


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='6 steps, hidden 32, 3 arms (for tests).')
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--hidden', type=int, default=None)
  parser.add_argument('--arms', default=None,
                      help=f'Comma-separated, of {",".join(ARMS)} (default: '
                      'all; with --quick: ' + ','.join(QUICK_ARMS) + ').')
  parser.add_argument('--out', default=None,
                      help='Working directory (default: a temporary one).')
  parser.add_argument('--cluster', action='store_true',
                      help='Run as one process of a real cluster.')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--num-processes', type=int, default=2,
                      help=argparse.SUPPRESS)
  parser.add_argument('--process-id', type=int, default=0,
                      help=argparse.SUPPRESS)
  parser.add_argument('--port', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.steps = args.steps or (6 if args.quick else 200)
  args.hidden = args.hidden or (32 if args.quick else 256)
  args.arms = (args.arms.split(',') if args.arms else
               list(QUICK_ARMS if args.quick else ARMS))
  if 'adam' not in args.arms or set(args.arms) - set(ARMS):
    parser.error(f'--arms: a comma-separated list of {", ".join(ARMS)} '
                 'that includes adam (the reference)')
  if args.worker or args.cluster:
    return worker(args)
  start = time.perf_counter()
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix='ko_multihost_'))
  out.mkdir(parents=True, exist_ok=True)
  shutil.rmtree(out / 'checkpoint', ignore_errors=True)
  print(f'{args.num_processes} processes x {DEVICES // args.num_processes} '
        f'CPU devices on localhost, {args.steps} steps; writing {out}')
  write_batches(out / 'batches.npz', args.steps, BATCH)
  multi = launch(args, 'multi', args.num_processes, out)
  # The single-process reference runs beside them: here if this process has
  # the 8 CPU devices (as a script, or under the tests), else in its own.
  if cpu_devices_here() == DEVICES:
    try:
      worker(argparse.Namespace(**{**vars(args), 'worker': 'single',
                                   'num_processes': 1}), here=True)
    except BaseException:
      for p in multi:
        p.kill()
      raise
  else:
    wait(launch(args, 'single', 1, out), 'single-process run')
  wait(multi, 'multi-process run')
  wait(launch(args, 'resume', args.num_processes, out), 'resumed run')
  result = compare(out)
  report(result, time.perf_counter() - start)
  return result


# ----------------------------------------------------------------------------
# The worker: what every process runs.


def cpu_devices_here() -> int:
  """How many CPU devices this process's JAX runs on (0 if its default
  backend is another)."""
  import jax
  return len(jax.devices()) if jax.default_backend() == 'cpu' else 0


def start_runtime(args):
  """Joins the processes into one JAX runtime; returns jax."""
  import jax
  if args.cluster:
    jax.distributed.initialize()    # coordinator from SLURM / MPI / TPU
    return jax
  jax.config.update('jax_num_cpu_devices', DEVICES // args.num_processes)
  if args.num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'localhost:{args.port}', args.num_processes,
                               args.process_id)
  return jax


def global_batch(jax, sharding, x: np.ndarray):
  """The global batch as one array; this process gives only its rows."""
  rows = [index[0] for index in
          sharding.addressable_devices_indices_map(x.shape).values()]
  first = min(r.start or 0 for r in rows)
  last = max(x.shape[0] if r.stop is None else r.stop for r in rows)
  return jax.make_array_from_process_local_data(sharding, x[first:last],
                                                x.shape)


def gathered(jax, mesh, tree) -> dict:
  """Every leaf of a global pytree as a NumPy array, on every process,
  named by its path (one program gathers them all)."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  as_data = jax.tree.map(
      lambda x: jax.random.key_data(x)
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)
  full = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(as_data)
  leaves, _ = jax.tree_util.tree_flatten_with_path(full)
  return {jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
          for path, leaf in leaves}


def write_batches(path: pathlib.Path, steps: int, batch: int) -> None:
  """The global batches of the run (scikit-learn's digits), once for all
  processes."""
  from sklearn import datasets
  digits = datasets.load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  rng = np.random.default_rng(1)
  rows = np.stack([rng.choice(len(x), batch, replace=False)
                   for _ in range(steps)])
  np.savez(path, x=x[rows], y=y[rows])


def initial_state(jax, args, mesh):
  """The optimizers and every arm's train state (the same initial params),
  with their shardings."""
  import jax.numpy as jnp

  txs = {arm: make_optimizer(arm) for arm in args.arms}
  sizes = (64, args.hidden, args.hidden, 10)
  abstract = jax.eval_shape(lambda k: st.init_params(k, sizes),
                            jax.random.key(0))
  shardings = {arm: st.state_shardings(mesh, tx, abstract)
               for arm, tx in txs.items()}

  def init(key):
    params = st.init_params(key, sizes)
    return {arm: {'params': params, 'opt_state': tx.init(params),
                  'step': jnp.zeros([], jnp.int32)}
            for arm, tx in txs.items()}

  state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  return txs, shardings, state


def make_step(jax, txs, shardings, batch_sharding):
  """One jitted step of every arm on the same global batch."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P


  def step(state, x, y):
    out = {arm: st.train_step(tx, state[arm], x, y)
           for arm, tx in txs.items()}
    return ({arm: o[0] for arm, o in out.items()},
            {arm: o[1] for arm, o in out.items()})

  replicated = NamedSharding(batch_sharding.mesh, P())
  return jax.jit(step, in_shardings=(shardings, batch_sharding,
                                     batch_sharding),
                 out_shardings=(shardings, replicated), donate_argnums=0)


def restore(jax, path, state, shardings):
  """A fresh set of processes reads the checkpoint onto the mesh."""
  import orbax.checkpoint as ocp
  target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(path, target)


def save(path, state) -> None:
  """Every process calls save with the same path; each writes its shards."""
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, state)
    ckpt.wait_until_finished()


def same_gradient_updates(jax, txs, shardings, state):
  """Every arm's update of one fixed gradient from its initial state, and
  the collectives in each compiled update.

  The gradient is a function of each parameter alone, so no reduction
  across processes is involved: any difference between process layouts
  would be KO's own (its noise, pairings and cells).
  """
  import jax.numpy as jnp

  updates, collectives = {}, {}
  for arm, tx in txs.items():
    def update(arm_state, tx=tx):
      params = arm_state['params']
      grads = jax.tree.map(lambda p: 1e-2 * jnp.cos(7.0 * p), params)
      return tx.update(grads, arm_state['opt_state'], params)[0]
    compiled = jax.jit(update, out_shardings=shardings[arm]['params']).lower(
        state[arm]).compile()
    updates[arm] = compiled(state[arm])
    collectives[arm] = sorted({m[0] for m in st.COLLECTIVES.findall(
        compiled.as_text())})
  return updates, collectives


def train(jax, args, mesh, phase: str, out: pathlib.Path):
  """Trains every arm for the phase: 'multi' and 'single' from the start
  ('multi' saves the state half-way), 'resume' from that checkpoint."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  txs, shardings, state = initial_state(jax, args, mesh)
  batch_sharding = NamedSharding(mesh, P('data'))
  step = make_step(jax, txs, shardings, batch_sharding)
  half = args.steps // 2
  first = 0
  updates, collectives = None, {}
  if phase == 'resume':
    state, first = restore(jax, out / 'checkpoint', state, shardings), half
  else:
    updates, collectives = same_gradient_updates(jax, txs, shardings, state)
  losses: dict = {arm: [] for arm in args.arms}
  batches = out / 'batches.npz'
  if args.cluster:              # no launcher: the first process writes it
    if jax.process_index() == 0:
      write_batches(batches, args.steps, BATCH)
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('batches written')
  data = np.load(batches)
  for i, (x, y) in enumerate(zip(data['x'], data['y'])):
    if i < first:
      continue
    if i == half and phase == 'multi':
      save(out / 'checkpoint', state)
    state, loss = step(state, global_batch(jax, batch_sharding, x),
                       global_batch(jax, batch_sharding, y))
    for arm in args.arms:
      losses[arm].append(float(loss[arm]))
  return state, losses, updates, collectives


def worker(args, here: bool = False) -> dict:
  """One process: trains the arms of its phase and writes what it found
  (``here``: in the launcher's process, whose JAX runtime is started)."""
  if here:
    import jax
  else:
    jax = start_runtime(args)
  # 'model' inside a process (a host's fast links), 'data' across them.
  mesh = st.make_mesh(jax.device_count() // SHARDS, SHARDS)
  out = pathlib.Path(args.out)
  phase = 'multi' if args.cluster else args.worker
  state, losses, updates, collectives = train(jax, args, mesh, phase, out)
  info = {'losses': losses, 'collectives': {}, 'mesh': dict(mesh.shape),
          'processes': jax.process_count(), 'devices': jax.device_count()}
  # Cells aligned with the shards: no collective in the compiled update.
  info['collectives'] = {arm: found for arm, found in collectives.items()
                         if arm.endswith('_cells')}
  arrays = gathered(jax, mesh, {'trained': state, 'update': updates})
  if jax.process_index() == 0:
    name = 'resumed' if phase == 'resume' else phase
    np.savez(out / f'{name}.npz', **arrays)
    with open(out / f'{name}.json', 'w') as f:
      json.dump(info, f)
    if args.cluster:
      print(f'{info["processes"]} processes, mesh {info["mesh"]}; loss '
            + ', '.join(f'{arm} {v[0]:.3f} -> {v[-1]:.3f}'
                        for arm, v in losses.items())
            + f'; collectives in the KO update: {info["collectives"]}; '
            f'checkpoint and results in {out}')
  return info

if __name__ == '__main__':
  if '--worker' not in sys.argv and '--cluster' not in sys.argv:
    # The launcher runs the single-process reference on 8 CPU devices.
    import jax
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', DEVICES)
  main(sys.argv[1:])
