"""The example scripts' quick modes run and print / write what they promise.

Each example exposes ``main(argv)``; the tests call it in-process (the
conftest gives JAX 8 CPU devices and puts examples/ on sys.path).
"""

import json
import math
import os

import jax
import numpy as np
import pytest

import checkpointing
import cifar10
import compare
import data_parallel
import gpt_scanned
import linen_training
import nnx_training
import sharded_training
from test_data import _write_cifar
from test_data import _write_text
import text_classification

pytestmark = pytest.mark.slow


def test_compare_quick(tmp_path, capsys):
  out = tmp_path / 'run'
  results = compare.main(['--quick', '--steps', '20', '--eval-every', '10',
                          '--optimizers', 'ko_soft,adam',
                          '--out', str(out)])
  printed = capsys.readouterr().out
  for label in ('KO-soft (Adam)', 'Adam'):
    assert label in printed
  assert 'test acc (2 seeds)' in printed and '+-' in printed
  for name in ('curves.png', 'condensation.png', 'cosine.png',
               'results.json'):
    assert (out / name).stat().st_size > 1000, name
    assert f'wrote {out / name}' in printed
  with open(out / 'results.json') as f:
    saved = json.load(f)
  assert saved['steps'] == [0, 10, 20]
  for name in ('ko_soft', 'adam'):
    row = saved['results'][name]
    assert 0.0 <= row['test_acc_mean'] <= 1.0 and row['ms_per_step'] > 0
    assert set(row['mean_abs_cos']) == {'params/hidden_0/kernel',
                                        'params/hidden_1/kernel'}
    curve = np.asarray(saved['history'][name]['test_acc'])
    assert curve.shape == (3, 2)  # evaluations x seeds
    assert curve[-1].mean() > curve[0].mean()  # it learns
  assert results['results'].keys() == saved['results'].keys()


def test_compare_rejects_unknown_optimizer(tmp_path):
  with pytest.raises(SystemExit, match='unknown optimizer'):
    compare.main(['--optimizers', 'lion', '--out', str(tmp_path)])


def test_nnx_quick(capsys):
  out = nnx_training.main(['--quick'])
  printed = capsys.readouterr().out
  assert 'collision_rate -> 0' in printed and 'test accuracy' in printed
  rates = out['log']['collision_rate']
  assert rates[0] == pytest.approx(0.1) and rates[-1] == 0.0
  assert rates.index(0.0) == 20
  lrs = out['log']['learning_rate']
  assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1e-2, rel=0.05)
  assert out['log']['loss'][-1] < out['log']['loss'][0]
  assert out['test_acc'] > 0.15


def test_linen_multi_transform_equals_mask(capsys):
  a = linen_training.main(['--quick', '--mode', 'multi_transform'])
  b = linen_training.main(['--quick', '--mode', 'mask'])
  printed = capsys.readouterr().out
  assert ('KO collisions on params/hidden_0/kernel, params/hidden_1/kernel;'
          in printed)
  assert a['chosen'] == b['chosen'] and len(a['chosen']) == 2
  # Adam is elementwise, so KO on the hidden kernels + Adam elsewhere is the
  # same optimizer whichever way it is written.
  np.testing.assert_allclose(a['losses'], b['losses'], rtol=1e-5)
  assert a['losses'][-1] < a['losses'][0]


def test_checkpoint_resume_is_identical(tmp_path, capsys):
  out = checkpointing.main(['--quick', '--dir', str(tmp_path)])
  printed = capsys.readouterr().out
  assert out['same'] and out['same_at_save'] and out['step'] == 20
  assert os.path.isdir(out['path'])
  assert 'resumed run equals uninterrupted run after 20 steps: True' in printed


def test_data_parallel_quick(capsys):
  out = data_parallel.main(['--quick', '--devices', '4'])
  printed = capsys.readouterr().out
  assert out['devices'] == 4 and out['max_diff'] < 1e-5
  assert "sharded as P('data',), 4 shards of 32" in printed
  assert np.isfinite(out['loss'])


def test_cifar10_quick_and_missing(tmp_path, capsys):
  with pytest.raises(SystemExit, match='data_batch_1'):
    cifar10.main(['--data', str(tmp_path / 'nowhere'), '--quick'])
  _write_cifar(tmp_path / 'cifar-10-batches-py', n_per_batch=20)
  out = cifar10.main(['--data', str(tmp_path), '--quick', '--batch-size',
                      '8', '--optimizers', 'ko_soft'])
  printed = capsys.readouterr().out
  assert '90 train, 10 val, 5 test' in printed
  assert set(out) == {'ko_soft'} and np.isfinite(out['ko_soft']['final_loss'])


def test_text_quick_and_missing(tmp_path, capsys):
  with pytest.raises(SystemExit, match='aclImdb'):
    text_classification.main(['--data', str(tmp_path / 'aclImdb'),
                              '--quick'])
  _write_text(tmp_path)
  for model, opt in (('bag', 'adam'), ('transformer', 'ko_soft')):
    out = text_classification.main(['--data', str(tmp_path), '--quick',
                                    '--model', model, '--batch-size', '4',
                                    '--optimizers', opt])
    assert set(out) == {opt} and np.isfinite(out[opt]['final_loss'])
  assert '2 classes, 7 train, 1 val, 2 test' in capsys.readouterr().out


def test_compare_names_the_extra_when_a_dependency_is_missing(monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == 'mnist1d':
      raise ImportError('No module named mnist1d')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', fake_import)
  with pytest.raises(SystemExit, match=r'mnist1d.*ko-optax\[examples\]'):
    compare.main(['--quick'])


def test_gpt_scanned_quick(capsys):
  out = gpt_scanned.main(['--quick'])
  printed = capsys.readouterr().out
  assert 'bits per byte' in printed and 'condensation of block 1' in printed
  assert set(out['history']) == {'ko', 'adamw'}
  for name, h in out['history'].items():
    assert all(math.isfinite(v) for v in h['train_bpb'] + h['val_bpb'])
    assert h['train_bpb'][-1] < h['train_bpb'][0] < 8.5, name
    assert h['val_bpb'][-1] < h['val_bpb'][0], name
    cos, rank = out['condensation'][name]['q']
    assert 0.0 <= cos <= 1.0 and 1.0 <= rank <= 64.0


@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 CPU devices')
def test_sharded_example_quick(tmp_path):
  result = sharded_training.main(
      ['--quick', '--checkpoint-dir', str(tmp_path / 'ckpt')])
  assert result['collectives_in_ko_update'] == []
  assert result['restored_equal'] and result['restored_shardings_equal']
  assert result['resumed_equal']
  assert result['final_loss'] < result['first_loss']
  assert result['kernel_sharding'] == str(jax.sharding.PartitionSpec(
      None, 'model'))
