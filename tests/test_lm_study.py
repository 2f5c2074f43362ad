"""The language-model study (examples/benchmarks/lm/lm_study.py) and its data.

The quick mode trains the authors' KO arm for 20 steps on the standard
library's bytes: a check that every part of the study runs, not a result.
The other arms are covered more cheaply: every arm's optimizer is built and
applied once on a small tree, and AdamW's compiled training chunk runs in
the step-time mode.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ko_examples import gpt

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'examples',
                                'benchmarks', 'lm'))
import lm_study  # noqa: E402  pylint: disable=g-import-not-at-top


def _write(root, name, data):
  path = os.path.join(root, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def test_read_text_splits_is_a_fixed_split_by_file(tmp_path):
  for i in range(40):
    _write(tmp_path, f'pkg{i % 3}/mod{i}.py', bytes([65 + i % 26]) * (i + 1))
  _write(tmp_path, 'notes.txt', b'not read')
  _write(tmp_path, '__pycache__/x.py', b'skipped')
  splits, info = gpt.read_text_splits(str(tmp_path), heldout_every=4)
  again, _ = gpt.read_text_splits(str(tmp_path), heldout_every=4)
  for k in ('train', 'val', 'test'):
    np.testing.assert_array_equal(splits[k], again[k])
    assert info[f'{k}_files'] > 0 and info[f'{k}_bytes'] == splits[k].size
  # Every file is in exactly one split: bytes add up (each + one NUL).
  total = sum(i + 2 for i in range(40))
  assert sum(s.size for s in splits.values()) == total
  # The validation files are read_text_folder's.
  _, val, _ = gpt.read_text_folder(str(tmp_path), val_every=4)
  np.testing.assert_array_equal(val, splits['val'])
  with pytest.raises(ValueError, match='heldout_every'):
    gpt.read_text_splits(str(tmp_path), heldout_every=2)
  with pytest.raises(ValueError, match='would be empty'):
    gpt.read_text_splits(str(tmp_path), max_bytes=1)


def test_summary_picks_the_rate_on_validation_and_pairs_with_adamw():
  seeds = [0, 1]
  grid = dict(seeds=[0, 1, 0, 1, 0, 1],
              lrs=[1e-3, 1e-3, 1e-2, 1e-2, 1e-1, 1e-1])
  runs = {
      # rate 1e-1 diverged for one seed: never chosen.
      'adamw': dict(grid, final_val=[3, 3, 2, 2.2, 1, np.nan],
                    final_test=[3, 3, 2.5, 2.7, 0, 0]),
      # another grid order, and a rate (1e-4) run for one seed only.
      'ko': dict(seeds=[1, 0, 0, 1, 0], lrs=[1e-3, 1e-3, 1e-2, 1e-2, 1e-4],
                 final_val=[1.7, 1.5, 2, 2, 0.0],
                 final_test=[2.6, 2.4, 0, 0, 0]),
  }
  table = lm_study.summarize(runs, seeds)
  assert table['adamw']['lr'] == 1e-2 and table['ko']['lr'] == 1e-3
  assert table['ko']['runs'] == [1, 0]
  np.testing.assert_allclose(table['ko']['test_minus_adamw'], [-0.1, -0.1])


def test_merge_joins_runs_of_one_arm(tmp_path):
  def record(lrs, arms, val):
    runs = {a: dict(seeds=[0] * len(lrs), lrs=lrs, final_val=val,
                    final_test=val, wall_s=1.0,
                    curves=dict(step=[10], train=[val], val=[val],
                                cos=[[[0.1]] * len(lrs)],
                                rank=[[[1.0]] * len(lrs)]))
            for a in arms}
    return dict(size={'steps': 10}, seeds=[0], data={'x': 1}, runs=runs,
                step_s={})
  paths = []
  for i, rec in enumerate([record([1e-2], ['adamw', 'muon'], [2.0]),
                           record([1e-3, 1e-2], ['adamw'], [1.0, 9.0])]):
    paths.append(str(tmp_path / f'{i}.json'))
    with open(paths[-1], 'w') as f:
      json.dump(rec, f)
  merged = lm_study.merge(paths)
  assert merged['runs']['adamw']['lrs'] == [1e-2, 1e-3]   # 1e-2 kept once
  assert merged['runs']['adamw']['curves']['val'] == [[2.0, 1.0]]
  assert merged['table']['adamw']['lr'] == 1e-3
  assert merged['arms'] == ['adamw', 'muon']
  assert merged['merged_from'] == ['0.json', '1.json']
  # A merged record merged again keeps the names of its own parts.
  with open(tmp_path / 'merged.json', 'w') as f:
    json.dump(dict(merged, merged_from=['a.json', 'b.json']), f)
  again = lm_study.merge([str(tmp_path / 'merged.json'), paths[1]])
  assert again['merged_from'] == ['a.json', 'b.json', '1.json']
  bad = record([1e-2], ['adamw'], [1.0])
  bad['seeds'] = [0, 1]
  with open(tmp_path / 'bad.json', 'w') as f:
    json.dump(bad, f)
  with pytest.raises(ValueError, match='seeds'):
    lm_study.merge(paths + [str(tmp_path / 'bad.json')])


def test_quick_study_runs_and_records(tmp_path):
  # One arm, KO's: the pipeline is the same for every arm, and each arm's
  # compile is the bulk of this test's time.
  record = lm_study.main(['--quick', '--arms', 'ko_gpt', '--lrs', '1e-2',
                          '--step-repeats', '0', '--out', str(tmp_path)])
  with open(tmp_path / 'lm_study_quick.json') as f:
    saved = json.load(f)
  assert saved['arms'] == ['ko_gpt'] == record['arms']
  assert (tmp_path / 'lm_curves_quick.png').exists()
  assert (tmp_path / 'lm_condensation_quick.png').exists()
  run = saved['runs']['ko_gpt']
  n_runs = len(saved['seeds']) * len(saved['lrs'])
  assert n_runs == 2
  assert np.isfinite(run['final_test']).all() and len(run['final_test']) \
      == n_runs
  # Trained: below the 8 bits per byte of a uniform guess.
  assert max(run['final_val']) < 7.0
  cos = np.asarray(run['curves']['cos'])
  assert cos.shape == (2, n_runs, 1)     # evaluations x runs x blocks
  assert saved['table']['ko_gpt']['lr'] in saved['lrs']


def test_step_only_times_each_arm(tmp_path):
  out = lm_study.main(['--quick', '--arms', 'adamw', '--step-only',
                       '--step-repeats', '1', '--out', str(tmp_path)])
  assert out['step_s']['adamw'] > 0
  with open(tmp_path / 'lm_steps_quick.json') as f:
    assert json.load(f)['step_s'] == out['step_s']


def test_every_arm_builds_and_ko_on_muon_collides_before_muon():
  # A stand-in for the GPT's tree: one block's kernels, an embedding.
  rng = np.random.default_rng(0)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  params = {'blocks': {str(b): {k: {'kernel': leaf(16, 64)}
                                for k in lm_study.KERNELS} for b in range(1)},
            'embed': {'embedding': leaf(16, 8)}}
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  updates = {}
  for arm in lm_study.ARMS:
    tx = lm_study.make_tx(arm, jax.random.key(0))
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(u)), arm
    updates[arm] = u
  # KO on Muon: Muon of the collided gradient, so it differs from Muon's
  # update on the blocks' kernels (6 x 32 pairs: some collide at rate 0.1)
  # and equals it where nothing collides (the embedding table: no
  # particles by default).
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(updates['ko_hard_muon']['blocks']),
      jax.tree.leaves(updates['muon']['blocks'])))
  np.testing.assert_array_equal(updates['ko_hard_muon']['embed']['embedding'],
                                updates['muon']['embed']['embedding'])
