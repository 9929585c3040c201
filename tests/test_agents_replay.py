"""Record a run of all three agents, replay it over HTTP, and get identical replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llm_servers import ScriptedServer, invalid_json, ok, status

from nncaption.agents import compose
from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.designer import design_sync
from nncaption.agents.errors import BadResponse, EndpointRejected
from nncaption.agents.fixer import fix_sync
from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.agents.recording import load_recording, request_key
from nncaption.agents.replay_server import ReplayServer
from nncaption.agents.reviewer import review_sync
from nncaption.agents.settings import LLMSettings
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.validate import static_check
from nncaption.prompts.library import DatasetFacts

pytestmark = pytest.mark.timeout(60)

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
MODEL = "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"


def settings(url: str) -> LLMSettings:
    return LLMSettings.single(url, MODEL, backoff_base_s=0.01, timeout_s=30)


def agent_run(client: LLMClient) -> list[tuple[str, str, str | None]]:
    """designer -> LLM reviewer -> fixer (on the static verdict of a broken variant)."""
    d = design_sync(client, FACTS, k=5, seed=4, decoder="gru")
    r = review_sync(d.code, client, use_llm=True)
    broken = compose.inject_defect(d.code, "missing-method", seed=1)
    f = fix_sync(client, broken, static_check(broken))
    return [(e.reply, e.reasoning, e.response_id) for e in (d.exchange, r.exchange, f.exchange) if e is not None]


def test_record_then_replay_gives_identical_replies(tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    # No planted faults: a faulty design would skip the LLM review, and whether one is planted depends on
    # the prompt's hash (which changes whenever the contract text does).
    with OfflineComposerServer(seed=9, fault_rate=0.0) as srv:
        recorded = agent_run(LLMClient(settings(srv.base_url), record_path=record))
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert len(lines) == 3 and all(x["status"] == 200 and x["request"]["model"] == MODEL for x in lines)
    assert lines[1]["request"]["response_format"]["type"] == "json_schema"
    assert all(x["key"] == request_key(x["request"]) for x in lines)

    with ReplayServer(record) as rep:
        assert rep.model_ids() == [MODEL]
        replayed = agent_run(LLMClient(settings(rep.base_url)))
        assert rep.misses == 0 and rep.requests_served == 3
    assert replayed == recorded


def test_replay_serves_retries_in_order(tmp_path: Path) -> None:
    record = tmp_path / "retry.jsonl"
    messages = [{"role": "user", "content": "hi"}]
    with ScriptedServer([status(429, "busy", headers={"Retry-After": "0"}), ok("hello")]) as srv:
        c = LLMClient(settings(srv.base_url), record_path=record)
        first = run_sync(c.chat("designer", messages), c)
    assert first.attempts == 2
    entries = load_recording(record)
    assert [e["status"] for es in entries.values() for e in es] == [429, 200]
    with ReplayServer(record) as rep:
        c = LLMClient(settings(rep.base_url))
        again = run_sync(c.chat("designer", messages), c)
        third = run_sync(c.chat("designer", messages), c)  # the last recorded reply repeats
    assert again.attempts == 2 and again.reply == "hello" == third.reply and third.attempts == 1


def test_unknown_request_is_a_clear_404(tmp_path: Path) -> None:
    record = tmp_path / "one.jsonl"
    with ScriptedServer([ok("hello")]) as srv:
        c = LLMClient(settings(srv.base_url), record_path=record)
        run_sync(c.chat("designer", [{"role": "user", "content": "a"}]), c)
    with ReplayServer(record) as rep:
        with pytest.raises(EndpointRejected) as ei:
            c = LLMClient(settings(rep.base_url))
            run_sync(c.chat("designer", [{"role": "user", "content": "b"}]), c)
    assert ei.value.status == 404 and "no recorded reply" in ei.value.message and rep.misses == 1


def test_missing_or_corrupt_record_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ReplayServer(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request": {}}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        load_recording(bad)


def test_recording_is_not_affected_by_the_api_key(tmp_path: Path, monkeypatch: Any) -> None:
    """The key travels in a header, never in the record file."""
    monkeypatch.setenv("NNCAPTION_SECRET_TEST_KEY", "sk-very-secret")
    record = tmp_path / "k.jsonl"
    with ScriptedServer([ok("x")]) as srv:
        s = LLMSettings.single(srv.base_url, MODEL, api_key_env="NNCAPTION_SECRET_TEST_KEY")
        c = LLMClient(s, record_path=record)
        run_sync(c.chat("fixer", [{"role": "user", "content": "a"}]), c)
    assert "sk-very-secret" not in record.read_text()


def test_a_broken_reply_replays_broken(tmp_path: Path) -> None:
    record = tmp_path / "broken.jsonl"
    messages = [{"role": "user", "content": "hi"}]
    with ScriptedServer([invalid_json()]) as srv:
        c = LLMClient(settings(srv.base_url), record_path=record)
        with pytest.raises(BadResponse):
            run_sync(c.chat("designer", messages), c)
    assert "response_text" in json.loads(record.read_text())
    with ReplayServer(record) as rep:
        c = LLMClient(settings(rep.base_url))
        with pytest.raises(BadResponse, match="invalid JSON"):
            run_sync(c.chat("designer", messages), c)
