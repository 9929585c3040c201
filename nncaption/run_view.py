"""What `nncaption run` shows: a live rich view fed by the graph's events, or one JSON event per line.

The live view (on stderr) shows the elapsed time (ticking every second on its own: rich re-renders the view from
the current state, whether or not an event arrived), each candidate in flight with the node that is really running
(a finished node is no longer "running": the candidate is shown as waiting for its next step) and, for a training,
its progress from `train_progress` events (`epoch 1/2, batch 41/63, loss 3.2, 12 s/epoch`), the leaderboard and the
failure funnel. After `--resume` the `resumed` event carries the whole run's counts so far, so the funnel counts
the whole run, not only what happened since. `--json-logs` prints every event as one strict JSON object per line
on stdout instead; `train_progress` at most once a second per candidate, a candidate's outcome once.

Event fields are read defensively (numbers must be numbers, text is made safe and capped): training progress
comes from what a job wrote.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from nncaption.netapi.safetext import safe_text, strict_dumps

FUNNEL: tuple[tuple[str, str], ...] = (("design", "designed"), ("static", "static ok"), ("review", "reviewed"),
                                       ("smoke", "smoke ok"), ("train", "trained"), ("score", "scored"))
OUTCOMES = ("candidate_scored", "candidate_failed")
# the funnel keys of the `resumed` event (graph/journal.py's funnel) for the view's stages
RESUMED_FUNNEL = {"design": "designed", "static": "static_ok", "review": "review_ok", "smoke": "smoke_ok",
                  "train": "trained", "score": "scored"}
PROGRESS_EVERY_S = 1.0
MAX_TRACKED = 10_000  # candidates remembered for de-duplication (a run's budget is far below)


def _num(value: Any) -> float | None:
    """A finite number from an event field, else None (bools and text are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    v = _num(value)
    return int(v) if v is not None and 0 <= v < 1e12 else None


def progress_text(event: dict[str, Any]) -> str:
    """`epoch 1/2, batch 41/63, loss 3.2, 12 s/epoch` from a train_progress event (missing parts left out)."""
    parts = []
    epoch, epochs, batch, batches = (_int(event.get(k)) for k in ("epoch", "epochs", "batch", "batches"))
    if epoch is not None:
        parts.append(f"epoch {epoch}" + (f"/{epochs}" if epochs else ""))
    if batch is not None:
        parts.append(f"batch {batch}" + (f"/{batches}" if batches else ""))
    loss = _num(event.get("loss"))
    if loss is not None:
        parts.append(f"loss {loss:.3g}")
    secs = _num(event.get("epoch_seconds"))
    if secs is not None and secs >= 0:
        parts.append(f"{secs:.0f} s/epoch")
    return ", ".join(parts)


class JsonLines:
    """`--json-logs`: one JSON event per line on stdout, flushed at once.

    `train_progress` is passed through at most once a second per candidate (and always at an epoch's last batch);
    a candidate's outcome (`candidate_scored` / `candidate_failed`) is printed once, so a consumer that counts
    events does not count a candidate twice when a resumed run announces what it recovered.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last_progress: dict[str, float] = {}
        self._outcomes: set[str] = set()

    def keep(self, event: dict[str, Any]) -> bool:
        """Whether `event` is printed (the throttle and the de-duplication)."""
        kind, cid = event.get("event"), str(event.get("candidate") or "")
        if kind == "train_progress":
            now = self.clock()
            last = self._last_progress.get(cid)
            batch, batches = _int(event.get("batch")), _int(event.get("batches"))
            if last is not None and now - last < PROGRESS_EVERY_S and not (batches and batch == batches):
                return False
            if len(self._last_progress) < MAX_TRACKED or cid in self._last_progress:
                self._last_progress[cid] = now
        elif kind in OUTCOMES and cid:
            if cid in self._outcomes:
                return False
            if len(self._outcomes) < MAX_TRACKED:
                self._outcomes.add(cid)
            self._last_progress.pop(cid, None)
        return True

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.keep(event):
            return
        sys.stdout.write(strict_dumps({"ts": round(time.time(), 3), **event}) + "\n")
        sys.stdout.flush()


class LiveView:
    """A rich Live display: clock, in flight (with training progress), leaderboard and funnel.

    Events arrive on the run's event loop; rich redraws from its own thread once a second, so the state is guarded
    by a lock and the view is rendered from the state at draw time (the clock moves without events).
    """

    def __init__(self, budget: int, title: str, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic, console: Any = None) -> None:
        self.budget = budget
        self.title = title
        self.enabled = enabled
        self.clock = clock
        self.reached: dict[str, set[str]] = {stage: set() for stage, _ in FUNNEL}
        self.reached_before: dict[str, int] = {stage: 0 for stage, _ in FUNNEL}  # from `resumed`
        self.failures: dict[str, int] = {}
        self.running: dict[str, tuple[str, float]] = {}  # cid -> (node, started)
        self.waiting: dict[str, str] = {}  # cid -> what it last finished
        self.progress: dict[str, str] = {}  # cid -> training progress text
        self.scored: list[tuple[float, str, str]] = []
        self.done: set[str] = set()
        self.finished_before = 0
        self.started = clock()
        self.elapsed_before = 0.0
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._console = console  # default: a rich Console on stderr
        self._live: Any = None

    @property
    def finished(self) -> int:
        return self.finished_before + len(self.done)

    def __enter__(self) -> LiveView:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=self._console or Console(stderr=True),
                              refresh_per_second=1, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._apply(event)
        if self._live is not None and event.get("event") != "train_progress":
            self._live.refresh()  # show a new step at once; progress waits for the next tick

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        cid = safe_text(event["candidate"], 40) if event.get("candidate") else ""
        if kind == "resumed":
            self._resumed(event)
        elif kind == "candidate_planned" and cid:
            self.waiting[cid] = f"planned: {safe_text(event.get('mode'), 20)} ({safe_text(event.get('decoder'), 20)})"
        elif kind == "node_started" and cid and cid not in self.done:
            self.running[cid] = (safe_text(event.get("node"), 20), self.clock())
            self.waiting.pop(cid, None)
        elif kind == "node_finished" and cid:
            node = safe_text(event.get("node"), 20)
            self.running.pop(cid, None)
            self.progress.pop(cid, None)
            if cid not in self.done:
                self.waiting[cid] = f"{node} {safe_text(event.get('status'), 20)}, next step queued"
            if event.get("status") == "ok" and node in self.reached:
                self.reached[node].add(cid)
        elif kind == "node_waiting" and cid and cid not in self.done:
            self.running.pop(cid, None)
            self.waiting[cid] = f"{safe_text(event.get('node'), 20)} waits for {safe_text(event.get('for'), 40)}"
        elif kind == "train_progress" and cid and cid not in self.done:
            self.progress[cid] = progress_text(event)
        elif kind in OUTCOMES and cid:
            if cid in self.done:
                return  # announced again (a resumed run recovering it): counted once
            self.done.add(cid)
            for table in (self.running, self.waiting, self.progress):
                table.pop(cid, None)
            bleu = _num(event.get("bleu4"))
            if kind == "candidate_scored" and bleu is not None:
                self.reached["score"].add(cid)
                self.scored.append((bleu, cid, safe_text(event.get("origin"), 20)))
            else:
                cat = safe_text(event.get("category") or "failed", 40)
                self.failures[cat] = self.failures.get(cat, 0) + 1
        elif kind == "budget_reached":
            self.notes.append(f"budget reached: {safe_text(event.get('reason'), 80)}")
        elif kind == "concurrency_adjusted":
            self.notes.append(f"concurrency {_int(event.get('requested'))} is more than this machine can train at "
                              f"once ({safe_text(event.get('why'), 120)}): using {_int(event.get('using'))}")

    def _resumed(self, event: dict[str, Any]) -> None:
        """Whole-run counts from before the resume (graph/runner.py's `resumed` event): `counts` (finished, failed,
        duplicate ...), `funnel` (designed, static_ok, review_ok, smoke_ok, trained, scored), `elapsed_before_s`,
        `inflight` (candidates it continues); optional `failures` by category and a `leaderboard`."""
        raw = event.get("counts")
        counts: dict[str, Any] = raw if isinstance(raw, dict) else {}
        fin = _int(counts.get("finished", event.get("finished")))
        elapsed = _num(event.get("elapsed_before_s", event.get("elapsed_s")))
        if elapsed is not None and elapsed >= 0:
            self.elapsed_before = elapsed
        stages = event.get("funnel")
        score_given = False
        if isinstance(stages, dict):
            for stage, _ in FUNNEL:
                value = stages.get(RESUMED_FUNNEL[stage], stages.get(stage))
                if isinstance(value, list):
                    self.reached[stage].update(safe_text(c, 40) for c in value[:MAX_TRACKED])
                else:
                    self.reached_before[stage] = _int(value) or 0
                score_given = score_given or (stage == "score" and value is not None)
        failures = event.get("failures")
        if isinstance(failures, dict):
            for cat, value in list(failures.items())[:100]:
                n = _int(value)
                if n is not None:
                    key = safe_text(cat, 40)
                    self.failures[key] = self.failures.get(key, 0) + n
        else:
            earlier = (_int(counts.get("failed")) or 0) + (_int(counts.get("duplicate")) or 0)
            if earlier:
                self.failures["before the resume"] = earlier
        board = event.get("leaderboard")
        if isinstance(board, list):
            for row in board[:MAX_TRACKED]:
                bleu = _num(row.get("bleu4")) if isinstance(row, dict) else None
                if bleu is not None and row.get("cid"):
                    cid = safe_text(row["cid"], 40)
                    if cid not in self.done:
                        self.done.add(cid)
                        self.scored.append((bleu, cid, safe_text(row.get("origin"), 20)))
                        if not score_given:
                            self.reached["score"].add(cid)
        inflight = event.get("inflight")
        if isinstance(inflight, list):
            for cid in inflight[:MAX_TRACKED]:
                if cid and str(cid) not in self.done:
                    self.waiting[safe_text(cid, 40)] = "continued after the resume"
        if fin is not None:
            self.finished_before = max(0, fin - len(self.done))

    def stage_count(self, stage: str) -> int:
        return self.reached_before[stage] + len(self.reached[stage])

    def _render(self) -> Any:
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            now = self.clock()
            elapsed = self.elapsed_before + now - self.started
            head = (f"[bold]{escape(self.title)}[/bold]  candidates {self.finished}/{self.budget} finished, "
                    f"{len(self.running)} running, {len(self.waiting)} waiting, {elapsed:.0f} s")
            board = Table(title="leaderboard (COCO BLEU-4)", expand=False)
            for col in ("#", "candidate", "BLEU-4", "origin"):
                board.add_column(col)
            for i, (b, cid, origin) in enumerate(sorted(self.scored, key=lambda t: (-t[0], t[1]))[:5], start=1):
                board.add_row(str(i), escape(cid), f"{b:.4f}", escape(origin))
            funnel = Table(title="funnel (whole run)", expand=False)
            for _, label in FUNNEL:
                funnel.add_column(label, justify="right")
            funnel.add_row(*(str(self.stage_count(stage)) for stage, _ in FUNNEL))
            parts: list[Any] = [head, board, funnel]
            if self.failures:
                parts.append(Text("failures: " + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(self.failures.items(), key=lambda kv: -kv[1]))))
            for cid, (node, since) in sorted(self.running.items()):
                extra = f": {self.progress[cid]}" if self.progress.get(cid) else ""
                parts.append(Text(f"  running  {cid} {node} {now - since:.0f} s{extra}"))
            for cid, what in sorted(self.waiting.items()):
                parts.append(Text(f"  waiting  {cid} ({what})"))
            parts.extend(Text(note) for note in self.notes[-2:])
        return Group(*parts)
