"""The codebase keeps the shape the README's Layout describes: small functions, the modules that once grew into
grab-bags under 300 lines, and each format's suffix written in one table (edgekit.formats) plus the runtime that
loads it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
MAX_FUNCTION_LINES = 80
SMALL_MODULES = ("exporting/__init__.py", "benchmarking/__init__.py", "exporting/quantize/ort.py")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_no_function_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_the_modules_that_grew_stay_under_300_lines():
    sizes = {name: len((PACKAGE / name).read_text(encoding="utf-8").splitlines()) for name in SMALL_MODULES}
    assert all(lines < 300 for lines in sizes.values()), sizes


def test_each_format_suffix_is_written_in_the_format_table_and_in_its_runtime_only():
    from edgekit.formats import all_formats

    suffixes = {f.suffix for f in all_formats()}
    offenders = []
    for path, tree in _modules():
        where = path.relative_to(PACKAGE).as_posix()
        if where == "formats.py" or where.startswith("runtimes/"):
            continue
        # a table is a bare literal: docstrings and file names built in f-strings (work files) are not tables
        skipped = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body and isinstance(n.body[0], ast.Expr)
        }
        skipped |= {id(part) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for part in n.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in suffixes and id(node) not in skipped:
                offenders.append(f"{where}:{node.lineno} {node.value!r}")
    assert not offenders, offenders
