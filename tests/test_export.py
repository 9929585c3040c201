"""`nncaption export RUN_DIR --lemur OUT_DIR` on a real run: LEMUR's layout, names, keys, and `nncaption check`."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from run_fixture import run_cli

LEMUR_KEYS = {"accuracy", "batch", "duration", "lr", "momentum", "transform", "uid"}


pytestmark = pytest.mark.sandbox  # every test here uses real_run (a real search run, tests/conftest.py)


def test_export_lemur_layout(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "lemur"
    data = json.loads(run_cli(["export", str(real_run), "--lemur", str(out), "--json"]).stdout)
    db = sqlite3.connect(f"file:{real_run / 'results.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    scored = {r["cid"]: dict(r) for r in db.execute("SELECT * FROM candidates WHERE status='scored'")}
    epochs = {cid: [dict(e) for e in db.execute("SELECT * FROM epochs WHERE cid=? ORDER BY epoch", (cid,))]
              for cid in scored}
    db.close()
    assert scored and {m["cid"] for m in data["models"]} == set(scored)
    for m in data["models"]:
        model_file = Path(m["model_file"])
        code = model_file.read_text(encoding="utf-8")
        uid = hashlib.md5(re.sub(r"\s", "", code).encode()).hexdigest()
        assert model_file.parent == out / "ab" / "nn" / "nn" and model_file.name == f"nncap-{uid}.py"
        ast.parse(code)
        stat_dir = out / "ab" / "nn" / "stat" / "train" / f"img-captioning_coco_bleu_nncap-{uid}"
        files = sorted(stat_dir.glob("*.json"))
        assert [f.name for f in files] == [f"{e['epoch']}.json" for e in epochs[m["cid"]]]
        for f, e in zip(files, epochs[m["cid"]], strict=True):
            [record] = json.loads(f.read_text())
            assert LEMUR_KEYS <= set(record) and record["uid"] == uid
            assert record["bleu4_coco"] == e["bleu4"] and isinstance(record["duration"], int)
        last = json.loads(files[-1].read_text())[0]
        assert last["accuracy"] == pytest.approx(scored[m["cid"]]["lemur_bleu4"])  # LEMUR's metric in accuracy
        assert last["bleu4_coco"] == scored[m["cid"]]["bleu4"]


def test_exported_model_passes_check(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "lemur"
    data = json.loads(run_cli(["export", str(real_run), "--lemur", str(out), "--json"]).stdout)
    config = json.loads((real_run / "config.json").read_text())
    prepared = config["data"]["prepared"]
    model = data["models"][0]["model_file"]
    proc = run_cli(["check", model, "--prepared", prepared, "--threads", "1", "--json"], timeout=600)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is True


def test_export_never_writes_through_links_in_out(real_run: Path, tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "lemur", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "ab").symlink_to(elsewhere, target_is_directory=True)  # planted in the output folder
    proc = run_cli(["export", str(real_run), "--lemur", str(out), "--json"], check=False)
    assert proc.returncode == 2 and json.loads(proc.stdout)["category"] == "run-dir", proc.stdout
    assert list(elsewhere.iterdir()) == []
    (out / "ab").unlink()
    data = json.loads(run_cli(["export", str(real_run), "--lemur", str(out), "--json"]).stdout)
    model = Path(data["models"][0]["model_file"])
    target = tmp_path / "target.py"
    target.write_text("ORIGINAL\n")
    model.unlink()
    model.symlink_to(target)  # a link where a model file goes: replaced, not followed
    run_cli(["export", str(real_run), "--lemur", str(out)])
    assert target.read_text() == "ORIGINAL\n" and not model.is_symlink() and "class Net" in model.read_text()
