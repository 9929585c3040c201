"""The scheduler has no barrier: candidates never wait for each other, and a freed slot is refilled at once.

The in-process baseline agents and the real graph, run store and checkpointer, with a stand-in for the sandbox
whose "trainings" are real sleeps of different lengths (5 s and 0.5 s, alternating) and whose smoke checks take
0.05 s. Read back from the run store's step times: the gaps between a candidate's own consecutive steps add up to
at most 5% of the run (the first moments, when three candidates start at once on one event loop, are most
of what remains), and each candidate that finishes while the budget lasts is followed by the next
candidate's planning step within a second. Under the old engine (one superstep for every node of every
candidate) the short candidates waited for the long trainings between their steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.baseline import BaselineDesigner, BaselineFixer, BaselineReviewer
from nncaption.graph.pipeline import Checked, Pipeline, Trained
from nncaption.graph.runner import SearchRun
from nncaption.graph.settings import RunSettings
from nncaption.graph.store import RunStore

TRAIN_SECONDS = (5.0, 0.5)


class SleepingPipeline(Pipeline):
    """Baseline agents (real); smoke and training are sleeps (training lengths alternate per call)."""

    def __init__(self, fixer: Any = None) -> None:
        super().__init__(BaselineDesigner(seed=0), BaselineReviewer(), fixer or BaselineFixer(), None)
        self._lengths = itertools.cycle(TRAIN_SECONDS)
        self.trainings: list[str] = []

    async def smoke(self, code: str, prm: Any) -> Checked:
        await asyncio.sleep(0.05)
        return Checked(ok=True, stage="smoke")

    async def train(self, code: str, prm: Any, *, on_event: Any = None) -> Trained:
        self.trainings.append(code)
        seconds = next(self._lengths)
        for i in range(4):
            await asyncio.sleep(seconds / 4)
            if on_event is not None:
                on_event({"event": "batch", "epoch": 1, "batch": i + 1, "batches": 4, "loss": 3.0 - i / 10})
        return Trained(ok=True, bleu4=0.01 + len(code) % 97 / 1000, epochs=[{"epoch": 1, "bleu4": 0.01}])


def factory_for(pipeline: Pipeline) -> Any:
    @contextlib.asynccontextmanager
    async def factory(settings: RunSettings, store: RunStore) -> AsyncIterator[tuple[Pipeline, Any]]:
        yield pipeline, None

    return factory


def settings(candidates: int, concurrency: int, **extra: Any) -> RunSettings:
    return RunSettings.model_validate({"seed": 0, "concurrency": concurrency, "budget": {"candidates": candidates},
                                       "policy": {"num_drafts": candidates}, "agents": {"snippets": 2}, **extra})


def steps(run_dir: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(run_dir / "results.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM steps ORDER BY step")]
    finally:
        db.close()


async def _warm_up() -> None:
    """One design, static check and review before the timed run: the first of each imports its modules, which
    would hold the event loop (and show as a gap) for a moment on a cold process."""
    from nncaption.agents.protocols import DesignRequest

    pipeline = SleepingPipeline()
    design = await pipeline.design(DesignRequest(mode="compose", k=2, seed=1))
    pipeline.static(design.code)
    await pipeline.review(design.code, design.prm)


@pytest.mark.slow  # 8 candidates through a sleeping pipeline: seconds of real waiting
def test_no_candidate_waits_for_another_and_freed_slots_refill_at_once(tmp_path: Path) -> None:
    asyncio.run(_warm_up())
    events: list[dict[str, Any]] = []
    run_dir = tmp_path / "run"
    search = SearchRun(settings(8, 2), run_dir, emit=events.append, pipeline_factory=factory_for(SleepingPipeline()))
    outcome = asyncio.run(search.run())
    assert outcome.status == "finished" and outcome.counts.get("scored") == 8
    rows = steps(run_dir)
    assert all(r["status"] == "ok" for r in rows)
    start = min(r["started_at"] for r in rows)
    run_s = max(r["finished_at"] for r in rows) - start
    gaps = 0.0
    for cid in {r["cid"] for r in rows}:
        own = sorted((r for r in rows if r["cid"] == cid), key=lambda r: r["started_at"])
        assert [r["node"] for r in own] == ["dispatch", "design", "static", "review", "smoke", "train", "record"]
        own = own[1:]  # the pipeline: design .. record (dispatch is the scheduler's planning step)
        gaps += sum(max(0.0, b["started_at"] - a["finished_at"]) for a, b in itertools.pairwise(own))
    assert gaps <= 0.05 * run_s, (gaps, run_s)
    # every candidate finished while the budget lasted is followed by the next candidate's planning within 1 s
    planned = sorted(r["started_at"] for r in rows if r["node"] == "dispatch")
    recorded = sorted(r["finished_at"] for r in rows if r["node"] == "record")
    in_flight = 2 + 1  # concurrency + lookahead planned at the start
    for finished, next_plan in zip(recorded, planned[in_flight:], strict=False):
        assert next_plan - finished <= 1.0, (finished - start, next_plan - start)
    # trainings of different lengths overlapped: the short ones did not wait for the long ones
    progress = [e for e in events if e["event"] == "train_progress"]
    assert progress and {"epoch", "batch", "batches", "loss", "epoch_seconds"} <= set(progress[0])


def test_unchanged_fix_is_not_run_again_and_the_fixer_is_told(tmp_path: Path) -> None:
    """A fixer that returns the failed code unchanged: the attempt ends with the recorded verdict (no second
    training), and the next fix round's failure message says the change was empty."""
    from nncaption.agents.protocols import Fix

    class FailingPipeline(SleepingPipeline):
        async def train(self, code: str, prm: Any, *, on_event: Any = None) -> Trained:
            self.trainings.append(code)
            return Trained(ok=False, category="timeout", message="epoch 1 took too long", stage="train")

    class SameFixer:
        name = "same"

        def __init__(self) -> None:
            self.messages: list[str] = []

        async def fix(self, code: str, prm: Any, error: Any) -> Fix:
            self.messages.append(str(error.message))
            return Fix(code=code, prm=dict(prm), summary="no change", category=None, exchanges=[], producer="same")

    fixer = SameFixer()
    pipeline = FailingPipeline(fixer)
    run_dir = tmp_path / "run"
    outcome = asyncio.run(SearchRun(settings(1, 1, max_fix_rounds=2), run_dir,
                                    pipeline_factory=factory_for(pipeline)).run())
    assert outcome.status == "finished"
    assert len(pipeline.trainings) == 1  # attempts 2 and 3 were attempt 1 again: not trained
    assert len(fixer.messages) == 2 and "changed nothing" not in fixer.messages[0]
    assert "changed nothing" in fixer.messages[1]
    store = RunStore(run_dir)
    try:
        verdicts = [tuple(r) for r in store.db.execute("SELECT attempt, stage, ok, category FROM verdicts "
                                                       "WHERE stage='train' ORDER BY attempt")]
        row = store.candidate("c0001")
    finally:
        store.close()
    assert verdicts == [(1, "train", 0, "timeout"), (2, "train", 0, "timeout"), (3, "train", 0, "timeout")]
    assert row is not None and row["status"] == "failed" and row["category"] == "timeout" and row["attempts"] == 3


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_a_concurrency_the_machine_cannot_train_is_lowered_with_a_warning(tmp_path: Path) -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    events: list[dict[str, Any]] = []
    outcome = asyncio.run(SearchRun(settings(1, cores + 50), tmp_path / "run", emit=events.append,
                                    pipeline_factory=factory_for(SleepingPipeline())).run())
    assert outcome.status == "finished"
    [adjusted] = [e for e in events if e["event"] == "concurrency_adjusted"]
    assert adjusted["requested"] == cores + 50 and adjusted["using"] == cores


def test_an_unusable_docker_sandbox_stops_the_run_before_any_candidate(tiny_dataset: Any, tmp_path: Path,
                                                                        monkeypatch: Any) -> None:
    """The service's preflight (the engine answers, the sandbox image exists) runs before the first candidate:
    one configuration error (exit 2), not every candidate failed as `internal` and a run that 'finished'."""
    from nncaption.netapi.errors import NNCaptionError

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    s = RunSettings.model_validate({"seed": 0, "concurrency": 1, "budget": {"candidates": 2},
                                    "sandbox": {"kind": "docker"}, "data": {"prepared": str(tiny_dataset.root)}})
    events: list[dict[str, Any]] = []
    try:
        asyncio.run(SearchRun(s, tmp_path / "run", emit=events.append).run())
    except NNCaptionError as e:
        assert e.exit_code == 2, (e.category, e.message)
    else:
        raise AssertionError("the run started without a usable docker sandbox")
    assert not [e for e in events if e["event"] in ("candidate_planned", "node_started")]
    store = RunStore(tmp_path / "run")
    try:
        assert store.candidate_rows() == [] and (store.run_row() or {}).get("status") == "failed"
    finally:
        store.close()


def test_a_plan_is_rebuilt_the_same_from_its_row(tmp_path: Path) -> None:
    """A candidate killed before its thread's first checkpoint starts again from its plan, rebuilt from its row
    and the seed: the same task (seed draws included) as when it was planned."""
    from nncaption.graph.scheduler import RunClock, Scheduler

    s = RunSettings.model_validate({"seed": 7, "concurrency": 2, "budget": {"candidates": 6},
                                    "policy": {"num_drafts": 1, "p_debug": 1.0, "p_improve": 1.0}})
    store = RunStore(tmp_path / "run")
    try:
        scheduler = Scheduler(s, store, None, lambda event: None, RunClock(0.0))
        tasks = []
        for i in range(4):
            tasks.append(scheduler.plan(i))
            if i == 0:  # the first one failed with a debuggable category, then one scored: debug and improve plans
                store.add_attempt("c0001", 1, made_by="design", code="x = 1\n", prm={}, summary="", step=1)
                store.record_candidate("c0001", step=store.last_step() + 1, status="failed", category="shape-error",
                                       stage="smoke")
        modes = {t["mode"] for t in tasks}
        assert "draft" in modes and modes & {"debug", "improve"}, modes
        rows = {r["cid"]: r for r in store.candidate_rows()}
        for task in tasks:
            assert scheduler.replan(rows[task["cid"]]) == task
    finally:
        store.close()
