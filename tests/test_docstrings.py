"""Every Example in the public docstrings runs and prints what it says."""

import doctest
import importlib

import pytest

MODULES = ['ko_optax.advection', 'ko_optax.collision.hard',
           'ko_optax.collision.soft', 'ko_optax.collision.transform',
           'ko_optax.diffusion', 'ko_optax.diagnostics', 'ko_optax.keys',
           'ko_optax.preset']


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                           | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f'{name} has no docstring example'
  assert result.failed == 0
