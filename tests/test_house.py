"""House rules of the library's code: modules and functions stay readable.

No module of ko_optax over 450 lines; no function over 60 lines of code
(docstrings, comments and blank lines aside).
"""

import ast
import io
import pathlib
import tokenize

MAX_MODULE_LINES = 450
MAX_FUNCTION_CODE_LINES = 60
LIBRARY = pathlib.Path(__file__).resolve().parent.parent / 'ko_optax'


def _code_lines(source: str) -> set[int]:
  """The lines of ``source`` that hold code (not comments or blanks)."""
  lines = set()
  skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
          tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER)
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type not in skip:
      lines.update(range(tok.start[0], tok.end[0] + 1))
  return lines


def _docstring_lines(node: ast.AST) -> set[int]:
  body = getattr(node, 'body', None)
  if not isinstance(body, list) or not body:
    return set()
  first = body[0]
  if isinstance(first, ast.Expr) and isinstance(
      first.value, ast.Constant) and isinstance(first.value.value, str):
    return set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
  return set()


def long_functions(source: str, limit: int = MAX_FUNCTION_CODE_LINES
                   ) -> list[tuple[str, int]]:
  """``(name, code lines)`` of every function of ``source`` over ``limit``.

  A function's code lines are its own lines (from ``def`` to its end) that
  hold code, less its docstring and the docstrings of functions and classes
  nested in it.
  """
  code = _code_lines(source)
  out = []
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    own = set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    own &= code
    for inner in ast.walk(node):
      own -= _docstring_lines(inner)
    if len(own) > limit:
      out.append((node.name, len(own)))
  return out


def _modules() -> list[pathlib.Path]:
  return sorted(LIBRARY.rglob('*.py'))


def test_no_module_is_over_the_line_limit():
  long = {str(p.relative_to(LIBRARY)): n for p in _modules()
          if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
  assert not long, f'modules over {MAX_MODULE_LINES} lines: {long}'


def test_no_function_is_over_the_code_line_limit():
  long = {str(p.relative_to(LIBRARY)): found for p in _modules()
          if (found := long_functions(p.read_text()))}
  assert not long, (
      f'functions over {MAX_FUNCTION_CODE_LINES} code lines: {long}')


def test_the_function_check_catches_a_long_function():
  body = ''.join(f'  x{i} = {i}\n' for i in range(60))
  source = ('def long():\n  """Doc.\n\n  More doc.\n  """\n'
            '  # a comment\n\n' + body)
  assert long_functions(source) == [('long', 61)]   # def + 60 statements
  short = 'def short():\n  """Doc."""\n' + ''.join(
      f'  # comment {i}\n\n' for i in range(100)) + '  return 1\n'
  assert long_functions(source.replace(body, body[:-len('  x59 = 59\n')])
                        ) == []
  assert long_functions(short) == []
