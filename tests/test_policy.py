"""Search policies behind `[policy] kind`, and the candidate descriptor they read from the journal.

Real parts: the run config's resolver, the real scheduler, graph, run store and checkpointer with the
in-process baseline agents; only the sandbox is a stand-in (smoke and training answer at once, no job runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.baseline import BaselineDesigner, BaselineFixer, BaselineReviewer
from nncaption.agents.compose import compose_model
from nncaption.graph import journal as jr
from nncaption.graph.descriptor import describe, params_bin
from nncaption.graph.pipeline import Checked, Pipeline, Trained
from nncaption.graph.policy import POLICIES, Mode, Plan, PolicySettings, choose, make_policy
from nncaption.graph.policy_greedy import GreedyPolicy
from nncaption.graph.policy_random import RandomDraftPolicy
from nncaption.graph.runner import SearchRun
from nncaption.graph.settings import RunSettings
from nncaption.graph.store import RunStore
from nncaption.netapi.errors import ConfigError
from nncaption.runconfig import resolve

REFERENCE = Path(__file__).resolve().parents[1] / "netapi" / "reference"

# ------------------------------------------------------------------ descriptor


@pytest.mark.parametrize(("name", "conditioning"), [
    ("lstm", "initial-state+per-step-input"),
    ("gru", "initial-state+per-step-input"),
    ("transformer", "cross-attention"),
])
def test_descriptor_of_the_reference_models(name: str, conditioning: str) -> None:
    d = describe((REFERENCE / f"{name}.py").read_text(encoding="utf-8"), params=2_500_000)
    assert (d.decoder, d.encoder, d.conditioning, d.params_bin) == (name, "cnn", conditioning, "1M-3M")
    # the code decides the decoder family, not the planned hint
    assert describe((REFERENCE / f"{name}.py").read_text(encoding="utf-8"), decoder="gru").decoder == name


def test_descriptor_of_composed_models_reads_the_summary_and_the_marker() -> None:
    rnn = compose_model("resnet", "lstm", seed=1, hparams={"fuse": "init"})
    d = describe(rnn.code, summary=rnn.summary)
    assert (d.decoder, d.encoder, d.conditioning, d.params_bin) == ("lstm", "residual", "initial-state", "unknown")
    fed = compose_model("vit", "gru", seed=2, hparams={"fuse": "concat"})
    assert describe(fed.code, summary=fed.summary).conditioning == "initial-state+per-step-input"
    # without the marker and the summary, the dead `if FEED_FEATURES:` branch of an init-only model is not counted
    bare = rnn.code.replace("nncaption-composed", "composed")
    d = describe(bare)
    assert (d.decoder, d.encoder, d.conditioning) == ("lstm", "cnn", "initial-state")
    tf = compose_model("mobilenetv2", "transformer", seed=3)
    d = describe(tf.code, summary=tf.summary)
    assert (d.decoder, d.encoder, d.conditioning) == ("transformer", "inverted-residual", "cross-attention")


def test_descriptor_of_hostile_or_missing_code_is_unknown_not_a_crash() -> None:
    for code in (None, "", "def (:\n", "x = (" * 10_000, "\x00" * 10):
        d = describe(code, decoder="gru")
        assert (d.decoder, d.encoder, d.conditioning) == ("gru", "unknown", "unknown"), code
    assert [params_bin(p) for p in (None, 50_000, 100_000, 999_999, 12_000_000, 10**9)] == [
        "unknown", "<100K", "100K-300K", "300K-1M", "10M-30M", ">=100M"]


# ------------------------------------------------------------------ selection by config


def test_the_config_selects_a_registered_policy() -> None:
    assert set(POLICIES) >= {"greedy", "random"}
    assert resolve().policy.kind == "greedy"
    assert isinstance(make_policy(resolve().policy), GreedyPolicy)
    assert isinstance(make_policy(resolve({"policy": {"kind": "random"}}).policy), RandomDraftPolicy)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_registered_policy_loads_and_plans_deterministically(kind: str) -> None:
    """What a new file plus its registration line must satisfy: it loads by name and plans from the journal."""
    policy = make_policy(PolicySettings(kind=kind))
    journal = [jr.Entry(cid=f"c{i:04d}", index=i, origin=jr.Origin.COMPOSE, status=jr.Status.SCORED,
                        bleu4=0.1 * i, code_ref="ab" * 32) for i in range(1, 4)]
    for entries in ([], journal):
        plans = [policy.plan(entries, random.Random(f"0:plan:{i}")) for i in range(10)]
        assert all(isinstance(p, Plan) for p in plans)
        assert plans == [policy.plan(entries, random.Random(f"0:plan:{i}")) for i in range(10)]
        known = {e.cid for e in entries}
        assert all(set(p.parents) | set(p.inspirations) <= known for p in plans)


def test_an_unknown_policy_kind_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({"policy": {"kind": "islands-typo"}})
    assert caught.value.exit_code == 2
    assert "policy.kind" in caught.value.message and "greedy, random" in caught.value.message


def test_the_cli_exits_2_on_an_unknown_policy_kind_and_shows_a_known_one(tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_text('[policy]\nkind = "nope"\n', encoding="utf-8")
    good.write_text('[policy]\nkind = "random"\n', encoding="utf-8")

    def config_show(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nncaption.cli", "config", "show", "--config", str(path)],
                              capture_output=True, text=True, timeout=120, check=False)

    proc = config_show(bad)
    assert proc.returncode == 2, proc.stderr
    assert "policy.kind" in proc.stderr and "known kinds: greedy, random" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = config_show(good)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["policy"]["kind"] == "random"


def test_the_greedy_policy_is_the_one_function_choose() -> None:
    s = PolicySettings(num_drafts=1, p_debug=0.5, p_improve=0.5)
    entries = [jr.Entry(cid="c0001", index=0, origin=jr.Origin.COMPOSE, status=jr.Status.SCORED, bleu4=0.2),
               jr.Entry(cid="c0002", index=1, origin=jr.Origin.COMPOSE, status=jr.Status.FAILED,
                        category="shape-error", code_ref="ab" * 32)]
    policy = make_policy(s)
    plans = [policy.plan(entries, random.Random(f"3:plan:{i}")) for i in range(30)]
    assert plans == [choose(entries, s, random.Random(f"3:plan:{i}")) for i in range(30)]
    assert {p.mode for p in plans} == {Mode.DRAFT, Mode.DEBUG, Mode.IMPROVE}
    assert Plan(Mode.IMPROVE, "c0001", others=("c0002",)).parents == ("c0001", "c0002")
    assert Plan(Mode.DRAFT).parents == ()


# ------------------------------------------------------------------ a tiny run


class RecordingDesigner(BaselineDesigner):
    """The baseline designer, keeping every request it was sent."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.requests: list[Any] = []

    async def design(self, request: Any) -> Any:
        self.requests.append(request)
        return await super().design(request)


class InstantPipeline(Pipeline):
    """Baseline agents (real); smoke passes at once; every other 'training' fails with a debuggable error."""

    def __init__(self) -> None:
        self.recorder = RecordingDesigner()
        super().__init__(self.recorder, BaselineReviewer(), BaselineFixer(), None)
        self.calls = 0

    async def smoke(self, code: str, prm: Any) -> Checked:
        return Checked(ok=True, stage="smoke")

    async def train(self, code: str, prm: Any, *, on_event: Any = None) -> Trained:
        self.calls += 1
        if self.calls % 2 == 0:
            return Trained(ok=False, category="shape-error", message="mat1 and mat2 shapes", stage="train")
        return Trained(ok=True, bleu4=0.01 * self.calls, epochs=[{"epoch": 1, "bleu4": 0.01 * self.calls}],
                       params=400_000)


def _run(tmp_path: Path, kind: str) -> tuple[list[dict[str, Any]], list[jr.Entry], InstantPipeline]:
    pipeline = InstantPipeline()

    @contextlib.asynccontextmanager
    async def factory(settings: RunSettings, store: RunStore) -> AsyncIterator[tuple[Pipeline, Any]]:
        yield pipeline, None

    s = RunSettings.model_validate({
        "seed": 0, "concurrency": 1, "lookahead": 0, "max_fix_rounds": 0, "budget": {"candidates": 5},
        "agents": {"snippets": 2},
        "policy": {"kind": kind, "num_drafts": 1, "p_debug": 1.0, "p_improve": 1.0}})
    outcome = asyncio.run(SearchRun(s, tmp_path / kind, pipeline_factory=factory).run())
    assert outcome.status == "finished"
    store = RunStore(tmp_path / kind)
    try:
        return store.candidate_rows(), store.journal(), pipeline
    finally:
        store.close()


def test_a_run_with_the_random_policy_makes_only_drafts_without_feedback(tmp_path: Path) -> None:
    rows, journal, pipeline = _run(tmp_path, "random")
    assert len(rows) == 5
    assert {(r["mode"], r["origin"], r["parent"]) for r in rows} == {("draft", "compose", None)}
    assert len(pipeline.recorder.requests) == 5
    assert all(r.feedback is None and r.parent is None for r in pipeline.recorder.requests)
    scored = [e for e in journal if e.scored]
    assert scored and all(e.descriptor is not None and e.descriptor.params_bin == "300K-1M" for e in scored)
    assert all(e.descriptor is not None and e.descriptor.decoder == e.decoder for e in journal)
    # the control: the same settings with the greedy policy debug and improve once something failed or scored
    rows, _, pipeline = _run(tmp_path, "greedy")
    assert {r["mode"] for r in rows} > {"draft"}
    assert any(r.feedback is not None for r in pipeline.recorder.requests)


def test_a_random_plan_is_rebuilt_the_same_from_its_row(tmp_path: Path) -> None:
    """Resume: the scheduler asks the policy again with the journal as it stood at the row's planning step."""
    from nncaption.graph.scheduler import RunClock, Scheduler

    for kind in ("random", "greedy"):
        s = RunSettings.model_validate({"seed": 5, "budget": {"candidates": 4},
                                        "policy": {"kind": kind, "num_drafts": 1, "p_improve": 1.0}})
        store = RunStore(tmp_path / kind)
        try:
            scheduler = Scheduler(s, store, None, lambda event: None, RunClock(0.0))
            tasks = [scheduler.plan(0)]
            store.record_candidate("c0001", step=store.last_step() + 1, status="scored", bleu4=0.1, stage="score")
            tasks += [scheduler.plan(i) for i in range(1, 4)]
            rows = {r["cid"]: r for r in store.candidate_rows()}
            assert [scheduler.replan(rows[t["cid"]]) for t in tasks] == tasks
            modes = {t["mode"] for t in tasks}
            assert modes == ({"draft"} if kind == "random" else {"draft", "improve"}), (kind, modes)
            assert all(t["feedback"] is (kind == "greedy") for t in tasks)
        finally:
            store.close()
