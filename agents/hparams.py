"""The hyperparameter channel: what a designer or fixer wants the candidate trained with.

A reply names its hyperparameters in one of three ways (first found wins):

1. a JSON-mode reply: an object with the code and a `prm` (or `hyperparameters`) field;
2. a fenced ```json block holding an object (outside the python block);
3. a module-level `PRM = {...}` literal in the candidate file.

Values are read with `json` or `ast.literal_eval` (never executed) and validated
by `validate_prm` against the file's `supported_hyperparameters()` (read statically
from the AST) plus the generic training key `batch`, and sane ranges: lr in (0, 1],
momentum in [0, 1), dropout in [0, 1), batch an int in 1..512; every value a finite
number. A violation is a `PrmError` (category `bad-hyperparameters`) whose message
names the key and the allowed values, so a fixer can act on it.

What an LLM asks for goes through `validate_llm_prm`: a key the file does not support
(a model's habitual `weight_decay`) is dropped with a note for the trace instead of
losing the candidate; values out of range are still errors.
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from nncaption.netapi import pyast
from nncaption.netapi.categories import Category
from nncaption.netapi.errors import NNCaptionError
from nncaption.sandbox.settings import BATCH_RANGE, MAX_PRM_KEYS, PRM_RANGES

log = logging.getLogger(__name__)

Prm = dict[str, float | int]

PRM_CATEGORY = Category.BAD_HYPERPARAMETERS.value
GENERIC_KEYS: frozenset[str] = frozenset({"batch"})  # training keys any candidate may set
PRM_FIELDS: tuple[str, ...] = ("prm", "hyperparameters", "hparams")
MAX_KEYS = MAX_PRM_KEYS
_RANGES = PRM_RANGES  # one definition, shared with the service that trains (sandbox/settings.py)
HINT = ("give the hyperparameters as one JSON object whose keys are in supported_hyperparameters() (plus 'batch'): "
        "lr in (0, 1], momentum in [0, 1), dropout in [0, 1), batch an integer 1..512.")


class PrmError(NNCaptionError):
    """The hyperparameters a reply asked for are unreadable or invalid (category `bad-hyperparameters`)."""

    category = PRM_CATEGORY

    def __init__(self, message: str) -> None:
        super().__init__(message, HINT, category=PRM_CATEGORY)


def supported_keys(code: str) -> frozenset[str] | None:
    """The names `supported_hyperparameters()` returns, read from the AST; None when not a literal."""
    try:
        tree = pyast.parse(code)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "supported_hyperparameters":
            for stmt in ast.walk(node):
                if isinstance(stmt, ast.Return) and stmt.value is not None:
                    value = stmt.value
                    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
                            and value.func.id in ("set", "frozenset") and len(value.args) == 1:
                        value = value.args[0]
                    try:
                        names = ast.literal_eval(value)
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        return None
                    if isinstance(names, (set, frozenset, list, tuple)) and all(isinstance(n, str) for n in names):
                        return frozenset(names)
                    return None
    return None


def prm_literal(code: str) -> dict[str, Any] | None:
    """The module-level `PRM = {...}` literal of a file (ast.literal_eval, never exec), or None."""
    try:
        tree = pyast.parse(code)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        target: ast.expr | None = None
        expr: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, expr = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, expr = node.target, node.value
        if isinstance(target, ast.Name) and target.id == "PRM" and expr is not None:
            try:
                value = ast.literal_eval(expr)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
                raise PrmError(f"PRM at line {node.lineno} is not a literal dict of numbers ({e})") from None
            if not isinstance(value, dict):
                raise PrmError(f"PRM at line {node.lineno} must be a dict, got {type(value).__name__}")
            return value
    return None


def prm_from_object(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The hyperparameters in a JSON reply object: its `prm`/`hyperparameters` field, else None."""
    for name in PRM_FIELDS:
        if name in obj:
            value = obj[name]
            if value is None:
                return None
            if not isinstance(value, dict):
                raise PrmError(f"the reply's {name!r} field must be a JSON object, got {type(value).__name__}")
            return value
    return None


def prm_from_json_blocks(blocks: list[str]) -> dict[str, Any] | None:
    """The first fenced JSON block that decodes to an object (a `prm` field inside it is unwrapped)."""
    for text in blocks:
        try:
            value = json.loads(text)
        except ValueError:
            log.debug("a json block in the reply does not decode; ignored")
            continue
        if isinstance(value, dict):
            inner = prm_from_object(value)
            return inner if inner is not None else value
    return None


def _number(key: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PrmError(f"hyperparameter {key!r} must be a number, got {value!r}"[:200])
    if isinstance(value, float) and not math.isfinite(value):
        raise PrmError(f"hyperparameter {key!r} must be finite, got {value!r}")
    return value


def validate_prm(prm: Mapping[str, Any], code: str | None = None) -> Prm:
    """A checked copy of `prm`; `PrmError` naming the key when it is unknown or out of range.

    Keys must be in the file's `supported_hyperparameters()` (when `code` is given
    and the set can be read statically) or in GENERIC_KEYS.
    """
    if not isinstance(prm, Mapping):
        raise PrmError(f"the hyperparameters must be a JSON object, got {type(prm).__name__}")
    if len(prm) > MAX_KEYS:
        raise PrmError(f"too many hyperparameters ({len(prm)}; at most {MAX_KEYS})")
    allowed = supported_keys(code) if code is not None else None
    out: Prm = {}
    for key, raw in prm.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise PrmError(f"hyperparameter name {str(key)[:40]!r} is not an identifier")
        if allowed is not None and key not in allowed and key not in GENERIC_KEYS:
            raise PrmError(f"hyperparameter {key!r} is not in supported_hyperparameters() "
                           f"({', '.join(sorted(allowed)) or 'empty'}) nor a training key ({', '.join(GENERIC_KEYS)})")
        value = _number(key, raw)
        if key in _RANGES:
            low, high, low_in, high_in = _RANGES[key]
            ok = (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
            if not ok:
                interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                raise PrmError(f"hyperparameter {key!r} = {value!r} is outside {interval}")
            value = float(value)
        elif key == "batch":
            if not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
                raise PrmError(f"hyperparameter 'batch' must be an integer, got {value!r}")
            value = int(value)
            if not BATCH_RANGE[0] <= value <= BATCH_RANGE[1]:
                raise PrmError(f"hyperparameter 'batch' = {value} is outside {BATCH_RANGE[0]}..{BATCH_RANGE[1]}")
        out[key] = value
    return out


def prm_text(prm: Mapping[str, Any]) -> str:
    """The prm as the prompts show it: one JSON object with sorted keys (exact, parseable)."""
    return json.dumps({k: prm[k] for k in sorted(prm)})


def unknown_keys(prm: Mapping[str, Any], code: str | None) -> list[str]:
    """Keys of `prm` that `code` cannot take: not identifiers, or outside its supported set and GENERIC_KEYS."""
    allowed = supported_keys(code) if code is not None else None
    return [str(k) for k in prm
            if not isinstance(k, str) or not k.isidentifier()
            or (allowed is not None and k not in allowed and k not in GENERIC_KEYS)]


def validate_llm_prm(prm: Mapping[str, Any], code: str | None = None) -> tuple[Prm, list[str]]:
    """`validate_prm` for what an LLM asked for: unknown keys are dropped, each with a note (returned).

    The notes name the key and what the file supports, so the trace shows why a
    hyperparameter the reply asked for was not used.
    """
    if not isinstance(prm, Mapping):
        raise PrmError(f"the hyperparameters must be a JSON object, got {type(prm).__name__}")
    dropped = unknown_keys(prm, code)
    notes: list[str] = []
    if dropped:
        allowed = supported_keys(code) if code is not None else None
        supported = ", ".join(sorted(allowed)) if allowed else "none"
        for key in dropped[:8]:
            notes.append(f"dropped hyperparameter {key[:40]!r}: not in supported_hyperparameters() ({supported}) "
                         f"nor a training key ({', '.join(sorted(GENERIC_KEYS))})")
            log.info("%s", notes[-1])
        if len(dropped) > 8:
            notes.append(f"dropped {len(dropped) - 8} more unknown hyperparameters")
    kept = {k: v for k, v in prm.items() if str(k) not in dropped}
    return validate_prm(kept, code), notes
