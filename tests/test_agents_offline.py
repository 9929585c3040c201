"""Designer, reviewer and fixer over real HTTP against the offline composer endpoint.

The composed models are accepted by the real check (static + the runner's smoke
stage on the tiny prepared dataset, trained with the design's prm); with
fault_rate=1.0 every planted defect kind is caught by the check and the baseline's
ORACLE fixer (which undoes its own planted defect) repairs it: this exercises the
fix loop, it measures no fix rate.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from candidate_check import check_code

from nncaption.agents import compose
from nncaption.agents.client import LLMClient
from nncaption.agents.designer import Design, design, design_sync
from nncaption.agents.feedback import CandidateSummary, FailureSummary, Feedback
from nncaption.agents.fixer import fix_sync
from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.agents.reviewer import review_sync
from nncaption.agents.settings import LLMSettings
from nncaption.netapi.categories import Verdict
from nncaption.prompts.library import DatasetFacts, ParentCandidate

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def facts(tiny_dataset: Any) -> DatasetFacts:
    from nncaption.netapi.data.loader import PreparedData

    return DatasetFacts.from_meta(PreparedData.open(tiny_dataset.public_dir).meta)


def client_for(base_url: str, **kw: Any) -> LLMClient:
    return LLMClient(LLMSettings.single(base_url, "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
                                        backoff_base_s=0.01, timeout_s=60, **kw))


def run_check(code: str, tiny_dataset: Any, path: Path, prm: dict | None = None) -> Verdict:
    return check_code(code, tiny_dataset.public_dir, path.parent, prm=prm, name=path.name, time_limit_s=60)


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_designer_compose_is_accepted_by_check(tiny_dataset: Any, facts: DatasetFacts, tmp_path: Path) -> None:
    with OfflineComposerServer(seed=3) as srv:
        d = design_sync(client_for(srv.base_url), facts, k=5, seed=11, decoder="lstm")
    assert isinstance(d, Design) and d.mode == "compose" and len(d.snippets) == 5
    marker = compose.parse_marker(d.code)
    assert marker is not None and marker["decoder"] == "lstm" and marker["backbone"] in d.snippets
    assert d.summary.startswith(marker["backbone"]) and "LSTM" in d.summary
    ex = d.exchange
    assert ex.reasoning == "" and ex.reply.startswith("Baseline trace (")  # labelled, no invented thinking
    assert "Baseline trace" not in d.code and d.prm["lr"] == marker["hparams"]["lr"]
    assert ex.usage.prompt_tokens > 1000 and ex.usage.completion_tokens > 100 and ex.usage.reasoning_tokens == 0
    assert ex.role == "designer" and ex.endpoint == srv.base_url and ex.latency_s > 0
    assert ex.model_returned == "nncaption-offline-composer" != ex.model
    prompt = ex.messages[1]["content"]
    assert f"out_shape = ({facts.vocab_size},)" in prompt and all(n in prompt for n in d.snippets)
    verdict = run_check(d.code, tiny_dataset, tmp_path / "designed.py", d.prm)
    assert verdict.ok, verdict.message


def test_designer_k10_with_feedback_and_split_reasoning(facts: DatasetFacts) -> None:
    fb = Feedback(
        top=[CandidateSummary("resnet + GRU " + "x" * 1000, {"lr": 0.001, "embed": 64}, [0.01, 0.05])],
        failures=[FailureSummary("shape-error", "\n".join(f"line {i}" for i in range(100)))],
    )
    assert len(fb.top[0].summary) <= 300 and len(fb.failures[0].traceback_tail.splitlines()) <= 12
    with OfflineComposerServer(seed=1, split_reasoning=True) as srv:
        d = design_sync(client_for(srv.base_url), facts, k=10, seed=2, feedback=fb)
    prompt = d.exchange.messages[1]["content"]
    assert len(d.snippets) == 10 and "0.0100 -> 0.0500" in prompt and "[shape-error]" in prompt
    assert "line 99" in prompt and "line 50" not in prompt  # only the traceback's tail
    assert d.exchange.reasoning and "<think>" not in d.exchange.reply


def test_designer_improve_mode(facts: DatasetFacts) -> None:
    parent = compose.compose_model("vgg", "gru", seed=4)
    with OfflineComposerServer(seed=2) as srv:
        d = design_sync(client_for(srv.base_url), facts, mode="improve", seed=5,
                        parent=ParentCandidate(parent.code, parent.summary, 0.12, [0.05, 0.12], parent.hparams))
    assert d.mode == "improve" and d.code != parent.code
    assert "0.0500 -> 0.1200" in d.exchange.messages[1]["content"]
    info = compose.parse_marker(d.code)
    assert info is not None  # a mutation of the parent's composition
    assert '"lr": ' + str(parent.prm["lr"]) in d.exchange.messages[1]["content"]  # the parent's prm is shown


def test_reviewer_static_then_llm(facts: DatasetFacts) -> None:
    good = compose.compose_model("resnet", "gru", seed=1).code
    bad = compose.inject_defect(good, "forbidden-import", seed=0)
    with OfflineComposerServer() as srv:
        client = client_for(srv.base_url)
        r_bad = review_sync(bad, client, use_llm=True)
        assert r_bad.source == "static" and not r_bad.ok and r_bad.category == "forbidden-call"
        assert r_bad.line is not None and srv.requests_served == 0  # static rejection never costs an LLM call
        r_static = review_sync(good)
        assert r_static.ok and r_static.source == "static"
        r_llm = review_sync(good, client, use_llm=True)
    assert r_llm.ok and r_llm.source == "llm" and r_llm.exchange is not None
    assert r_llm.exchange.params["response_format"]["type"] == "json_schema"
    assert r_llm.to_verdict().ok and r_bad.to_verdict().category is not None


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
@pytest.mark.parametrize("kind", compose.DEFECT_KINDS)
def test_baseline_oracle_fixer_undoes_every_planted_defect_over_http(
    kind: str, tiny_dataset: Any, facts: DatasetFacts, tmp_path: Path
) -> None:
    with OfflineComposerServer(seed=7, fault_rate=1.0, fault_kinds=[kind]) as srv:
        client = client_for(srv.base_url)
        d = design_sync(client, facts, k=5, seed=compose.DEFECT_KINDS.index(kind))
        assert srv.faults == [kind]
        verdict = run_check(d.code, tiny_dataset, tmp_path / "faulty.py", d.prm)
        assert not verdict.ok, f"{kind} defect was not caught"
        code, prm, rounds = d.code, d.prm, 0
        while not verdict.ok and rounds < 2:
            rounds += 1
            f = fix_sync(client, code, verdict, prm=prm)
            assert f.category == (verdict.category.value if verdict.category else None)
            assert f.exchange.role == "fixer" and f.summary and f.prm
            code, prm = f.code, f.prm
            verdict = run_check(code, tiny_dataset, tmp_path / f"fixed{rounds}.py", prm)
        assert srv.faults == [kind]  # fixer replies are never faulted
    assert verdict.ok, f"{kind}: still rejected after {rounds} rounds: {verdict.message}"


def test_fixer_accepts_a_sandbox_traceback(facts: DatasetFacts) -> None:
    code = compose.compose_model("squeezenet", "transformer", seed=2).code
    prm = compose.compose_model("squeezenet", "transformer", seed=2).prm
    tb = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"
    with OfflineComposerServer() as srv:
        f = fix_sync(client_for(srv.base_url), code, tb, prm=prm, category="out-of-memory")
    assert "out of memory" in f.exchange.messages[1]["content"] and f.category == "out-of-memory"
    # the offline fixer shrinks the decoder that trains (the prm) after an out-of-memory failure
    assert f.prm["embed"] < prm["embed"] and f.prm["embed"] % f.prm["heads"] == 0


def test_concurrent_designs_share_the_limit(facts: DatasetFacts) -> None:
    with OfflineComposerServer(seed=0, latency_ms=50) as srv:
        client = LLMClient(LLMSettings.single(srv.base_url, "m", max_concurrency=2))

        async def go() -> list[Design]:
            return await asyncio.gather(*(design(client, facts, k=2, seed=s) for s in range(4)))
        designs = asyncio.run(go())
    assert len({d.code for d in designs}) == 4 and srv.requests_served == 4
