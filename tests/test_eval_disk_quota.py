"""`nncaption eval-model` of a candidate that fills the disk: it fails with a category, and the host keeps at most
the job's quota (issue 8: a job can no longer leave gigabytes behind)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tiny_candidates import tiny_candidate

from nncaption.cli import main

FILL = '''    def learn(self, train_data):
        chunk = b"\\0" * (16 << 20)
        for i in range(5):  # 2 GiB in 400 MiB files, in the job's working directory
            with open(f"fill-{i}.bin", "wb") as f:
                for _ in range(25):
                    f.write(chunk)
'''


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


@pytest.mark.sandbox
def test_eval_model_of_a_disk_filler_fails_and_leaves_under_the_quota(
    capsys: pytest.CaptureFixture[str], tiny_dataset: Any, tmp_path: Path, nncaption_home: Path
) -> None:
    source = tiny_candidate()
    assert "    def learn(self, train_data):\n" in source
    path = tmp_path / "disk_filler.py"
    path.write_text(source.replace("    def learn(self, train_data):\n", FILL, 1))
    before = _tree_bytes(nncaption_home)
    code = main(["eval-model", str(path), "--prepared", str(tiny_dataset.root), "--epochs", "1",
                 "--max-train-batches", "1", "--max-val-images", "8", "--threads", "1", "--no-reuse", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"not strict JSON: {name}"))
    assert code == 1 and out["status"] != "ok" and out["category"], out
    assert out["stage"] == "smoke" and "No space left" in out["message"], out  # the quota stopped it, nothing else
    assert out["bleu4"] is None
    grown = _tree_bytes(nncaption_home) - before
    assert grown < 1024 << 20, f"the host kept {grown / 2**20:.0f} MiB after the job"
    assert not list(nncaption_home.rglob("fill-*.bin"))
