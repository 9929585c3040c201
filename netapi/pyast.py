"""`ast.parse` behind one lock, for every parse of candidate or LLM code in this process.

CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state, so two threads building AST
objects at once can fail with `SystemError: AST constructor recursion depth mismatch` (python/cpython#106905):
here the validator runs in worker threads (`asyncio.to_thread`) while the graph parses in the event loop. The
lock is the one piece of process-wide state this package keeps on purpose; a parse takes milliseconds.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>", **kwargs: Any) -> ast.Module:
    """`ast.parse(source, filename, **kwargs)`, one thread at a time."""
    with _LOCK:
        return ast.parse(source, filename=filename, **kwargs)
