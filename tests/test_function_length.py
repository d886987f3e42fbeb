"""No function in ``src/`` longer than 80 lines of code (docs/architecture.md; issue 43): a
function's lines from its ``def`` to its last line, not counting blank lines, comment-only lines
and docstrings. The functions still longer are listed in ``ALLOWED``, each by name, to be split
into named steps; the list only shrinks."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

LIMIT = 80
SRC = Path(__file__).resolve().parents[1] / "src"

#: ``path:qualified name`` of each function still longer than LIMIT (to be split; remove the entry then)
ALLOWED: set[str] = set()


def code_lines(source: str) -> set[int]:
    """The numbers of the lines that hold code: a token other than a comment or a line break,
    outside docstrings."""
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines -= set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def function_lengths(source: str) -> dict[str, int]:
    """``{qualified name: lines of code}`` of every function (methods as ``Class.name``, nested
    functions as ``outer.inner``; a nested function's lines count in its parent too)."""
    code, out = code_lines(source), {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = range(child.lineno, (child.end_lineno or child.lineno) + 1)
                out[prefix + child.name] = len(code.intersection(span))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return out


def too_long() -> dict[str, int]:
    return {
        f"{path.relative_to(SRC.parent).as_posix()}:{name}": n
        for path in sorted(SRC.rglob("*.py"))
        for name, n in function_lengths(path.read_text()).items()
        if n > LIMIT
    }


def test_the_measure_counts_code_not_blank_lines_comments_or_docstrings():
    source = '''
class A:
    """Doc."""

    def f(self, x):
        """A docstring
        of two lines."""
        # a comment

        y = (x +
             1)  # one statement, two lines
        def g():
            return y
        return g
'''
    assert function_lengths(source) == {"A.f": 6, "A.f.g": 2}


def test_no_function_is_longer_than_80_lines():
    found = too_long()
    new = sorted(f"{name} ({found[name]} lines)" for name in set(found) - ALLOWED)
    assert not new, f"functions longer than {LIMIT} lines of code: split them into named steps: {new}"


def test_the_allowed_list_only_names_functions_still_too_long():
    gone = sorted(ALLOWED - set(too_long()))
    assert not gone, f"now at most {LIMIT} lines (or renamed): remove them from ALLOWED: {gone}"
