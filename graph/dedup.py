"""Duplicate detection before training: a normalised-AST hash of the code plus the hyperparameters.

Two candidates that differ only in formatting, comments, docstrings or the names
of local variables train the same network; the graph trains the first and
records the second as a duplicate. Normalisation:

- parse the code and drop every docstring (module, class, function);
- rename the parameters and locally bound names of each function to `_v0, _v1, ...`
  in order of first appearance (attribute names, globals, imports, class and
  function names are kept: they can change behaviour, e.g. `self.fc` vs `self.head`
  under `load_state_dict`, or `supported_hyperparameters`);
- `ast.dump` without line numbers, so formatting and comments vanish.

A file that does not parse is hashed by its text with whitespace collapsed.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from nncaption.netapi import pyast


def _strip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:] or [ast.Pass()]
    return body


class _Normaliser(ast.NodeTransformer):
    """Drops docstrings and renames function-local names (parameters and assigned names)."""

    def __init__(self) -> None:
        self._scopes: list[dict[str, str]] = []

    def _local_names(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
        names: list[str] = []
        args = fn.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            names.append(a.arg)
        for extra in (args.vararg, args.kwarg):
            if extra is not None:
                names.append(extra.arg)
        declared_global: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, (ast.Global, ast.Nonlocal)):
                declared_global.update(node.names)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.append(node.id)
            elif isinstance(node, ast.arg) and node.arg not in names:
                names.append(node.arg)
        mapping: dict[str, str] = {}
        for n in names:
            if n not in mapping and n not in declared_global:
                mapping[n] = f"_v{len(mapping)}"
        return mapping

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        node.body = _strip_docstring(node.body)
        outer = self._scopes[-1] if self._scopes else {}
        self._scopes.append({**outer, **self._local_names(node)})
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args = self.visit(node.args)
        node.body = [self.visit(s) for s in node.body]
        node.returns = None
        self._scopes.pop()
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._visit_function(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = _strip_docstring(node.body)
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if self._scopes and node.id in self._scopes[-1]:
            node.id = self._scopes[-1][node.id]
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        if self._scopes and node.arg in self._scopes[-1]:
            node.arg = self._scopes[-1][node.arg]
        node.annotation = None
        return node


def normalised_source(code: str) -> str:
    """The canonical form two equivalent files share (an `ast.dump`), or collapsed text if it does not parse."""
    try:
        tree = pyast.parse(code.lstrip("\ufeff"))  # one thread at a time
    except (SyntaxError, ValueError):
        return "unparsed:" + " ".join(code.split())
    tree.body = _strip_docstring(tree.body)
    tree = _Normaliser().visit(tree)
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _canonical_prm(prm: Mapping[str, Any] | None) -> str:
    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return round(float(v), 12)
        return str(v)

    return json.dumps({str(k): norm(v) for k, v in sorted((prm or {}).items())}, sort_keys=True)


def dedup_key(code: str, prm: Mapping[str, Any] | None = None) -> str:
    """SHA-256 (hex) of the normalised code and the hyperparameters: equal keys train the same network."""
    h = hashlib.sha256()
    h.update(normalised_source(code).encode("utf-8"))
    h.update(b"\0")
    h.update(_canonical_prm(prm).encode("utf-8"))
    return h.hexdigest()
