"""The start-up probe stops `nncaption run` before its first candidate: a wrong model name (exit 2, naming the
served models), a refused key (exit 2), an endpoint that does not answer (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from llm_emulator import Emulator

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


def run(tiny_dataset: Any, tmp_path: Path, base_url: str, model: str, *extra: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[agents]\nkind = "llm"\n[agents.llm.shared]\nbase_url = "{base_url}"\nmodel = "{model}"\n'
                   + "".join(extra))
    return subprocess.run([sys.executable, "-m", "nncaption.cli", "run", "--prepared", str(tiny_dataset.root),
                           "--run-dir", str(tmp_path / "run"), "--config", str(cfg), "--candidates", "2",
                           "--no-live"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})})


def test_a_wrong_model_name_stops_the_run_before_any_candidate(tiny_dataset: Any, tmp_path: Path) -> None:
    with Emulator("vllm", models=("Qwen/Qwen3-8B", "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B")) as emu:
        out = run(tiny_dataset, tmp_path, emu.base_url, "deepseek-r1")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "deepseek-r1" in out.stderr and "Qwen/Qwen3-8B" in out.stderr and "Traceback" not in out.stderr
    assert emu.bodies == [], "no chat request was made"


def test_a_refused_key_stops_the_run_before_any_candidate(tiny_dataset: Any, tmp_path: Path) -> None:
    with Emulator("vllm", models=("m",), api_key="right") as emu:
        out = run(tiny_dataset, tmp_path, emu.base_url, "m", 'api_key_env = "H1_TEST_KEY"\n',
                  env={"H1_TEST_KEY": "sk-h1-not-the-key"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "401" in out.stderr and "H1_TEST_KEY" in out.stderr and "sk-h1-not-the-key" not in out.stderr
    assert emu.bodies == []
