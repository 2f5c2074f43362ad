"""The example GPT: scanned and list-of-blocks variants agree; its example runs.

``ko_examples`` is importable through the conftest (examples/ on sys.path).
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_scanned
from ko_examples import gpt


def _pair(depth=3, width=32, heads=4, context=16):
  cfg = gpt.GPTConfig(depth=depth, width=width, heads=heads, context=context)
  flat = gpt.GPT(cfg, rngs=nnx.Rngs(0))
  scanned = gpt.GPT(gpt.GPTConfig(**{**cfg.__dict__, 'scan_blocks': True}),
                    rngs=nnx.Rngs(1))
  return flat, scanned


def test_scanned_blocks_are_stacked_leaves():
  flat, scanned = nnx.eval_shape(lambda: _pair(depth=3, width=32))
  params = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
  assert params['blocks']['q']['kernel'].shape == (3, 32, 32)
  assert params['blocks']['up']['kernel'].shape == (3, 32, 128)
  assert params['blocks']['ln1']['scale'].shape == (3, 32)
  assert params['head']['kernel'].shape == (32, 256)
  n_flat = len(jax.tree.leaves(nnx.state(flat, nnx.Param)))
  n_scanned = len(jax.tree.leaves(params))
  assert (n_flat, n_scanned) == (3 * 16 + 6, 16 + 6)


def test_scanned_equals_unscanned_for_the_same_weights():
  flat, scanned = _pair(depth=2, width=16)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)),
                  jnp.int32)
  forward = nnx.jit(lambda m, x: m(x))
  before = forward(scanned, x)
  gpt.stack_blocks(flat, scanned)
  np.testing.assert_allclose(forward(scanned, x), forward(flat, x),
                             atol=2e-5, rtol=1e-5)
  assert not np.allclose(before, forward(flat, x))   # the copy did something
  # and the same gradients, block i of the stacked leaf = block i of the list
  y = jnp.roll(x, -1, axis=1)
  grad = nnx.jit(nnx.grad(lambda m, x, y: gpt.lm_loss(m(x), y)))
  g_flat = grad(flat, x, y)
  g_scan = grad(scanned, x, y)
  g_flat = nnx.to_pure_dict(g_flat)
  g_scan = nnx.to_pure_dict(g_scan)
  for i in range(2):
    np.testing.assert_allclose(g_scan['blocks']['v']['kernel'][i],
                               g_flat['blocks'][i]['v']['kernel'],
                               atol=1e-5, rtol=1e-4)


def test_text_folder_split_is_by_file_and_fixed(tmp_path):
  for i in range(30):
    (tmp_path / f'f{i:02d}.py').write_bytes(b'x = %d\n' % i)
  (tmp_path / 'notes.txt').write_bytes(b'not read')
  a = gpt.read_text_folder(str(tmp_path), val_every=3)
  b = gpt.read_text_folder(str(tmp_path), val_every=3)
  train, val, info = a
  np.testing.assert_array_equal(train, b[0])
  np.testing.assert_array_equal(val, b[1])
  assert info['train_files'] + info['val_files'] == 30
  assert info['val_files'] >= 1 and b'not read' not in train.tobytes()
  texts = set(train.tobytes().split(b'\0')) & set(val.tobytes().split(b'\0'))
  assert texts <= {b''}   # no file in both
  x, y = gpt.sample_windows(train, 4, 5, np.random.default_rng(0))
  assert x.shape == y.shape == (4, 5) and x.dtype == np.int32
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


@pytest.mark.slow
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
