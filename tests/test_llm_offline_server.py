"""The offline composer endpoint itself: OpenAI shapes, roles, determinism, faults, limits."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from nncaption.agents import compose
from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.designer import design_sync
from nncaption.agents.errors import ContextLengthExceeded
from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.agents.reviewer import REVIEW_SCHEMA
from nncaption.agents.settings import LLMSettings
from nncaption.netapi.errors import ConfigError
from nncaption.prompts.library import DatasetFacts, designer_messages, reviewer_messages, sample_snippets

pytestmark = pytest.mark.timeout(60)

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_openai_shapes_and_usage() -> None:
    with OfflineComposerServer(seed=1) as srv:
        status, data = post(srv.base_url, {"model": "gen", "messages": designer_messages(
            FACTS, sample_snippets(2, 0), decoder="gru"), "seed": 0})
        bad_status, bad = post(srv.base_url, {"model": "gen", "messages": "hi"})
        stream_status, _ = post(srv.base_url, {"model": "gen", "messages": [], "stream": True})
    # the reply names what answered, not the model that was asked for
    assert status == 200 and data["object"] == "chat.completion" and data["model"] == "nncaption-offline-composer"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content.startswith("Baseline trace (") and "<think>" not in content  # labelled, not posing as thinking
    assert "```python" in content and "```json" in content
    u = data["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0
    assert u["completion_tokens_details"]["reasoning_tokens"] == 0
    assert bad_status == 400 and bad["error"]["message"] and bad["error"]["type"] == "invalid_request_error"
    assert stream_status == 400


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_same_seed_same_replies_and_repeats_differ() -> None:
    """Without a request seed (any OpenAI client), a repeated prompt gets a new, yet deterministic, sample."""
    messages = designer_messages(FACTS, sample_snippets(5, 1))

    def codes(seed: int) -> list[str]:
        with OfflineComposerServer(seed=seed) as srv:
            c = LLMClient(LLMSettings.single(srv.base_url, "m"))
            return [run_sync(c.chat("designer", messages), c).reply for _ in range(2)]
    a, b = codes(0), codes(0)
    assert a == b and a[0] != a[1]  # deterministic, yet a repeated prompt gets a new sample
    assert codes(1) != a


def test_designer_hints_are_followed() -> None:
    offered = sample_snippets(2, 5)
    with OfflineComposerServer(seed=3) as srv:
        d = design_sync(LLMClient(LLMSettings.single(srv.base_url, "m")), FACTS, snippets=offered,
                        decoder="transformer", seed=5)
    info = compose.parse_marker(d.code)
    assert info and info["decoder"] == "transformer" and info["backbone"] in {s.name for s in offered}


def test_request_seed_makes_replies_repeatable() -> None:
    """With the standard `seed` parameter the same request gets the same answer every time."""
    messages = designer_messages(FACTS, sample_snippets(5, 1))
    with OfflineComposerServer(seed=2) as srv:
        c = LLMClient(LLMSettings.single(srv.base_url, "m"))
        replies = [run_sync(c.chat("designer", messages, seed=s), c).reply for s in (4, 4, 5)]
    assert replies[0] == replies[1] != replies[2]


def test_split_reasoning_puts_the_labelled_trace_in_the_reasoning_field() -> None:
    with OfflineComposerServer(split_reasoning=True) as srv:
        c = LLMClient(LLMSettings.single(srv.base_url, "m"))
        ex = run_sync(c.chat("designer", designer_messages(FACTS, sample_snippets(2, 0)), seed=1), c)
    assert ex.reasoning.startswith("Baseline trace (") and ex.reply.startswith("```python")


def test_reviewer_role_gets_a_static_verdict_as_json() -> None:
    bad = compose.inject_defect(compose.compose_model("vgg", "lstm", seed=0).code, "missing-method", seed=0)
    with OfflineComposerServer() as srv:
        c = LLMClient(LLMSettings.single(srv.base_url, "m"))
        obj, _ = run_sync(c.chat_json("reviewer", reviewer_messages(bad), schema=REVIEW_SCHEMA), c)
    assert obj["ok"] is False and obj["category"] == "missing-symbol" and obj["message"]


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_fault_rate_plants_defects_of_the_chosen_kinds() -> None:
    kinds = ("shape", "output-contract")
    with OfflineComposerServer(seed=2, fault_rate=1.0, fault_kinds=kinds) as srv:
        c = LLMClient(LLMSettings.single(srv.base_url, "m"))
        designs = [design_sync(c, FACTS, k=2, seed=s) for s in range(6)]
    assert len(srv.faults) == 6 and set(srv.faults) <= set(kinds)
    clean = [compose.compose_model(i["backbone"], i["decoder"], seed=i["seed"]).code
             for i in (compose.parse_marker(d.code) for d in designs) if i]
    assert all(d.code != c for d, c in zip(designs, clean, strict=True))


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_latency_and_context_limit() -> None:
    offered = sample_snippets(10, 3)
    from nncaption.agents.http_server import count_tokens

    sizes = {n: count_tokens("\n".join(m["content"] for m in designer_messages(FACTS, offered[:n])))
             for n in (10, 5, 2)}
    with OfflineComposerServer(latency_ms=200, max_context_tokens=(sizes[2] + sizes[5]) // 2) as srv:
        c = LLMClient(LLMSettings.single(srv.base_url, "m", backoff_base_s=0))
        t0 = time.perf_counter()
        d = design_sync(c, FACTS, snippets=offered, seed=3)
        assert time.perf_counter() - t0 >= 0.6  # three replies, 200 ms each
        assert len(d.snippets) == 2 and len(d.exchanges) == 3
        with pytest.raises(ContextLengthExceeded):
            run_sync(c.chat("designer", [{"role": "user", "content": "word " * (sizes[5])}]), c)


@pytest.mark.parametrize("kw", [{"fault_rate": 1.5}, {"fault_kinds": ["nope"]}, {"latency_ms": -1}])
def test_bad_options_are_config_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        OfflineComposerServer(**kw)
