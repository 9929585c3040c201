#!/usr/bin/env python3
"""Run mypy over every module under its installed `nncaption.*` name.

The top-level folders (netapi/, sandbox/, ...) install as `nncaption.netapi`, `nncaption.sandbox`, ... through
setuptools' package-dir mapping, which mypy cannot read. This script mirrors that mapping as a tree of symlinks
under build/typecheck/ (brought up to date on every run, from `[tool.setuptools.package-dir]` in pyproject.toml),
runs mypy on it plus tests/, and rewrites the paths in mypy's report back to the real files.

    python .ci/typecheck.py                 # every module and the tests (what `make lint` runs)
    python .ci/typecheck.py netapi/job.py   # only these files (imports are followed silently)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
PACKAGE = "nncaption"


def package_dirs() -> dict[str, str]:
    """The `nncaption.*` -> folder mapping from pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return mapping


def build_tree(mapping: dict[str, str]) -> dict[Path, Path]:
    """Bring build/typecheck/nncaption/ up to date and return {tree folder: real folder}, longest tree path first.

    Only stale or missing links are changed, so that two runs at once (several developers, one tree) do not pull the
    tree from under each other.
    """
    pkg = TREE / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    own = ROOT / mapping.get(PACKAGE, PACKAGE)
    wanted: dict[str, Path] = {}
    links: dict[Path, Path] = {pkg: own}
    for entry in sorted(own.iterdir()):
        if entry.name != "__pycache__" and not entry.name.startswith("."):
            wanted[entry.name] = entry
    for name, folder in mapping.items():
        if name == PACKAGE:
            continue
        parts = name.split(".")
        if parts[0] != PACKAGE or len(parts) != 2:
            raise SystemExit(f"typecheck.py: cannot mirror package-dir entry {name!r} = {folder!r}")
        if parts[1] in wanted:
            raise SystemExit(f"typecheck.py: {PACKAGE}/{parts[1]} exists and clashes with package-dir {name!r}")
        wanted[parts[1]] = ROOT / folder
        links[pkg / parts[1]] = ROOT / folder
    for entry in pkg.iterdir():
        target = wanted.get(entry.name)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif not entry.is_symlink() or target is None or os.readlink(entry) != os.path.relpath(target, pkg):
            entry.unlink()
    for name, target in wanted.items():
        link = pkg / name
        if not link.is_symlink():
            try:
                link.symlink_to(os.path.relpath(target, pkg))
            except FileExistsError:  # a concurrent run made the same link
                continue
    return dict(sorted(links.items(), key=lambda kv: -len(str(kv[0]))))


def to_tree(path: Path, links: dict[Path, Path]) -> Path:
    """The tree path mypy should see for a real file (files outside the package, like tests/, stay as they are)."""
    real = (ROOT / path).resolve()
    for tree, folder in links.items():
        if real.is_relative_to(folder.resolve()):
            return tree / real.relative_to(folder.resolve())
    return path


def from_tree(text: str, links: dict[Path, Path]) -> str:
    """Rewrite tree paths in mypy's report to the real paths, relative to the repository root."""
    for tree, folder in links.items():
        text = text.replace(str(tree.relative_to(ROOT)) + "/", str(folder.relative_to(ROOT)) + "/")
    return text


def main(argv: list[str]) -> int:
    links = build_tree(package_dirs())
    options = [a for a in argv if a.startswith("-")]
    files = [Path(a) for a in argv if not a.startswith("-")]
    if files:
        targets = [os.path.relpath(to_tree(f.resolve(), links), ROOT) for f in files]
        options = ["--follow-imports=silent", *options]
    else:
        targets = [str((TREE / PACKAGE).relative_to(ROOT)), "tests", ".ci/typecheck.py"]
    cmd = [sys.executable, "-m", "mypy", *options, *targets]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stdout.write(from_tree(proc.stdout, links))
    sys.stderr.write(from_tree(proc.stderr, links))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
