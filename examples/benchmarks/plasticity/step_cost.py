"""Step cost of every arm of a finished plasticity run, timed round-robin.

The study's own run times come one arm after the other on a shared machine,
so a neighbour's load lands on some arms and not others. Here every arm's
program (its chosen settings, the study's shapes, a few tasks) is compiled
first and then timed in turns, several rounds, and the median taken.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import problems


def measure(chosen: dict[str, tuple[dict[str, Any], float]], net, data,
            size: dict[str, Any], *, tasks: int = 4, rounds: int = 5
            ) -> dict[str, float]:
  """Milliseconds per training step (all seeds at once) of each arm.

  Args:
    chosen: arm name -> (the arm's description with its chosen setting, lr).
    net: the study's network.
    data: the study's image pool.
    size: the study's size (batch, examples, test, seeds).
    tasks: tasks per timed call.
    rounds: timed calls per arm, interleaved across arms.

  Returns:
    Arm name -> median milliseconds per step.
  """
  cfg = dict(size, tasks=tasks)
  seeds = jnp.arange(size['seeds'], dtype=jnp.int32)
  compiled = {}
  for name, (arm, lr) in chosen.items():
    program = problems.permuted_mnist_program(net, arm, data, cfg)
    lrs = jnp.full(seeds.shape, lr, jnp.float32)
    run = jax.jit(program).lower(seeds, lrs).compile()
    jax.block_until_ready(run(seeds, lrs))  # the first call pays set-up
    compiled[name] = (run, lrs)
  times: dict[str, list[float]] = {name: [] for name in compiled}
  for _ in range(rounds):
    for name, (run, lrs) in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(run(seeds, lrs))
      times[name].append(time.perf_counter() - start)
  steps = tasks * (size['examples'] // size['batch'])
  return {name: 1e3 * statistics.median(t) / steps for name, t in times.items()}
