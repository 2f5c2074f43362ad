"""Plotting helpers for KO's diagnostics (needs matplotlib, imported lazily).

``import ko_optax.plotting`` always works; the functions import matplotlib
when called and raise an ``ImportError`` naming the extra to install
(``pip install "ko-optax[examples]"``) if it is missing.

* :func:`plot_curves`: metric against steps, one line per optimizer, the mean
  over seeds with a band of one standard deviation.
* :func:`plot_learning_curves`: a row of such panels, one per metric.
* :func:`plot_cosine_matrices`: side-by-side heatmaps of the N x N neuron
  cosine-similarity matrices (:func:`ko_optax.cosine_matrix`) of one layer
  under several optimizers.

Example:
  >>> import numpy as np
  >>> from ko_optax import plotting
  >>> steps = np.arange(5)
  >>> acc = np.random.default_rng(0).random((5, 3))   # 5 steps x 3 seeds
  >>> fig = plotting.plot_learning_curves(
  ...     steps, {'test accuracy': {'Adam': acc}})   # path=... saves a PNG
  >>> len(fig.axes)
  1
"""

from __future__ import annotations

from collections.abc import Mapping
import types
from typing import Any, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  import matplotlib.figure

EXTRA_HINT = ('ko_optax.plotting needs matplotlib: pip install '
              '"ko-optax[examples]" (or pip install matplotlib).')


def pyplot() -> types.ModuleType:
  """Returns ``matplotlib.pyplot`` (Agg backend if none is set), or raises."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(EXTRA_HINT) from e
  import os  # pylint: disable=g-import-not-at-top
  if 'MPLBACKEND' not in os.environ:
    matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_curves(ax: Any, steps: np.ndarray, curves: Mapping[str, np.ndarray],
                *, ylabel: str = '', title: str | None = None,
                logy: bool = False,
                colors: Mapping[str, str] | None = None) -> Any:
  """Draws one line per run, mean over seeds with a +-1 std band.

  Args:
    ax: a matplotlib Axes.
    steps: x values, shape (T,).
    curves: label -> array (T,) or (T, seeds).
    ylabel: y-axis label.
    title: panel title.
    logy: logarithmic y axis.
    colors: optional label -> colour.

  Returns:
    ``ax``.
  """
  for label, values in curves.items():
    v = np.asarray(values, np.float64)
    v = v[:, None] if v.ndim == 1 else v
    mean, std = v.mean(axis=1), v.std(axis=1)
    color = None if colors is None else colors.get(label)
    line, = ax.plot(steps, mean, label=label, color=color, lw=1.5)
    if v.shape[1] > 1:
      lo, hi = mean - std, mean + std
      if logy:
        lo = np.maximum(lo, np.min(v[v > 0]) if np.any(v > 0) else 1e-12)
      ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
  if logy:
    ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  return ax


def plot_learning_curves(
    steps: np.ndarray,
    panels: Mapping[str, Mapping[str, np.ndarray]],
    *,
    logy: tuple[str, ...] = (),
    path: str | None = None,
    suptitle: str | None = None,
    colors: Mapping[str, str] | None = None,
    panel_size: tuple[float, float] = (4.0, 3.0),
) -> matplotlib.figure.Figure:
  """A row of :func:`plot_curves` panels, one per metric.

  Args:
    steps: x values, shape (T,).
    panels: metric name -> (label -> array (T,) or (T, seeds)).
    logy: metric names drawn on a log scale.
    path: if given, the figure is saved there (and closed).
    suptitle: figure title.
    colors: optional label -> colour.
    panel_size: width, height of one panel in inches.

  Returns:
    The matplotlib Figure.
  """
  plt = pyplot()
  n = len(panels)
  fig, axes = plt.subplots(1, n, figsize=(panel_size[0] * n, panel_size[1]),
                           squeeze=False)
  for ax, (name, curves) in zip(axes[0], panels.items()):
    plot_curves(ax, steps, curves, ylabel=name, title=name,
                logy=name in logy, colors=colors)
  axes[0][0].legend(fontsize=8)
  if suptitle:
    fig.suptitle(suptitle)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
  return fig


def neuron_order(cos: np.ndarray) -> np.ndarray:
  """An ordering of neurons that puts similar neurons next to each other.

  Sorts by the angle in the plane of the two leading eigenvectors of the
  cosine matrix (a cheap spectral seriation), so clusters of condensed
  neurons show up as blocks.
  """
  cos = np.asarray(cos, np.float64)
  if cos.shape[0] < 3:
    return np.arange(cos.shape[0])
  _, vecs = np.linalg.eigh(cos)
  return np.argsort(np.arctan2(vecs[:, -2], vecs[:, -1]), kind='stable')


def plot_cosine_matrices(matrices: Mapping[str, Any], *,
                         path: str | None = None, title: str | None = None,
                         sort: bool = True,
                         panel_size: float = 3.2) -> matplotlib.figure.Figure:
  """Side-by-side heatmaps of N x N neuron cosine-similarity matrices.

  Args:
    matrices: label -> (N, N) cosine matrix (see
      :func:`ko_optax.cosine_matrix`).
    path: if given, the figure is saved there (and closed).
    title: figure title.
    sort: reorder the neurons of each matrix with :func:`neuron_order`.
    panel_size: size of one panel in inches.

  Returns:
    The matplotlib Figure.
  """
  plt = pyplot()
  n = len(matrices)
  fig, axes = plt.subplots(1, n, figsize=(panel_size * n + 0.8, panel_size),
                           squeeze=False)
  image = None
  for ax, (label, m) in zip(axes[0], matrices.items()):
    m = np.asarray(m, np.float64)
    if sort:
      order = neuron_order(m)
      m = m[np.ix_(order, order)]
    off = m[~np.eye(len(m), dtype=bool)]
    image = ax.imshow(m, vmin=-1.0, vmax=1.0, cmap='RdBu_r',
                      interpolation='nearest')
    ax.set_title(f'{label}\nmean |cos| = {np.mean(np.abs(off)):.3f}',
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label='cosine similarity')
  if title:
    fig.suptitle(title, fontsize=10)
  if path is not None:
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)
  return fig
