"""Against an emulated vLLM serving DeepSeek-R1 (--reasoning-parser deepseek_r1): budgets, truncation, context
errors, streaming, a wrong model name, and a hung server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from llm_emulator import Emulator, prompt_of, tokens

from nncaption.agents import compose
from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.designer import design_sync
from nncaption.agents.errors import ContextLengthExceeded, EndpointTimeout, TruncatedReply
from nncaption.agents.extract import ExtractionError
from nncaption.agents.probe import probe_endpoints
from nncaption.agents.settings import LLMSettings
from nncaption.netapi.errors import ConfigError
from nncaption.prompts.library import DatasetFacts

pytestmark = pytest.mark.timeout(120)

R1 = "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"
FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
GOOD = compose.compose_model("resnet", "gru", seed=0)
ANSWER = f"Here is the model.\n```python\n{GOOD.code}```\nSUMMARY: {GOOD.summary}"


def client(url: str, **kw: Any) -> LLMClient:
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_retries": 1}
    opts.update(kw)
    return LLMClient(LLMSettings.single(url, kw.pop("model", R1), **opts), keep_exchanges=True)


def r1(body: dict[str, Any]) -> tuple[str, str]:
    return ANSWER, "Let me think about the encoder. " * 200


def test_an_r1_reply_designs_with_a_budget_that_fits_and_is_streamed() -> None:
    with Emulator("vllm", answer=r1, context=65536) as emu:
        d = design_sync(client(emu.base_url), FACTS, k=2, seed=0)
    body = emu.bodies[-1]
    assert d.code == GOOD.code and "Let me think" in d.exchanges[-1].reasoning
    assert body["stream"] is True and body["max_tokens"] >= 30000  # R1 needs room to think
    ex = d.exchanges[-1]
    assert ex.streamed and ex.tokens_per_s is not None and ex.tokens_per_s > 0 and ex.profile == "vllm"
    assert ex.usage.completion_tokens > 0 and not ex.usage.estimated


def test_max_tokens_is_clamped_to_max_model_len() -> None:
    with Emulator("vllm", answer=r1, context=32768) as emu:
        design_sync(client(emu.base_url), FACTS, k=2, seed=0)
    body = emu.bodies[-1]
    assert len(emu.bodies) == 1, "clamped from /v1/models: no context error on the way"
    assert 20000 < body["max_tokens"] and tokens(prompt_of(body)) + body["max_tokens"] <= 32768


@pytest.mark.parametrize("wording", ["old", "new"])
def test_a_context_error_lowers_max_tokens_and_recovers(wording: str) -> None:
    """max_model_len not listed (a proxy in front): the 400 states prompt and window; the client asks again."""
    with Emulator("vllm", answer=r1, context=32768, list_context=False, wording=wording) as emu:
        d = design_sync(client(emu.base_url), FACTS, k=2, seed=0)
    assert d.code == GOOD.code and len(emu.bodies) == 2
    assert emu.bodies[0]["max_tokens"] == 32768 and emu.bodies[1]["max_tokens"] < 32768 - tokens(prompt_of(
        emu.bodies[1])) + 1


@pytest.mark.parametrize("role", ["reviewer", "fixer"])
def test_every_role_recovers_from_a_context_error(role: str) -> None:
    with Emulator("vllm", answer=lambda b: ('{"ok": true}', "x"), context=9000, list_context=False) as emu:
        c = client(emu.base_url)
        ex = run_sync(c.chat(role, [{"role": "user", "content": "check this " * 200}]), c)
    assert ex.reply == '{"ok": true}' and len(emu.bodies) == 2


def test_a_prompt_that_alone_does_not_fit_is_context_length() -> None:
    with Emulator("vllm", context=2048, list_context=False) as emu:
        c = client(emu.base_url)
        with pytest.raises(ContextLengthExceeded) as ei:
            run_sync(c.chat("designer", [{"role": "user", "content": "word " * 4000}]), c)
    assert ei.value.prompt_tokens == 5000 and ei.value.context_tokens == 2048 and ei.value.exchange is not None
    assert len(emu.bodies) == 1


def test_a_truncated_reply_with_a_draft_in_its_reasoning_is_truncated_not_a_design() -> None:
    def draft_then_cut(body: dict[str, Any]) -> tuple[str, str]:
        return "", f"First draft:\n```python\n{GOOD.code}```\nNo wait, that decoder is wrong. " + "Hmm. " * 40000

    with Emulator("vllm", answer=draft_then_cut, context=32768) as emu:
        with pytest.raises((TruncatedReply, ExtractionError)) as ei:
            design_sync(client(emu.base_url), FACTS, k=2, seed=0)
    assert ei.value.category == "truncated"
    assert all(b["max_tokens"] > 1000 for b in emu.bodies)


def test_reasoning_that_holds_the_whole_answer_still_designs() -> None:
    """R1 without `</think>`: the parser puts everything in reasoning, content is empty, finish is stop."""
    with Emulator("vllm", answer=lambda b: ("", ANSWER)) as emu:
        d = design_sync(client(emu.base_url), FACTS, k=2, seed=0)
    assert d.code == GOOD.code and d.summary == GOOD.summary


def test_a_wrong_model_name_is_found_by_the_probe_naming_the_served_models() -> None:
    with Emulator("vllm", models=("served/a", "served/b")) as emu:
        report = asyncio.run(probe_endpoints(LLMSettings.single(emu.base_url, "not-served")))
        with pytest.raises(ConfigError) as ei:
            report.raise_problems()
    assert ei.value.exit_code == 2 and "served/a" in ei.value.message and "not-served" in ei.value.message
    assert emu.bodies == [], "no chat request before the run starts"


def test_a_missing_v1_and_a_refused_key_are_configuration_errors() -> None:
    with Emulator("vllm") as emu:
        report = asyncio.run(probe_endpoints(LLMSettings.single(emu.base_url.removesuffix("/v1"), R1)))
    assert report.problems and "/v1" in " ".join(report.hints)


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_a_hung_server_times_out_and_then_fails_fast() -> None:
    """Lists its models, never answers: two tries per call, then the endpoint fails at once for a while."""
    with Emulator("hung") as emu:
        c = client(emu.base_url, idle_timeout_s=0.5, timeout_retries=1)

        async def go() -> list[EndpointTimeout]:
            out: list[EndpointTimeout] = []
            for _ in range(3):
                try:
                    await c.chat("designer", [{"role": "user", "content": "hi"}], seed=1)
                except EndpointTimeout as e:
                    out.append(e)
            await c.aclose()
            return out

        t0 = time.monotonic()
        errors = asyncio.run(go())
        elapsed = time.monotonic() - t0
    assert len(errors) == 3 and all(e.exchange is not None for e in errors)
    assert len(emu.bodies) == 3, "2 tries, then 1 more: the third silent request opens the breaker"
    assert emu.bodies[0]["seed"] != emu.bodies[1]["seed"], "a timed-out request is retried with a new seed"
    assert "sent nothing" in errors[-1].message
    assert elapsed < 60


def test_a_streamed_clamped_vllm_recording_replays(tmp_path: Any) -> None:
    """The recording keys leave out stream and budget fields: the replay server streams nothing and reports no
    max_model_len, and still serves every reply."""
    from nncaption.agents.replay_server import ReplayServer

    record = tmp_path / "rec.jsonl"
    with Emulator("vllm", answer=r1, context=32768) as emu:
        d = design_sync(LLMClient(LLMSettings.single(emu.base_url, R1), record_path=record), FACTS, k=2, seed=0)
    with ReplayServer(record) as rep:
        again = design_sync(LLMClient(LLMSettings.single(rep.base_url, R1)), FACTS, k=2, seed=0)
        assert rep.misses == 0
    assert again.code == d.code and again.exchanges[-1].reasoning == d.exchanges[-1].reasoning
