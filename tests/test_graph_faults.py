"""Endpoint trouble during a search: garbage or an outage fails the affected candidates with a category and the
run goes on; a run whose endpoints are all down stops with one clear error instead of spinning; so does a run whose
jobs cannot run on the machine at all (job-error)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.http_server import Reply, error_reply
from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.graph.runner import EndpointsDown, MachineUnusable, SearchRun
from nncaption.graph.settings import RunSettings
from nncaption.graph.store import RunStore
from nncaption.prompts.library import detect_role


class FlakyServer(OfflineComposerServer):
    """The offline composer, except that chosen designer calls get garbage (200, not JSON) or a 503."""

    def __init__(self, *, garbage: frozenset[int] = frozenset(), down_from: int | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.garbage = set(garbage)
        self.down_from = down_from
        self.designs = 0
        self._count_lock = threading.Lock()

    def chat(self, body: dict[str, Any]) -> Reply:
        if (detect_role(body["messages"]) or "designer") == "designer":
            with self._count_lock:
                n = self.designs
                self.designs += 1
            if n in self.garbage:
                return Reply(200, b"<html>upstream says no</html>", {"Content-Type": "text/html"})
        if self.down_from is not None and self.designs > self.down_from:
            return error_reply(503, "the model is not loaded", "ServiceUnavailable")
        return super().chat(body)


def _settings(prepared: Path, base_url: str, candidates: int, concurrency: int) -> RunSettings:
    return RunSettings.model_validate({
        "seed": 0, "concurrency": concurrency, "node_retries": 2, "endpoint_down_after": 3,
        "budget": {"candidates": candidates},
        "policy": {"num_drafts": candidates},
        "agents": {"kind": "llm", "snippets": 2, "llm_review": False,
                   "llm": {"shared": {"base_url": base_url, "model": "m", "max_retries": 0, "timeout_s": 30}}},
        "train": {"epochs": 1, "max_train_batches": 1, "max_val_images": 4, "threads": 1},
        "data": {"prepared": str(prepared)},
    })


@pytest.mark.sandbox
@pytest.mark.slow
def test_garbage_reply_fails_one_candidate_and_the_run_goes_on(tiny_dataset: Any, tmp_path: Path) -> None:
    with FlakyServer(garbage=frozenset({1})) as server:
        search = SearchRun(_settings(tiny_dataset.root, server.base_url, 3, 3), tmp_path / "run")
        outcome = asyncio.run(search.run())
    assert outcome.status == "finished"
    store = RunStore(tmp_path / "run")
    rows = {r["cid"]: r for r in store.candidate_rows()}
    store.close()
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert [(r["stage"], r["category"]) for r in failed] == [("design", "bad-response")]
    assert sum(r["status"] == "scored" for r in rows.values()) == 2


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_all_endpoints_down_stops_with_a_clear_error(tiny_dataset: Any, tmp_path: Path) -> None:
    with FlakyServer(down_from=0) as server:
        search = SearchRun(_settings(tiny_dataset.root, server.base_url, 20, 2), tmp_path / "run")
        with pytest.raises(EndpointsDown, match="in a row lost their LLM endpoint"):
            asyncio.run(search.run())
    store = RunStore(tmp_path / "run")
    rows = store.candidate_rows()
    run = store.run_row()
    store.close()
    assert 3 <= len(rows) < 20
    assert {r["category"] for r in rows if r["status"] == "failed"} == {"endpoint-unavailable"}
    assert run is not None and run["status"] == "failed" and run["stop_reason"] == "endpoints-down"


@pytest.mark.sandbox
@pytest.mark.slow
def test_jobs_that_cannot_run_here_stop_the_run_with_one_clear_error(tiny_dataset: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent believes CUDA is there (as on the H200 where forked jobs could not initialise it), the jobs find
    none: every candidate fails `job-error` at its smoke check, none goes to the fixer, and the run stops."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine whose jobs have no CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # this process only; the jobs see the truth
    settings = RunSettings.model_validate({
        "seed": 0, "concurrency": 1, "job_error_after": 2, "budget": {"candidates": 10},
        "policy": {"num_drafts": 10}, "agents": {"snippets": 2},
        "train": {"epochs": 1, "max_train_batches": 1, "max_val_images": 4, "threads": 1, "device": "cuda"},
        "data": {"prepared": str(tiny_dataset.root)},
    })
    with pytest.raises(MachineUnusable, match="CUDA is not available in the job") as info:
        asyncio.run(SearchRun(settings, tmp_path / "run").run())
    assert "gpu_doctor" in info.value.hint
    store = RunStore(tmp_path / "run")
    rows = store.candidate_rows()
    run = store.run_row()
    store.close()
    assert 2 <= len(rows) < 10
    assert {(r["stage"], r["category"]) for r in rows if r["status"] == "failed"} == {("smoke", "job-error")}
    assert all(r["origin"] != "fix" for r in rows)
    assert run is not None and run["status"] == "failed" and run["stop_reason"] == "machine-unusable"


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_a_budget_smaller_than_endpoint_down_after_still_stops_as_endpoints_down(tiny_dataset: Any,
                                                                                 tmp_path: Path) -> None:
    # 2 candidates, endpoint_down_after 3: both lost their endpoint, so the run failed as endpoints-down (exit 1),
    # not "finished" with nothing scored
    with FlakyServer(down_from=0) as server:
        search = SearchRun(_settings(tiny_dataset.root, server.base_url, 2, 2), tmp_path / "run")
        with pytest.raises(EndpointsDown, match="2 candidates in a row lost their LLM endpoint"):
            asyncio.run(search.run())
    store = RunStore(tmp_path / "run")
    run = store.run_row()
    store.close()
    assert run is not None and run["status"] == "failed" and run["stop_reason"] == "endpoints-down"


@pytest.mark.sandbox
@pytest.mark.slow
def test_resume_after_endpoints_down_runs_the_lost_candidates_again(tiny_dataset: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with FlakyServer(down_from=0) as server:
        with pytest.raises(EndpointsDown):
            asyncio.run(SearchRun(_settings(tiny_dataset.root, server.base_url, 2, 2), run_dir).run())
    events: list[dict[str, Any]] = []
    with OfflineComposerServer(seed=0) as server:  # the endpoint is back
        outcome = asyncio.run(SearchRun(_settings(tiny_dataset.root, server.base_url, 2, 2), run_dir, resume=True,
                                        emit=events.append).run())
    assert outcome.status == "finished" and outcome.stop_reason == "candidates"
    store = RunStore(run_dir)
    rows = store.candidate_rows()
    store.close()
    assert [r["status"] for r in rows] == ["scored", "scored"], [(r["cid"], r["status"], r["category"]) for r in rows]
    assert {e["candidate"] for e in events if e["event"] == "candidate_scored"} == {"c0001", "c0002"}


def test_unreachable_endpoint_fails_before_anything_runs(tiny_dataset: Any, tmp_path: Path) -> None:
    search = SearchRun(_settings(tiny_dataset.root, "http://127.0.0.1:9/v1", 2, 1), tmp_path / "run")
    with pytest.raises(EndpointsDown, match="no LLM endpoint answers"):
        asyncio.run(search.run())


@pytest.mark.sandbox
@pytest.mark.slow
def test_a_failed_candidate_is_debugged_into_a_fix_child(tiny_dataset: Any, tmp_path: Path) -> None:
    """No fix rounds inside candidates and a defect in every design: the policy's debug turn repairs the failure
    as a new candidate (origin fix, parent = the failed one), which then trains and scores. (No lookahead: the
    second candidate is planned once the first has failed.)"""
    settings = RunSettings.model_validate({
        "seed": 0, "concurrency": 1, "lookahead": 0, "max_fix_rounds": 0, "budget": {"candidates": 2},
        "policy": {"num_drafts": 1, "p_debug": 1.0, "max_debug_depth": 1},
        "agents": {"snippets": 2, "fault_rate": 1.0},
        "train": {"epochs": 1, "max_train_batches": 1, "max_val_images": 4, "threads": 1},
        "data": {"prepared": str(tiny_dataset.root)},
    })
    outcome = asyncio.run(SearchRun(settings, tmp_path / "run").run())
    assert outcome.status == "finished"
    store = RunStore(tmp_path / "run")
    rows = store.candidate_rows()
    made_by = [r["made_by"] for r in store.db.execute("SELECT made_by FROM attempts WHERE cid='c0002'")]
    store.close()
    first, child = rows
    assert first["status"] == "failed" and first["origin"] == "compose" and first["message"]
    assert (child["origin"], child["mode"], child["parent"], child["debug_depth"]) == ("fix", "debug", "c0001", 1)
    assert made_by == ["fix"] and child["status"] == "scored", child


class TwinServer(OfflineComposerServer):
    """The offline composer, except that every designer call gets the first design's reply: identical networks."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.first: Reply | None = None
        self._first_lock = threading.Lock()

    def chat(self, body: dict[str, Any]) -> Reply:
        if (detect_role(body["messages"]) or "designer") != "designer":
            return super().chat(body)
        with self._first_lock:
            if self.first is None:
                self.first = super().chat(body)
            return self.first


@pytest.mark.sandbox
@pytest.mark.slow
def test_identical_candidates_in_one_superstep_train_once(tiny_dataset: Any, tmp_path: Path) -> None:
    # three identical networks: the lowest index is scored, the two others are recorded as its duplicates and the
    # network is trained by one job only (the order in which twins claim the network: test_graph_units)
    with TwinServer() as server:
        search = SearchRun(_settings(tiny_dataset.root, server.base_url, 3, 3), tmp_path / "run")
        outcome = asyncio.run(search.run())
    assert outcome.status == "finished"
    store = RunStore(tmp_path / "run")
    rows = sorted(store.candidate_rows(), key=lambda r: r["idx"])
    trained = store.db.execute("SELECT COUNT(*) FROM sandbox_jobs WHERE kind='train' AND reused=0").fetchone()[0]
    store.close()
    assert [r["status"] for r in rows] == ["scored", "duplicate", "duplicate"], rows
    assert {r["duplicate_of"] for r in rows[1:]} == {rows[0]["cid"]}
    assert trained == 1
