"""Tests of ko_optax.plotting and ko_optax.condensation_metrics."""

import builtins
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ko_optax
from ko_optax import plotting


def test_learning_curves_write_a_png(tmp_path):
  steps = np.arange(6)
  runs = {'Adam': np.random.default_rng(0).random((6, 3)),
          'KO': np.linspace(0.1, 1.0, 6)}  # one seed: no band
  path = tmp_path / 'curves.png'
  fig = plotting.plot_learning_curves(
      steps, {'test accuracy': runs, 'loss': runs}, logy=('loss',),
      path=str(path), suptitle='t')
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  axes = fig.get_axes()
  assert len(axes) == 2 and axes[1].get_yscale() == 'log'
  assert [ln.get_label() for ln in axes[0].get_lines()] == ['Adam', 'KO']
  np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(),
                             runs['Adam'].mean(axis=1))


def test_cosine_heatmaps(tmp_path):
  w = jax.random.normal(jax.random.key(0), (5, 6))
  cos = np.asarray(ko_optax.cosine_matrix(w))
  path = tmp_path / 'cos.png'
  fig = plotting.plot_cosine_matrices({'Adam': cos, 'KO': np.eye(6)},
                                      path=str(path))
  assert path.stat().st_size > 1000
  titles = [a.get_title() for a in fig.get_axes()[:2]]
  off = np.abs(cos[~np.eye(6, dtype=bool)]).mean()
  assert titles[0] == f'Adam\nmean |cos| = {off:.3f}'
  assert titles[1].endswith('mean |cos| = 0.000')


def test_neuron_order_groups_clusters():
  # Two clusters of parallel neurons, interleaved: the order separates them.
  a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  w = np.stack([a, b, a, b, a, b], axis=1)  # (D, N) = (2, 6)
  cos = np.asarray(ko_optax.cosine_matrix(jnp.asarray(w)))
  order = plotting.neuron_order(cos)
  assert sorted(order) == list(range(6))
  groups = [int(i) % 2 for i in order]
  assert groups in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])


def test_missing_matplotlib_names_the_extra(monkeypatch):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name.startswith('matplotlib'):
      raise ImportError('No module named matplotlib')
    return real_import(name, *args, **kwargs)

  for name in [m for m in sys.modules if m.startswith('matplotlib')]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setattr(builtins, '__import__', fake_import)
  with pytest.raises(ImportError, match=r'ko-optax\[examples\]'):
    plotting.pyplot()


def test_condensation_metrics_flat_and_jittable():
  params = {'params': {'dense': {'kernel': jnp.ones((3, 4)),
                                 'bias': jnp.zeros(4)},
                       'conv': {'kernel': jnp.eye(4).reshape(1, 4, 4)}}}
  m = jax.jit(ko_optax.condensation_metrics)(params)
  assert sorted(m) == ['params/conv/kernel/effective_rank',
                       'params/conv/kernel/mean_abs_cos',
                       'params/dense/kernel/effective_rank',
                       'params/dense/kernel/mean_abs_cos']
  assert float(m['params/dense/kernel/mean_abs_cos']) == pytest.approx(1.0)
  assert float(m['params/conv/kernel/mean_abs_cos']) == pytest.approx(0.0)
  assert float(m['params/conv/kernel/effective_rank']) == pytest.approx(4.0)
