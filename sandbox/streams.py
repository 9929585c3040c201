"""Bounded capture of a child's stdout/stderr, and tailing of the runner's progress file.

A candidate may print gigabytes: pipes are drained continuously and only the
last `max_bytes` are kept in memory, so neither memory nor disk grows with the
flood and the child never blocks on a full pipe. Tails come back with control
characters escaped (`safe_text`); progress events come back as flat, strict
JSON-safe dicts whatever the candidate wrote into the progress file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from nncaption.netapi.jobfiles import read_regular
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 16
EVENT_FIELDS = 32  # fields kept per progress event
EVENT_TEXT = 500  # characters kept per string field

__all__ = ["PipeDrainer", "ProgressTail", "TailBuffer", "clean_event", "last_traceback", "read_regular",
           "start_drainers"]


class TailBuffer:
    """Keeps the last `max_bytes` written to it and counts everything."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.total = 0
        self._buf = bytearray()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            if len(data) >= self.max_bytes:
                self._buf = bytearray(data[-self.max_bytes :] if self.max_bytes else b"")
                return
            self._buf += data
            excess = len(self._buf) - self.max_bytes
            if excess > 0:
                del self._buf[:excess]

    @property
    def dropped(self) -> int:
        return self.total - len(self._buf)

    def text(self) -> str:
        with self._lock:
            data = bytes(self._buf)
        head = f"[... {self.total - len(data)} earlier bytes dropped ...]\n" if self.total > len(data) else ""
        return head + safe_text(data.decode("utf-8", errors="replace"), None)


class PipeDrainer:
    """Reads a pipe to EOF in a daemon thread, into a TailBuffer."""

    def __init__(self, stream: BinaryIO, tail: TailBuffer) -> None:
        self.tail = tail
        self._fd = stream.fileno()
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="sandbox-pipe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                chunk = os.read(self._fd, READ_CHUNK)
                if not chunk:
                    break
                self.tail.write(chunk)
        except OSError:
            log.debug("pipe read ended with an error", exc_info=True)

    def join(self, timeout: float) -> bool:
        """Wait for EOF; False when a leaked process still holds the pipe open."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            log.debug("closing a pipe failed", exc_info=True)


def start_drainers(stdout: BinaryIO, stderr: BinaryIO, max_bytes: int) -> tuple[PipeDrainer, PipeDrainer]:
    return PipeDrainer(stdout, TailBuffer(max_bytes)), PipeDrainer(stderr, TailBuffer(max_bytes))


def last_traceback(text: str, max_chars: int = 8000) -> str:
    """The last Python traceback in `text` (empty when there is none)."""
    idx = text.rfind("Traceback (most recent call last)")
    return text[idx:][-max_chars:] if idx >= 0 else ""


def clean_event(raw: Any) -> dict[str, Any] | None:
    """A progress event as a flat dict of safe scalars: str (escaped, capped), int, finite float, bool, None.

    Nested values, non-finite numbers and anything else are dropped; None when `raw` is not an object.
    """
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for key, value in list(raw.items())[:EVENT_FIELDS]:
        k = safe_text(key, 64)
        if value is None or isinstance(value, bool):
            out[k] = value
        elif isinstance(value, int):
            out[k] = value if abs(value) < 1 << 53 else None
        elif isinstance(value, float):
            out[k] = value if math.isfinite(value) else None
        elif isinstance(value, str):
            out[k] = safe_text(value, EVENT_TEXT, keep="head")
    return out


class ProgressTail:
    """Yields new complete JSON lines appended to a progress file since the last call.

    Bounded: lines longer than `max_line` and events past `max_events` are
    dropped, since the file lives in a directory the candidate can write to.
    """

    def __init__(self, path: Path, *, max_line: int = 65_536, max_events: int = 100_000) -> None:
        self.path = Path(path)
        self.max_line = max_line
        self.max_events = max_events
        self.count = 0
        self._offset = 0
        self._partial = b""
        self.first_seen: dict[str, dict[str, Any]] = {}

    def poll(self, max_bytes: int = 1 << 20) -> Iterator[dict[str, Any]]:
        data = read_regular(self.path, self._offset, max_bytes)
        if data is None:
            return
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.max_line:
            self._partial = b""
        for raw in lines:
            if not raw.strip() or len(raw) > self.max_line or self.count >= self.max_events:
                continue
            try:
                event = clean_event(json.loads(raw))
            except (ValueError, RecursionError):
                continue
            if event is None:
                continue
            self.count += 1
            name = str(event.get("event", ""))
            self.first_seen.setdefault(name, event)
            yield event

    def drain(self, on_event: Callable[[dict[str, Any]], None] | None) -> None:
        for event in self.poll():
            if on_event is not None:
                try:
                    on_event(event)
                except Exception:  # noqa: BLE001 - a display callback must not break the job
                    log.warning("a progress callback failed", exc_info=True)

    def first_time(self, name: str) -> float | None:
        event = self.first_seen.get(name)
        t = event.get("t") if event else None
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
