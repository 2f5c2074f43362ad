"""The 2 x 4 mesh example runs in its quick mode and checkpoints correctly.

The conftest puts examples/ on sys.path, so the example imports as a module.
"""

import jax
import pytest

import sharded_training


@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 CPU devices')
def test_sharded_example_quick(tmp_path):
  result = sharded_training.main(
      ['--quick', '--checkpoint-dir', str(tmp_path / 'ckpt')])
  assert result['collectives_in_ko_update'] == []
  assert result['restored_equal'] and result['restored_shardings_equal']
  assert result['resumed_equal']
  assert result['final_loss'] < result['first_loss']
  assert result['kernel_sharding'] == str(jax.sharding.PartitionSpec(
      None, 'model'))
