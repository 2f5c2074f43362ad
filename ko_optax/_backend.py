"""The choices KO makes per backend: XLA:CPU wants some steps run differently.

Every "is this CPU?" decision of the library lives here, each with the reason
it is taken; the measurements behind them are in docs/design/.
"""

from __future__ import annotations

import jax

# The all-pairs soft collision on CPU stacks the leaves of a shape only where
# a system's products (N * N * D) are at most this: stacking larger ones
# slows the step more than it saves compile time.
SMALL_SOFT_SYSTEM = 2**15


def on_cpu() -> bool:
  """Whether the default backend is XLA:CPU."""
  return jax.default_backend() == 'cpu'


def original_threefry_layout() -> bool:
  """Whether random words are drawn in JAX's original threefry layout: on
  CPU, where it hashes half as much; elsewhere the partitionable layout lets
  XLA shard the draw."""
  return on_cpu()


def loop_over_cells() -> bool:
  """Whether collision cells are collided one at a time: on CPU a loop over
  contiguous slices stays in cache; elsewhere one batched call keeps the
  device busy."""
  return on_cpu()


def cut_at_run_time_offsets() -> bool:
  """Whether stacked leaves are cut at run-time offsets: on CPU a
  conditional costs microseconds; on an accelerator it may wait for the
  host."""
  return on_cpu()


def soft_stacks_small_systems_only(mode: str, cell_size: int | None) -> bool:
  """Whether the collision stacks only small systems and loops over them:
  the all-pairs soft collision on CPU, where XLA overlaps per-leaf products
  with the backward pass."""
  return mode == 'soft' and cell_size is None and on_cpu()


def small_soft_system(d: int, n: int) -> bool:
  """Whether soft systems of shape (D, N) are stacked on CPU."""
  return n * n * d <= SMALL_SOFT_SYSTEM
