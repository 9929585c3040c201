"""Make candidate-derived text safe to print or to send to an LLM.

Anything a job wrote (exception text, stdout/stderr tails, verdict messages) is
hostile input: it may carry terminal escape sequences (window title, clipboard,
cursor moves, fake coloured lines) or be arbitrarily long. `safe_text` escapes
every C0/C1 control character except newline and tab, as well as DEL and lone
surrogates, and caps the length, keeping the end (where tracebacks say most).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

DEFAULT_LIMIT = 4000
ELLIPSIS = "[...]"


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _is_unsafe(ch: str) -> bool:
    code = ord(ch)
    if ch in "\n\t":
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029)


def safe_text(text: object, limit: int | None = DEFAULT_LIMIT, *, keep: str = "tail") -> str:
    """`text` with control characters escaped and at most `limit` characters.

    `keep="tail"` keeps the end of an over-long text (tracebacks), `"head"` the
    start (messages). Carriage returns are escaped too: a bare CR can overwrite
    what a terminal already shows.
    """
    s = text if isinstance(text, str) else str(text)
    if limit is not None and len(s) > 4 * limit:  # bound the work before escaping
        s = s[-4 * limit:] if keep == "tail" else s[: 4 * limit]
    out = "".join(_escape(ch) if _is_unsafe(ch) else ch for ch in s)
    if limit is not None and len(out) > limit:
        cut = max(limit - len(ELLIPSIS), 0)
        out = ELLIPSIS + out[len(out) - cut:] if keep == "tail" else out[:cut] + ELLIPSIS
    return out


def strict_json_value(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so that `json.dumps(..., allow_nan=False)` holds.

    Recurses through dicts, lists and tuples; other values are returned as they are.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    return value


def strict_dumps(obj: Any, **kwargs: Any) -> str:
    """RFC 8259 JSON: non-finite floats become null; anything not serialisable becomes its (safe) string."""
    return json.dumps(strict_json_value(obj), allow_nan=False, default=lambda o: safe_text(o, 2000), **kwargs)


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "[]()!*_~#"})


def safe_markdown(text: object, limit: int | None = 300) -> str:
    """Hostile text as one inert Markdown line or table cell: `safe_text`, then HTML escaped, links and images
    neutralised (brackets, parentheses, `!` backslash-escaped; `://` broken so nothing autolinks), pipes, backticks
    and newlines made harmless."""
    import html

    s = safe_text(text if text is not None else "", limit, keep="head")
    s = html.escape(s).translate(_MD_SPECIAL).replace("|", "\\|").replace("`", "'").replace("\n", " ")
    return s.replace("://", ":\u200b//").replace("www.", "www\u200b.")


class SafeFormatter(logging.Formatter):
    """A log formatter whose output never carries a raw control character (messages quote hostile text)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record), None)
