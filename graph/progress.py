"""Training progress as throttled `train_progress` events (at most one a second per candidate).

The sandbox delivers the runner's progress events (progress.jsonl lines, already
flat dicts of safe scalars) to `on_event`; this keeps the latest epoch, batch and
loss of the candidate's training job and forwards them as

    {"event": "train_progress", "candidate": cid, "epoch": 1, "epochs": 2, "batch": 41, "batches": 63,
     "loss": 3.2, "epoch_seconds": 12.0}

Every value is validated (bounded ints, finite floats) before it is forwarded: the
file is written by the candidate's process. Events of the smoke job that
`evaluate` runs (or reuses) first are ignored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

MIN_INTERVAL_S = 1.0
_MAX_COUNT = 10_000_000


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        return None
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return round(value, 4) if math.isfinite(value) and abs(value) < 1e12 else None


class ProgressForwarder:
    """The `on_event` of one candidate's training: forwards validated progress, throttled."""

    def __init__(self, cid: str, emit: Callable[[dict[str, Any]], None], *, interval: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cid = cid
        self.emit = emit
        self.interval = interval
        self.clock = clock
        self.training = True  # until a start event says otherwise
        self.state: dict[str, Any] = {"epoch": None, "epochs": None, "batch": None, "batches": None, "loss": None,
                                      "epoch_seconds": None}
        self._last = -math.inf
        self.sent = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        if not isinstance(event, Mapping):
            return
        kind = event.get("event")
        if kind == "start":
            self.training = event.get("mode") not in ("smoke", "check")
            epochs = _count(event.get("epochs"))
            if self.training and epochs is not None:
                self.state["epochs"] = epochs
            return
        if not self.training or kind not in ("epoch_start", "batch", "epoch_end"):
            return
        epoch = _count(event.get("epoch"))
        if epoch is not None:
            self.state["epoch"] = epoch
        if kind == "epoch_start":
            self.state["batch"] = 0
        for key in ("batch", "batches"):
            value = _count(event.get(key))
            if value is not None:
                self.state[key] = value
        loss = _number(event.get("loss"))
        if loss is not None:
            self.state["loss"] = loss
        if kind == "epoch_end":
            seconds = _number(event.get("seconds"))
            if seconds is not None and seconds >= 0:
                self.state["epoch_seconds"] = seconds
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self.sent += 1
            self.emit({"event": "train_progress", "candidate": self.cid, **self.state})
