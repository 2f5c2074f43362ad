"""The API reference (docs/api.rst) lists every name in ko_optax.__all__.

docs/conf.py generates the reference lists from ``ko_optax.__all__``, each
name in the section of the module it is imported from. This test runs the
same grouping without Sphinx or JAX, so a public name that no section would
list fails ``pytest`` too, with its name.
"""

import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _conf():
  spec = importlib.util.spec_from_file_location('ko_docs_conf',
                                                ROOT / 'docs' / 'conf.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_public_name_is_in_a_section():
  conf = _conf()
  names, _ = conf.public_names()
  groups = conf.api_groups()  # raises, naming them, if a name has no section
  listed = [name for group in groups.values() for name in group]
  assert sorted(listed) == sorted(names)


def test_every_section_is_on_the_reference_page():
  conf = _conf()
  text = (ROOT / 'docs' / 'api.rst').read_text()
  placed = re.findall(r'^\.\. ko-api-group:: (\S+)$', text, flags=re.M)
  assert sorted(placed) == sorted(key for key, _, _ in conf.API_GROUPS)


def test_a_name_from_an_unclaimed_module_is_reported_by_name(tmp_path):
  init = tmp_path / '__init__.py'
  init.write_text('from ko_optax.keys import fold_in_keys\n'
                  'from ko_optax.newstep import shiny\n'
                  "__all__ = ('fold_in_keys', 'shiny')\n")
  try:
    _conf().api_groups(init)
  except ValueError as e:
    assert 'shiny (from ko_optax.newstep)' in str(e)
    assert 'fold_in_keys' not in str(e)
  else:
    raise AssertionError('a public name without a section passed the check')
