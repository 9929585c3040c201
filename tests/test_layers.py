"""The import graph follows the README's dependency chain: no package imports one above its own.

netapi <- sandbox <- agents, prompts <- graph <- inspection <- nncaption (CLI) <- evals. Every `import nncaption.X` and
`from nncaption.X import ...` in the sources is read (lazy imports inside functions included, TYPE_CHECKING too:
a type-only upward import still couples the layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS: dict[str, int] = {"netapi": 0, "sandbox": 1, "agents": 2, "prompts": 2, "graph": 3, "inspection": 4,
                          "nncaption": 5, "evals": 6}


def _imported_layers(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "nncaption"
                                     else [])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "nncaption":
                continue
            if len(parts) > 1 and parts[1] in LAYERS:
                found.append((node.lineno, parts[1]))
            elif len(parts) > 1 or node.__class__ is ast.Import:
                found.append((node.lineno, "nncaption"))  # the CLI package itself (nncaption.cli, nncaption.runconfig)
    return found


def _violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "snippets" in path.parts:
            continue
        for line, target in _imported_layers(path):
            if LAYERS[target] > LAYERS[package]:
                out.append(f"{path.relative_to(ROOT)}:{line}: {package} imports nncaption.{target}")
    return out


def test_no_package_imports_upward() -> None:
    problems = [v for package in LAYERS for v in _violations(package)]
    assert not problems, "imports against the dependency chain:\n" + "\n".join(problems)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from nncaption.graph.store import RunStore\n    from nncaption import cli\n")
    assert [t for _, t in _imported_layers(bad)] == ["graph", "nncaption"]
