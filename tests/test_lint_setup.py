"""Packaging and lint set-up: a clean build, every folder packaged, mypy sees every module under nncaption.*.

These read the real pyproject.toml and run the real build backend and the real symlink-tree script.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _setuptools() -> dict[str, Any]:
    section: dict[str, Any] = _pyproject()["tool"]["setuptools"]
    return section


def _typecheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nncaption_ci_typecheck", ROOT / ".ci" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source_folders() -> dict[str, Path]:
    """Every folder under the mapped top-level folders that holds files, keyed by its nncaption.* name."""
    found: dict[str, Path] = {}
    for name, folder in _setuptools()["package-dir"].items():
        base = ROOT / folder
        for path in [base, *sorted(p for p in base.rglob("*") if p.is_dir())]:
            rel = path.relative_to(base)
            if "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
                continue
            if not any(child.is_file() for child in path.iterdir()):
                continue
            found[".".join([name, *rel.parts])] = path
    return found


def test_every_source_folder_is_a_listed_package() -> None:
    """A folder missing from `packages` is either dropped from the wheel or installed with a setuptools warning."""
    listed = set(_setuptools()["packages"])
    missing = sorted(set(_source_folders()) - listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_license_is_an_spdx_string() -> None:
    """The TOML-table form prints a deprecation warning block on every build."""
    assert isinstance(_pyproject()["project"]["license"], str)


def test_wheel_builds_without_warnings_and_ships_the_data_files(tmp_path: Path) -> None:
    """Build the real wheel from a copy of the tree: no warning on stderr, templates and Dockerfile included."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in set(_setuptools()["package-dir"].values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path / "dist"
    code = (
        "import sys; from setuptools import build_meta as b; "
        f"print(b.build_wheel({str(out)!r}))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=src, capture_output=True, text=True,
                          timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    noise = [line for line in (proc.stdout + proc.stderr).splitlines() if "warning" in line.lower()]
    assert not noise, "\n".join(noise[:20])
    wheel = out / proc.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("nncaption/cli.py", "nncaption/netapi/CONTRACT.md", "nncaption/prompts/templates/designer.md",
                     "nncaption/sandbox/image/Dockerfile", "nncaption/prompts/snippets/resnet.py"):
        assert required in names, f"{required} missing from the wheel"


def test_typecheck_tree_names_every_module_as_installed() -> None:
    """mypy must see e.g. netapi/errors.py as nncaption.netapi.errors, and paths map back to the real files."""
    typecheck = _typecheck_module()
    links = typecheck.build_tree(typecheck.package_dirs())
    pkg = ROOT / "build" / "typecheck" / "nncaption"
    for name, folder in _setuptools()["package-dir"].items():
        tree = pkg.joinpath(*name.split(".")[1:])
        for module in (ROOT / folder).glob("*.py"):
            assert (tree / module.name).resolve() == module.resolve(), f"{module} not visible as {name}"
    assert typecheck.to_tree(ROOT / "netapi" / "errors.py", links) == pkg / "netapi" / "errors.py"
    assert typecheck.to_tree(ROOT / "nncaption" / "cli.py", links) == pkg / "cli.py"
    report = "build/typecheck/nncaption/netapi/data/x.py:1: error\nbuild/typecheck/nncaption/cli.py:2: error\n"
    assert typecheck.from_tree(report, links) == "netapi/data/x.py:1: error\nnncaption/cli.py:2: error\n"


def test_ci_lints_before_testing() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make lint" in lines and "make test" in lines
    assert lines.index("make lint") < lines.index("make test")


def test_no_noqa_hides_an_undefined_name() -> None:
    """A noqa comment naming F821 (or a blanket one) would hide undefined names from ruff; import the name instead."""
    pattern = re.compile(r"#\s*noqa(?!:)|#\s*noqa:[^#\n]*\bF821\b", re.IGNORECASE)
    skip = {".venv", "build", ".git", "candidates", "hostile", "node_modules"}
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if skip & set(rel.parts[:-1]):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_parse_of_code_goes_through_the_locked_parser() -> None:
    """CPython 3.11's AST constructor keeps its recursion depth per interpreter: two threads calling ast.parse at
    once can fail with SystemError (seen here: a candidate's training recorded as `internal`). The package parses
    only through nncaption.netapi.pyast.parse, which holds one lock."""
    pattern = re.compile(r"\bast\.parse\(")
    offenders = []
    for folder in ("netapi", "sandbox", "agents", "prompts", "graph", "nncaption", "evals"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() == "netapi/pyast.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
