"""LLMClient over real HTTP on loopback: retries, typed errors, reasoning, usage, structured output."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import pytest
from llm_servers import (
    ScriptedServer,
    context_limit,
    hang,
    invalid_json,
    ok,
    reject_response_format,
    status,
)

from nncaption.agents.client import LLMClient, is_context_length_error, run_sync
from nncaption.agents.errors import (
    BadResponse,
    ContextLengthExceeded,
    EndpointRejected,
    EndpointTimeout,
    EndpointUnavailable,
    RateLimited,
    StructuredReplyError,
)
from nncaption.agents.http_server import Reply, completion_body
from nncaption.agents.reasoning import split_reasoning
from nncaption.agents.records import LLMExchange, usage_by_role
from nncaption.agents.settings import LLMSettings
from nncaption.netapi.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "system", "content": "You design networks."}, {"role": "user", "content": "Hello"}]


def fast_settings(base_url: str, **kw: Any) -> LLMSettings:
    """Tiny backoff so retry tests take milliseconds."""
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 10.0, "max_retries": 3}
    opts.update(kw)
    return LLMSettings.single(base_url, "test-model", **opts)


def chat(settings: LLMSettings, role: str = "designer", **kw: Any) -> Any:
    async def go() -> Any:
        async with LLMClient(settings) as c:
            return await c.chat(role, MESSAGES, **kw)
    return asyncio.run(go())


def test_inline_think_is_stripped_and_usage_counted() -> None:
    with ScriptedServer([ok("The answer.", reasoning="let me think about it")]) as srv:
        ex = chat(fast_settings(srv.base_url))
    assert ex.reply == "The answer."
    assert ex.reasoning == "let me think about it"
    assert ex.usage.prompt_tokens > 0 and ex.usage.completion_tokens > 0
    assert ex.usage.reasoning_tokens == 5 and not ex.usage.reasoning_estimated
    assert ex.attempts == 1 and ex.ok and ex.latency_s > 0
    assert ex.endpoint == srv.base_url and ex.model == "test-model" and ex.role == "designer"
    assert srv.bodies[0]["model"] == "test-model" and srv.bodies[0]["temperature"] == 0.6
    assert LLMExchange.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex  # the trace round-trips


def test_server_split_reasoning_field_is_read() -> None:
    with ScriptedServer([ok("Final.", reasoning="hidden steps", split=True)]) as srv:
        ex = chat(fast_settings(srv.base_url))
    assert ex.reply == "Final." and ex.reasoning == "hidden steps"


def test_reasoning_content_field_and_estimated_reasoning_tokens() -> None:
    def legacy(body: dict[str, Any], server: ScriptedServer) -> Reply:
        data = completion_body("m", "Answer text here")
        data["choices"][0]["message"]["reasoning_content"] = "older vLLM field"
        del data["usage"]["completion_tokens_details"]
        return Reply(200, data)

    with ScriptedServer(legacy) as srv:
        ex = chat(fast_settings(srv.base_url))
    assert ex.reasoning == "older vLLM field" and ex.reply == "Answer text here"
    assert ex.usage.reasoning_estimated and 0 < ex.usage.reasoning_tokens < ex.usage.completion_tokens + 1


@pytest.mark.parametrize(
    "content,answer,reasoning",
    [
        ("<think>a</think>b", "b", "a"),
        ("a</think>\n\nb", "b", "a"),  # template opened the think block
        ("intro <think>still thinking, cut off", "intro", "still thinking, cut off"),
        ("<THINK>x</THINK> y <think>z</think> w", "y  w", "x\n\nz"),
        ("no reasoning at all", "no reasoning at all", ""),
    ],
)
def test_split_reasoning_shapes(content: str, answer: str, reasoning: str) -> None:
    assert split_reasoning(content) == (answer, reasoning)


def test_429_then_success_honours_retry_after() -> None:
    script = [status(429, "slow down", headers={"Retry-After": "0.2"}), ok("fine")]
    with ScriptedServer(script) as srv:
        t0 = time.perf_counter()
        ex = chat(fast_settings(srv.base_url))
        elapsed = time.perf_counter() - t0
    assert ex.reply == "fine" and ex.attempts == 2 and len(srv.bodies) == 2
    assert elapsed >= 0.2  # waited as asked, not the 10 ms backoff


def test_long_retry_after_gives_up_at_once() -> None:
    with ScriptedServer([status(429, "come back in an hour", headers={"Retry-After": "3600"})]) as srv:
        with pytest.raises(RateLimited) as ei:
            chat(fast_settings(srv.base_url))
    assert len(srv.bodies) == 1 and ei.value.retry_after_s == 3600
    assert "3600" in ei.value.message and ei.value.hint


def test_500s_until_retries_exhausted() -> None:
    with ScriptedServer([status(500, "engine dead")]) as srv:
        with pytest.raises(EndpointUnavailable) as ei:
            chat(fast_settings(srv.base_url, max_retries=2))
    err = ei.value
    assert len(srv.bodies) == 3 and err.status == 500 and "engine dead" in err.message
    assert err.exchange is not None and err.exchange.attempts == 3
    assert err.exchange.error and err.exchange.error.startswith("endpoint-unavailable")


def test_503_then_success() -> None:
    with ScriptedServer([status(503), status(502), ok("recovered")]) as srv:
        ex = chat(fast_settings(srv.base_url))
    assert ex.reply == "recovered" and ex.attempts == 3


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_hanging_response_hits_timeout() -> None:
    with ScriptedServer([hang(30)]) as srv:
        t0 = time.perf_counter()
        with pytest.raises(EndpointTimeout) as ei:
            chat(fast_settings(srv.base_url, timeout_s=0.5, max_retries=1))
        elapsed = time.perf_counter() - t0
    assert elapsed < 5 and len(srv.bodies) == 2
    assert "0.5" in ei.value.message and ei.value.category == "endpoint-timeout"


def test_invalid_json_is_bad_response() -> None:
    with ScriptedServer([invalid_json()]) as srv:
        with pytest.raises(BadResponse) as ei:
            chat(fast_settings(srv.base_url))
    assert "invalid JSON" in ei.value.message and len(srv.bodies) == 1


def test_no_choices_is_bad_response() -> None:
    with ScriptedServer(lambda body, s: Reply(200, {"id": "x", "choices": []})) as srv:
        with pytest.raises(BadResponse):
            chat(fast_settings(srv.base_url))


def test_connection_refused_is_endpoint_unavailable() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(EndpointUnavailable) as ei:
        chat(fast_settings(f"http://127.0.0.1:{port}/v1", max_retries=1))
    assert ei.value.exchange is not None and ei.value.exchange.attempts == 2
    assert "cannot connect" in ei.value.message


def test_context_length_400_lowers_max_tokens_once_then_is_typed() -> None:
    with ScriptedServer([context_limit(5, ok("never"))]) as srv:
        with pytest.raises(ContextLengthExceeded) as ei:
            chat(fast_settings(srv.base_url))
    # the error said the window (4096) and the prompt's size: one more try with a budget that fits, then typed
    assert len(srv.bodies) == 2 and srv.bodies[1]["max_tokens"] < 4096 < srv.bodies[0]["max_tokens"]
    assert "maximum context length" in ei.value.message and ei.value.context_tokens == 4096


def test_other_4xx_is_rejected_with_the_endpoint_message() -> None:
    with ScriptedServer([status(404, "The model `test-model` does not exist.")]) as srv:
        with pytest.raises(EndpointRejected) as ei:
            chat(fast_settings(srv.base_url))
    assert "does not exist" in ei.value.message and ei.value.status == 404 and len(srv.bodies) == 1


@pytest.mark.parametrize("msg,code,expected", [
    ("This model's maximum context length is 32768 tokens.", None, True),
    ("'max_tokens' is too large: 16384. This model's maximum context length is 32768", None, True),
    ("whatever", "context_length_exceeded", True),
    ("model not found", None, False),
])
def test_context_length_detection(msg: str, code: str | None, expected: bool) -> None:
    assert is_context_length_error(400, {"error": {"message": msg, "code": code}}) is expected


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def test_structured_output_uses_response_format() -> None:
    with ScriptedServer([ok('{"ok": true}')]) as srv:
        async def go() -> Any:
            async with LLMClient(fast_settings(srv.base_url)) as c:
                return await c.chat_json("reviewer", MESSAGES, schema=SCHEMA, schema_name="verdict")
        obj, exchanges = asyncio.run(go())
    assert obj == {"ok": True} and len(exchanges) == 1
    assert srv.bodies[0]["response_format"]["json_schema"]["schema"] == SCHEMA


def test_response_format_rejected_falls_back_to_tolerant_parsing() -> None:
    reply = 'Here is my verdict:\n```json\n{"ok": false, "reason": "x"}\n```\nThanks.'
    with ScriptedServer(reject_response_format(ok(reply, reasoning="hmm {not json}"))) as srv:
        async def go() -> Any:
            async with LLMClient(fast_settings(srv.base_url)) as c:
                first = await c.chat_json("reviewer", MESSAGES, schema=SCHEMA)
                second = await c.chat_json("reviewer", MESSAGES, schema=SCHEMA)
                return first, second
        (obj, exchanges), (obj2, exchanges2) = asyncio.run(go())
    assert obj == {"ok": False, "reason": "x"} == obj2
    assert len(exchanges) == 2 and exchanges[0].error and exchanges[1].ok
    assert len(exchanges2) == 1  # remembered: no second rejected try
    assert ["response_format" in b for b in srv.bodies] == [True, False, False]


def test_structured_reply_without_json_is_typed() -> None:
    with ScriptedServer([ok("I refuse to answer in JSON")]) as srv:
        async def go() -> Any:
            async with LLMClient(fast_settings(srv.base_url)) as c:
                return await c.chat_json("reviewer", MESSAGES, schema=SCHEMA)
        with pytest.raises(StructuredReplyError) as ei:
            asyncio.run(go())
    assert ei.value.exchange is not None


def test_concurrency_limit_is_shared_across_roles() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow(body: dict[str, Any], server: ScriptedServer) -> Reply:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return ok("x")(body, server)

    with ScriptedServer(slow) as srv:
        settings = LLMSettings.single(srv.base_url, "m", max_concurrency=2)

        async def go() -> Any:
            async with LLMClient(settings) as c:
                roles = ["designer", "reviewer", "fixer"] * 2
                return await asyncio.gather(*(c.chat(r, MESSAGES) for r in roles))
        exchanges = asyncio.run(go())
    assert len(exchanges) == 6 and state["peak"] == 2
    totals = usage_by_role(list(exchanges))
    assert set(totals) == {"designer", "reviewer", "fixer"} and totals["fixer"]["calls"] == 2
    assert totals["designer"]["usage"]["completion_tokens"] == 2 * exchanges[0].usage.completion_tokens
    assert max(e.queued_s for e in exchanges) >= 0.1  # waited for the limit, not counted as latency
    assert all(0.1 <= e.latency_s < 10.0 for e in exchanges)


def test_roles_use_their_own_endpoints_and_a_client_survives_new_loops() -> None:
    with ScriptedServer([ok("from A")]) as a, ScriptedServer([ok("from B")]) as b:
        settings = LLMSettings.from_dict({
            "shared": {"base_url": a.base_url, "model": "shared-model", "backoff_base_s": 0},
            "fixer": {"base_url": b.base_url, "model": "fixer-model", "temperature": 0.1},
        })
        client = LLMClient(settings, keep_exchanges=True)
        d = run_sync(client.chat("designer", MESSAGES), client)
        f = run_sync(client.chat("fixer", MESSAGES), client)  # a second event loop: fresh connections
    assert (d.reply, d.model) == ("from A", "shared-model")
    assert (f.reply, f.model) == ("from B", "fixer-model")
    assert b.bodies[0]["temperature"] == 0.1 and len(client.exchanges) == 2


def test_api_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = LLMSettings.single("https://x/v1", "m", api_key_env="NNCAPTION_TEST_KEY")
    monkeypatch.delenv("NNCAPTION_TEST_KEY", raising=False)
    assert settings.shared.api_key() == "EMPTY"
    monkeypatch.setenv("NNCAPTION_TEST_KEY", "sk-test")
    assert settings.shared.api_key() == "sk-test"
    assert "sk-test" not in json.dumps(settings.model_dump())  # only the variable name is stored


def test_invalid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError) as ei:
        LLMSettings.from_dict({"shared": {"temperature": 9, "bogus": 1}})
    assert "temperature" in ei.value.message and "bogus" in ei.value.message
    s = LLMSettings.from_dict({"reviewer": {"model": "small"}})
    assert s.for_role("reviewer").model == "small" and s.for_role("designer") == s.shared


def test_the_model_the_server_returned_is_recorded_beside_the_one_requested() -> None:
    def renamed(body: dict[str, Any], server: ScriptedServer) -> Reply:
        return Reply(200, completion_body("served-name", "hi", prompt_text="Hello"))

    with ScriptedServer(renamed) as srv:
        ex = chat(fast_settings(srv.base_url))
    assert (ex.model, ex.model_returned) == ("test-model", "served-name")
    assert LLMExchange.from_dict(ex.to_dict()).model_returned == "served-name"
    old = ex.to_dict()
    del old["model_returned"]  # a record written before the field existed
    assert LLMExchange.from_dict(old).model_returned is None


@pytest.mark.parametrize("code", [200, 404])
def test_an_html_page_is_one_brief_bad_response_never_retried(code: int) -> None:
    page = b"<html><head><title>Welcome to nginx!</title></head><body>" + b"<p>x</p>" * 500 + b"</body></html>"
    with ScriptedServer([lambda body, server: Reply(code, page, {"Content-Type": "text/html"})]) as srv:
        with pytest.raises(BadResponse) as ei:
            chat(fast_settings(srv.base_url, max_retries=4))
    assert len(srv.bodies) == 1 and ei.value.exchange is not None and ei.value.exchange.attempts == 1
    assert "HTML page titled 'Welcome to nginx!'" in ei.value.message and "<p>" not in ei.value.message
    assert len(ei.value.message) < 300 and "/v1" in ei.value.hint


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "localhost:8000", "ftp://host/v1", "http:///v1", ""])
def test_a_base_url_without_http_scheme_or_host_is_refused_at_once(url: str) -> None:
    with pytest.raises(ConfigError) as ei:
        LLMSettings.single(url, "m")
    assert "http://" in ei.value.message and "base_url" in ei.value.message


@pytest.mark.parametrize("code,proxy_timeout", [(502, False), (503, False), (504, True), (524, True)])
def test_a_proxy_5xx_html_page_is_retried_with_a_proxy_hint(code: int, proxy_timeout: bool) -> None:
    page = (f"<html><head><title>{code}: A timeout occurred</title></head><body>cloudflare</body></html>"
            if code == 524 else f"<html><head><title>{code} Bad Gateway</title></head><body>nginx</body></html>")
    with ScriptedServer([lambda body, server: Reply(code, page.encode(), {"Content-Type": "text/html"}),
                         ok("fine")]) as srv:
        ex = chat(fast_settings(srv.base_url, max_retries=4))
    assert ex.reply == "fine" and ex.attempts == 2 and len(srv.bodies) == 2
    with ScriptedServer([lambda body, server: Reply(code, page.encode(), {"Content-Type": "text/html"})]) as srv:
        with pytest.raises(EndpointUnavailable) as ei:
            chat(fast_settings(srv.base_url, max_retries=1))
    assert len(srv.bodies) == 2 and "<html" not in ei.value.message
    assert ("proxy" in ei.value.hint) == proxy_timeout


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_a_503_honours_retry_after_up_to_the_cap() -> None:
    script = [status(503, "warming up", headers={"Retry-After": "0.3"}), ok("fine")]
    with ScriptedServer(script) as srv:
        t0 = time.perf_counter()
        ex = chat(fast_settings(srv.base_url))
        assert time.perf_counter() - t0 >= 0.3 and ex.reply == "fine" and len(srv.bodies) == 2
    with ScriptedServer([status(503, "maintenance", headers={"Retry-After": "3600"})]) as srv:
        with pytest.raises(EndpointUnavailable) as ei:
            chat(fast_settings(srv.base_url, retry_after_max_s=5))
    assert len(srv.bodies) == 1 and "3600" in ei.value.message


def test_a_server_that_refuses_streaming_is_asked_without_it_from_then_on() -> None:
    with ScriptedServer([ok("one"), ok("two")]) as srv:
        async def go() -> list[Any]:
            async with LLMClient(fast_settings(srv.base_url)) as c:
                return [await c.chat("designer", MESSAGES), await c.chat("reviewer", MESSAGES)]
        first, second = asyncio.run(go())
    assert (first.reply, second.reply) == ("one", "two") and first.attempts == second.attempts == 1
    assert all("stream" not in b for b in srv.bodies) and not first.streamed
