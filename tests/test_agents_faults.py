"""The agents against a fault-injecting server: typed errors, fewer snippets on context overflow, fallbacks."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from llm_servers import ScriptedServer, context_limit, hang, invalid_json, ok, reject_response_format, status

from nncaption.agents import compose
from nncaption.agents.client import LLMClient
from nncaption.agents.designer import design_sync, snippet_schedule
from nncaption.agents.errors import BadResponse, ContextLengthExceeded, EndpointTimeout, EndpointUnavailable
from nncaption.agents.extract import ExtractionError
from nncaption.agents.fixer import fix_sync
from nncaption.agents.http_server import Reply
from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.agents.reviewer import review_sync
from nncaption.agents.settings import LLMSettings
from nncaption.prompts.library import DatasetFacts, designer_messages, detect_role, sample_snippets

pytestmark = pytest.mark.timeout(60)

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
GOOD = compose.compose_model("resnet", "gru", seed=0)


def client(url: str, **kw: Any) -> LLMClient:
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 10, "max_retries": 2}
    opts.update(kw)
    return LLMClient(LLMSettings.single(url, "m", **opts))


def designer_reply(body: dict[str, Any], server: ScriptedServer) -> Reply:
    return ok(f"<think>plan</think>Here:\n```python\n{GOOD.code}```\nSUMMARY: {GOOD.summary}")(body, server)


def test_snippet_schedule() -> None:
    assert snippet_schedule(10) == [10, 5, 2, 0]
    assert snippet_schedule(5) == [5, 2, 0]
    assert snippet_schedule(0) == [0]


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_context_length_makes_the_designer_use_fewer_snippets() -> None:
    sizes: dict[int, int] = {}  # prompt sizes with 10, 5, 2, 0 snippets
    offered = sample_snippets(10, 3)
    for n in (10, 5, 2, 0):
        sizes[n] = sum(len(m["content"]) for m in designer_messages(FACTS, offered[:n]))
    limit = (sizes[2] + sizes[5]) // 2  # 10 and 5 snippets overflow, 2 fit
    with ScriptedServer(context_limit(limit, designer_reply)) as srv:
        d = design_sync(client(srv.base_url), FACTS, k=10, seed=3)
    assert d.code == GOOD.code and d.summary == GOOD.summary
    assert d.snippets == [s.name for s in offered[:2]] and len(srv.bodies) == 3
    assert [e.ok for e in d.exchanges] == [False, False, True]
    assert d.exchanges[0].error and d.exchanges[0].error.startswith("context-length")


def test_context_length_even_without_snippets_is_raised() -> None:
    with ScriptedServer(context_limit(10, designer_reply)) as srv:
        with pytest.raises(ContextLengthExceeded) as ei:
            design_sync(client(srv.base_url), FACTS, k=5, seed=0)
    assert len(srv.bodies) == 3  # 5 -> 2 -> 0 snippets
    assert ei.value.exchange is not None and ei.value.hint


def test_designer_429_then_success() -> None:
    with ScriptedServer([status(429, "queue full"), designer_reply]) as srv:
        d = design_sync(client(srv.base_url), FACTS, k=2, seed=0)
    assert d.exchange.attempts == 2 and d.code == GOOD.code


def test_designer_500s_until_retries_exhausted() -> None:
    with ScriptedServer([status(500, "CUDA error: device-side assert")]) as srv:
        with pytest.raises(EndpointUnavailable) as ei:
            design_sync(client(srv.base_url, max_retries=2), FACTS, k=2, seed=0)
    assert len(srv.bodies) == 3 and "device-side assert" in ei.value.message
    assert ei.value.exchange is not None and ei.value.exchange.role == "designer"


def test_fixer_hanging_response_hits_timeout() -> None:
    with ScriptedServer([hang(30)]) as srv:
        t0 = time.perf_counter()
        with pytest.raises(EndpointTimeout):
            fix_sync(client(srv.base_url, timeout_s=0.3, max_retries=0), GOOD.code, "some error")
    assert time.perf_counter() - t0 < 5


def test_designer_invalid_json_is_bad_response() -> None:
    with ScriptedServer([invalid_json()]) as srv:
        with pytest.raises(BadResponse):
            design_sync(client(srv.base_url), FACTS, k=2, seed=0)


def test_designer_reply_without_code_is_an_extraction_error_with_the_exchange() -> None:
    with ScriptedServer([ok("I would use a ResNet with an LSTM.", reasoning="thinking")]) as srv:
        with pytest.raises(ExtractionError) as ei:
            design_sync(client(srv.base_url), FACTS, k=2, seed=0)
    err = ei.value
    assert err.category == "no-code" and err.exchange is not None and err.exchange.reasoning == "thinking"


def test_reply_cut_at_max_tokens_is_truncated_category() -> None:
    with OfflineComposerServer() as srv:
        with pytest.raises(ExtractionError) as ei:
            design_sync(client(srv.base_url, max_tokens=60), FACTS, k=2, seed=0)
    assert ei.value.category == "truncated" and ei.value.exchange is not None
    assert ei.value.exchange.finish_reason == "length"


def test_fixer_acts_on_an_extraction_error() -> None:
    err = ExtractionError("truncated", "the reply ends inside an unfinished code block", candidate=GOOD.code[:500])
    with OfflineComposerServer() as srv:
        f = fix_sync(client(srv.base_url), GOOD.code, err)
    assert "truncated" in f.exchange.messages[1]["content"] and "class Net" in f.code


def test_reviewer_falls_back_when_response_format_is_rejected() -> None:
    verdict = {"ok": False, "category": "eval-contract", "message": "forward needs captions", "line": 12}

    def answer(body: dict[str, Any], server: ScriptedServer) -> Reply:
        assert detect_role(body["messages"]) == "reviewer"
        return ok(f"<think>check forward</think>My verdict:\n{json.dumps(verdict)}\nDone.")(body, server)

    with ScriptedServer(reject_response_format(answer)) as srv:
        r = review_sync(GOOD.code, client(srv.base_url), use_llm=True)
    assert (r.ok, r.category, r.message, r.line, r.source) == (False, "eval-contract", "forward needs captions", 12,
                                                               "llm")
    assert len(r.exchanges) == 2 and "response_format" not in srv.bodies[1]
    assert r.to_verdict().category is not None and r.to_verdict().stage == "review"


def test_reviewer_normalises_a_sloppy_llm_verdict() -> None:
    sloppy = '{"ok": "false", "category": "made-up", "message": "", "line": "7"}'
    with ScriptedServer([ok(sloppy)]) as srv:
        r = review_sync(GOOD.code, client(srv.base_url), use_llm=True)
    assert (r.ok, r.category, r.line) == (False, None, 7) and r.message
