"""The near-duplicate check before training (graph/novelty.py): token shingles, Jaccard similarity, and the
graph asking a too-close design again once with a note, then recording it as a duplicate."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nncaption.agents.baseline import BaselineDesigner, BaselineFixer, BaselineReviewer
from nncaption.agents.designer import Design
from nncaption.graph import novelty
from nncaption.graph.pipeline import Checked, Pipeline, Trained
from nncaption.graph.runner import SearchRun
from nncaption.graph.settings import NoveltySettings, RunSettings
from nncaption.graph.store import RunStore

REFERENCE = Path(__file__).resolve().parents[1] / "netapi" / "reference"


def reference(name: str) -> str:
    return (REFERENCE / f"{name}.py").read_text()


def renamed(code: str, prefix: str = "renamed_") -> str:
    """`code` with every attribute it assigns on `self` renamed and every integer literal changed: the same
    network under other names and sizes."""
    stored = {n.attr for n in ast.walk(ast.parse(code))
              if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    code = re.sub(r"\bself\.(\w+)", lambda m: f"self.{prefix}{m.group(1)}" if m.group(1) in stored else m.group(0),
                  code)
    return re.sub(r"(?<![\w.])(\d+)(?![\w.])", lambda m: str(int(m.group(1)) * 2 + 1), code)


# ---------------------------------------------------------------------------------------------- pure functions
def test_tokens_drop_docstrings_comments_and_formatting_and_normalise_names_and_numbers() -> None:
    a = 'class Net:\n    """doc"""\n    def __init__(self, width):\n        self.fc = nn.Linear(width, 10)  # c\n'
    b = "class Model:\n    def __init__(self,  w):\n\n        self.head = nn.Linear(w, 512)\n"
    assert novelty.tokens(a) == novelty.tokens(b)
    assert "nn" in novelty.tokens(a) and "Linear" in novelty.tokens(a)  # names the file does not bind stay
    assert "NUM" in novelty.tokens(a) and "doc" not in " ".join(novelty.tokens(a))
    assert novelty.tokens("def f(:\n  x = 3") == ["def", "f", "(", ":", "x", "=", "NUM"]  # unparsable: words


def test_shingles_and_jaccard() -> None:
    s = novelty.shingles(list("abcdefg"), 5)
    assert len(s) == 3 and novelty.shingles(list("abc"), 5) and novelty.shingles([], 5) == frozenset()
    assert novelty.jaccard(s, s) == 1.0 and novelty.jaccard(frozenset(), frozenset()) == 1.0
    t = novelty.shingles(list("abcdefx"), 5)
    assert novelty.jaccard(s, t) == 2 / 4


def test_a_renamed_model_is_a_near_duplicate_and_other_architectures_are_not() -> None:
    lstm, gru, transformer = reference("lstm"), reference("gru"), reference("transformer")
    assert renamed(lstm) != lstm
    assert novelty.similarity(lstm, renamed(lstm)) >= 0.99
    for other in (gru, transformer):
        assert novelty.similarity(lstm, other) < 0.9
    near = novelty.nearest(renamed(lstm), [("c0001", gru), ("c0002", lstm), ("c0003", transformer)], 0.95)
    assert near is not None and near.cid == "c0002" and near.similarity >= 0.99
    assert novelty.nearest(gru, [("c0002", lstm)], 0.95) is None
    cache = novelty.ShingleCache(size=2)
    for _ in range(2):  # cached shingles give the same answer
        again = novelty.nearest(renamed(lstm), [("c0001", gru), ("c0002", lstm), ("c0003", transformer)], 0.95,
                                cache=cache)
        assert again == near
    assert len(cache._sets) == 2  # bounded
    assert novelty.nearest(lstm, [("c0002", lstm)], 0.0) is None  # 0 = off
    assert "too close to c0002 (similarity" in novelty.too_close_note(near)


def test_the_pool_is_bounded_and_keeps_only_trained_candidates_with_the_same_hyperparameters() -> None:
    from nncaption.graph import journal as jr

    def e(i: int, status: jr.Status, bleu: float | None = None, prm: dict[str, Any] | None = None,
          stage: str | None = None) -> jr.Entry:
        return jr.Entry(cid=f"c{i:04d}", index=i, origin=jr.Origin.COMPOSE, status=status, bleu4=bleu,
                        prm=prm or {}, code_ref=f"ref{i}", stage=stage)

    entries = [e(1, jr.Status.SCORED, 0.9), *[e(i, jr.Status.SCORED, 0.01) for i in range(2, 10)],
               e(10, jr.Status.FAILED, stage="static"), e(11, jr.Status.FAILED, stage="train"),
               e(12, jr.Status.SCORED, 0.5, prm={"lr": 0.1}), e(13, jr.Status.PLANNED)]
    got = [x.cid for x in novelty.pool(entries, NoveltySettings(recent=3, best=1), "c0013", {})]
    assert got == ["c0001", "c0008", "c0009", "c0011"]


# ---------------------------------------------------------------------------------------------- in the graph
class RenamingDesigner:
    """Answers every request with the same network (the baseline's first design), renamed each time."""

    name = "renaming"
    kind = "baseline"

    def __init__(self) -> None:
        self.base = BaselineDesigner(seed=0)
        self.requests: list[Any] = []
        self.first: Design | None = None

    async def design(self, req: Any) -> Design:
        self.requests.append(req)
        if self.first is None:
            self.first = await self.base.design(req)
        d = self.first
        code = d.code if len(self.requests) == 1 else renamed(d.code, f"r{len(self.requests)}_")
        return Design(code=code, prm=dict(d.prm), summary=d.summary, mode=d.mode, decoder=d.decoder,
                      snippets=list(d.snippets))


class QuickPipeline(Pipeline):
    def __init__(self, designer: Any) -> None:
        super().__init__(designer, BaselineReviewer(), BaselineFixer(), None)
        self.trainings: list[str] = []

    async def smoke(self, code: str, prm: Any) -> Checked:
        return Checked(ok=True, stage="smoke")

    async def train(self, code: str, prm: Any, *, on_event: Any = None) -> Trained:
        self.trainings.append(code)
        return Trained(ok=True, bleu4=0.02, epochs=[{"epoch": 1, "bleu4": 0.02}], seconds=1.0)


def factory_for(pipeline: Pipeline) -> Any:
    @contextlib.asynccontextmanager
    async def factory(settings: RunSettings, store: RunStore) -> AsyncIterator[tuple[Pipeline, Any]]:
        yield pipeline, None

    return factory


def test_a_near_duplicate_is_asked_again_once_with_a_note_then_recorded_as_a_duplicate(tmp_path: Path) -> None:
    designer = RenamingDesigner()
    pipeline = QuickPipeline(designer)
    settings = RunSettings.model_validate({"seed": 0, "concurrency": 1, "lookahead": 0,
                                           "budget": {"candidates": 2}, "policy": {"num_drafts": 2},
                                           "agents": {"snippets": 0}})
    run_dir = tmp_path / "run"
    outcome = asyncio.run(SearchRun(settings, run_dir, pipeline_factory=factory_for(pipeline)).run())
    assert outcome.status == "finished"
    assert len(pipeline.trainings) == 1  # only c0001 trained
    assert len(designer.requests) == 3  # c0001 once, c0002 twice
    first_ask, again = designer.requests[1], designer.requests[2]
    notes = [f.traceback_tail for f in (again.feedback.failures if again.feedback else ())]
    assert any(re.search(r"too close to c0001 \(similarity (0\.9\d|1\.00)\): change the architecture", n)
               for n in notes), notes
    assert not any("too close" in f.traceback_tail for f in (first_ask.feedback.failures if first_ask.feedback
                                                             else ()))
    store = RunStore(run_dir)
    try:
        row = store.candidate("c0002")
        detail = [json.loads(r[0]) for r in store.db.execute("SELECT detail FROM steps WHERE cid='c0002' AND "
                                                             "node='design'")]
    finally:
        store.close()
    assert row is not None and row["status"] == "duplicate" and row["duplicate_of"] == "c0001"
    assert row["category"] == "duplicate" and row["stage"] == "design"
    assert detail[0]["duplicate_of"] == "c0001" and detail[0]["asked_again"]["too_close_to"] == "c0001"
