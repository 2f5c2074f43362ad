"""Tests of the example data loaders (ko_examples.data) and models."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ko_examples import data
from ko_examples import models


def _write_cifar(folder, n_per_batch=6, n_test=5):
  rng = np.random.default_rng(0)
  os.makedirs(folder, exist_ok=True)
  names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  for name in names:
    n = n_test if name == 'test_batch' else n_per_batch
    batch = {b'batch_label': name.encode(),
             b'labels': [int(v) for v in rng.integers(0, 10, n)],
             b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b'filenames': [b'img.png'] * n}
    with open(os.path.join(folder, name), 'wb') as f:
      pickle.dump(batch, f)
  return names


def test_mnist1d_splits_and_determinism():
  ds = data.load_mnist1d(seed=0)
  assert ds.x_train.shape == (3600, 40) and ds.x_val.shape == (400, 40)
  assert ds.x_test.shape == (1000, 40) and ds.num_classes == 10
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  again = data.load_mnist1d(seed=0)
  np.testing.assert_array_equal(ds.x_val, again.x_val)
  other = data.load_mnist1d(seed=1)
  np.testing.assert_array_equal(ds.x_test, other.x_test)  # test untouched
  assert not np.array_equal(ds.y_val, other.y_val)


def test_mnist1d_leaves_global_rng_alone():
  np.random.seed(123)
  expected = np.random.rand()
  np.random.seed(123)
  data.load_mnist1d(num_samples=200, data_seed=7)  # not cached: generates
  assert np.random.rand() == expected


def test_digits():
  ds = data.load_digits()
  assert ds.x_train.shape[1:] == (8, 8, 1)
  assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797
  assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_cifar10_reads_python_batches(tmp_path):
  folder = tmp_path / 'cifar-10-batches-py'
  _write_cifar(folder)
  for path in (folder, tmp_path):  # the folder itself or its parent
    ds = data.load_cifar10(path, val_fraction=0.2)
    assert ds.x_train.shape == (24, 32, 32, 3) and ds.x_val.shape == (6, 32,
                                                                        32, 3)
    assert ds.x_test.shape == (5, 32, 32, 3) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  # The channel layout: the first 1024 bytes of a row are the red plane.
  with open(folder / 'test_batch', 'rb') as f:
    raw = pickle.load(f, encoding='bytes')
  x, _ = data._read_cifar_batch(str(folder / 'test_batch'))
  np.testing.assert_array_equal(x[0, :, :, 0].ravel(), raw[b'data'][0, :1024])


def test_cifar10_missing_names_the_layout(tmp_path):
  with pytest.raises(data.MissingDataError) as e:
    data.load_cifar10(tmp_path)
  msg = str(e.value)
  assert 'data_batch_1' in msg and 'test_batch' in msg
  assert data.CIFAR10_URL in msg
  assert isinstance(e.value, FileNotFoundError)


def _write_text(root):
  docs = {
      'train': {'pos': ['A great movie!<br />Loved it.', 'great great fun',
                        'loved the cast', 'great'],
                'neg': ['terrible movie', 'awful, boring', 'boring plot',
                        'terrible'],
                'unsup': ['ignored text']},
      'test': {'pos': ['great fun'], 'neg': ['boring and awful']},
  }
  for split, classes in docs.items():
    for name, texts in classes.items():
      d = root / split / name
      d.mkdir(parents=True)
      for i, text in enumerate(texts):
        (d / f'{i}_7.txt').write_text(text, encoding='utf-8')


def test_text_folder(tmp_path):
  _write_text(tmp_path)
  ds, vocab = data.load_text_folder(tmp_path, vocab_size=8, max_len=6,
                                    val_fraction=0.25, return_vocab=True)
  assert ds.num_classes == 2  # unsup/ ignored
  assert ds.x_train.shape == (6, 6) and ds.x_val.shape == (2, 6)
  assert ds.x_test.shape == (2, 6) and ds.x_train.dtype == np.int32
  assert vocab[:3] == ['<pad>', '<oov>', 'great'] and len(vocab) == 8
  assert 'br' not in vocab
  # classes in sorted order: neg = 0, pos = 1; 'great fun' is positive.
  assert list(ds.y_test) == [0, 1]
  great = vocab.index('great')
  assert ds.x_test[1, 0] == great and ds.x_test[1, 2] == data.PAD


def test_text_folder_missing(tmp_path):
  with pytest.raises(data.MissingDataError) as e:
    data.load_text_folder(tmp_path / 'aclImdb')
  assert 'train/<class>/*.txt' in str(e.value) and data.IMDB_URL in str(e.value)
  (tmp_path / 'train' / 'pos').mkdir(parents=True)
  (tmp_path / 'test' / 'pos').mkdir(parents=True)
  (tmp_path / 'test' / 'neg').mkdir(parents=True)
  with pytest.raises(data.MissingDataError, match='neg'):
    data.load_text_folder(tmp_path)


def test_batches_cover_an_epoch():
  x = np.arange(10)
  seen = np.concatenate([b for b, _ in data.batches(x, x, 3, epochs=1)])
  assert len(seen) == 9 and len(set(seen)) == 9


@pytest.mark.parametrize('model,x', [
    (models.MLP(), jnp.zeros((2, 40))),
    (models.CNN1D(), jnp.zeros((2, 40))),
    (models.DigitsCNN(), jnp.zeros((2, 8, 8, 1))),
    (models.ResNet18(width=4, stage_sizes=(1, 1, 1, 1)),
     jnp.zeros((2, 32, 32, 3))),
    (models.TextClassifier(50), jnp.ones((2, 7), jnp.int32)),
    (models.SmallTransformer(50, width=16, depth=1, max_len=8),
     jnp.ones((2, 7), jnp.int32)),
])
def test_models_shapes(model, x):
  # eval_shape: no compilation, so every model is checked in milliseconds.
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, params, x)
  text = isinstance(model, (models.TextClassifier, models.SmallTransformer))
  assert out.shape == (2, 2 if text else 10)
  small = model.clone(kernel_init=jax.nn.initializers.normal(1e-3))
  assert jax.tree.map(lambda a: a.shape, jax.eval_shape(
      small.init, jax.random.key(0), x)) == jax.tree.map(lambda a: a.shape,
                                                         params)


def test_kernel_init_is_used():
  model = models.MLP(hidden=(8,), kernel_init=jax.nn.initializers.normal(1e-3))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4)))
  kernels = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  assert len(kernels) == 2
  assert max(float(jnp.std(k)) for k in kernels) < 5e-3


def test_language_model_is_causal():
  lm = models.SmallTransformer(20, num_classes=None, width=16, depth=1,
                               max_len=8)
  tokens = jnp.array([[1, 2, 3, 4]])
  params = jax.jit(lm.init)(jax.random.key(0), tokens)
  apply = jax.jit(lm.apply)
  out = apply(params, tokens)
  changed = apply(params, tokens.at[0, 3].set(5))
  assert out.shape == (1, 4, 20)
  np.testing.assert_allclose(out[0, :3], changed[0, :3], atol=1e-5)


def test_patch_conv_cnn_and_residual_mlp():
  """CNN1D(patches=True) is CNN1D with the same parameters and function;
  MLP(residual=True) adds the second hidden layer's input (the MNIST-1D
  paper's MLP)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 40)).astype(np.float32)

  def random_params(model):  # eval_shape: no compiled random init (slow)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(
        lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)

  plain, patched = models.CNN1D(), models.CNN1D(patches=True)
  assert jax.tree.map(np.shape, random_params(plain)) == jax.tree.map(
      np.shape, random_params(patched))
  params = random_params(plain)
  np.testing.assert_allclose(jax.jit(patched.apply)(params, x),
                             jax.jit(plain.apply)(params, x),
                             rtol=1e-5, atol=1e-4)
  mlp = models.MLP(residual=True)
  p = random_params(mlp)['params']
  h = np.maximum(x @ p['hidden_0']['kernel'] + p['hidden_0']['bias'], 0)
  h = h + np.maximum(h @ p['hidden_1']['kernel'] + p['hidden_1']['bias'], 0)
  np.testing.assert_allclose(jax.jit(mlp.apply)({'params': p}, x),
                             h @ p['head']['kernel'] + p['head']['bias'],
                             rtol=1e-5, atol=1e-4)
