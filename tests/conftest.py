"""Test configuration shared by the whole suite.

JAX reads the number of host (CPU) devices once, when its backend starts, so
the 8 virtual CPU devices the sharding tests need are requested here, before
any test module touches JAX.
"""

import os
import pathlib
import sys

import jax

jax.config.update('jax_num_cpu_devices', 8)

# Compiling dominates the suite's time. LLVM's optimization level changes
# neither the HLO that tests inspect nor the IEEE arithmetic they compare bit
# for bit, and -O0 compiles much faster (XLA reads XLA_FLAGS when its
# backend starts, after this). Set the flag yourself to test another level.
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

# Example scripts share code through the ``ko_examples`` package under
# examples/; make it importable by the tests that exercise the examples.
_EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / 'examples'
if str(_EXAMPLES) not in sys.path:
  sys.path.insert(0, str(_EXAMPLES))

os.environ.setdefault('MPLBACKEND', 'Agg')


# The longest tests (seconds on 2 cores, --durations) run first, so that
# pytest-xdist's two workers do not end with one of them alone on a long
# test: longest-first scheduling keeps the suite's tail short.
_LONGEST_FIRST = (
    'tests/test_multihost.py::'
    'test_two_processes_match_one_and_resume_exactly',
    'tests/test_lm_study.py::test_quick_study_runs_and_records',
    'tests/test_plasticity_study.py::test_quick_study_runs_and_records',
    'tests/test_examples.py::test_gpt_scanned_quick',
    'tests/test_lm_study.py::'
    'test_every_arm_builds_and_ko_on_muon_collides_before_muon',
    'tests/test_examples.py::test_compare_quick',
    'tests/test_lm_study.py::test_step_only_times_each_arm',
    'tests/test_gpt.py::test_scanned_equals_unscanned_for_the_same_weights',
    'tests/test_examples.py::test_text_quick_and_missing',
    'tests/test_docstrings.py::test_docstring_examples[ko_optax.collision.transform]',
    'tests/test_examples.py::test_sharded_example_quick',
    'tests/test_sharding.py::test_explicit_mesh_matches_one_device[4-soft]',
    'tests/test_grouping.py::'
    'test_base_optimizer_kernels_stay_shared_between_equal_leaves',
    'tests/test_examples.py::test_nnx_quick',
    'tests/test_recipes.py::test_ko_gpt_equals_the_explicit_authors_chain',
    'tests/test_grouping.py::'
    'test_grouped_collision_equals_each_system_alone[hard]',
    'tests/test_checkpoint.py::test_orbax_round_trip_resumes_identically[True]',
    'tests/test_examples.py::test_checkpoint_resume_is_identical',
    'tests/test_cells.py::test_one_cell_per_block_is_blockwise_all_pairs',
    'tests/test_properties_bad_values.py::'
    'test_edge_cases_stay_finite_on_every_path[hard-cells]',
    'tests/test_sharding.py::test_explicit_mesh_matches_one_device[4-hard]',
    'tests/test_properties_bad_values.py::'
    'test_edge_cases_stay_finite_on_every_path[soft-cells]',
    'tests/test_examples.py::test_cifar10_quick_and_missing',
    'tests/test_examples.py::test_linen_multi_transform_equals_mask',
)


def pytest_collection_modifyitems(items):
  rank = {name: k for k, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))
