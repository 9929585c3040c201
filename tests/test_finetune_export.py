"""`nncaption export RUN_DIR --sft / --pairs`: generator fine-tuning data from a real run.

An LLM run against the offline composer served over real HTTP (real sandboxes, real
training, real SQLite) is exported; both files are loaded line by line with a strict
JSON parser (no NaN) and their documented fields checked (with the `datasets` JSON
loader too when that library is installed). A baseline run exports empty files with a
note; the output replaces a planted link instead of writing through it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from run_fixture import prepare_tiny, run_cli

from nncaption.inspection.finetune import MAX_PAIRS_PER_GROUP, Example, pairs

SFT_KEYS = {"messages", "reasoning", "verdict", "category", "stage", "scores", "candidate", "attempt", "role",
            "made_by", "mode", "parent", "model", "step"}
SCORE_KEYS = {"bleu4", "lemur_bleu4", "bleu4_per_epoch", "params", "parent_bleu4", "gain"}
PAIR_KEYS = {"prompt", "chosen", "rejected", "rejected_prompt", "chosen_score", "rejected_score", "rejected_verdict",
             "rejected_category", "parent", "role", "chosen_candidate", "rejected_candidate"}
VERDICTS = {"scored", "failed", "duplicate", "interrupted", "planned", "superseded"}


def _no_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name}")


def strict_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        value = json.loads(line, parse_constant=_no_constant)
        assert isinstance(value, dict)
        out.append(value)
    return out


def check_messages(messages: Any) -> None:
    assert isinstance(messages, list) and messages
    for m in messages:
        assert set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
        assert isinstance(m["content"], str) and m["content"]


def export(run_dir: Path, tmp: Path, *extra: str) -> tuple[dict[str, Any], Path, Path]:
    sft, prs = tmp / "out" / "sft.jsonl", tmp / "out" / "pairs.jsonl"
    proc = run_cli(["export", str(run_dir), "--sft", str(sft), "--pairs", str(prs), "--json", *extra], timeout=300)
    return json.loads(proc.stdout), sft, prs


BAD_DIFF = "<<<<<<< SEARCH\nclass NotInTheParent:\n=======\nclass Other:\n>>>>>>> REPLACE\nSUMMARY: renamed\n"


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-candidate run whose designer, reviewer and fixer are the offline composer behind real HTTP; every
    improve and fix request asks for edits (diff_edits = 1.0) and gets a block that does not apply."""
    from nncaption.agents.http_server import Reply, completion_body, prompt_text
    from nncaption.agents.offline_server import OfflineComposerServer

    class BadDiffs(OfflineComposerServer):
        def chat(self, body: dict[str, Any]) -> Reply:
            user = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
            if "## Answer with edits" in user:
                return Reply(200, completion_body(str(body.get("model")), BAD_DIFF,
                                                  prompt_text=prompt_text(body["messages"])))
            return super().chat(body)

    base = tmp_path_factory.mktemp("finetune-run")
    prepared = prepare_tiny(base)
    with BadDiffs(seed=3, fault_rate=0.5) as srv:
        cfg = base / "run.toml"
        cfg.write_text(f'[agents]\nkind = "llm"\n[agents.llm.shared]\nbase_url = "{srv.base_url}"\n'
                       'model = "offline"\ndiff_edits = 1.0\n')
        run_cli(["run", "--config", str(cfg), "--run-dir", str(base / "run"), "--prepared", str(prepared),
                 "--no-live", "--candidates", "5", "--epochs", "1", "--max-train-batches", "2", "--max-val-images",
                 "8", "--concurrency", "2", "--seed", "3", "--threads", "1"])
    return base / "run"


@pytest.mark.sandbox
@pytest.mark.slow
def test_edits_that_do_not_apply_fall_back_to_a_whole_file_shown_in_the_trace(llm_run: Path) -> None:
    from nncaption.graph.trace import RunReader, step_detail, step_lines

    with RunReader(llm_run) as reader:
        made = [step_detail(reader, s["step"]) for s in step_lines(reader)
                if s["node"] == "fix" or (s["node"] == "design" and s["attempt"] == 1)]
    edited = 0
    for step in made:
        calls = [c for c in step["llm_calls"] if c["role"] in ("designer", "fixer")]
        asked = "## Answer with edits" in calls[0]["messages"][-1]["content"]
        if not asked:  # a draft: one whole-file request
            assert len(calls) == 1
            continue
        edited += 1
        assert len(calls) == 2 and calls[0]["reply"].strip() == BAD_DIFF.strip()
        second = calls[1]["messages"][-1]["content"]
        assert "## Answer with edits" not in second and "could not be used" in second and "WHOLE file" in second
        assert "```python" in calls[1]["reply"] and step["code"] and "NotInTheParent" not in step["code"]
        edit = (step.get("detail") or {}).get("edit")  # the engine records Design.edit / Fix.edit
        assert edit is not None and edit["fallback"] and not edit["blocks"][0]["applied"]
    assert edited >= 2  # the fixes of the planted faults and the improve step


@pytest.mark.sandbox
@pytest.mark.slow
def test_llm_run_exports_sft_and_pairs_as_strict_json_lines(llm_run: Path, tmp_path: Path) -> None:
    out, sft, prs = export(llm_run, tmp_path)
    assert out["ok"] and out["sft"]["records"] > 0 and out["pairs"]["records"] > 0
    records = strict_lines(sft)
    assert len(records) == out["sft"]["records"]
    by_attempt = {(r["candidate"], r["attempt"]): r for r in records}
    for r in records:
        assert set(r) == SFT_KEYS and set(r["scores"]) == SCORE_KEYS and r["verdict"] in VERDICTS
        check_messages(r["messages"])
        assert r["messages"][-1]["role"] == "assistant" and r["messages"][0]["role"] == "system"
        assert "```python" in r["messages"][-1]["content"]  # the reply that held the code (the fallback's, not
        assert "<<<<<<< SEARCH" not in r["messages"][-1]["content"]  # the edits that did not apply)
        assert r["role"] in ("designer", "fixer") and r["made_by"] in ("design", "fix")
        if r["verdict"] == "scored":
            assert isinstance(r["scores"]["bleu4"], float) and math.isfinite(r["scores"]["bleu4"])
            assert r["scores"]["bleu4_per_epoch"]
        else:
            assert r["scores"]["bleu4"] is None
        if r["verdict"] == "failed":
            assert r["category"] and r["stage"]
    assert {r["verdict"] for r in records} >= {"scored", "failed"}  # the planted faults failed, then were fixed
    assert any(r["role"] == "fixer" for r in records) and any(r["mode"] == "improve" for r in records)
    for p in strict_lines(prs):
        assert set(p) == PAIR_KEYS
        check_messages(p["prompt"])
        check_messages(p["rejected_prompt"])
        assert p["prompt"][-1]["role"] == "user" and isinstance(p["chosen"], str) and isinstance(p["rejected"], str)
        chosen, rejected = by_attempt[(p["chosen_candidate"], 1)], by_attempt[(p["rejected_candidate"], 1)]
        assert chosen["verdict"] == "scored" and chosen["parent"] == rejected["parent"] == p["parent"]
        assert chosen["messages"][-1]["content"] == p["chosen"] and rejected["messages"][-1]["content"] == p["rejected"]
        assert p["rejected_score"] is None or p["rejected_score"] < p["chosen_score"]
        assert (p["rejected_score"] is None) == (p["rejected_verdict"] == "failed")
    try:
        import datasets  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    loaded = datasets.load_dataset("json", data_files={"sft": str(sft), "pairs": str(prs)})
    assert loaded["sft"].num_rows == out["sft"]["records"] and loaded["pairs"].num_rows == out["pairs"]["records"]


@pytest.mark.sandbox
def test_baseline_run_exports_empty_files_with_a_note_and_replaces_links(real_run: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep me\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sft.jsonl").symlink_to(elsewhere)
    out, sft, prs = export(real_run, tmp_path)
    assert out["ok"] and out["sft"]["records"] == 0 and out["pairs"]["records"] == 0
    assert any("no LLM calls" in n for n in out["notes"])
    assert sft.read_text() == "" and prs.read_text() == "" and not sft.is_symlink()
    assert elsewhere.read_text() == "keep me\n"
    text = run_cli(["export", str(real_run), "--sft", str(sft)]).stdout
    assert "wrote 0 SFT example(s)" in text and "note: the run made no LLM calls" in text


def test_export_without_an_output_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(["export", str(tmp_path)], check=False, timeout=120)
    assert proc.returncode == 2 and "--sft" in proc.stderr + proc.stdout


def _example(cid: str, verdict: str, bleu4: float | None, parent: str | None = "c0001",
             role: str = "designer", attempt: int = 1) -> Example:
    prompt = [{"role": "user", "content": f"improve {parent}"}]
    record = {"candidate": cid, "verdict": verdict, "attempt": attempt, "parent": parent, "role": role,
              "category": "shape-error" if verdict == "failed" else None, "scores": {"bleu4": bleu4}}
    return Example(record=record, prompt=prompt, reply=f"reply of {cid}")


def test_pairs_rank_siblings_of_one_parent_and_role_only() -> None:
    made = pairs([_example("c0002", "scored", 0.2), _example("c0003", "scored", 0.1),
                  _example("c0004", "failed", None), _example("c0005", "scored", 0.2),  # a tie: no pair
                  _example("c0006", "duplicate", None), _example("c0007", "scored", 0.3, attempt=2),
                  _example("c0008", "scored", 0.05, parent="c0009"), _example("c0010", "failed", None, role="fixer")])
    got = {(p["chosen_candidate"], p["rejected_candidate"]) for p in made}
    assert got == {("c0002", "c0003"), ("c0002", "c0004"), ("c0003", "c0004"), ("c0005", "c0003"),
                   ("c0005", "c0004")}
    assert all(p["prompt"] == [{"role": "user", "content": "improve c0001"}] for p in made)
    many = pairs([_example(f"c{i:04d}", "scored", float(i)) for i in range(2, 40)])
    assert len(many) == MAX_PAIRS_PER_GROUP
