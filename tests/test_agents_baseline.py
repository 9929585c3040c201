"""The agent protocols and the honest random-search baseline, in-process and over HTTP.

- the baseline designer gives the same candidates (code and prm) in-process and over HTTP for the same seed;
- every HTTP reply names the model `nncaption-offline-composer`, whatever was asked for;
- no prompt sent to an endpoint carries a baseline control marker;
- the baseline explains itself only in labelled baseline traces;
- its fixer is an ORACLE that undoes its own planted defect (no fix rate is measured here, on purpose).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from llm_servers import ScriptedServer, ok

from nncaption.agents import compose
from nncaption.agents.baseline import BASELINE_NAME, BaselineDesigner, BaselineFixer, BaselineReviewer
from nncaption.agents.client import LLMClient
from nncaption.agents.feedback import CandidateSummary, FailureSummary, Feedback
from nncaption.agents.llm_agents import LLMDesigner, LLMFixer, LLMReviewer
from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.agents.protocols import Design, Designer, DesignRequest, Fixer, Reviewer
from nncaption.agents.settings import LLMSettings
from nncaption.netapi.categories import Category
from nncaption.netapi.validate import static_check
from nncaption.prompts.library import DatasetFacts, ParentCandidate

pytestmark = pytest.mark.timeout(120)

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
REQUESTED = "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"


def client(url: str) -> LLMClient:
    return LLMClient(LLMSettings.single(url, REQUESTED, backoff_base_s=0.01, timeout_s=30))


def requests() -> list[DesignRequest]:
    fb = Feedback(top=[CandidateSummary("vgg + GRU", {"lr": 0.001}, [0.02, 0.04])],
                  failures=[FailureSummary("shape-error", "RuntimeError: mat1 and mat2 shapes cannot be multiplied")])
    return [DesignRequest(seed=s, k=k, decoder=d, feedback=fb if s % 2 else None)
            for s, k, d in ((0, 5, None), (1, 10, "lstm"), (2, 2, "transformer"), (3, 5, "gru"), (4, 5, None))]


def test_protocols_are_implemented_by_both_kinds() -> None:
    c = client("http://127.0.0.1:9/v1")
    for agent, proto, kind in ((LLMDesigner(c, FACTS), Designer, "llm"), (LLMReviewer(c), Reviewer, "llm"),
                               (LLMFixer(c), Fixer, "llm"), (BaselineDesigner(), Designer, "baseline"),
                               (BaselineReviewer(), Reviewer, "baseline"), (BaselineFixer(), Fixer, "baseline")):
        assert isinstance(agent, proto) and agent.kind == kind
    assert LLMDesigner(c, FACTS).name == f"llm:{REQUESTED}" and BaselineDesigner().name == BASELINE_NAME


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_baseline_designer_in_process_and_over_http_give_the_same_candidates() -> None:
    async def both() -> tuple[list[Design], list[Design], list[str], list[str]]:
        local = BaselineDesigner(7, fault_rate=0.4)
        with OfflineComposerServer(seed=7, fault_rate=0.4) as srv:
            remote = LLMDesigner(client(srv.base_url), FACTS)
            a = [await local.design(r) for r in requests()]
            b = [await remote.design(r) for r in requests()]
            parent = a[3]
            improve = DesignRequest(mode="improve", seed=11,
                                    parent=ParentCandidate(parent.code, parent.summary, 0.05, [0.05], parent.prm))
            a.append(await local.design(improve))
            b.append(await remote.design(improve))
            return a, b, local.faults, srv.faults

    local, remote, local_faults, remote_faults = asyncio.run(both())
    assert [(d.code, d.prm) for d in local] == [(d.code, d.prm) for d in remote]
    assert [d.summary for d in local] == [d.summary for d in remote]
    assert [d.snippets for d in local] == [d.snippets for d in remote]
    assert local_faults == remote_faults and local_faults  # the same defects were planted
    assert len({d.code for d in local}) == len(local)  # different seeds, different candidates
    for d in local:
        assert d.prm and d.producer == BASELINE_NAME and d.exchanges == []
        assert d.trace.startswith("Baseline trace (nncaption-offline-composer") and "not an LLM" in d.trace
    for d in remote:
        ex = d.exchange
        assert ex.model == REQUESTED and ex.model_returned == BASELINE_NAME and d.producer == BASELINE_NAME
        assert ex.params["seed"] == d.exchange.params["seed"]  # the request's seed travels as a sampling parameter
    # a different baseline seed gives different candidates for the same requests
    other = asyncio.run(BaselineDesigner(8).design(requests()[0]))
    assert other.code != local[0].code or other.prm != local[0].prm


def test_http_reply_names_the_offline_composer_whatever_was_asked() -> None:
    import urllib.request

    body = {"model": REQUESTED, "messages": [{"role": "user", "content": "Write an image captioning model."}]}
    with OfflineComposerServer() as srv:
        req = urllib.request.Request(srv.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            data = json.load(r)
    assert data["model"] == BASELINE_NAME
    content = data["choices"][0]["message"]["content"]
    assert content.startswith("Baseline trace (nncaption-offline-composer") and "<think>" not in content
    first_person = [w for w in ("I take", "I check", "I rebuild", " I ") if w in content.split("```")[0]]
    assert not first_person


def test_no_prompt_sent_to_a_real_llm_carries_a_baseline_marker() -> None:
    """Drive all three LLM agents against a stand-in real LLM; every request it receives is marker-free."""
    net = compose.compose_model("resnet", "gru", seed=0)
    llm_code = "\n".join(ln for ln in net.code.splitlines() if not ln.startswith("# nncaption-")) + "\n"
    reply = f"```python\n{llm_code}```\n```json\n{json.dumps(net.prm)}\n```\nSUMMARY: resnet + GRU\n"
    verdict = json.dumps({"ok": True, "category": None, "message": "fine", "line": None})

    def answer(body: dict[str, Any], server: ScriptedServer) -> Any:
        return ok(verdict if "response_format" in body else reply)(body, server)

    async def drive(c: LLMClient) -> None:
        parent = ParentCandidate(llm_code, "resnet + GRU", 0.1, [0.1], net.prm)
        fb = Feedback(failures=[FailureSummary("nan", "RuntimeError: loss is nan")])
        for req in (DesignRequest(seed=1, k=10, feedback=fb), DesignRequest(mode="improve", seed=2, parent=parent)):
            d = await LLMDesigner(c, FACTS).design(req)
            assert d.prm == net.prm and d.producer == "m-returned"
        assert (await LLMReviewer(c).review(llm_code, net.prm)).ok
        f = await LLMFixer(c).fix(llm_code, net.prm, static_check("def broken(:\n"))
        assert f.prm == net.prm and f.code == llm_code

    class RealLike(ScriptedServer):
        def chat(self, body: dict[str, Any]) -> Any:
            r = super().chat(body)
            r.body["model"] = "m-returned"
            return r

    with RealLike(answer) as srv:
        asyncio.run(drive(client(srv.base_url)))
    assert len(srv.bodies) == 4
    for body in srv.bodies:
        text = json.dumps(body["messages"])
        assert "nncaption-" not in text and "<!--" not in text


def test_baseline_oracle_fixer_undoes_its_own_planted_defect() -> None:
    """An oracle, not a repair strategy: it re-composes its own file. No fix rate is measured or reported."""
    good = compose.compose_model("vgg", "lstm", seed=3)
    prm = dict(good.prm)
    for kind in compose.DEFECT_KINDS:
        bad = compose.inject_defect(good.code, kind, 1)
        f = asyncio.run(BaselineFixer().fix(bad, prm, static_check(bad) if kind != "shape" else "shape-error"))
        assert f.code == good.code and f.prm == prm and f.producer == BASELINE_NAME and f.exchanges == []
        assert "oracle" in f.trace


def test_baseline_fixer_lowers_the_learning_rate_that_trains_after_a_nan() -> None:
    good = compose.compose_model("resnet", "gru", seed=4, hparams={"lr": 0.003})
    prm = {**good.prm, "lr": 0.006}  # what the candidate actually trained with overrides the file's marker
    f = asyncio.run(BaselineFixer().fix(good.code, prm, "category nan: the loss became NaN"))
    assert f.prm["lr"] == pytest.approx(0.002) and f.category is None
    with OfflineComposerServer() as srv:
        g = asyncio.run(LLMFixer(client(srv.base_url)).fix(good.code, prm, "category nan: the loss became NaN"))
    assert (g.code, g.prm) == (f.code, f.prm) and g.exchange.model_returned == BASELINE_NAME


def test_baseline_reviewer_checks_code_and_prm_statically() -> None:
    good = compose.compose_model("squeezenet", "transformer", seed=2)
    ok_review = asyncio.run(BaselineReviewer().review(good.code, good.prm))
    assert ok_review.ok and ok_review.source == "static" and not ok_review.exchanges
    bad = asyncio.run(BaselineReviewer().review(good.code, {**good.prm, "lr": 3.0}))
    assert not bad.ok and bad.category == Category.BAD_HYPERPARAMETERS.value and "lr" in bad.message
    with OfflineComposerServer() as srv:
        llm = asyncio.run(LLMReviewer(client(srv.base_url)).review(good.code, {**good.prm, "lr": 3.0}))
        assert srv.requests_served == 0  # a static rejection never costs an LLM call
    assert not llm.ok and llm.category == Category.BAD_HYPERPARAMETERS.value and llm.source == "static"


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_baseline_fixer_in_process_and_over_http_give_the_same_fixes() -> None:
    from nncaption.agents.extract import ExtractionError
    from nncaption.netapi.categories import Verdict

    good = compose.compose_model("regnet", "transformer", seed=6)
    bad = compose.inject_defect(good.code, "output-contract", 0)
    long_tb = "\n".join(f"  frame {i}" for i in range(80)) + "\nRuntimeError: out of memory"
    errors: list[Any] = [
        static_check(compose.inject_defect(good.code, "syntax", 0)),
        Verdict(ok=False, stage="train", category=Category.NAN, message="loss became nan at epoch 1", line=None),
        Verdict(ok=False, stage="train", category=Category.TOO_LARGE, message=long_tb, line=None),
        long_tb,
        ExtractionError("truncated", "cut off", candidate=bad),
    ]

    async def both() -> list[tuple[Any, Any]]:
        pairs = []
        with OfflineComposerServer() as srv:
            llm = LLMFixer(client(srv.base_url))
            for err in errors:
                pairs.append((await BaselineFixer().fix(bad, good.prm, err), await llm.fix(bad, good.prm, err)))
        return pairs

    for local, remote in asyncio.run(both()):
        assert (local.code, local.prm, local.summary, local.category) == \
            (remote.code, remote.prm, remote.summary, remote.category)
    nan_fix = asyncio.run(both())[1][0]
    assert nan_fix.prm["lr"] < good.prm["lr"] and nan_fix.summary.endswith("(re-composed after nan)")
