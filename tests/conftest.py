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
