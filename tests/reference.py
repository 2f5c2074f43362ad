"""Plain float64 NumPy references of KO's formulas, written from the paper.

They use the (N, D) row layout of the paper (one particle per row), not the
library's (D, N) column layout, so they also check the library's reshapes.
"""

import numpy as np


def particles(leaf, axis=-1):
  """(N, D) rows: one particle per index of ``axis``."""
  x = np.moveaxis(np.asarray(leaf, np.float64), axis, 0)
  return x.reshape(x.shape[0], -1)


def unparticles(p, shape, axis=-1):
  moved = np.moveaxis(np.empty(shape), axis, 0).shape
  return np.moveaxis(p.reshape(moved), 0, axis)


def unit_rows(x):
  n = np.linalg.norm(x, axis=1, keepdims=True)
  return np.where(n > 0, x / np.where(n > 0, n, 1.0), 0.0)


def soft_collision(w, g, rate, threshold=0.0, include_self=False,
                   normalization=None, axis=-1):
  """g_new = g - rate * S @ g on (N, D) rows, with S as in the paper."""
  shape = np.shape(g)
  W, G = particles(w, axis), particles(g, axis)
  wh, gh = unit_rows(W), unit_rows(G)
  S = (wh @ wh.T) * (gh @ gh.T)
  S[S < threshold] = 0.0
  if not include_self:
    np.fill_diagonal(S, 0.0)
  R = S @ G
  n = G.shape[0]
  if normalization == 'mean':
    R = R / max(n if include_self else n - 1, 1)
  elif normalization == 'norm':
    R = unit_rows(R) * np.linalg.norm(G, axis=1, keepdims=True)
  elif normalization == 'similarity':
    R = R / np.maximum(np.abs(S).sum(axis=1, keepdims=True), 1.0)
  return unparticles(G - rate * R, shape, axis)
