"""End to end through a real LiteLLM proxy (users put LiteLLM in front of vLLM).

The test starts `litellm` on loopback in front of the offline composer (an
OpenAI-compatible endpoint, NOT an LLM) and runs `nncaption llm design` through it.
LiteLLM is kept off the network: its model cost map is the local copy, telemetry is
off, and every address it is given is loopback. The proxy requires a master key, sent
from the variable named by --llm-api-key-env (OPENAI_API_KEY holds a wrong key, which
must not be the one sent). Skipped only when the `litellm` package is not installed
(it is in the dev extra: pip install 'litellm[proxy]').
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.offline_server import MODEL_ID, OfflineComposerServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MASTER_KEY = "sk-litellm-test-master-key"
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
               "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True", "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "no_proxy": "*"}


def litellm_executable() -> str | None:
    beside = Path(sys.executable).parent / "litellm"
    if beside.is_file():
        return str(beside)
    return shutil.which("litellm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_alive(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"litellm exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"litellm did not answer {url} in {timeout_s:g} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def litellm_proxy(tmp_path: Path) -> Iterator[tuple[str, OfflineComposerServer]]:
    """The base URL of a LiteLLM proxy (model name "r1") in front of an in-process offline composer."""
    try:
        import litellm  # noqa: F401
    except ImportError:
        pytest.skip("litellm is not installed (pip install 'litellm[proxy]'; it is in the dev extra)")
    exe = litellm_executable()
    if exe is None:
        pytest.skip("the litellm package has no `litellm` command here (install 'litellm[proxy]')")
    with OfflineComposerServer(seed=2) as composer:
        port = _free_port()
        cfg = tmp_path / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            "  - model_name: r1\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL_ID}\n"
            f"      api_base: {composer.base_url}\n"
            "      api_key: EMPTY\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n")
        log = tmp_path / "litellm.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **OFFLINE_ENV})
        try:
            _wait_alive(f"http://127.0.0.1:{port}/health/liveliness", proc, log)
            yield f"http://127.0.0.1:{port}/v1", composer
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def test_llm_design_through_a_litellm_proxy(litellm_proxy: tuple[str, OfflineComposerServer], tiny_dataset: Any,
                                            tmp_path: Path) -> None:
    base_url, composer = litellm_proxy
    out = tmp_path / "designed.py"
    env = {**os.environ, "LITELLM_KEY": MASTER_KEY, "OPENAI_API_KEY": "sk-wrong-key-must-not-be-sent"}
    proc = subprocess.run(
        [sys.executable, "-m", "nncaption.cli", "llm", "design", "--out", str(out), "--data-dir",
         str(tiny_dataset.public_dir), "--k", "2", "--llm-base-url", base_url, "--llm-model", "r1",
         "--llm-api-key-env", "LITELLM_KEY", "--llm-record", str(tmp_path / "rec.jsonl"), "--json"],
        capture_output=True, text=True, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["model_returned"] == "r1" and report["prm"]["lr"] > 0
    assert "class Net" in out.read_text() and composer.requests_served >= 1
    assert MASTER_KEY not in (tmp_path / "rec.jsonl").read_text()  # the recording holds no key

    # without the key, the proxy refuses: the run's key reached LiteLLM only through the named variable
    env.pop("LITELLM_KEY")
    refused = subprocess.run(
        [sys.executable, "-m", "nncaption.cli", "llm", "design", "--out", str(tmp_path / "x.py"), "--data-dir",
         str(tiny_dataset.public_dir), "--k", "2", "--llm-base-url", base_url, "--llm-model", "r1", "--json"],
        capture_output=True, text=True, timeout=240, env=env, check=False)
    assert refused.returncode != 0 and not (tmp_path / "x.py").exists()
    assert "sk-wrong-key" not in refused.stdout + refused.stderr
