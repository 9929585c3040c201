"""The LLM reviewer advises, it never kills: a reviewer that cannot answer leaves the candidate going on.

Unit level against scripted loopback servers (tests/llm_servers.py); one small real
search run checks that such a candidate is trained and scored.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from llm_emulator import Emulator
from llm_servers import ScriptedServer, context_limit, ok, status

from nncaption.agents import compose
from nncaption.agents.client import LLMClient
from nncaption.agents.errors import EndpointUnavailable
from nncaption.agents.reviewer import SKIPPED_PREFIX, review_sync
from nncaption.agents.settings import LLMSettings

GOOD = compose.compose_model("resnet", "gru", seed=0)
VERDICT = {"ok": False, "category": "shape-error", "message": "forward returns the wrong shape", "line": 3}


def client(url: str, **kw: Any) -> LLMClient:
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 10, "max_retries": 0}
    opts.update(kw)
    return LLMClient(LLMSettings.single(url, "m", **opts))


@pytest.mark.parametrize("behaviour,why", [
    (ok("", finish_reason="length"), ""),  # R1 spent its whole budget thinking: empty answer, cut off
    (ok("", "thinking about the forward pass" * 20, split=True, finish_reason="length"), ""),
    (ok("The model looks fine to me, nothing to add."), ""),  # prose, no JSON
    (ok('{"looks": "fine"}'), "no 'ok' field"),  # JSON, but not a verdict
    (context_limit(10, ok("{}")), "context"),
    (status(404, "The model `m` does not exist."), "does not exist"),
    (status(400, "Unsupported parameter: 'temperature'"), "Unsupported parameter"),
])
def test_a_reviewer_that_cannot_answer_leaves_the_static_verdict(behaviour: Any, why: str) -> None:
    with ScriptedServer([behaviour]) as srv:
        r = review_sync(GOOD.code, client(srv.base_url), use_llm=True)
    assert r.ok and r.category is None and r.source == "static"
    assert r.skipped and why in r.skipped
    assert r.message.startswith(SKIPPED_PREFIX) and r.skipped in r.message
    assert r.exchanges, "the failed exchange is kept for the trace"
    assert r.to_verdict().ok


def test_a_verdict_found_only_in_the_reasoning_is_used() -> None:
    reasoning = (f"Let me check. A first thought: {json.dumps({'ok': True})}. No wait, the decoder returns [B, V]. "
                 f"Final: {json.dumps(VERDICT)}")
    with ScriptedServer([ok("I have given my verdict above.", reasoning, split=True)]) as srv:
        r = review_sync(GOOD.code, client(srv.base_url), use_llm=True)
    assert (r.ok, r.category, r.line, r.source, r.skipped) == (False, "shape-error", 3, "llm", None)


def test_a_verdict_in_the_reasoning_of_a_cut_off_reply_is_not_used() -> None:
    with ScriptedServer([ok("", json.dumps(VERDICT), split=True, finish_reason="length")]) as srv:
        r = review_sync(GOOD.code, client(srv.base_url), use_llm=True)
    assert r.ok and r.skipped


def test_a_proper_verdict_still_rejects_and_an_endpoint_that_is_down_still_raises() -> None:
    with ScriptedServer([ok(json.dumps(VERDICT))]) as srv:
        r = review_sync(GOOD.code, client(srv.base_url), use_llm=True)
    assert (r.ok, r.category, r.skipped) == (False, "shape-error", None)
    with ScriptedServer([status(503, "overloaded")]) as srv:  # transient: the graph retries it, counts it as down
        with pytest.raises(EndpointUnavailable):
            review_sync(GOOD.code, client(srv.base_url), use_llm=True)
    # the static check still rejects broken code without asking anyone
    bad = review_sync("def supported_hyperparameters():\n    return {'lr'}\n", None)
    assert not bad.ok and bad.source == "static" and bad.skipped is None


def test_the_review_schema_offers_only_code_categories() -> None:
    from nncaption.agents.reviewer import REVIEW_SCHEMA

    offered = REVIEW_SCHEMA["properties"]["category"]["anyOf"][0]["enum"]
    assert "shape-error" in offered and "endpoint-timeout" not in offered and "truncated" not in offered


@pytest.mark.sandbox
@pytest.mark.slow
def test_a_candidate_whose_review_fails_is_trained_and_scored(tiny_dataset: Any, tmp_path: Path) -> None:
    from nncaption.agents.offline_server import MODEL_ID, OfflineComposerServer
    from nncaption.graph.runner import SearchRun
    from nncaption.graph.settings import RunSettings

    settings: dict[str, Any] = {
        "seed": 1, "concurrency": 1, "max_fix_rounds": 1, "budget": {"candidates": 1},
        "agents": {"snippets": 2, "kind": "llm"},
        "train": {"epochs": 1, "max_train_batches": 2, "max_val_images": 8, "batch_size": 16, "threads": 1,
                  "jobs_root": str(tmp_path / "jobs")},
        "data": {"prepared": str(tiny_dataset.root)},
    }
    # The reviewer: an emulated vLLM serving R1 that spends its whole budget thinking (content empty, cut off).
    with OfflineComposerServer(seed=1) as composer, \
            Emulator("vllm", answer=lambda body: ("", "Let me check the forward pass again. " * 800)) as reviewer:
        settings["agents"]["llm"] = {
            "shared": {"base_url": composer.base_url, "model": MODEL_ID, "max_retries": 0},
            "reviewer": {"base_url": reviewer.base_url, "model": reviewer.models[0], "max_tokens": 2048}}
        run_dir = tmp_path / "run"
        asyncio.run(SearchRun(RunSettings.model_validate(settings), run_dir).run())
        assert reviewer.bodies, "the reviewer was asked"
        assert all(b["max_tokens"] <= 2048 for b in reviewer.bodies)
    db = sqlite3.connect(run_dir / "results.sqlite")
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute("SELECT status, bleu4, category FROM candidates")]
        reviews = [dict(r) for r in db.execute("SELECT ok, message FROM verdicts WHERE stage='review'")]
        calls = [dict(r) for r in db.execute("SELECT finish_reason, error FROM llm_calls WHERE role='reviewer'")]
    finally:
        db.close()
    assert rows and rows[0]["status"] == "scored" and rows[0]["bleu4"] is not None, rows
    assert reviews and reviews[0]["ok"] and reviews[0]["message"].startswith(SKIPPED_PREFIX), reviews
    assert calls and calls[0]["finish_reason"] == "length", calls


def test_hostile_reasoning_is_searched_in_bounded_work() -> None:
    from nncaption.agents.records import LLMExchange
    from nncaption.agents.reviewer import verdict_in_reasoning

    ex = LLMExchange(role="reviewer", endpoint="e", model="m", messages=[], finish_reason="stop")
    ex.reasoning = '{"a": ' * 300_000  # deep nesting: no RecursionError escapes
    assert verdict_in_reasoning(ex) is None
    ex.reasoning = json.dumps(VERDICT) + "x" * 50_000 + '{"ok": true, "message": "' + "m" * 5000 + '"}'
    found = verdict_in_reasoning(ex)
    assert found is not None and found["ok"] is True  # the last verdict, near the end
