"""Syntax-tree helpers of the static validator: snippets, file writes and download arguments.

Functions over `ast` nodes, shared by the symbol check and the safety scan. A `Qualifier` is anything
with `qualify(node) -> str | None` (the safety scan, which resolves import aliases); a `Scanner` also
collects findings (`add`). The write checks refuse paths that certainly leave the working directory and
module files (`*.py`, `*.so`) that the candidate could import afterwards.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from nncaption.netapi.categories import Category
from nncaption.netapi.validate_rules import FIX_INTERNET, PATH_WRITERS, TORCHVISION_PREFIXES, WRITE_MODE_CHARS


@dataclass(frozen=True)
class Finding:
    """One problem found in the source: its category, 1-based line and fixer-ready text."""

    category: Category
    line: int | None
    message: str


class Qualifier(Protocol):
    def qualify(self, node: ast.AST) -> str | None: ...


class Scanner(Qualifier, Protocol):
    """What the write and download checks need from the safety scan."""

    source: str
    star_modules: list[str]

    def add(self, category: Category, node: ast.AST, why: str, fix: str = "") -> None: ...


def clip(text: str, width: int = 80) -> str:
    """`text` on one line, at most `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def snippet(node: ast.AST, source: str, width: int = 80) -> str:
    """The source text of `node`, clipped, for messages."""
    seg = ast.get_source_segment(source, node) or ""
    return clip(seg, width) if seg else type(node).__name__


def module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, including those nested in if/try/with blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            yield from module_level(stmt.body)
            yield from module_level(stmt.orelse)
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            yield from module_level(stmt.body)
            for h in stmt.handlers:
                yield from module_level(h.body)
            yield from module_level(stmt.orelse)
            yield from module_level(stmt.finalbody)
        elif isinstance(stmt, ast.With):
            yield from module_level(stmt.body)


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for Name/Attribute chains, else None (no alias resolution)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def kw(node: ast.Call, name: str) -> ast.expr | None:
    """The value of keyword argument `name`, or None."""
    for k in node.keywords:
        if k.arg == name:
            return k.value
    return None


def is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def truthy_constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and bool(node.value)


def falsy_constant(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and not node.value


def mentions_weights_enum(node: ast.AST) -> bool:
    """`ResNet18_Weights.DEFAULT`, `"DEFAULT"`, `"IMAGENET1K_V1"` and the like."""
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id.endswith("_Weights"):
            return True
        if isinstance(n, ast.Attribute) and (n.attr.endswith("_Weights") or n.attr in ("DEFAULT",)
                                             or n.attr.startswith("IMAGENET")):
            return True
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(
            r"DEFAULT|IMAGENET\w*|\w+_Weights(\.\w+)?", n.value
        ):
            return True
    return False


def is_path_ctor(node: ast.AST | None, scan: Qualifier) -> bool:
    """`Path(...)` / `pathlib.Path(...)` (possibly joined with `/`)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return is_path_ctor(node.left, scan)
    if isinstance(node, ast.Call):
        q = scan.qualify(node.func) or dotted(node.func) or ""
        return q.rsplit(".", 1)[-1] in ("Path", "PosixPath", "PurePath")
    return False


_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _bad_path_text(text: str) -> bool:
    parts = re.split(r"[\\/]+", text)
    return text.startswith(("/", "~", "\\")) or bool(_DRIVE.match(text)) or ".." in parts


def outside_path(node: ast.AST | None, scan: Qualifier) -> str | None:
    """A description of a path expression that certainly leaves the working directory, else None."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return repr(node.value) if _bad_path_text(node.value) else None
    if isinstance(node, ast.JoinedStr):
        consts = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
        first = node.values[0] if node.values else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith(("/", "~")):
            return f"an absolute path ({first.value!r}...)"
        if any(".." in re.split(r"[\\/]+", c) for c in consts):
            return "a path with '..'"
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Div, ast.Mod)):
        left = outside_path(node.left, scan)
        if left:
            return left
        right = node.right
        if isinstance(node.op, ast.Div) and isinstance(right, ast.Constant) and isinstance(right.value, str):
            return repr(right.value) if ".." in re.split(r"[\\/]+", right.value) else None
        return None
    if isinstance(node, ast.Call):
        q = scan.qualify(node.func) or dotted(node.func) or ""
        last = q.rsplit(".", 1)[-1]
        if last in ("join", "Path", "PosixPath", "PurePath", "expanduser", "abspath", "realpath") and node.args:
            for a in node.args:
                hit = outside_path(a, scan)
                if hit:
                    return hit
        if last in ("home", "cwd"):
            return None if last == "cwd" else "the home directory"
    return None


CODE_SUFFIXES: tuple[str, ...] = (".py", ".pyc", ".pth", ".so", ".pyd")


def code_path(node: ast.AST | None) -> str | None:
    """A constant path naming a Python or native module file (a written one could be imported), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(CODE_SUFFIXES):
        return repr(node.value)
    if isinstance(node, ast.JoinedStr) and node.values:
        last = node.values[-1]
        if isinstance(last, ast.Constant) and isinstance(last.value, str) and last.value.endswith(CODE_SUFFIXES):
            return "a module file"
    return None


# --------------------------------------------------------------------------- writes and downloads


def check_open(scan: Scanner, node: ast.Call, builtin: bool) -> None:
    if builtin:
        path = node.args[0] if node.args else kw(node, "file")
        mode = node.args[1] if len(node.args) > 1 else kw(node, "mode")
    else:  # Path(...).open(mode)
        path = node.func.value if isinstance(node.func, ast.Attribute) else None
        mode = node.args[0] if node.args else kw(node, "mode")
        if not is_path_ctor(path, scan):
            return
        path = path.args[0] if isinstance(path, ast.Call) and path.args else path
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and WRITE_MODE_CHARS & set(mode.value)):
        return
    check_target(scan, node, path)

def check_path_writer(scan: Scanner, node: ast.Call, q: str) -> None:
    if q in PATH_WRITERS:
        i = PATH_WRITERS[q]
        path = node.args[i] if len(node.args) > i else None
    else:  # Path("/x").write_text(...)
        receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
        if not is_path_ctor(receiver, scan):
            return
        path = receiver.args[0] if isinstance(receiver, ast.Call) and receiver.args else receiver
    check_target(scan, node, path)

def check_target(scan: Scanner, node: ast.Call, path: ast.AST | None) -> None:
    outside = outside_path(path, scan)
    if outside:
        scan.add(Category.FORBIDDEN_CALL, node, f"writes to {outside}, outside the working directory",
                  "write only relative paths inside the working directory, or nothing at all")
        return
    module_file = code_path(path)
    if module_file:
        scan.add(Category.FORBIDDEN_CALL, node, f"writes {module_file}, a module file that could be imported",
                  "write only data files (checkpoints, logs)")

def check_downloads(scan: Scanner, node: ast.Call, q: str) -> None:
    is_tv = q.startswith(TORCHVISION_PREFIXES) or (
        not q and isinstance(node.func, ast.Name) and any(m.startswith("torchvision") for m in scan.star_modules)
    )
    for k in node.keywords:
        if k.arg in ("pretrained", "pretrained_backbone") and truthy_constant(k.value):
            scan.add(Category.NEEDS_INTERNET, node, f"sets {k.arg}={snippet(k.value, scan.source)}, "
                      "which downloads weights", f"pass {k.arg}=False and {FIX_INTERNET}")
        elif k.arg in ("weights", "weights_backbone") and not is_none(k.value) and (
            is_tv or mentions_weights_enum(k.value)
        ):
            scan.add(Category.NEEDS_INTERNET, node, f"sets {k.arg}={snippet(k.value, scan.source)}, "
                      "which downloads weights", f"pass {k.arg}=None and {FIX_INTERNET}")
        elif k.arg == "download" and truthy_constant(k.value):
            scan.add(Category.NEEDS_INTERNET, node, "sets download=True", "use only the data the runner passes")
    if is_tv and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value is True:
        scan.add(Category.NEEDS_INTERNET, node, "passes pretrained=True positionally, which downloads weights",
                  f"pass pretrained=False and {FIX_INTERNET}")
    if isinstance(node.func, ast.Attribute) and node.func.attr == "get_state_dict" and mentions_weights_enum(
        node.func.value
    ):
        scan.add(Category.NEEDS_INTERNET, node, "downloads the weights of a torchvision Weights enum",
                  FIX_INTERNET)
