"""Budgets of dollars and training seconds (graph/budget.py): a run stops at the first one reached and says
which, and what was spent never goes down. Real graph, run store and baseline agents; the sandbox is a stand-in
whose trainings report their seconds, and the designer's LLM usage is scripted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nncaption.agents.baseline import BaselineDesigner, BaselineFixer, BaselineReviewer
from nncaption.agents.designer import Design
from nncaption.agents.records import LLMExchange, Usage
from nncaption.graph.budget import BudgetMeter, cost_usd, train_seconds
from nncaption.graph.pipeline import Checked, Pipeline, Trained
from nncaption.graph.runner import SearchRun
from nncaption.graph.settings import RunSettings
from nncaption.graph.store import RunStore

TRAIN_S = 10.0
PROMPT, COMPLETION = 1000, 500  # per design call: at $1 / $2 per 1M tokens, $0.002


class PricedDesigner:
    """The baseline designer, each design charged as one LLM call of PROMPT + COMPLETION tokens."""

    name = "priced"
    kind = "llm"

    def __init__(self, settings: RunSettings) -> None:
        self.base = BaselineDesigner(seed=0)
        self.endpoint = settings.agents.llm.for_role("designer")
        self.calls = 0

    async def design(self, req: Any) -> Design:
        self.calls += 1
        d = await self.base.design(req)
        ex = LLMExchange(role="designer", endpoint=self.endpoint.safe_url(), model=self.endpoint.model,
                         messages=[{"role": "user", "content": "design"}], reply="```python\n...```",
                         usage=Usage(prompt_tokens=PROMPT, completion_tokens=COMPLETION,
                                     total_tokens=PROMPT + COMPLETION))
        return Design(code=d.code, prm=dict(d.prm), summary=d.summary, mode=d.mode, decoder=d.decoder,
                      snippets=list(d.snippets), exchanges=[ex])


class TimedPipeline(Pipeline):
    """Smoke passes at once; every training reports TRAIN_S seconds."""

    def __init__(self, designer: Any) -> None:
        super().__init__(designer, BaselineReviewer(), BaselineFixer(), None)
        self.trainings = 0

    async def smoke(self, code: str, prm: Any) -> Checked:
        return Checked(ok=True, stage="smoke")

    async def train(self, code: str, prm: Any, *, on_event: Any = None) -> Trained:
        self.trainings += 1
        return Trained(ok=True, bleu4=0.01 + self.trainings / 1000, epochs=[{"epoch": 1, "bleu4": 0.01}],
                       seconds=TRAIN_S)


def factory_for(pipeline: Pipeline) -> Any:
    @contextlib.asynccontextmanager
    async def factory(settings: RunSettings, store: RunStore) -> AsyncIterator[tuple[Pipeline, Any]]:
        yield pipeline, None

    return factory


def settings(**budget: Any) -> RunSettings:
    return RunSettings.model_validate({
        "seed": 0, "concurrency": 1, "lookahead": 0, "budget": {"candidates": 8, **budget},
        "policy": {"num_drafts": 8}, "agents": {"snippets": 0, "llm": {"shared": {
            "base_url": "http://127.0.0.1:9/v1", "model": "m", "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0}}},
        "novelty": {"threshold": 0}})


def test_the_run_stops_on_the_training_seconds_budget(tmp_path: Path) -> None:
    s = settings(max_train_seconds=2.5 * TRAIN_S)
    pipeline = TimedPipeline(BaselineDesigner(seed=0))
    run_dir = tmp_path / "run"
    outcome = asyncio.run(SearchRun(s, run_dir, pipeline_factory=factory_for(pipeline)).run())
    assert outcome.stop_reason == "budget-train-seconds"
    assert pipeline.trainings == 3  # 10, 20, 30 s: the third reached 25 s
    store = RunStore(run_dir)
    try:
        assert train_seconds(store) == 3 * TRAIN_S
        assert store.run_row()["stop_reason"] == "budget-train-seconds"  # type: ignore[index]
    finally:
        store.close()


def test_the_run_stops_on_the_cost_budget(tmp_path: Path) -> None:
    s = settings(max_cost_usd=0.005)
    designer = PricedDesigner(s)
    pipeline = TimedPipeline(designer)
    run_dir = tmp_path / "run"
    outcome = asyncio.run(SearchRun(s, run_dir, pipeline_factory=factory_for(pipeline)).run())
    assert outcome.stop_reason == "budget-cost"
    assert designer.calls == 3  # $0.002 each: the third passed $0.005
    store = RunStore(run_dir)
    try:
        assert abs(cost_usd(s, store) - 3 * 0.002) < 1e-9
        free = s.model_copy(update={"agents": s.agents.model_copy(update={"llm": type(s.agents.llm)()})})
        assert cost_usd(free, store) == 0.0  # an endpoint without prices costs nothing
    finally:
        store.close()


def test_what_was_spent_never_goes_down(tmp_path: Path) -> None:
    s = settings(max_train_seconds=100.0)
    pipeline = TimedPipeline(BaselineDesigner(seed=0))
    run_dir = tmp_path / "run"
    asyncio.run(SearchRun(s.model_copy(update={"budget": s.budget.model_copy(update={"candidates": 2})}), run_dir,
                          pipeline_factory=factory_for(pipeline)).run())
    store = RunStore(run_dir)
    try:
        meter = BudgetMeter(s)
        before = meter.read(store)
        assert before.train_seconds == 2 * TRAIN_S and meter.reason(store) is None
        # the row of c0001's training rewritten as a reused job (as a resume may): the store's sum drops ...
        store.add_job("c0001", 1, "train", job_id=None, status="ok", category=None, reused=True, job_dir=None,
                      seconds=0.0, step=0)
        assert train_seconds(store) == TRAIN_S
        # ... what the meter says was spent does not
        assert meter.read(store).train_seconds == before.train_seconds
    finally:
        store.close()
