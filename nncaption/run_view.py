"""What `nncaption run` shows: a live rich view fed by the graph's events, or one JSON event per line.

The live view (on stderr) shows progress, the candidates in flight, the
leaderboard and the failure funnel; `--json-logs` prints every event as one
strict JSON object per line on stdout instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from nncaption.netapi.safetext import safe_text, strict_dumps

FUNNEL: tuple[tuple[str, str], ...] = (("design", "designed"), ("static", "static ok"), ("review", "reviewed"),
                                       ("smoke", "smoke ok"), ("train", "trained"), ("score", "scored"))


class JsonLines:
    """`--json-logs`: one JSON event per line on stdout, flushed at once."""

    def __call__(self, event: dict[str, Any]) -> None:
        sys.stdout.write(strict_dumps({"ts": round(time.time(), 3), **event}) + "\n")
        sys.stdout.flush()


class LiveView:
    """A rich Live display: progress, in flight, leaderboard and funnel, refreshed on every event."""

    def __init__(self, budget: int, title: str, enabled: bool = True) -> None:
        self.budget = budget
        self.title = title
        self.enabled = enabled
        self.reached: dict[str, set[str]] = {stage: set() for stage, _ in FUNNEL}
        self.failures: dict[str, int] = {}
        self.inflight: dict[str, str] = {}
        self.scored: list[tuple[float, str, str]] = []
        self.finished = 0
        self.planned = 0
        self.started = time.monotonic()
        self.notes: list[str] = []
        self._live: Any = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        kind, cid = event.get("event"), event.get("candidate")
        if kind == "candidate_planned" and cid:
            self.planned += 1
            self.inflight[cid] = f"{event.get('mode')} ({event.get('decoder')})"
        elif kind == "node_started" and cid and cid in self.inflight:
            self.inflight[cid] = f"{event.get('node')}"
        elif kind == "node_finished" and cid and event.get("status") == "ok" and event.get("node") in self.reached:
            self.reached[str(event["node"])].add(cid)
        elif kind in ("candidate_scored", "candidate_failed") and cid:
            self.finished += 1
            self.inflight.pop(cid, None)
            if kind == "candidate_scored" and event.get("bleu4") is not None:
                self.reached["score"].add(cid)
                self.scored.append((float(event["bleu4"]), cid, str(event.get("origin"))))
            else:
                cat = str(event.get("category") or "failed")
                self.failures[cat] = self.failures.get(cat, 0) + 1
        elif kind == "budget_reached":
            self.notes.append(f"budget reached: {event.get('reason')}")
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        head = (f"[bold]{self.title}[/bold]  candidates {self.finished}/{self.budget} finished, "
                f"{len(self.inflight)} in flight, {elapsed:.0f} s")
        board = Table(title="leaderboard (COCO BLEU-4)", expand=False)
        for col in ("#", "candidate", "BLEU-4", "origin"):
            board.add_column(col)
        for i, (b, cid, origin) in enumerate(sorted(self.scored, key=lambda t: (-t[0], t[1]))[:5], start=1):
            board.add_row(str(i), cid, f"{b:.4f}", origin)
        funnel = Table(title="funnel", expand=False)
        for _, label in FUNNEL:
            funnel.add_column(label, justify="right")
        funnel.add_row(*(str(len(self.reached[stage])) for stage, _ in FUNNEL))
        parts: list[Any] = [head, board, funnel]
        if self.failures:
            parts.append("failures: " + ", ".join(f"{safe_text(k, 40)} {v}" for k, v in
                                                   sorted(self.failures.items(), key=lambda kv: -kv[1])))
        if self.inflight:
            parts.append("in flight: " + ", ".join(f"{c} {s}" for c, s in sorted(self.inflight.items())))
        parts.extend(self.notes[-2:])
        return Group(*parts)
