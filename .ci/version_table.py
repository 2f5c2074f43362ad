"""The table of tested versions, docs/versions.md, from what CI's legs ran.

  <venv>/bin/python .ci/version_table.py row LEG >> rows.tsv
  python .ci/version_table.py page rows.tsv > docs/versions.md

`row` runs inside a leg's virtual environment after its test suite passed and
prints one tab-separated line: the leg's name, then the versions installed
there of Python and of PACKAGES. `page` renders those lines as the Markdown
page. .ci/run does both and prints a diff against the committed page.
"""

import importlib.metadata
import platform
import sys
import textwrap

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'chex', 'numpy',
            'orbax-checkpoint')

# What each leg of .ci/run installs, in the order of the table.
LEGS = {
    'oldest': 'every lower bound of pyproject.toml, pinned exactly '
              '(`.ci/lower_bounds.py`), on the oldest Python it allows',
    'readme': "what README.md's test command installs on CI's default "
              '`python3`: the newest releases for that Python',
    'newest': 'the newest releases, on the newest Python pyproject.toml '
              'lists',
}

PAGE = """\
# Tested versions

The test suite (`pytest`, every test) passes with each line of this table.
Each line is one leg of the continuous integration script `.ci/run`, which
builds a fresh virtual environment for it and installs ko_optax with
`pip install -e ".[dev]"`:

{legs}

| leg | Python | {packages} |
| --- | --- | {rules} |
{rows}

The releases between the lines are not tested one by one. Older releases
than the oldest line are not supported (`pyproject.toml` refuses them); nor
is Python 3.10, for which no release of jax 0.7 or later exists.

This page is generated: `.ci/run` writes the versions each leg installed
and renders them with `.ci/version_table.py` into
`docs/_build/versions.md`, then prints the difference from this page (new
releases move the newest line). To update it, copy that file here.
"""


def row(leg):
  versions = [platform.python_version()]
  versions += [importlib.metadata.version(name) for name in PACKAGES]
  return '\t'.join([leg, *versions])


def page(lines):
  rows = [line.rstrip('\n').split('\t') for line in lines if line.strip()]
  order = list(LEGS)
  for fields in rows:
    if fields[0] not in LEGS or len(fields) != 2 + len(PACKAGES):
      raise ValueError(f'not a row of this table: {fields}')
  rows.sort(key=lambda fields: order.index(fields[0]))
  return PAGE.format(
      legs='\n'.join(
          textwrap.fill(f'* **{leg}**: {what}.', 76, subsequent_indent='  ')
          for leg, what in LEGS.items()),
      packages=' | '.join(PACKAGES),
      rules=' | '.join('---' for _ in PACKAGES),
      rows='\n'.join('| ' + ' | '.join(fields) + ' |' for fields in rows),
  )


def main(argv):
  if len(argv) == 2 and argv[0] == 'row' and argv[1] in LEGS:
    print(row(argv[1]))
  elif len(argv) == 2 and argv[0] == 'page':
    with open(argv[1]) as f:
      sys.stdout.write(page(f))
  else:
    sys.exit(__doc__)


if __name__ == '__main__':
  main(sys.argv[1:])
