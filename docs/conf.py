"""Sphinx configuration for the ko_optax documentation.

Build (warnings are errors, as in CI):

    pip install -e ".[docs]"
    sphinx-build -W -b html docs docs/_build/html

The API reference (api.rst) is generated from ``ko_optax.__all__``: every
public name lands in the section of the module (or of the package holding
the module) it is imported from in ``ko_optax/__init__.py`` (``API_GROUPS``
below). A name from a module that no
section claims stops the build with its name, so a name added to ``__all__``
can never be missing from the reference page. ``api_groups()`` reads
``__init__.py`` without importing JAX, so tests/test_api_reference.py checks
the same thing in a fraction of a second.
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

# -- The API reference, grouped by the physical step -------------------------

# (section key, modules whose public names the section lists, extra names
# outside ko_optax.__all__ that the section documents too). The order is the
# order of a KO step (ko_optax/preset.py).
API_GROUPS = (
    ('collisions', ('ko_optax.collision', 'ko_optax.cells'), ()),
    ('diffusion', ('ko_optax.diffusion',), ()),
    ('advection', ('ko_optax.advection',), ()),
    ('preset', ('ko_optax.preset',), ()),
    ('recipes', ('ko_optax.recipes',), ()),
    ('particles', ('ko_optax.particles',), ()),
    ('diagnostics', ('ko_optax.diagnostics',), ()),
    ('keys-plotting', ('ko_optax.keys', 'ko_optax.plotting'),
     ('ko_optax.plotting.plot_learning_curves',
      'ko_optax.plotting.plot_curves',
      'ko_optax.plotting.plot_cosine_matrices')),
)


INIT = ROOT / 'ko_optax' / '__init__.py'


def public_names(init: pathlib.Path = INIT):
  """``ko_optax.__all__`` and, per name, the module it is imported from.

  Read from the source with ``ast`` (no import, so no JAX), so that the
  check below is fast and runs where the docs dependencies are missing.
  """
  tree = ast.parse(init.read_text())
  origin = {}
  names = None
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        origin[alias.asname or alias.name] = node.module
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      if any(isinstance(t, ast.Name) and t.id == '__all__' for t in targets):
        names = list(ast.literal_eval(node.value))
  if names is None:
    raise ValueError(f'{init} defines no __all__')
  return names, origin


def _section(module: str, section_of: dict[str, str]) -> str | None:
  """The section of ``module`` or of the nearest package that holds it.

  A package's section claims its submodules too (``ko_optax.collision``
  claims ``ko_optax.collision.soft``), so that ``__init__.py`` may import a
  public name from where it is defined.
  """
  parts = module.split('.')
  for i in range(len(parts), 0, -1):
    key = section_of.get('.'.join(parts[:i]))
    if key is not None:
      return key
  return None


def api_groups(init: pathlib.Path = INIT) -> dict[str, list[str]]:
  """Section key -> the names of ``ko_optax.__all__`` it lists, in order.

  Raises:
    ValueError: naming every public name that no section would list.
  """
  names, origin = public_names(init)
  section_of = {m: key for key, modules, _ in API_GROUPS for m in modules}
  groups = {key: [] for key, _, _ in API_GROUPS}
  missing = []
  for name in names:
    key = _section(origin.get(name, ''), section_of)
    if key is None:
      missing.append(f'{name} (from {origin.get(name, "?")})')
    else:
      groups[key].append(name)
  if missing:
    raise ValueError(
        'ko_optax.__all__ has names that no section of the API reference '
        'lists: ' + ', '.join(missing) + '. Add their module to API_GROUPS '
        'in docs/conf.py.')
  return groups


# -- Project information -----------------------------------------------------

project = 'ko_optax'
author = 'ko_optax developers'
copyright = '2025, ko_optax developers'  # pylint: disable=redefined-builtin


def _version() -> str:
  for line in INIT.read_text().splitlines():
    if line.startswith('__version__'):
      return ast.literal_eval(line.split('=', 1)[1].strip())
  raise ValueError('ko_optax/__init__.py has no __version__')


release = version = _version()

# -- General configuration ---------------------------------------------------

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']
templates_path = []

# Every cross-reference must resolve (sphinx-build -W turns a broken one into
# an error). Names of other libraries cannot be checked offline (no
# intersphinx inventories), so they are exempt.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(jax|jnp|optax|chex|np|numpy|flax|nnx|orbax|matplotlib)'
     r'(\..*)?'),
    (r'py:.*', r'(Any|Callable|Sequence|Mapping|NamedTuple|Optional|Union)'),
    (r'py:.*', r'(typing|collections\.abc)\..*'),
]

# -- autodoc / napoleon (Google-style docstrings, as in optax) ---------------

autodoc_typehints = 'signature'
autodoc_member_order = 'bysource'
autodoc_preserve_defaults = True
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# -- MyST: the markdown guides as they are -----------------------------------

myst_enable_extensions = ['dollarmath', 'amsmath']
myst_heading_anchors = 4

# -- HTML ----------------------------------------------------------------------

html_theme = 'sphinx_book_theme'
html_title = f'ko_optax {release}'
html_theme_options = {
    'show_toc_level': 2,
}

# -- Docstring cross-references ----------------------------------------------


def _lookup(dotted: str):
  """The object named ``dotted`` (a module path, then attributes), or None."""
  import importlib  # pylint: disable=g-import-not-at-top
  parts = dotted.split('.')
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module('.'.join(parts[:i]))
    except ImportError:
      continue
    try:
      for attr in parts[i:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return None
    return obj
  return None


def resolve_existing(app, env, node, contnode):
  """Resolves a docstring reference to an existing, unlisted ko_optax object.

  Docstrings name module helpers (``:func:`acceptance```) that are
  real but not on the reference page, and signatures name the defining module
  (``ko_optax.particles.ParticleSpec``) of an object listed as
  ``ko_optax.ParticleSpec``. The first is shown as code without a link, the
  second links to the listed name. A reference to nothing that exists stays
  unresolved, and ``nitpicky`` plus ``-W`` fail the build on it.
  """
  if node.get('refdomain') != 'py':
    return None
  import ko_optax  # pylint: disable=g-import-not-at-top
  target = node['reftarget'].lstrip('~.')
  modules = [node.get('py:module'), 'ko_optax']
  modules += [m for _, mods, _ in API_GROUPS for m in mods]
  for module in [None] + [m for m in modules if m]:
    dotted = f'{module}.{target}' if module else target
    if not dotted.startswith('ko_optax'):
      continue
    obj = _lookup(dotted)
    if obj is None:
      continue
    for name in ko_optax.__all__:
      if getattr(ko_optax, name) is obj and dotted != f'ko_optax.{name}':
        return env.get_domain('py').resolve_xref(
            env, node['refdoc'], app.builder, node['reftype'],
            f'ko_optax.{name}', node, contnode)
    return contnode
  return None


def escape_pipes(app, what, name, obj, options, lines):
  """Lets ``|x|`` mean an absolute value, not a reST substitution.

  Only prose is touched: doctest lines, literal blocks and ````code```` are
  left as they are.
  """
  del app, what, name, obj, options
  literal_indent = None
  for i, line in enumerate(lines):
    stripped = line.lstrip()
    indent = len(line) - len(stripped)
    if literal_indent is not None:
      if not stripped or indent > literal_indent:
        continue
      literal_indent = None
    if stripped.startswith(('>>>', '...')):
      continue
    parts = line.split('``')
    for j in range(0, len(parts), 2):  # even parts are outside ``code``
      parts[j] = re.sub(r'(?<!\\)\|', r'\\|', parts[j])
    lines[i] = '``'.join(parts)
    if line.rstrip().endswith('::'):
      literal_indent = indent


# -- The api-group directive --------------------------------------------------


def setup(app):
  """Registers ``.. ko-api-group:: KEY`` and the completeness check."""
  from docutils import nodes  # pylint: disable=g-import-not-at-top
  from docutils.statemachine import StringList  # pylint: disable=g-import-not-at-top
  from sphinx.errors import ExtensionError  # pylint: disable=g-import-not-at-top
  from sphinx.util.docutils import SphinxDirective  # pylint: disable=g-import-not-at-top

  try:
    groups = api_groups()
  except ValueError as e:
    raise ExtensionError(str(e)) from None
  extras = {key: extra for key, _, extra in API_GROUPS}
  modules = {key: mods for key, mods, _ in API_GROUPS}

  class ApiGroup(SphinxDirective):
    """A section's module docs, a summary table and one entry per name."""
    required_arguments = 1

    def run(self):
      key = self.arguments[0]
      if key not in groups:
        raise self.error(f'unknown API group {key!r}; known: {list(groups)}')
      self.env.ko_api_used = getattr(self.env, 'ko_api_used', set()) | {key}
      lines = []
      for module in modules[key]:
        lines += [f'.. automodule:: {module}', '']
      lines += ['.. currentmodule:: ko_optax', '', '.. autosummary::', '']
      names = [f'ko_optax.{n}' for n in groups[key]] + list(extras[key])
      # autosummary wants names relative to the current module.
      lines += [f'   ~{n.removeprefix("ko_optax.")}' for n in names] + ['']
      for name in names:
        kind = 'autoclass' if name.rsplit('.', 1)[-1][0].isupper() else (
            'autofunction')
        lines += [f'.. {kind}:: {name}', '']
      node = nodes.section()
      node.document = self.state.document
      self.state.nested_parse(StringList(lines, source=f'<api:{key}>'),
                              self.content_offset, node)
      return node.children

  def check_all_sections(app, env):
    del app
    unused = set(groups) - getattr(env, 'ko_api_used', set())
    if unused:
      raise ExtensionError(
          'API groups not placed in any page (add a ".. ko-api-group::" '
          f'directive to docs/api.rst): {sorted(unused)}')

  app.add_directive('ko-api-group', ApiGroup)
  app.connect('env-check-consistency', check_all_sections)
  app.connect('autodoc-process-docstring', escape_pipes)
  app.connect('missing-reference', resolve_existing)
  return {'parallel_read_safe': False}
