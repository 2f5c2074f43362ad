"""Bit-for-bit check of ko_optax's updates across a refactor.

A change that should not change behaviour (a split into modules, a rename,
a faster kernel that must give the same numbers) is checked by running this
on a checkout before it and on one after it, then comparing:

  python examples/benchmarks/cost/bitcheck.py run OLD_ROOT old.npz [--quick]
  python examples/benchmarks/cost/bitcheck.py run NEW_ROOT new.npz [--quick]
  python examples/benchmarks/cost/bitcheck.py compare old.npz new.npz

(about 4 minutes for --quick, 7 for the full selection, on 2 CPU cores;
the files are 100-200 MB.)

``run`` imports ko_optax and ko_examples from ROOT (ROOT and ROOT/examples
first on sys.path), builds ResNet-18 (narrow) and a 12-block GPT (narrow,
unscanned and scanned), and for a set of configurations runs 3 jitted
update steps (params updated in between) and one eager tx.update, saving all
updates and final states (keys as key_data). Also runs the public operators
on a few arrays and records jaxpr sizes of a ko() update on the GPT.
"""

import os
import sys
import time


def flat(prefix, tree, out):
  import jax
  import numpy as np
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in leaves:
    name = prefix + jax.tree_util.keystr(path)
    if hasattr(leaf, 'dtype') and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
      name += '#key'
    out[name] = np.asarray(leaf)


def models():
  from flax import nnx
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from ko_examples import gpt
  from ko_examples import models as models_lib
  rng = np.random.default_rng(0)
  out = {}
  # ResNet-18, narrow.
  model = models_lib.ResNet18(width=8)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(np.arange(2) % 10)
  params = model.init(jax.random.key(0), x[:1])

  def rn_loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, x), y).mean()
  out['resnet18'] = (params, jax.jit(jax.grad(rn_loss)), False)
  for scanned in (False, True):
    cfg = gpt.GPTConfig(context=16, width=64, depth=12, heads=2,
                        scan_blocks=scanned)
    m = gpt.GPT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m, nnx.Param)
    p = nnx.as_pure(state)
    tok = jnp.asarray(rng.integers(0, 256, size=(2, 17)), jnp.int32)

    def loss(p, graphdef=graphdef, tok=tok):
      return gpt.lm_loss(nnx.merge(graphdef, p)(tok[:, :-1]), tok[:, 1:])
    out['gpt12_scan' if scanned else 'gpt12'] = (p, jax.jit(jax.grad(loss)),
                                                 scanned)
  return out


def configs(name, scanned):
  import optax

  import ko_optax
  kw = {}
  if scanned:
    kw['particle_axes'] = ko_optax.flax_particle_axes(stacked='blocks')
  sc_kw = dict(kw)
  c = {
      'ko_hard': lambda: ko_optax.ko(1e-3, **kw),
      'ko_hard_cells': lambda: ko_optax.ko(1e-3, cell_size=8, **kw),
      'ko_hard_cells_groups': lambda: ko_optax.ko(
          1e-3, cell_size=8, cell_groups=2, **kw),
      'ko_soft_cells': lambda: ko_optax.ko(1e-3, collision='soft',
                                           cell_size=8, **kw),
      'ko_hard_temp': lambda: ko_optax.ko(1e-3, temperature=1e-4, **kw),
      'ko_soft_temp': lambda: ko_optax.ko(1e-3, collision='soft',
                                          temperature=1e-4, **kw),
      'ko_hard_velocity': lambda: ko_optax.ko(1e-3, collide_on='velocity',
                                              **kw),
      'ko_soft_velocity_sgd': lambda: ko_optax.ko(
          1e-3, base='sgd', collision='soft', collide_on='velocity', **kw),
      'ko_schedule': lambda: ko_optax.ko(
          1e-3, collision_rate=optax.linear_schedule(0.0, 0.2, 2),
          temperature=optax.linear_schedule(0.0, 1e-4, 2), **kw),
      'ko_soft_schedule': lambda: ko_optax.ko(
          1e-3, collision='soft',
          collision_rate=optax.linear_schedule(0.0, 0.2, 2), **kw),
      'inject_hard': lambda: optax.inject_hyperparams(
          ko_optax.ko, static_args=('particle_axes',))(
              learning_rate=1e-3, collision_rate=0.1, temperature=1e-5,
              **kw),
      'inject_soft': lambda: optax.inject_hyperparams(
          ko_optax.ko, static_args=('particle_axes',))(
              learning_rate=1e-3, collision='soft', collision_rate=0.1,
              **kw),
      'sc_hard': lambda: ko_optax.stochastic_collision(0.1, mode='hard',
                                                       **sc_kw),
      'sc_soft': lambda: ko_optax.stochastic_collision(
          0.1, mode='soft', include_self=True, threshold=0.1, **sc_kw),
      'td': lambda: ko_optax.thermal_diffusion(1e-3, key=3),
      'td_schedule': lambda: ko_optax.thermal_diffusion(
          optax.linear_schedule(0.0, 1e-3, 2), key=3),
  }
  for norm in (None, 'mean', 'norm', 'similarity'):
    c[f'ko_soft_{norm}'] = (lambda norm=norm: ko_optax.ko(
        1e-3, collision='soft', normalization=norm, **kw))
  if name.startswith('gpt'):
    c['ko_gpt'] = lambda: ko_optax.ko_gpt(1e-3, **kw)
    c['ko_gpt_all'] = lambda: ko_optax.ko_gpt(1e-3, layers=lambda p: True,
                                              **kw)
  return c


# The machine is shared and slow: a selection (the quick run covers ko_hard,
# ko_soft_norm and sc_hard on all three models, eager included).
SELECTED = {
    'resnet18': ('ko_soft_None', 'ko_hard_cells', 'ko_soft_cells',
                 'ko_hard_temp', 'inject_hard', 'ko_schedule', 'td',
                 'ko_hard_velocity'),
    'gpt12': ('ko_soft_mean', 'ko_soft_similarity', 'ko_gpt',
              'ko_hard_cells_groups', 'sc_soft', 'td_schedule',
              'inject_soft', 'ko_soft_schedule', 'ko_soft_velocity_sgd',
              'ko_soft_temp'),
    'gpt12_scan': ('ko_gpt_all', 'ko_hard_cells', 'ko_schedule'),
}
EAGER = ('ko_soft_None', 'ko_hard_cells', 'ko_gpt', 'td_schedule',
         'ko_schedule')


def public_ops(out):
  import jax
  import jax.numpy as jnp

  import ko_optax
  k = jax.random.key
  for i, (d, n) in enumerate([(8, 6), (16, 7), (5, 1), (3, 64), (33, 20)]):
    w = jax.random.normal(k(10 + i), (d, n))
    g = jax.random.normal(k(20 + i), (d, n))
    out[f'public/hard/{d}x{n}'] = jnp.asarray(
        ko_optax.hard_collision(w, g, 1.0, k(30 + i)))
    out[f'public/hard_ls/{d}x{n}'] = jnp.asarray(
        ko_optax.hard_collision(w, g, 0.5, k(31 + i), length_scale=2.0))
    for norm in (None, 'mean', 'norm', 'similarity'):
      out[f'public/soft/{norm}/{d}x{n}'] = jnp.asarray(
          ko_optax.soft_collision(w, g, 0.3, normalization=norm))
    out[f'public/soft_self/{d}x{n}'] = jnp.asarray(ko_optax.soft_collision(
        w, g, 0.3, threshold=0.2, include_self=True))
    soft = lambda w_, g_, k_: ko_optax.soft_collision(w_, g_, 0.3)
    out[f'public/cells_soft/{d}x{n}'] = jnp.asarray(
        ko_optax.collide_in_cells(w, g, k(40 + i), soft, cell_size=4))
    out[f'public/cells_soft_jit/{d}x{n}'] = jnp.asarray(jax.jit(
        lambda w, g, key, soft=soft: ko_optax.collide_in_cells(
            w, g, key, soft, cell_size=4, groups=1))(w, g, k(41 + i)))


def count_eqns(jaxpr):
  n = 0
  for eqn in jaxpr.eqns:
    n += 1
    for v in eqn.params.values():
      for j in (v if isinstance(v, (tuple, list)) else (v,)):
        if hasattr(j, 'jaxpr') and hasattr(j.jaxpr, 'eqns'):
          n += count_eqns(j.jaxpr)
        elif hasattr(j, 'eqns'):
          n += count_eqns(j)
  return n


def run(root, path, quick):
  sys.path.insert(0, os.path.abspath(root))
  sys.path.insert(1, os.path.join(os.path.abspath(root), 'examples'))
  import jax
  import numpy as np
  import optax

  import ko_optax
  assert ko_optax.__file__.startswith(os.path.abspath(root)), ko_optax.__file__
  out = {}
  t0 = time.time()
  if quick:
    public_ops(out)
  print('public ops', time.time() - t0, flush=True)
  for mname, (params, grad_fn, scanned) in models().items():
    for cname, make in configs(mname, scanned).items():
      if quick and cname not in ('ko_hard', 'ko_soft_norm', 'sc_hard'):
        continue
      if not quick and cname not in SELECTED[mname]:
        continue
      t = time.time()
      tx = make()
      state0 = tx.init(params)
      update = jax.jit(tx.update)
      p, s = params, state0
      for i in range(3):
        g = grad_fn(p)
        u, s = update(g, s, p)
        flat(f'{mname}/{cname}/step{i}/updates', u, out)
        p = optax.apply_updates(p, u)
      flat(f'{mname}/{cname}/final_state', s, out)
      if quick or cname in EAGER:
        u, s1 = tx.update(grad_fn(params), state0, params)
        flat(f'{mname}/{cname}/eager/updates', u, out)
        flat(f'{mname}/{cname}/eager/state', s1, out)
      print(mname, cname, f'{time.time() - t:.1f}s', flush=True)
    if mname == 'gpt12':
      for coll in ('hard', 'soft'):
        tx = ko_optax.ko(1e-3, collision=coll)
        st = tx.init(params)
        jaxpr = jax.make_jaxpr(tx.update)(grad_fn(params), st, params)
        out[f'meta/jaxpr_top_eqns/{coll}'] = np.asarray(len(jaxpr.eqns))
        out[f'meta/jaxpr_all_eqns/{coll}'] = np.asarray(
            count_eqns(jaxpr.jaxpr))
        out[f'meta/jaxpr_chars/{coll}'] = np.asarray(len(str(jaxpr)))
        print('jaxpr', coll, len(jaxpr.eqns), count_eqns(jaxpr.jaxpr),
              len(str(jaxpr)), flush=True)
  np.savez(path, **out)
  print('saved', len(out), 'entries in', f'{time.time() - t0:.0f}s')


def compare(a, b):
  import numpy as np
  x, y = np.load(a), np.load(b)
  kx, ky = set(x.files), set(y.files)
  bad = []
  for k in sorted(kx ^ ky):
    bad.append(f'only in {"A" if k in kx else "B"}: {k}')
  same = 0
  for k in sorted(kx & ky):
    u, v = x[k], y[k]
    if u.dtype != v.dtype or u.shape != v.shape or u.tobytes() != v.tobytes():
      bad.append(f'DIFFERS: {k}')
    else:
      same += 1
  print(f'{same} equal of {len(kx & ky)} common ({len(kx)} in A, '
        f'{len(ky)} in B)')
  for line in bad:
    print(line)
  return not bad


if __name__ == '__main__':
  if sys.argv[1] == 'run':
    run(sys.argv[2], sys.argv[3], '--quick' in sys.argv)
  else:
    sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
