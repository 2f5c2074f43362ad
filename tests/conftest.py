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
    'tests/test_lm_study.py::test_quick_study_runs_and_records',
    'tests/test_gpt.py::test_gpt_scanned_quick',
    'tests/test_examples.py::test_compare_quick',
    'tests/test_examples.py::test_text_quick_and_missing',
    'tests/test_gpt.py::test_scanned_equals_unscanned_for_the_same_weights',
    'tests/test_sharded_example.py::test_sharded_example_quick',
    'tests/test_examples.py::test_linen_multi_transform_equals_mask',
    'tests/test_recipes.py::test_ko_gpt_equals_the_explicit_authors_chain',
    'tests/test_examples.py::test_checkpoint_resume_is_identical',
    'tests/test_examples.py::test_data_parallel_quick',
    'tests/test_examples.py::test_nnx_quick',
    'tests/test_collision.py::test_soft_property_matches_reference',
    'tests/test_lm_study.py::test_step_only_times_each_arm',
    'tests/test_examples.py::test_cifar10_quick_and_missing',
)


def pytest_collection_modifyitems(items):
  rank = {name: k for k, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))
