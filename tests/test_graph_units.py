"""The graph's pure parts: search policy, AST dedup, journal feedback, progress events, run store, run config."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nncaption.graph import journal as jr
from nncaption.graph.dedup import dedup_key
from nncaption.graph.policy import Mode, PolicySettings, choose
from nncaption.graph.progress import ProgressForwarder
from nncaption.graph.store import RunStore
from nncaption.netapi.errors import ConfigError

# ------------------------------------------------------------------ policy


def _entry(i: int, origin: jr.Origin = jr.Origin.COMPOSE, status: jr.Status = jr.Status.SCORED,
           bleu4: float | None = 0.1, **kw: object) -> jr.Entry:
    return jr.Entry(cid=f"c{i:04d}", index=i, origin=origin, status=status, bleu4=bleu4, code_ref="ab" * 32,
                    **kw)  # type: ignore[arg-type]


def test_policy_drafts_first() -> None:
    s = PolicySettings(num_drafts=2, p_debug=1.0, p_improve=1.0)
    assert choose([], s, random.Random(0)).mode is Mode.DRAFT
    assert choose([_entry(0)], s, random.Random(0)).mode is Mode.DRAFT


def test_policy_debugs_a_failed_candidate_then_respects_max_depth() -> None:
    s = PolicySettings(num_drafts=1, p_debug=1.0, p_improve=0.0, max_debug_depth=1)
    failed = _entry(0, status=jr.Status.FAILED, bleu4=None, category="shape-error")
    plan = choose([failed], s, random.Random(0))
    assert plan.mode is Mode.DEBUG and plan.parent == "c0000"
    # already debugged -> not again; its fix child at depth 1 == max -> not debugged either
    child = _entry(1, origin=jr.Origin.FIX, status=jr.Status.FAILED, bleu4=None, category="shape-error",
                   parent="c0000", debug_depth=1)
    assert choose([failed, child], s, random.Random(0)).mode is Mode.DRAFT


def test_policy_never_debugs_endpoint_failures() -> None:
    s = PolicySettings(num_drafts=1, p_debug=1.0, p_improve=0.0)
    down = _entry(0, status=jr.Status.FAILED, bleu4=None, category="endpoint-unavailable")
    assert choose([down], s, random.Random(0)).mode is Mode.DRAFT


def test_policy_improves_one_of_the_best() -> None:
    s = PolicySettings(num_drafts=1, p_debug=0.0, p_improve=1.0, improve_top_k=1)
    entries = [_entry(0, bleu4=0.1), _entry(1, bleu4=0.3), _entry(2, bleu4=0.2)]
    plan = choose(entries, s, random.Random(5))
    assert plan == type(plan)(Mode.IMPROVE, "c0001")


def test_policy_is_deterministic_for_a_seed() -> None:
    s = PolicySettings(num_drafts=1, p_debug=0.5, p_improve=0.5)
    entries = [_entry(0, bleu4=0.1), _entry(1, status=jr.Status.FAILED, bleu4=None, category="nan"),
               _entry(2, bleu4=0.2)]
    plans = [choose(entries, s, random.Random(f"7:plan:{i}")) for i in range(20)]
    assert plans == [choose(entries, s, random.Random(f"7:plan:{i}")) for i in range(20)]
    assert {p.mode for p in plans} == {Mode.DRAFT, Mode.DEBUG, Mode.IMPROVE}


# ------------------------------------------------------------------ dedup

CODE = '''"""A model."""
import torch

def supported_hyperparameters():
    return {"lr"}

class Net(torch.nn.Module):
    """Doc."""
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        hidden = 32  # width
        self.fc = torch.nn.Linear(in_shape[1], hidden)
'''

SAME = '''import torch
def supported_hyperparameters():
    return {'lr'}
class Net(torch.nn.Module):
    def __init__(self, a, b, c, d):
        super().__init__()
        width = 32
        self.fc = torch.nn.Linear(a[1],   width)
'''


def test_dedup_ignores_formatting_comments_docstrings_and_local_names() -> None:
    assert dedup_key(CODE, {"lr": 0.01}) == dedup_key(SAME, {"lr": 0.01})


def test_dedup_sees_real_changes() -> None:
    assert dedup_key(CODE, {"lr": 0.01}) != dedup_key(CODE, {"lr": 0.02})
    assert dedup_key(CODE) != dedup_key(CODE.replace("hidden = 32", "hidden = 64"))
    assert dedup_key(CODE) != dedup_key(CODE.replace("self.fc", "self.head"))
    assert dedup_key("def (:") == dedup_key("def   (:")


# ------------------------------------------------------------------ journal and feedback


def test_feedback_has_best_curves_and_recent_failure_tails() -> None:
    entries = [
        _entry(0, bleu4=0.12, bleu4_per_epoch=(0.05, 0.12), summary="gru small", prm={"lr": 0.001}),
        _entry(1, status=jr.Status.FAILED, bleu4=None, category="shape-error",
               traceback_tail="RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
        _entry(2, bleu4=0.2, bleu4_per_epoch=(0.2,), summary="lstm"),
    ]
    attempts = [jr.AttemptFailure("c0001", 1, "smoke", "shape-error", "RuntimeError: mat1 and mat2 shapes", order=4),
                jr.AttemptFailure("c0003", 1, "review", "endpoint-timeout", "the reviewer timed out", order=5)]
    fb = jr.feedback_from(entries, attempts)
    assert [c.summary for c in fb.top] == ["lstm", "gru small"]
    assert fb.top[1].bleu4_per_epoch == (0.05, 0.12) and fb.top[1].hparams == {"lr": 0.001}
    assert [f.category for f in fb.failures] == ["shape-error"]  # endpoint trouble is not the candidate's fault
    assert "mat1 and mat2" in fb.failures[0].traceback_tail
    assert jr.leaderboard(entries, 1)[0]["cid"] == "c0002"


def test_funnel_counts_how_far_candidates_got() -> None:
    entries = [_entry(0), _entry(1, status=jr.Status.FAILED, bleu4=None, stage="smoke", category="nan"),
               _entry(2, status=jr.Status.DUPLICATE, bleu4=None)]
    f = jr.funnel(entries)
    assert f["designed"] == 3 and f["smoke_ok"] == 2 and f["scored"] == 1 and f["duplicate"] == 1


# ------------------------------------------------------------------ training progress


def test_progress_is_validated_throttled_and_ignores_the_smoke_job() -> None:
    now = [0.0]
    sent: list[dict[str, object]] = []
    fwd = ProgressForwarder("c0001", sent.append, clock=lambda: now[0])
    fwd({"event": "start", "mode": "smoke", "epochs": 1})
    fwd({"event": "batch", "epoch": 1, "batch": 1, "batches": 2, "loss": 9.0})
    assert sent == []  # the smoke job that evaluate runs (or reuses) first
    fwd({"event": "start", "mode": "train", "epochs": 2})
    fwd({"event": "epoch_start", "epoch": 1, "batches": 63})
    fwd({"event": "batch", "epoch": 1, "batch": 40, "batches": 63, "loss": 3.25})
    now[0] = 0.5
    fwd({"event": "batch", "epoch": 1, "batch": 41, "batches": 63, "loss": float("nan")})
    assert len(sent) == 1  # at most one a second
    now[0] = 1.2
    fwd({"event": "epoch_end", "epoch": 1, "seconds": 12.0, "loss": 3.2})
    fwd({"event": "batch", "epoch": True, "batch": -3, "batches": "63", "loss": 1e300})  # hostile values: ignored
    assert sent[-1] == {"event": "train_progress", "candidate": "c0001", "epoch": 1, "epochs": 2, "batch": 41,
                        "batches": 63, "loss": 3.2, "epoch_seconds": 12.0}
    assert len(sent) == 2


# ------------------------------------------------------------------ store


def test_store_journal_sees_only_earlier_steps(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    e = jr.Entry(cid="c0001", index=0, origin=jr.Origin.COMPOSE)
    store.plan_candidate(e, mode="draft", snippets=[], step=1)
    ref = store.add_attempt("c0001", 1, made_by="design", code="x = 1\n", prm={"lr": 0.1}, summary="s", step=1)
    assert store.blob(ref) == "x = 1\n"
    assert (tmp_path / "run" / "candidates" / "c0001" / "attempt-1.py").read_text() == "x = 1\n"
    store.add_epochs("c0001", [{"epoch": 1, "bleu4": 0.05}, {"epoch": 2, "bleu4": 0.07}])
    store.record_candidate("c0001", step=5, status="scored", bleu4=0.07, stage="score")
    assert store.journal(1) == []
    assert store.journal(5)[0].status is jr.Status.PLANNED  # recorded at 5: not visible to step 5 itself
    done = store.journal(6)[0]
    assert done.status is jr.Status.SCORED and done.bleu4_per_epoch == (0.05, 0.07) and done.prm == {"lr": 0.1}
    assert store.best(1)[0]["cid"] == "c0001"
    # a node retried (or redone after a crash) reuses its steps row and keeps the calls of the failed try
    from nncaption.agents.records import LLMExchange

    s1 = store.step_begin(3, "design", "c0001", 1)
    store.add_llm_call(s1, "c0001", LLMExchange(role="designer", endpoint="e", model="m", messages=[],
                                                error="endpoint-timeout: no answer in 30 s"))
    assert store.step_begin(3, "design", "c0001", 1) == s1
    store.add_llm_call(s1, "c0001", LLMExchange(role="designer", endpoint="e", model="m", messages=[]))
    calls = [dict(r) for r in store.db.execute("SELECT ok, error FROM llm_calls WHERE step=? ORDER BY id", (s1,))]
    assert calls == [{"ok": 0, "error": "endpoint-timeout: no answer in 30 s"}, {"ok": 1, "error": None}]
    store.close()


def test_dedup_owner_is_the_recorded_twin_else_the_lowest_index(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    for i in range(4):
        store.plan_candidate(jr.Entry(cid=f"c{i}", index=i, origin=jr.Origin.COMPOSE), mode="draft", snippets=[],
                             step=1)
    # c2 reaches training first, then c1 (both in flight): c1 owns the key; asked again, c2 is the duplicate
    assert store.claim_dedup("k", "c2", 2) == "c2"
    assert store.claim_dedup("k", "c1", 1) == "c1"
    assert store.claim_dedup("k", "c2", 2) == "c1"
    store.record_candidate("c2", step=4, status="duplicate", duplicate_of="c1")
    store.record_candidate("c1", step=5, status="scored", bleu4=0.1)
    # c0 comes late (a fix loop): the recorded network owns it although c0's index is lower
    assert store.claim_dedup("k", "c0", 0) == "c1"
    assert store.claim_dedup("k", "c3", 3) == "c1"
    assert store.claim_dedup("k", "c1", 1) == "c1"  # the owner asking again (a redone step) still trains
    assert store.claim_dedup("other", "c3", 3) == "c3"
    # a network the machine could not run (job-error) owns nothing: its twin trains
    assert store.claim_dedup("gpu", "c0", 0) == "c0"
    store.record_candidate("c0", step=6, status="failed", category="job-error")
    assert store.claim_dedup("gpu", "c3", 3) == "c3"
    store.close()


def test_a_duplicate_always_names_the_twin_whose_network_ran(tmp_path: Path) -> None:
    """Twins settle in any order: c2 trains first and c3 is recorded as its duplicate, then c1 (lower index) owns
    the network and c2 becomes a duplicate too; c3 must name c1, not c2 (seen as a flaky graph test)."""
    store = RunStore(tmp_path / "run")
    for i in range(1, 5):
        store.plan_candidate(jr.Entry(cid=f"c{i}", index=i, origin=jr.Origin.COMPOSE), mode="draft", snippets=[],
                             step=1)
    store.record_candidate("c3", step=2, status="duplicate", duplicate_of="c2")
    store.record_candidate("c2", step=3, status="duplicate", duplicate_of="c1")
    store.record_candidate("c1", step=4, status="scored", bleu4=0.1)
    store.record_candidate("c4", step=5, status="duplicate", duplicate_of="c3")  # a link to a duplicate: followed
    rows = {r["cid"]: r for r in store.candidate_rows()}
    assert {c: rows[c]["duplicate_of"] for c in ("c2", "c3", "c4")} == {"c2": "c1", "c3": "c1", "c4": "c1"}
    assert rows["c3"]["message"] == "same network as c1"
    store.close()


# ------------------------------------------------------------------ run config


def test_runconfig_file_flags_and_errors(tmp_path: Path) -> None:
    from nncaption import runconfig

    toml = tmp_path / "run.toml"
    toml.write_text('concurrency = 3\n[budget]\ncandidates = 9\n[agents.llm.fixer]\nbase_url = "https://f/v1"\n'
                    'model = "fixer-model"\napi_key_env = "FIXER_KEY"\ntemperature = 0.2\nmax_tokens = 512\n'
                    '[agents.llm.shared.extra_body]\napi_key = "sk-secret"\n')
    s = runconfig.resolve(runconfig.load_toml(toml), {"budget": {"candidates": 5}})
    assert s.concurrency == 3 and s.budget.candidates == 5
    assert s.agents.llm.for_role("fixer").model == "fixer-model"
    assert s.agents.llm.for_role("designer").model != "fixer-model"
    shown = runconfig.show(s)
    assert "sk-secret" not in shown and "FIXER_KEY" in shown
    with pytest.raises(ConfigError, match=r"sandbox\.kind: .*'local', 'docker' or 'ray'"):
        runconfig.resolve({"sandbox": {"kind": "k8s"}})
    with pytest.raises(ConfigError, match=r"budget\.candidate: unknown key \(allowed here: candidates, "):
        runconfig.resolve({"budget": {"candidate": 3}})
    with pytest.raises(ConfigError, match="coco_root"):
        runconfig.resolve({"data": {"dataset": "coco"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("concurrency = = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        runconfig.load_toml(bad)


# ------------------------------------------------------------------ one process per run directory


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from nncaption.graph.runlock import RunLock, is_live
    from nncaption.netapi.errors import ConfigError

    run_dir = tmp_path / "run"
    assert is_live(run_dir) is None  # no lock file: a run from before locks existed
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from nncaption.graph.runlock import RunLock\n"
                               f"with RunLock(__import__('pathlib').Path({str(run_dir)!r})):\n"
                               "    print('held', flush=True); time.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_live(run_dir) is True
        with pytest.raises(ConfigError, match="being run by another process"):
            with RunLock(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert is_live(run_dir) is False  # the kernel dropped the lock with the process
    with RunLock(run_dir):
        assert is_live(run_dir) is True


# ------------------------------------------------------------------ start-up checks


def test_concurrency_is_lowered_to_what_the_machine_can_train_at_once() -> None:
    from nncaption.graph.preflight import check_concurrency
    from nncaption.graph.settings import RunSettings

    cpu = check_concurrency(RunSettings.model_validate({"concurrency": 100}), cores=2)
    assert (cpu.requested, cpu.using, cpu.adjusted) == (100, 2, True) and "2 CPU core(s)" in cpu.why
    assert cpu.event() == {"event": "concurrency_adjusted", "requested": 100, "using": 2, "why": cpu.why}
    threads = check_concurrency(RunSettings.model_validate({"concurrency": 8, "train": {"threads": 4}}), cores=16)
    assert threads.using == 4
    fits = check_concurrency(RunSettings.model_validate({"concurrency": 2}), cores=2)
    assert not fits.adjusted
    gpu = check_concurrency(RunSettings.model_validate({
        "concurrency": 8, "train": {"device": "cuda"}, "sandbox": {"gpus": [0], "jobs_per_gpu": 4}}), cores=2)
    assert gpu.using == 4 and "1 GPU(s) x 4" in gpu.why
    ray = check_concurrency(RunSettings.model_validate({"concurrency": 8, "sandbox": {"kind": "ray"}}), cores=2)
    assert not ray.adjusted
