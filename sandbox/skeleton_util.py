"""Small helpers of the sandbox run skeleton (sandbox/skeleton.py): the warm-slot record and its disposal,
progress-event delivery (tagged per job, thread-safe onto an event loop), and bounded tail files."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .base import EventCallback
from .quota import ReclaimError, Stage
from .streams import ProgressTail

log = logging.getLogger(__name__)
H = TypeVar("H")


@dataclass
class WarmSlot(Generic[H]):
    """A pre-started job process waiting for "go" in its own stage."""

    stage: Stage
    handle: H



def close_pool(warm: dict[Any, list[WarmSlot[Any]]], dispose: Callable[[Any], None], lock: threading.Lock) -> None:
    with lock:
        slots = [s for ss in warm.values() for s in ss]
        warm.clear()
    for s in slots:
        try:
            dispose(s.handle)
        finally:
            remove_stage(s.stage)


def remove_stage(stage: Stage) -> None:
    try:
        stage.remove()
    except (ReclaimError, OSError) as e:
        log.error("stage %s could not be removed: %s", stage.path, e)


def drain(progress: ProgressTail, on_event: EventCallback | None) -> None:
    try:
        progress.drain(on_event)
    except Exception:  # noqa: BLE001 - a caller's callback must not take the supervision down
        log.exception("a progress-event callback raised; the job goes on")


def tagged(on_event: EventCallback | None, index: int) -> EventCallback | None:
    if on_event is None:
        return None
    return lambda e: on_event({**e, "job": index})


def threadsafe(loop: asyncio.AbstractEventLoop, on_event: EventCallback | None) -> EventCallback | None:
    """Deliver events on the caller's loop (the job is supervised in a worker thread)."""
    if on_event is None:
        return None

    def deliver(e: dict[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(on_event, e)
        except RuntimeError:
            log.debug("event loop closed; progress event dropped")

    return deliver


def write_tail(path: Path, text: str) -> None:
    """Write a bounded tail into the host job dir without following links."""
    try:
        if os.path.lexists(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        log.warning("cannot write %s: %s", path, e)
        return
    with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
        f.write(text)
