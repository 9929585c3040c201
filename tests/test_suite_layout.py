"""The test suite's own layout: test files never import each other; shared code lives in helper modules."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_test_file_imports_another() -> None:
    offenders = {p.name: sorted(m for m in imported_modules(p) if m.split(".")[-1].startswith("test_"))
                 for p in sorted(TESTS.glob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}, "move the shared code to a helper module (not test_*)"


def test_helper_modules_hold_no_tests() -> None:
    for path in sorted(TESTS.glob("*.py")):
        if path.name.startswith("test_"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        tests = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                 and n.name.startswith("test_")]
        assert tests == [], f"{path.name} is not collected by pytest, so its tests never run: {tests}"
