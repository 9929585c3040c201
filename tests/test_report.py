"""`nncaption report RUN_DIR` on a real run: Markdown + non-empty PNG plots that show the run's candidates."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from run_fixture import run_cli

from nncaption.inspection.report import md

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("bleu_per_candidate.png", "funnel.png", "bleu_per_epoch.png", "cost.png", "captions.png")


@pytest.mark.sandbox  # uses real_run
def test_report_markdown_and_plots(real_run: Path, tmp_path: Path) -> None:
    before = hashlib.sha256((real_run / "results.sqlite").read_bytes()).hexdigest()
    out = tmp_path / "report"
    data = json.loads(run_cli(["report", str(real_run), "--out", str(out), "--json"]).stdout)
    assert data["ok"] is True and Path(data["markdown"]) == out / "report.md"
    for name in PLOTS:
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5_000, name
    text = (out / "report.md").read_text(encoding="utf-8")
    db = sqlite3.connect(f"file:{real_run / 'results.sqlite'}?mode=ro", uri=True)
    cands = db.execute("SELECT cid, status, bleu4 FROM candidates ORDER BY idx").fetchall()
    best = db.execute("SELECT cid, bleu4 FROM candidates WHERE status='scored' ORDER BY bleu4 DESC, idx").fetchone()
    rejected = db.execute("SELECT COUNT(*) FROM verdicts WHERE ok=0").fetchone()[0]
    db.close()
    for cid, status, bleu4 in cands:
        row = next(line for line in text.splitlines() if line.startswith(f"| {cid} |"))
        assert f"| {status} |" in row and (bleu4 is None or f"{bleu4:.4f}" in row)
    assert f"Best candidate: **{best[0]}**" in text
    assert "COCO protocol" in text and "LEMUR-compatible" in text
    assert "- seeds: run seed 3, data seed 0" in text
    assert "- recorded split: dataset synthetic" in text and "n_val 16" in text and "dataset_key" in text
    assert data["funnel"]["designed"] == len(cands) and data["funnel"]["scored"] == sum(c[1] == "scored" for c in cands)
    assert rejected > 0 and "| rejected verdicts" in text  # the planted faults show up
    assert "## Captions of the best model" in text and "references from the dataset's private part" in text
    caption_rows = [line for line in text.split("## Captions of the best model")[1].splitlines()
                    if line.startswith("| 1")]
    assert caption_rows and all(len(line.split("|")) == 5 for line in caption_rows)
    assert hashlib.sha256((real_run / "results.sqlite").read_bytes()).hexdigest() == before


@pytest.mark.sandbox  # uses real_run
def test_report_default_folder_is_inside_the_run(real_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(real_run, copy, ignore=shutil.ignore_patterns("report"))
    assert not (copy / "report").exists()
    run_cli(["report", str(copy)])
    assert (copy / "report" / "report.md").is_file() and (copy / "report" / "funnel.png").stat().st_size > 0


def test_markdown_cells_neutralise_hostile_text() -> None:
    cell = md("a|b <script>x</script>\x1b[2J\nnext `code`")
    assert "|" not in cell.replace("\\|", "") and "<script>" not in cell and "\x1b" not in cell and "\n" not in cell
