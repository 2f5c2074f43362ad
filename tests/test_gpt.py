"""The example GPT (ko_examples.gpt): scanned and list-of-blocks variants agree.

``ko_examples`` is importable through the conftest (examples/ on sys.path).
"""


from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

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
  # Built under nnx.jit: one compile instead of one per initialiser op.
  flat, scanned = nnx.jit(lambda: _pair(depth=2, width=16))()
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)),
                  jnp.int32)
  y = jnp.roll(x, -1, axis=1)

  def loss(m, x, y):
    logits = m(x)
    return gpt.lm_loss(logits, y), logits

  # One compile per variant: the forward pass comes with the gradients.
  grad = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
  (_, before), _ = grad(scanned, x, y)
  gpt.stack_blocks(flat, scanned)
  (_, out_scan), g_scan = grad(scanned, x, y)
  (_, out_flat), g_flat = grad(flat, x, y)
  np.testing.assert_allclose(out_scan, out_flat, atol=2e-5, rtol=1e-5)
  assert not np.allclose(before, out_flat)   # the copy did something
  # and the same gradients, block i of the stacked leaf = block i of the list
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
