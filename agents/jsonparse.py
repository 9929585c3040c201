"""JSON from endpoints: depth-limited parsing, text sanitising, tolerant JSON-object search in replies.

Everything here treats its input as hostile: a 100,000-deep body must be a
`ValueError` (never a RecursionError or a traceback), a lone surrogate or a NUL
must not reach SQLite or a terminal, and the object search in a reply is bounded
in the number of decode attempts, so a long reply full of braces stays linear.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
MAX_OBJECT_TRIES = 200  # `{` positions tried by parse_json_object before it gives up
_FENCED_JSON = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class TooDeep(ValueError):
    """JSON nested deeper than the limit."""


def clean_text(value: str) -> str:
    """`value` without NUL and lone surrogates (each becomes U+FFFD): safe for SQLite, UTF-8 files and terminals."""
    return _BAD_CHARS.sub("\ufffd", value) if _BAD_CHARS.search(value) else value


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v)
    return deepest


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` that raises ValueError (`TooDeep`) for nesting deeper than `max_depth`, never RecursionError."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(f"JSON nested deeper than the parser's limit (max {max_depth})") from None
    if depth(value) > max_depth:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`: the whole text, a ```json block, or the first decodable {...}."""
    value = _object(text.strip())
    if value is not None:
        return value
    for m in _FENCED_JSON.finditer(text):
        value = _object(m.group(1))
        if value is not None:
            return value
    decoder = json.JSONDecoder()
    start = text.find("{")
    tries = 0
    while start != -1 and tries < MAX_OBJECT_TRIES:
        tries += 1
        try:
            found, _ = decoder.raw_decode(text, start)
            if isinstance(found, dict) and depth(found) <= MAX_DEPTH:
                return found
        except (ValueError, RecursionError):
            pass
        start = text.find("{", start + 1)
    return None
