"""Checks the built wheel and sdist hold every file of the package.

Usage: python .ci/check_dist.py DIST_DIR

The wheel must ship every .py file under ko_optax/ of the source tree and
ko_optax/py.typed; the sdist must also carry LICENSE, README.md,
CHANGELOG.md and pyproject.toml; both must carry ko_optax.__version__, the
package's one version number. Exits non-zero naming what is missing.
"""

import ast
import pathlib
import sys
import tarfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(dist: pathlib.Path) -> int:
  init = (ROOT / 'ko_optax' / '__init__.py').read_text()
  version = next(
      ast.literal_eval(line.split('=', 1)[1].strip())
      for line in init.splitlines() if line.startswith('__version__'))
  package = sorted(str(p.relative_to(ROOT))
                   for p in (ROOT / 'ko_optax').rglob('*.py'))
  package.append('ko_optax/py.typed')
  wheels = list(dist.glob(f'ko_optax-{version}-*.whl'))
  sdists = list(dist.glob(f'ko_optax-{version}.tar.gz'))
  if len(wheels) != 1 or len(sdists) != 1:
    print(f'expected one wheel and one sdist of version {version} in {dist}, '
          f'found {sorted(p.name for p in dist.iterdir())}')
    return 1
  with zipfile.ZipFile(wheels[0]) as whl:
    in_wheel = set(whl.namelist())
  with tarfile.open(sdists[0]) as sdist:
    prefix = f'ko_optax-{version}/'
    in_sdist = {n.removeprefix(prefix) for n in sdist.getnames()}
  missing = [f'wheel: {f}' for f in package if f not in in_wheel]
  missing += [f'sdist: {f}' for f in package + [
      'LICENSE', 'README.md', 'CHANGELOG.md', 'pyproject.toml']
              if f not in in_sdist]
  if not any(n.endswith('.dist-info/licenses/LICENSE') for n in in_wheel):
    missing.append('wheel: LICENSE in .dist-info/licenses')
  for line in missing:
    print('missing from the distribution:', line)
  if not missing:
    print(f'{wheels[0].name} and {sdists[0].name}: all {len(package)} '
          'package files, LICENSE and the version present')
  return 1 if missing else 0


if __name__ == '__main__':
  sys.exit(main(pathlib.Path(sys.argv[1])))
