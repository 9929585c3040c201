"""evals/llm_vs_random and evals/snippets_5_vs_10 end to end against the offline endpoint with a tiny budget.

Real search runs (graph, local sandbox, real training of a few batches), real HTTP to
the offline composer on 127.0.0.1; each suite ends in comparison.md/.csv, runs.csv and
a PNG. The arms must really differ: the LLM arm spends tokens, the baseline none; the
10-snippet prompts are longer than the 5-snippet ones for the same seed.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from run_fixture import prepare_tiny

from nncaption.evals.suite import bootstrap_ci

TINY = ["--candidates", "1", "--epochs", "1", "--max-train-batches", "1", "--max-val-images", "8", "--threads", "1",
        "--max-fix-rounds", "1", "--offline", "--json"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("evals-data"))


def run_suite(module: str, out: Path, prepared: Path, seeds: str, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", f"nncaption.evals.{module}", "--out", str(out), "--seeds", seeds,
                           "--prepared", str(prepared), *TINY, *extra], capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["ok"] is True
    for name in ("comparison.md", "comparison.csv", "runs.csv"):
        assert (out / name).stat().st_size > 0
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    return data


def tokens_of(run_dir: str) -> int:
    db = sqlite3.connect(f"file:{Path(run_dir) / 'results.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COALESCE(SUM(total_tokens), 0) FROM llm_calls").fetchone()[0])
    finally:
        db.close()


def design_prompt_chars(run_dir: str) -> int:
    db = sqlite3.connect(f"file:{Path(run_dir) / 'results.sqlite'}?mode=ro", uri=True)
    try:
        ref = db.execute("SELECT messages_ref FROM llm_calls WHERE role='designer' ORDER BY id LIMIT 1").fetchone()[0]
    finally:
        db.close()
    return len((Path(run_dir) / "blobs" / ref[:2] / ref).read_text(encoding="utf-8"))


@pytest.mark.sandbox
@pytest.mark.slow
def test_llm_vs_random_end_to_end(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "llm_vs_random"
    data = run_suite("llm_vs_random", out, prepared, "0,1", "--share-jobs")
    assert [a["arm"] for a in data["arms"]] == ["llm", "random"]
    assert all(a["runs"] == 2 for a in data["arms"])
    for arm in data["arms"]:
        for metric in ("statically valid", "smoke-passed", "trained", "scored", "best BLEU-4"):
            v = arm[metric]
            assert v["ci_low"] <= v["mean"] <= v["ci_high"]
    runs = {(r["arm"], r["seed"]): r for r in data["runs"]}
    assert len(runs) == 4 and all(r["status"] == "finished" for r in runs.values())
    assert tokens_of(runs[("llm", 0)]["run_dir"]) > 0 and tokens_of(runs[("random", 0)]["run_dir"]) == 0
    with open(out / "comparison.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == ["llm", "random"] and "best BLEU-4 mean" in rows[0]
    text = (out / "comparison.md").read_text(encoding="utf-8")
    assert "| llm | 2 (seeds 0,1) |" in text and "| random | 2 (seeds 0,1) |" in text and "bootstrap" in text


@pytest.mark.sandbox
@pytest.mark.slow
def test_snippets_5_vs_10_end_to_end(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "snippets"
    data = run_suite("snippets_5_vs_10", out, prepared, "0", "--share-jobs")
    assert [a["arm"] for a in data["arms"]] == ["snippets-5", "snippets-10"]
    runs = {r["arm"]: r for r in data["runs"]}
    assert design_prompt_chars(runs["snippets-10"]["run_dir"]) > design_prompt_chars(runs["snippets-5"]["run_dir"])
    assert "snippets-10" in (out / "comparison.md").read_text(encoding="utf-8")


def test_suite_help_runs_from_the_cli() -> None:
    for module in ("snippets_5_vs_10", "llm_vs_random"):
        proc = subprocess.run([sys.executable, "-m", f"nncaption.evals.{module}", "--help"], capture_output=True,
                              text=True, timeout=120, check=True)
        assert "--llm-base-url" in proc.stdout and "--seeds" in proc.stdout and "--offline" in proc.stdout


def test_bootstrap_ci() -> None:
    mean, lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4])
    assert mean == pytest.approx(0.25) and 0.1 <= lo < mean < hi <= 0.4
    assert bootstrap_ci([0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([1.0, 2.0, 3.0], seed=1) == bootstrap_ci([1.0, 2.0, 3.0], seed=1)
