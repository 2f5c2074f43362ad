"""Small timing helpers shared by the benchmarks (examples/benchmarks).

Timings on a shared machine are noisy: every number is the median over
``repeats`` calls after ``warmup`` calls (the first of which compiles).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax


def block(x: Any) -> Any:
  return jax.tree.map(lambda a: a.block_until_ready()
                      if hasattr(a, 'block_until_ready') else a, x)


def median_time(fn: Callable[..., Any], *args: Any, repeats: int = 20,
                warmup: int = 3) -> float:
  """Median wall time of ``fn(*args)`` in seconds (outputs blocked on)."""
  for _ in range(warmup):
    block(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int = 20,
                        warmup: int = 3,
                        before_round: Callable[[], Any] | None = None,
                        budget_s: float | None = None,
                        ) -> dict[str, float]:
  """Medians of several thunks timed round-robin, so that load from other
  processes hits all of them alike (ratios are then fairer than with
  back-to-back blocks). Each round starts one thunk further on
  (:func:`rotated`), so that every thunk runs as often right after each of
  the others: a thunk that always followed a large one (whose temporaries
  evict the caches) would otherwise pay for it in every round.
  ``before_round``, if given, is called before every round (e.g. to wait
  for an idle machine). With ``budget_s``, no round starts once the timed
  rounds have taken that many seconds (large sizes then take fewer
  repeats)."""
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  times = {k: [] for k in fns}
  start = time.perf_counter()
  for r in range(repeats):
    if budget_s is not None and r and time.perf_counter() - start > budget_s:
      break
    if before_round is not None:
      before_round()
    for k in rotated(list(fns), r):
      t0 = time.perf_counter()
      block(fns[k]())
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def rotated(names: list[Any], r: int) -> list[Any]:
  """``names`` rotated left by ``r``: round ``r``'s order of a round-robin."""
  r %= max(1, len(names))
  return names[r:] + names[:r]


def machine() -> dict[str, Any]:
  """Describes the machine the numbers come from."""
  dev = jax.devices()[0]
  return {
      'platform': dev.platform,
      'device': getattr(dev, 'device_kind', str(dev)),
      'num_devices': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'python': platform.python_version(),
      'jax': jax.__version__,
      'host': platform.node(),
  }


def peak_memory_bytes() -> int | None:
  """Peak device memory in bytes where the backend reports it (GPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats:
    return None
  return stats.get('peak_bytes_in_use')


def write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(obj, f, indent=1, default=str)
