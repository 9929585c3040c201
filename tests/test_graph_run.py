"""The whole search graph on CPU: the offline endpoint over HTTP with planted faults, then the in-process baseline.

One run against `OfflineComposerServer(fault_rate=0.3)` over real HTTP, real sandboxes and real training on the
tiny dataset: it finishes, scores candidates, the fixer repairs at least one, and a later designer prompt (read
back from the run store) carries earlier BLEU-4 values and an earlier failure's traceback tail. The same
configuration with the in-process random-search baseline makes the same candidates (same code at every attempt).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.graph.runner import RunOutcome, SearchRun
from nncaption.graph.settings import RunSettings
from nncaption.graph.store import RunStore

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SEED = 3
FAULT_RATE = 0.3


def tiny_settings(prepared: Path, jobs_root: Path, **extra: Any) -> dict[str, Any]:
    """A small search on the tiny dataset, one candidate at a time with no lookahead: each plan then sees every
    earlier candidate's outcome, so runs with the same seed make the same candidates whatever their timing (at
    higher concurrency a plan depends on which candidates happened to finish first)."""
    base: dict[str, Any] = {
        "seed": SEED, "concurrency": 1, "lookahead": 0, "max_fix_rounds": 2,
        "budget": {"candidates": 5},
        "policy": {"num_drafts": 2, "p_debug": 0.3, "p_improve": 0.6},
        "agents": {"snippets": 3, "fault_rate": FAULT_RATE},
        "train": {"epochs": 3, "max_train_batches": 6, "max_val_images": 8, "batch_size": 16, "threads": 1,
                  "jobs_root": str(jobs_root)},
        "data": {"prepared": str(prepared)},
    }
    for k, v in extra.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) else v
    return base


def run_search(settings: dict[str, Any], run_dir: Path) -> tuple[RunOutcome, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    search = SearchRun(RunSettings.model_validate(settings), run_dir, emit=events.append)
    return asyncio.run(search.run()), events


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graph-jobs")


@pytest.fixture(scope="module")
def http_run(tiny_dataset: Any, jobs_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunOutcome, list[dict[str, Any]], list[str]]:
    run_dir = tmp_path_factory.mktemp("graph-http") / "run"
    with OfflineComposerServer(seed=SEED, fault_rate=FAULT_RATE) as server:
        settings = tiny_settings(tiny_dataset.root, jobs_root, agents={
            "kind": "llm", "llm": {"shared": {"base_url": server.base_url, "model": "any-model", "max_retries": 1}}})
        outcome, events = run_search(settings, run_dir)
        faults = list(server.faults)
    return run_dir, outcome, events, faults


def _candidates(run_dir: Path) -> list[dict[str, Any]]:
    store = RunStore(run_dir)
    try:
        return store.candidate_rows()
    finally:
        store.close()


def test_http_run_finishes_scores_and_repairs(http_run: tuple[Path, RunOutcome, list[dict[str, Any]],
                                                                list[str]]) -> None:
    run_dir, outcome, events, faults = http_run
    assert outcome.status == "finished" and outcome.stop_reason == "candidates"
    rows = _candidates(run_dir)
    assert len(rows) == 5 and all(r["status"] != "planned" for r in rows)
    scored = [r for r in rows if r["status"] == "scored"]
    assert scored and outcome.best is not None and outcome.best_file is not None and outcome.best_file.is_file()
    assert faults, "the offline endpoint planted no defect: the fixer path was not exercised"
    repaired = [r for r in scored if r["fix_rounds"] > 0]
    assert repaired, f"no candidate was repaired by the fixer: {[(r['cid'], r['status'], r['category']) for r in rows]}"
    kinds = {e["event"] for e in events}
    assert {"node_started", "node_finished", "candidate_scored", "budget_reached", "run_finished"} <= kinds
    assert all(e.get("candidate") for e in events if e["event"] in ("candidate_scored", "candidate_failed"))


def test_later_designer_prompt_has_earlier_scores_and_traceback(
        http_run: tuple[Path, RunOutcome, list[dict[str, Any]], list[str]]) -> None:
    run_dir, *_ = http_run
    store = RunStore(run_dir)
    try:
        db = store.db
        prompts = [(r["step"], store.blob(r["messages_ref"])) for r in db.execute(
            "SELECT c.step, c.messages_ref FROM llm_calls c WHERE c.role = 'designer' ORDER BY c.step")]
        assert prompts
        found_scores = found_tail = False
        for step, text in prompts:
            user = "\n".join(m["content"] for m in json.loads(text) if m["role"] == "user")
            earlier = [r for r in db.execute(
                "SELECT c.cid, c.bleu4 FROM candidates c WHERE c.status='scored' AND c.recorded_step < ?",
                (step,))]
            for r in earlier:  # the candidate's whole per-epoch curve, as recorded in the epochs table
                curve = " -> ".join(f"{e[0]:.4f}" for e in db.execute(
                    "SELECT bleu4 FROM epochs WHERE cid=? ORDER BY epoch", (r["cid"],)))
                found_scores = found_scores or (curve.count("->") == 2 and f"BLEU-4 per epoch: {curve}" in user)
            failed = [r for r in db.execute(
                "SELECT v.message FROM verdicts v WHERE v.ok = 0 AND v.step < ?", (step,))]
            for r in failed:
                last = [ln for ln in (r["message"] or "").strip().splitlines() if ln.strip()][-1:]
                if last and last[0].strip()[:60] in user and "Recent failures" in user:
                    found_tail = True
        assert found_scores, "no designer prompt showed an earlier candidate's BLEU-4"
        assert found_tail, "no designer prompt showed an earlier failure's traceback tail"
    finally:
        store.close()


def test_in_process_baseline_makes_the_same_candidates(
        http_run: tuple[Path, RunOutcome, list[dict[str, Any]], list[str]], tiny_dataset: Any, jobs_root: Path,
        tmp_path: Path) -> None:
    http_dir, http_outcome, *_ = http_run
    outcome, _ = run_search(tiny_settings(tiny_dataset.root, jobs_root), tmp_path / "baseline")

    def attempts(run_dir: Path) -> list[tuple[str, int, str, str]]:
        store = RunStore(run_dir)
        try:
            return [(r["cid"], r["attempt"], r["code_ref"], r["prm_json"]) for r in store.db.execute(
                "SELECT cid, attempt, code_ref, prm_json FROM attempts ORDER BY cid, attempt")]
        finally:
            store.close()

    def verdicts(run_dir: Path) -> list[tuple[Any, ...]]:
        store = RunStore(run_dir)
        try:
            return [tuple(r) for r in store.db.execute("SELECT cid, attempt, stage, ok, category FROM verdicts")]
        finally:
            store.close()

    assert attempts(tmp_path / "baseline") == attempts(http_dir), (verdicts(tmp_path / "baseline"),
                                                                   verdicts(http_dir))
    strip = [{k: r[k] for k in ("cid", "parent", "origin", "status", "category", "bleu4", "fix_rounds")}
             for r in _candidates(http_dir)]
    assert [{k: r[k] for k in strip[0]} for r in _candidates(tmp_path / "baseline")] == strip
    assert outcome.best == http_outcome.best


def test_replay_of_recorded_exchanges_gives_the_same_run(
        http_run: tuple[Path, RunOutcome, list[dict[str, Any]], list[str]], tmp_path: Path) -> None:
    http_dir, http_outcome, *_ = http_run
    assert (http_dir / "llm-record.jsonl").is_file()
    recorded = json.loads((http_dir / "config.json").read_text())
    recorded["agents"]["replay"] = str(http_dir)  # what `nncaption run --replay RUN_DIR` sets
    outcome, _ = run_search(recorded, tmp_path / "replayed")

    def trace(run_dir: Path) -> list[tuple[Any, ...]]:
        store = RunStore(run_dir)
        try:
            return [tuple(r) for r in store.db.execute(
                "SELECT cid, parent, origin, status, category, bleu4, fix_rounds, code_ref FROM candidates "
                "ORDER BY idx")]
        finally:
            store.close()

    assert trace(tmp_path / "replayed") == trace(http_dir)
    assert outcome.best == http_outcome.best
