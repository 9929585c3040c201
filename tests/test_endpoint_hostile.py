"""Hostile and broken endpoint replies: each ends in a reply category with its exchange, never `internal`, and
nothing from them can lower the token budget, overflow SQLite or reach a terminal raw."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from llm_emulator import Emulator, RawReply, sse_events

from nncaption.agents import compose
from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.designer import design_sync
from nncaption.agents.errors import BadResponse, EndpointUnavailable, LLMError, ReplyTooLarge, StructuredReplyError
from nncaption.agents.records import MAX_TOKEN_COUNT
from nncaption.agents.settings import LLMSettings
from nncaption.netapi.categories import Category
from nncaption.prompts.library import DatasetFacts

pytestmark = pytest.mark.timeout(120)

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
GOOD = compose.compose_model("resnet", "gru", seed=0)
MESSAGES = [{"role": "user", "content": "Design a network."}]
JSON = {"Content-Type": "application/json"}


def client(url: str, **kw: Any) -> LLMClient:
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_retries": 1}
    opts.update(kw)
    return LLMClient(LLMSettings.single(url, "m", **opts), keep_exchanges=True)


def completion(content: str = "hello", usage: Any = None, reasoning: str = "") -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        msg["reasoning_content"] = reasoning
    return {"id": "x", "object": "chat.completion", "model": "m", "usage": usage,
            "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}


def serve(raw: RawReply) -> Emulator:
    return Emulator("vllm", models=("m",), reply_hook=lambda body: raw)


def chat(url: str, **kw: Any) -> Any:
    c = client(url, **kw)
    return run_sync(c.chat("designer", MESSAGES), c)


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 10, "completion_tokens": 1e30, "total_tokens": 1e30},
    {"prompt_tokens": -5000, "completion_tokens": -1, "total_tokens": -5001},
    {"prompt_tokens": float("nan"), "completion_tokens": "12", "total_tokens": "lots"},
    {"prompt_tokens": True, "completion_tokens": [], "total_tokens": {}},
    "not a dict",
])
def test_unbelievable_usage_is_estimated_and_fits_sqlite(usage: Any) -> None:
    with serve((200, JSON, json.dumps(completion("x" * 400, usage)).encode())) as emu:
        ex = chat(emu.base_url)
    u = ex.usage
    assert u.estimated and u.completion_tokens == 100
    for n in (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.total_tokens):
        assert isinstance(n, int) and 0 <= n <= MAX_TOKEN_COUNT
    assert u.total_tokens >= u.prompt_tokens + u.completion_tokens  # the budget never goes down
    sqlite3.connect(":memory:").execute("SELECT ?", (u.total_tokens,))


def test_lone_surrogates_and_nul_are_replaced_before_anything_stores_them() -> None:
    body = b'{"id": "x\\ud800", "model": "m\\u0000", "choices": [{"message": {"content": "a\\udc00b\\u0000c"},' \
           b' "finish_reason": "stop"}]}'
    with serve((200, JSON, body)) as emu:
        ex = chat(emu.base_url)
    assert ex.reply == "a\ufffdb\ufffdc"
    json.dumps(ex.to_dict(), ensure_ascii=False).encode("utf-8")  # encodable: no lone surrogate left
    assert "\x00" not in (ex.model_returned or "")


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000])
def test_deeply_nested_json_is_bad_response_with_the_exchange(raw: bytes) -> None:
    with serve((200, JSON, raw)) as emu:
        with pytest.raises(BadResponse) as ei:
            chat(emu.base_url)
    assert ei.value.exchange is not None and ei.value.exchange.error
    assert Category(ei.value.category) is Category.BAD_RESPONSE


def test_a_deeply_nested_json_reply_for_the_reviewer_is_a_structured_reply_error() -> None:
    content = '{"ok": ' * 50_000 + "true" + "}" * 50_000
    with serve((200, JSON, json.dumps(completion(content)).encode())) as emu:
        c = client(emu.base_url)
        with pytest.raises(StructuredReplyError) as ei:
            run_sync(c.chat_json("reviewer", MESSAGES, schema={"type": "object"}), c)
    assert ei.value.exchange is not None


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_a_redirect_is_never_followed() -> None:
    with Emulator("vllm", models=("m",)) as target:
        moved = (307, {"Location": f"{target.base_url}/chat/completions", "Content-Length": "0"}, b"")
        with serve(moved) as emu:
            with pytest.raises(BadResponse) as ei:
                chat(emu.base_url)
    assert target.bodies == [] and "redirect" in ei.value.message and ei.value.exchange is not None


@pytest.mark.parametrize("streamed", [False, True])
def test_a_20_mb_body_is_cut_off_as_reply_too_large(streamed: bool) -> None:
    big = completion("y" * 20_000_000)
    raw: RawReply = ((200, {"Content-Type": "text/event-stream"}, b"".join(sse_events(big, 1_000_000)))
                     if streamed else (200, JSON, json.dumps(big).encode()))
    with serve(raw) as emu:
        with pytest.raises(ReplyTooLarge) as ei:
            chat(emu.base_url)
    assert ei.value.category == "reply-too-large" and ei.value.exchange is not None


def test_reasoning_over_its_cap_is_reply_too_large() -> None:
    events = b"".join(sse_events(completion("ok", reasoning="z" * 3000), 500))
    with serve((200, {"Content-Type": "text/event-stream"}, events)) as emu:
        with pytest.raises(ReplyTooLarge):
            chat(emu.base_url, max_reasoning_chars=2048)


def test_a_60_kb_unfenced_reply_designs() -> None:
    layers = "".join(f"# layer note {i}: " + "keeps the feature width\n" for i in range(1600))
    code = GOOD.code + "\n" + layers
    reply = f"{code}\nThat is the whole model. It should train well.\nSUMMARY: a ResNet with a GRU"
    assert len(reply) > 60_000
    with Emulator("vllm", models=("m",), answer=lambda b: (reply, "")) as emu:
        d = design_sync(client(emu.base_url), FACTS, k=2, seed=0)
    assert "class Net" in d.code and "That is the whole model" not in d.code


def test_control_characters_in_a_server_error_are_escaped() -> None:
    body = json.dumps({"error": {"message": "\x1b[2J\x1b]0;pwned\x07fake\nINFO all good", "code": 500}}).encode()
    with serve((500, JSON, body)) as emu:
        with pytest.raises(EndpointUnavailable) as ei:
            chat(emu.base_url, max_retries=0)
    assert "\x1b" not in ei.value.message and "\x07" not in ei.value.message and "\n" not in ei.value.message


def test_a_server_that_ignores_stream_is_read_as_plain_json() -> None:
    with Emulator("vllm", models=("m",), reply_hook=lambda body: (200, JSON, json.dumps(completion()).encode())) as emu:
        ex = chat(emu.base_url)
    assert ex.reply == "hello" and not ex.streamed and emu.bodies[0]["stream"] is True


def test_a_broken_event_in_a_stream_is_bad_response() -> None:
    raw = b"data: {\"choices\": [{\"delta\": {\"content\": \"a\"}}]}\n\ndata: {broken\n\n"
    with serve((200, {"Content-Type": "text/event-stream"}, raw)) as emu:
        with pytest.raises(LLMError) as ei:
            chat(emu.base_url)
    assert ei.value.category == "bad-response" and ei.value.exchange is not None


@pytest.mark.parametrize("raw", [b'{"id": "x", "model": "m", "choices": [{"message": {"content": "a\\ud800"}, '
                                 b'"finish_reason": "stop"}]}', b"[" * 100_000 + b"]" * 100_000])
def test_a_hostile_reply_is_recorded_without_breaking_the_recording(raw: bytes, tmp_path: Any) -> None:
    from nncaption.agents.recording import load_recording

    record = tmp_path / "rec.jsonl"
    with serve((200, JSON, raw)) as emu:
        c = LLMClient(LLMSettings.single(emu.base_url, "m", max_retries=0), record_path=record)
        try:
            run_sync(c.chat("designer", MESSAGES), c)
        except LLMError as e:
            assert e.category == "bad-response"
    entries = [e for es in load_recording(record).values() for e in es]
    assert len(entries) == 1 and entries[0]["status"] == 200
