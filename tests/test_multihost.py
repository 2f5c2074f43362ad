"""Two JAX processes on one machine give KO's single-process results.

``examples/multihost.py --quick`` starts 2 processes of 4 CPU devices that
join one runtime over localhost, runs the same training in this process on
its 8 devices (tests/conftest.py asks for them), and starts 2 fresh
processes that restore the first pair's orbax checkpoint. Its quick arms:
Adam, hard collisions in cells with diffusion, soft collisions in cells.
"""

import pytest

import multihost

pytestmark = pytest.mark.slow


def test_two_processes_match_one_and_resume_exactly(tmp_path):
  result = multihost.main(['--quick', '--out', str(tmp_path)])
  assert result['processes'] == 2 and result['devices'] == 8
  arms = result['arms']
  # KO adds no dependence on the process layout: the update of one gradient
  # (no reduction across processes involved) is the same bit for bit, noise,
  # pairings and cells included.
  assert all(row['same_update'] for row in arms.values()), arms
  # Trained, the gradient's reductions run in another order. Rule: KO may
  # differ from one process by at most TOLERANCE x what Adam alone shows
  # (floored at float32's resolution of the params).
  assert all(row['within_tolerance'] for row in arms.values()), arms
  assert result['allowed'] < 1e-5
  # Cells aligned with the 'model' shards: nothing crosses devices.
  assert result['collectives'] == {'hard_cells': [], 'soft_cells': []}
  assert result['resumed_equal'] and result['resumed_leaves'] > 50
  losses = result['losses']['hard_cells']
  assert len(losses) == 6 and losses[-1] < losses[0]
