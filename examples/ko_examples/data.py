"""Datasets for the examples, as numpy arrays; nothing is downloaded.

Every loader returns a :class:`Dataset` with a fixed validation split carved
out of the training set (the test split is left untouched: tune on
``x_val``, report on ``x_test``).

* :func:`load_mnist1d`: MNIST-1D (Greydanus, 2020), generated offline by the
  ``mnist1d`` package with its published arguments (5000 samples of length
  40, 10 classes, 4000 train / 1000 test).
* :func:`load_digits`: scikit-learn's 8x8 handwritten digits (ships with
  scikit-learn), shape ``(N, 8, 8, 1)``.
* :func:`load_cifar10`: the CIFAR-10 *python* batches (``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``) from a folder on disk.
* :func:`load_text_folder`: a folder-per-class text layout such as IMDB's
  ``aclImdb`` (``train/pos/*.txt``, ``train/neg/*.txt``, ``test/...``),
  tokenised into integer ids with a vocabulary built on the training split.

Missing files raise :class:`MissingDataError` naming the expected layout and
where the data comes from.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import random
import re
from typing import NamedTuple

import numpy as np

CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
IMDB_URL = 'https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz'
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
PAD, OOV = 0, 1


class Dataset(NamedTuple):
  """A classification dataset split three ways (numpy arrays).

  Attributes:
    x_train, y_train: training inputs and integer labels.
    x_val, y_val: validation split, carved from the original training set.
    x_test, y_test: the original test split, untouched.
    num_classes: number of classes.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


class MissingDataError(FileNotFoundError):
  """Raised when a dataset that must be on disk is not there."""


def split_validation(x, y, x_test, y_test, num_classes, *, seed=0,
                     val_fraction=0.1) -> Dataset:
  """Carves a fixed validation split out of a training set.

  Args:
    x, y: the original training inputs and labels.
    x_test, y_test: the original test split (kept as is).
    num_classes: number of classes.
    seed: seed of the permutation choosing the validation examples.
    val_fraction: fraction of the training set held out (at least 1 example
      when positive).

  Returns:
    A :class:`Dataset`.
  """
  n = len(y)
  n_val = 0 if val_fraction <= 0 else max(1, int(round(n * val_fraction)))
  perm = np.random.default_rng(seed).permutation(n)
  val, train = perm[:n_val], perm[n_val:]
  train.sort()
  val.sort()
  return Dataset(x[train], y[train], x[val], y[val], x_test, y_test,
                 int(num_classes))


@functools.lru_cache(maxsize=4)
def _mnist1d_raw(num_samples: int | None, data_seed: int):
  try:
    import mnist1d.data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'MNIST-1D needs the `mnist1d` package: pip install "ko-optax[examples]"'
        ' (or pip install mnist1d).') from e
  args = mnist1d.data.get_dataset_args()
  if num_samples is not None:
    args.num_samples = int(num_samples)
  args.seed = int(data_seed)
  # make_dataset seeds the global numpy and random generators: restore them.
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    raw = mnist1d.data.make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  return (raw['x'].astype(np.float32), raw['y'].astype(np.int32),
          raw['x_test'].astype(np.float32), raw['y_test'].astype(np.int32))


def load_mnist1d(seed: int = 0, num_samples: int | None = None, *,
                 val_fraction: float = 0.1, data_seed: int = 42) -> Dataset:
  """MNIST-1D, generated offline (about 3 s; cached per process).

  The data are the published benchmark's (``mnist1d.data.get_dataset_args()``:
  5000 sequences of length 40, 80% train, 20% test, generator seed 42).
  Inputs have shape ``(N, 40)``, float32, standardised by the generator.

  Args:
    seed: seed of the validation split carved from the training set.
    num_samples: total number of samples generated (default 5000).
    val_fraction: fraction of the training set held out for validation.
    data_seed: the generator's seed (42: the published dataset).

  Returns:
    A :class:`Dataset` with 10 classes (3600 / 400 / 1000 by default).
  """
  x, y, x_test, y_test = _mnist1d_raw(num_samples, data_seed)
  return split_validation(x, y, x_test, y_test, 10, seed=seed,
                          val_fraction=val_fraction)


def load_digits(seed: int = 0, *, val_fraction: float = 0.1,
                test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn).

  The test split is fixed (a permutation with seed 0, independent of
  ``seed``); the validation split is carved from the rest with ``seed``.
  Inputs have shape ``(N, 8, 8, 1)``, float32 in [0, 1].

  Args:
    seed: seed of the validation split.
    val_fraction: fraction of the training part held out for validation.
    test_fraction: fraction of all images in the fixed test split.

  Returns:
    A :class:`Dataset` with 10 classes.
  """
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'The digits need scikit-learn: pip install "ko-optax[examples]".'
    ) from e
  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(y))
  n_test = int(round(len(y) * test_fraction))
  test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
  return split_validation(x[train], y[train], x[test], y[test], 10, seed=seed,
                          val_fraction=val_fraction)


# ----------------------------------------------------------------- CIFAR-10

_CIFAR_LAYOUT = (
    'CIFAR-10 was not found at {path!r}. Expected the python version of '
    'CIFAR-10: a folder holding data_batch_1, ..., data_batch_5 and '
    'test_batch (pickled dicts with b"data" (N, 3072) uint8 and b"labels"), '
    'i.e. the folder cifar-10-batches-py/ extracted from ' + CIFAR10_URL +
    ' (this code never downloads it). Missing: {missing}.')


def _read_cifar_batch(file: str) -> tuple[np.ndarray, np.ndarray]:
  with open(file, 'rb') as f:
    batch = pickle.load(f, encoding='bytes')
  data = batch[b'data'] if b'data' in batch else batch['data']
  labels = batch[b'labels'] if b'labels' in batch else batch['labels']
  x = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return x, np.asarray(labels, np.int32)


def load_cifar10(path: str, seed: int = 0, *, val_fraction: float = 0.1,
                 max_train: int | None = None) -> Dataset:
  """CIFAR-10 from its python batches on disk.

  Args:
    path: the folder ``cifar-10-batches-py`` (or a folder containing it).
    seed: seed of the validation split.
    val_fraction: fraction of the 50000 training images held out.
    max_train: keep only the first ``max_train`` training images (quick
      runs); None keeps all.

  Returns:
    A :class:`Dataset`; inputs ``(N, 32, 32, 3)`` float32, standardised per
    channel with the training split's mean and standard deviation.

  Raises:
    MissingDataError: if a batch file is missing.
  """
  path = os.fspath(path)
  nested = os.path.join(path, 'cifar-10-batches-py')
  if os.path.isdir(nested):
    path = nested
  names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
  if missing:
    raise MissingDataError(_CIFAR_LAYOUT.format(path=path,
                                                missing=', '.join(missing)))
  parts = [_read_cifar_batch(os.path.join(path, n)) for n in names[:5]]
  x = np.concatenate([p[0] for p in parts])
  y = np.concatenate([p[1] for p in parts])
  x_test, y_test = _read_cifar_batch(os.path.join(path, 'test_batch'))
  if max_train is not None:
    x, y = x[:max_train], y[:max_train]
  ds = split_validation(x, y, x_test, y_test, 10, seed=seed,
                        val_fraction=val_fraction)
  train = ds.x_train.astype(np.float32) / 255.0
  mean = train.mean(axis=(0, 1, 2))
  std = train.std(axis=(0, 1, 2)) + 1e-6
  norm = lambda a: ((a.astype(np.float32) / 255.0 - mean) / std).astype(
      np.float32)
  return ds._replace(x_train=(train - mean) / std, x_val=norm(ds.x_val),
                     x_test=norm(ds.x_test))


# --------------------------------------------------------------------- text

_TEXT_LAYOUT = (
    'No text dataset at {path!r}. Expected a folder-per-class layout: '
    '{path}/train/<class>/*.txt and {path}/test/<class>/*.txt, one document '
    'per file, the same class folders in both splits (folders present only '
    "in train/, such as aclImdb's unsup/, are ignored). IMDB reviews come in "
    'this layout: extract aclImdb/ from ' + IMDB_URL + ' (this code never '
    'downloads it). Problem: {problem}.')

_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
  """Lower-cases, drops HTML line breaks, splits into word tokens."""
  return _TOKEN.findall(text.lower().replace('<br />', ' '))


def _read_split(folder: str, classes: list[str]):
  docs, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(folder, name)
    for file in sorted(os.listdir(class_dir)):
      if file.endswith('.txt'):
        with open(os.path.join(class_dir, file), encoding='utf-8',
                  errors='replace') as f:
          docs.append(tokenize(f.read()))
        labels.append(label)
  return docs, np.asarray(labels, np.int32)


def build_vocab(docs: list[list[str]], vocab_size: int) -> list[str]:
  """The ``vocab_size - 2`` most frequent tokens, after PAD (0) and OOV (1)."""
  counts = collections.Counter(t for d in docs for t in d)
  words = sorted(counts, key=lambda w: (-counts[w], w))[:max(vocab_size - 2, 0)]
  return ['<pad>', '<oov>'] + words


def encode(docs: list[list[str]], vocab: list[str], max_len: int) -> np.ndarray:
  """Token ids, truncated to and padded (with 0) up to ``max_len``."""
  index = {w: i for i, w in enumerate(vocab)}
  out = np.full((len(docs), max_len), PAD, np.int32)
  for row, doc in enumerate(docs):
    ids = [index.get(t, OOV) for t in doc[:max_len]]
    out[row, :len(ids)] = ids
  return out


def load_text_folder(path: str, seed: int = 0, *, vocab_size: int = 10000,
                     max_len: int = 256, val_fraction: float = 0.1,
                     classes: list[str] | None = None,
                     return_vocab: bool = False):
  """Text classification from a folder-per-class layout (as IMDB's aclImdb).

  Args:
    path: root folder holding ``train/`` and ``test/``.
    seed: seed of the validation split.
    vocab_size: vocabulary size, PAD (id 0) and OOV (id 1) included; built
      from the training split only.
    max_len: documents are truncated / padded to this many tokens.
    val_fraction: fraction of the training documents held out.
    classes: class folder names in label order; None: the sorted folders of
      ``test/`` (all of which must exist in ``train/``).
    return_vocab: also return the vocabulary (list of tokens, index = id).

  Returns:
    A :class:`Dataset` of int32 token ids ``(N, max_len)``, and the
    vocabulary if ``return_vocab``.

  Raises:
    MissingDataError: if the layout is not there.
  """
  path = os.fspath(path)
  train_dir, test_dir = os.path.join(path, 'train'), os.path.join(path, 'test')
  for d in (train_dir, test_dir):
    if not os.path.isdir(d):
      raise MissingDataError(_TEXT_LAYOUT.format(
          path=path, problem=f'folder {d!r} does not exist'))
  if classes is None:
    classes = sorted(e for e in os.listdir(test_dir)
                     if os.path.isdir(os.path.join(test_dir, e)))
  if len(classes) < 2:
    raise MissingDataError(_TEXT_LAYOUT.format(
        path=path, problem=f'found classes {classes} in {test_dir!r}; need 2 '
        'or more class folders'))
  for d in (train_dir, test_dir):
    for name in classes:
      if not os.path.isdir(os.path.join(d, name)):
        raise MissingDataError(_TEXT_LAYOUT.format(
            path=path, problem=f'class folder {os.path.join(d, name)!r} is '
            'missing'))
  train_docs, y = _read_split(train_dir, list(classes))
  test_docs, y_test = _read_split(test_dir, list(classes))
  if len(train_docs) == 0 or len(test_docs) == 0:
    raise MissingDataError(_TEXT_LAYOUT.format(
        path=path, problem='no .txt files in the class folders'))
  # The vocabulary comes from the training documents only (the validation
  # documents are part of them, as they would be in a plain train split).
  vocab = build_vocab(train_docs, vocab_size)
  ds = split_validation(encode(train_docs, vocab, max_len), y,
                        encode(test_docs, vocab, max_len), y_test,
                        len(classes), seed=seed, val_fraction=val_fraction)
  return (ds, vocab) if return_vocab else ds


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0,
            epochs: int | None = None):
  """Yields shuffled ``(x, y)`` minibatches (last partial batch dropped).

  Args:
    x, y: inputs and labels.
    batch_size: examples per batch (capped at ``len(y)``).
    seed: seed of the shuffling.
    epochs: number of passes; None: forever.
  """
  rng = np.random.default_rng(seed)
  n = len(y)
  batch_size = min(batch_size, n)
  epoch = 0
  while epochs is None or epoch < epochs:
    perm = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
      idx = perm[start:start + batch_size]
      yield x[idx], y[idx]
    epoch += 1
