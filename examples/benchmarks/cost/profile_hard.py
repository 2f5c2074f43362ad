"""Where does the time of one hard / soft collision go? (one leaf, CPU/GPU)

Times the pieces of ``ko_optax.collision.hard_collision`` and
``soft_collision`` separately, each jitted on its own, for one (D, N) leaf.

  PYTHONPATH=. python examples/benchmarks/cost/profile_hard.py --d 512 --n 512
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

# The shared helpers (ko_examples) live in examples/, two folders up.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', '..'))

from ko_examples import timing
from ko_optax import collision as C
from ko_optax.collision import hard
from ko_optax.collision import soft


def hard_collision_columns(w, g, rate, key, length_scale=20.0):
  """The first version of hard_collision (column gather and scatter)."""
  n = g.shape[-1]
  if n < 2:
    return g
  perm_key, pair_key = jax.random.split(key)
  order = jax.random.permutation(perm_key, n)
  paired = order[:n - n % 2]
  new = hard.collide_adjacent_pairs(
      w[:, paired], g[:, paired], rate, pair_key, length_scale=length_scale)
  return g.at[:, paired].set(new, unique_indices=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--d', type=int, default=512)
  ap.add_argument('--n', type=int, default=512)
  ap.add_argument('--repeats', type=int, default=30)
  ap.add_argument('--rbg', action='store_true',
                  help="use jax.random.key(..., impl='rbg') keys")
  a = ap.parse_args()
  d, n = a.d, a.n
  k = jax.random.key(0)
  w = jax.random.normal(k, (d, n))
  g = jax.random.normal(jax.random.key(1), (d, n))
  key = jax.random.key(2, impl='rbg' if a.rbg else None)
  pieces = {
      'copy g (floor)': jax.jit(lambda w, g, k: g * 1.0),
      'adam-like elementwise': jax.jit(
          lambda w, g, k: g / (jnp.sqrt(g * g) + 1e-8)),
      'permutation': jax.jit(lambda w, g, k: jax.random.permutation(k, n)),
      'uniform (N/2)': jax.jit(
          lambda w, g, k: jax.random.uniform(k, (n // 2,))),
      'normal (D x N/2)': jax.jit(
          lambda w, g, k: jax.random.normal(k, (d, n // 2))),
      'gather columns w,g': jax.jit(
          lambda w, g, k: (w[:, jax.random.permutation(k, n)],
                           g[:, jax.random.permutation(k, n)])),
      'collide_adjacent_pairs (no perm)': jax.jit(
          lambda w, g, k: hard.collide_adjacent_pairs(w, g, 0.1, k)),
      'hard_collision v1 (columns)': jax.jit(
          lambda w, g, k: hard_collision_columns(w, g, 0.1, k)),
      'hard_collision (full)': jax.jit(
          lambda w, g, k: C.hard_collision(w, g, 0.1, k)),
      'soft_collision (full)': jax.jit(
          lambda w, g, k: C.soft_collision(w, g, 0.1)),
      'soft kernel only': jax.jit(
          lambda w, g, k: soft.soft_collision_kernel(w, g)),
  }
  res = timing.interleaved_medians(
      {name: (lambda f=f: f(w, g, key)) for name, f in pieces.items()},
      repeats=a.repeats)
  print(f'# D={d} N={n} on {timing.machine()["device"]}')
  for name, t in res.items():
    print(f'{name:32s} {t * 1e6:10.1f} us')


if __name__ == '__main__':
  main()
