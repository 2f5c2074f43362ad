"""Pins every lower bound of pyproject.toml exactly, for the oldest leg.

  python .ci/lower_bounds.py                  # `name==version` lines
  python .ci/lower_bounds.py --oldest-python  # from requires-python: 3.11
  python .ci/lower_bounds.py --newest-python  # the newest classifier: 3.13

Reads [project] dependencies and the extras the tests install (`dev`, with the
extras it names of ko-optax itself) and writes each `>=` bound as `==`, so that
`pip install -c <file> -e ".[dev]"` installs the oldest versions pyproject.toml
claims to support. jaxlib, which jax pulls in, is pinned to jax's version. The
test tools (pytest, pytest-xdist, hypothesis) float: they test, they are not
what users run.
"""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOATING = {'pytest', 'pytest-xdist', 'hypothesis'}
REQUIREMENT = re.compile(
    r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*([^;]*?)\s*$')


def _normalise(name):
  return re.sub(r'[-_.]+', '-', name).lower()


def lower_bounds(project, extras=('dev',)):
  """Returns {name: version} for every `>=` bound reached from `extras`."""
  own = _normalise(project['name'])
  optional = project.get('optional-dependencies', {})
  pins = {}
  todo = list(project.get('dependencies', []))
  seen = set()
  for extra in extras:
    todo += optional[extra]
    seen.add(extra)
  while todo:
    requirement = todo.pop(0).split(';')[0]  # no markers are used yet
    match = REQUIREMENT.match(requirement)
    if match is None:
      raise ValueError(f'cannot read the requirement {requirement!r}')
    name, named_extras, specifiers = match.groups()
    name = _normalise(name)
    if name == own:
      for extra in (named_extras or '').split(','):
        extra = extra.strip()
        if extra and extra not in seen:
          seen.add(extra)
          todo += optional[extra]
      continue
    if name in FLOATING:
      continue
    bounds = re.findall(r'>=\s*([^,\s]+)', specifiers)
    if len(bounds) != 1:
      raise ValueError(f'{requirement!r}: expected exactly one >= bound')
    if pins.get(name, bounds[0]) != bounds[0]:
      raise ValueError(f'{name}: two lower bounds, {pins[name]} and '
                       f'{bounds[0]}')
    pins[name] = bounds[0]
  if 'jax' in pins:
    pins.setdefault('jaxlib', pins['jax'])
  return pins


def main(argv):
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  if argv == ['--oldest-python']:
    print(re.fullmatch(r'>=\s*(3\.\d+)', project['requires-python'])[1])
    return
  if argv == ['--newest-python']:
    listed = [re.fullmatch(r'Programming Language :: Python :: (3\.\d+)', c)
              for c in project['classifiers']]
    print(max((m[1] for m in listed if m), key=lambda v: int(v[2:])))
    return
  if argv:
    sys.exit(__doc__)
  for name, version in sorted(lower_bounds(project).items()):
    print(f'{name}=={version}')


if __name__ == '__main__':
  main(sys.argv[1:])
