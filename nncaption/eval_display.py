"""How `check` and `eval-model` show progress and results on a terminal (rich), apart from the command logic.

Everything shown that a candidate could influence (messages, tracebacks) goes
through safe_text; captions are vocabulary words.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from nncaption.netapi.safetext import safe_text

if TYPE_CHECKING:
    from nncaption.sandbox.report import CheckResult, EvalReport


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_check(label: str, result: CheckResult, console: Any) -> None:
    """The verdict of `check`: accepted, or the stage, category, message and next step."""
    if result.ok:
        print(f"{label}: accepted (static and smoke checks passed)")
        return
    where = f", line {result.line}" if result.line else ""
    print(f"{label}: rejected at the {result.stage.value} stage [{result.category}{where}]")
    console.print(safe_text(result.message), markup=False)
    if result.hint:
        console.print(f"  next: {result.hint}", markup=False)


class ProgressDisplay:
    """Rich progress for an evaluation, fed by the service's stage events and the runner's progress events."""

    def __init__(self, epochs: int, enabled: bool) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self._progress: Any = None
        self._epoch_task: Any = None
        self._batch_task: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                      console=stderr_console(), transient=False)
            self._progress.__enter__()
            self._epoch_task = self._progress.add_task("static check", total=self.epochs, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def on_event(self, event: dict[str, Any]) -> None:
        if self._progress is None:
            return
        kind = event.get("event")
        p = self._progress
        if kind == "stage":
            names = {"smoke": "smoke check", "train": "starting sandbox", "score": "scoring"}
            text = names.get(str(event.get("stage")))
            if text:
                p.update(self._epoch_task, description=text)
        elif kind == "reused":
            p.update(self._epoch_task, description=f"reused ({event.get('stage')})")
        elif kind == "start":
            p.update(self._epoch_task, description="loading the candidate")
        elif kind == "model":
            params = event.get("params")
            p.update(self._epoch_task, info=f"{params:,} params" if isinstance(params, int) else "")
        elif kind == "epoch_start":
            epoch, batches = event.get("epoch"), event.get("batches")
            p.update(self._epoch_task, description=f"epoch {epoch}/{self.epochs}")
            batches = batches if isinstance(batches, int) and batches > 0 else None
            if self._batch_task is None:
                self._batch_task = p.add_task("  batches", total=batches, info="")
            p.reset(self._batch_task, total=batches, description=f"  epoch {epoch} batches", info="")
        elif kind == "batch" and self._batch_task is not None:
            loss, batch = event.get("loss"), event.get("batch")
            info = f"loss {loss:.3f}" if isinstance(loss, (int, float)) and math.isfinite(loss) else ""
            p.update(self._batch_task, completed=batch if isinstance(batch, int) else 0, info=info)
        elif kind == "epoch_end" and self._batch_task is not None:
            p.update(self._batch_task, description=f"  epoch {event.get('epoch')} decoding val")
        elif kind == "decoded":
            epoch = event.get("epoch")
            p.update(self._epoch_task, completed=epoch if isinstance(epoch, int) else 0)
        elif kind in ("done", "error"):
            p.update(self._epoch_task, description="finished" if kind == "done" else "failed")


def _fmt(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_report(label: str, report: EvalReport) -> None:
    """The evaluation report: the per-epoch table and BLEU-4 beside the baseline, or the failure."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:  # files and pipes: wide enough for the table
        console = Console(highlight=False, width=120)
    if report.epochs:
        table = Table(title=f"{label}: free-running BLEU on {report.dataset_name or 'val'} "
                            f"({report.epochs[-1].images} val images)")
        for col in ("epoch", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "LEMUR B-4*", "loss", "train s",
                    "decode s", "words"):
            table.add_column(col, justify="right")
        for e in report.epochs:
            table.add_row(str(e.epoch), _fmt(e.bleu1), _fmt(e.bleu2), _fmt(e.bleu3), _fmt(e.bleu4),
                          _fmt(e.cider_d, 3), _fmt(e.lemur_bleu4), _fmt(e.train_loss, 3), _fmt(e.seconds, 1),
                          _fmt(e.decode_seconds, 1), _fmt(e.mean_length, 1))
        console.print(table)
        console.print("* LEMUR-compatible: mean sentence BLEU-4 (smoothing 1) on token ids, for comparison with "
                      "LEMUR's stats only. The main figure is COCO-protocol corpus BLEU-4.", style="dim")
        for ex in report.examples:
            console.print(f"  image {ex.image_id}: {ex.caption or '(empty)'}  (a reference: {ex.reference})",
                          markup=False)
    if report.ok and report.bleu4 is not None:
        line = f"BLEU-4 {report.bleu4:.4f}"
        if report.cider_d is not None:
            line += f"  CIDEr-D {report.cider_d:.3f}"
        if report.baseline_bleu4 is not None:
            base = report.baseline_bleu4
            ratio = f"{report.bleu4 / base:.2f}" if base else "inf"
            line += f"  vs constant-caption baseline {base:.4f} ('{report.baseline_caption}'), ratio {ratio}"
        console.print(line, markup=False)
        if report.suspect:
            console.print(f"SUSPECT: {report.suspect_reason}", style="bold red", markup=False)
        reused = " (recorded result of an identical job, reused: --no-reuse trains again)" if report.reused else ""
        params = f"{report.params:,}" if report.params is not None else "?"
        console.print(f"params {params}; job dir {report.job_dir}{reused}", markup=False)
        return
    from nncaption.cli import print_error

    where = f" at the {report.stage.value} stage" + (f", line {report.line}" if report.line else "")
    print_error(str(report.category or report.status.value), f"{label} {report.status.value}{where}: "
                f"{safe_text(report.message)}", report.hint)
    if report.traceback_tail:
        print(safe_text(report.traceback_tail), file=sys.stderr)
    if report.job_dir:
        print(f"  job dir: {report.job_dir}", file=sys.stderr)
