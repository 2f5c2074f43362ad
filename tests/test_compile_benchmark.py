"""The compile benchmark's verdicts (benchmarks/cost/compile_benchmark.py).

The benchmark prints issue 9's targets against its rows; these tests feed
it made-up rows (no compile, no timing) and check the verdicts and the
ratios it reads: compile ratios taken round by round, rows that did not
finish, the depth ratio and the step bounds of each size.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'examples',
                                'benchmarks', 'cost'))
import compile_benchmark as cb  # noqa: E402  pylint: disable=g-import-not-at-top


def _row(adam, hard, soft, step_hard=1.0, step_soft=1.0, hard_status='done'):
  """A row as the worker writes it: compile seconds per round."""
  opt = lambda runs, status='done': dict(status=status, total_runs=runs,
                                         total_s=sorted(runs)[len(runs) // 2])
  res = dict(optimizers=dict(adam=opt(adam), ko_soft=opt(soft),
                             ko_hard=opt(hard, hard_status)),
             step_ratio=dict(adam=1.0, ko_hard=step_hard, ko_soft=step_soft))
  res['compile_ratio_runs'] = {
      n: [x / y for x, y in zip(res['optimizers'][n]['total_runs'], adam)]
      for n in ('adam', 'ko_soft', 'ko_hard')}
  return res


def _verdicts(results, size):
  return {target: (measured, met)
          for target, measured, met in cb.targets(results, size)}


def test_compile_ratio_is_the_median_of_round_by_round_ratios():
  # Adam's compile drifts 2 -> 4 s between rounds; KO-hard tracks it at
  # 1.4x in every round.
  res = _row(adam=[2.0, 4.0, 3.0], hard=[2.8, 5.6, 4.2], soft=[4.0, 4.0, 3.0])
  med, lo, hi = cb.compile_ratio(res, 'ko_hard')
  assert (med, lo, hi) == pytest.approx((1.4, 1.4, 1.4))
  # KO-soft's ratios round by round are 2, 1, 1: their median is 1.0, where
  # the ratio of the median compiles would read 4 / 3.
  med, lo, hi = cb.compile_ratio(res, 'ko_soft')
  assert (med, lo, hi) == pytest.approx((1.0, 1.0, 2.0))
  assert cb.fmt_compile_ratio(res, 'ko_soft') == 'x1.00 (1.00-2.00)'
  # A row of one round (or an older JSON without the runs) reads total_s.
  one = _row(adam=[2.0], hard=[3.0], soft=[2.0])
  del one['compile_ratio_runs']
  assert cb.compile_ratio(one, 'ko_hard')[0] == pytest.approx(1.5)
  assert cb.fmt_compile_ratio(one, 'ko_hard') == 'x1.50'
  # Not finished: no ratio.
  late = _row(adam=[2.0], hard=[3.0], soft=[2.0], hard_status='> 300 s')
  assert cb.compile_ratio(late, 'ko_hard') is None
  assert cb.fmt_compile_ratio(late, 'ko_hard') == '-'


def test_cpu_targets_met_and_missed():
  results = {
      'resnet18': _row([4.0], [5.6], [6.4]),                  # 1.4x, 1.6x
      'gpt12': _row([4.0], [6.0], [6.0], step_hard=1.10, step_soft=1.6),
      'gpt48': _row([10.0], [19.0], [15.0]),                  # 1.9x, 1.5x
      'gpt12_scan': _row([3.0], [4.2], [4.8], step_hard=1.05, step_soft=1.2),
      'opt500x8': _row([3.0], [8.0], [9.0], hard_status='> 300 s'),
  }
  v = _verdicts(results, 'cpu')
  assert v['KO-hard compile <= 1.5x Adam, resnet18'] == ('x1.40', True)
  assert v['KO-soft compile <= 1.5x Adam, resnet18'] == ('x1.60', False)
  assert v['KO-soft compile <= 1.5x Adam, gpt48'] == ('x1.50', True)
  # Depth: 1.9 / 1.5 > 1.2 (hard), 1.5 / 1.5 (soft).
  assert v['KO-hard compile ratio, gpt48 / gpt12 <= 1.2'] == ('1.27', False)
  assert v['KO-soft compile ratio, gpt48 / gpt12 <= 1.2'] == ('1.00', True)
  small = 'optimizer alone, 500 x (8, 8): finishes, <= 3.0x'
  assert v[f'KO-hard {small}'] == ('did not finish', False)
  assert v[f'KO-soft {small}'] == ('x3.00', True)
  assert v['KO-hard step <= 1.15x Adam, gpt12'] == ('x1.100', True)
  assert v['KO-soft step <= 1.5x Adam, gpt12'] == ('x1.600', False)
  # Scanned: hard compile 1.4 <= 1.5 and step 1.05 <= 1.10; soft compile
  # 1.6 > 1.5.
  scan = 'gpt12_scan no worse than gpt12 (compile, step)'
  assert v[f'KO-hard {scan}'] == ('x1.40 vs x1.50, x1.05 vs x1.10', True)
  assert v[f'KO-soft {scan}'][1] is False
  # A row that was not run gives no verdict, not a pass.
  assert v['KO-hard gpt48_scan no worse than gpt48 (compile, step)'] == (
      '-', None)
  table = cb.targets_table(results, 'cpu')
  assert '| KO-hard step <= 1.15x Adam, gpt12 | x1.100 | yes |' in table
  assert '| KO-hard gpt48_scan no worse than gpt48 (compile, step) | - | - |' \
      in table


def test_gpu_targets_are_the_resnet_step_only():
  results = {'resnet18': _row([7.0], [5.6], [9.0], step_hard=1.02,
                              step_soft=1.06)}
  v = _verdicts(results, 'gpu')
  assert v == {'KO-hard step <= 1.03x Adam, resnet18': ('x1.020', True),
               'KO-soft step <= 1.05x Adam, resnet18': ('x1.060', False)}
  # The tiny size is a dry run of the CPU targets on its own rows.
  assert len(cb.targets(results, 'tiny')) == len(cb.targets({}, 'cpu'))


def test_bitcheck_compare_finds_every_differing_bit(tmp_path, capsys):
  import numpy as np  # pylint: disable=g-import-not-at-top

  import bitcheck  # pylint: disable=g-import-not-at-top
  a = {'x': np.arange(4, dtype=np.float32), 'y': np.zeros(2)}
  np.savez(tmp_path / 'a.npz', **a)
  np.savez(tmp_path / 'same.npz', **a)
  flipped = a['x'].copy()
  flipped.view(np.uint32)[1] ^= 1                # one bit of one entry
  np.savez(tmp_path / 'b.npz', x=flipped, y=a['y'], z=np.ones(1))
  assert bitcheck.compare(tmp_path / 'a.npz', tmp_path / 'same.npz')
  assert not bitcheck.compare(tmp_path / 'a.npz', tmp_path / 'b.npz')
  out = capsys.readouterr().out
  assert 'DIFFERS: x' in out and 'only in B: z' in out
  assert 'DIFFERS: y' not in out

