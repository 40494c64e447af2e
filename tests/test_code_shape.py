"""The shape issue 18 asks of camgap/: short functions, files of one screenful's job, one atomic
write and one file lock for the whole package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "camgap"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 600


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_over_80_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_no_file_over_600_lines():
    big = [
        f"{p.relative_to(PACKAGE)} ({n})" for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert not big, big


def test_one_atomic_write_and_one_lock_implementation():
    for needle in ("os.replace(", "fcntl.flock("):
        where = sorted(str(p.relative_to(PACKAGE)) for p in _sources() if needle in p.read_text(encoding="utf-8"))
        assert where == ["io.py"], (needle, where)
