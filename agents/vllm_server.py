"""`nncaption llm serve-vllm MODEL`: start vLLM's OpenAI-compatible server with the right flags.

R1-style models (DeepSeek-R1 and its distills, QwQ) need `--reasoning-parser
deepseek_r1` so that the thinking arrives in `message.reasoning` instead of the
content; Qwen3 models use `qwen3`. The launcher waits until `/health` answers,
keeps the server in the foreground, and stops it on exit (SIGTERM to its process
group, SIGKILL after a grace period). vLLM is an optional extra (`nn-caption[vllm]`)
and needs a GPU.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from nncaption.agents.errors import EndpointUnavailable, VLLMNotInstalled

AUTO = "auto"


def reasoning_parser_for(model: str) -> str | None:
    """vLLM's reasoning parser for a model name (None when it is not a known reasoning model)."""
    name = model.lower()
    if re.search(r"(^|[-_/])r1($|[-_])", name) or "qwq" in name:
        return "deepseek_r1"
    if "qwen3" in name:
        return "qwen3"
    return None


def find_vllm() -> str:
    """Path of the `vllm` executable: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "vllm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("vllm")
    if found:
        return found
    raise VLLMNotInstalled("vLLM is not installed: no `vllm` executable beside this Python or on PATH")


def vllm_command(
    model: str,
    port: int = 8000,
    host: str = "127.0.0.1",
    *,
    reasoning_parser: str | None = AUTO,
    max_model_len: int | None = None,
    served_model_name: str | None = None,
    extra: Sequence[str] | str = (),
    executable: str = "vllm",
) -> list[str]:
    """The argv of `vllm serve` for `model` (reasoning parser chosen from the name when AUTO)."""
    cmd = [executable, "serve", model, "--host", host, "--port", str(port)]
    parser = reasoning_parser_for(model) if reasoning_parser == AUTO else reasoning_parser
    if parser and parser.lower() != "none":
        cmd += ["--reasoning-parser", parser]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    cmd += shlex.split(extra) if isinstance(extra, str) else list(extra)
    return cmd


def health_url(host: str, port: int) -> str:
    connect = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{connect}:{port}/health"


class VLLMProcess:
    """A running `vllm serve`: start, wait for /health, stop (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], url: str) -> None:
        self.argv = argv
        self.health = url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VLLMProcess:
        # Own session, so that stopping reaches vLLM's worker processes too.
        self.proc = subprocess.Popen(self.argv, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 1800.0, poll_s: float = 2.0) -> None:
        """Block until /health answers 200; EndpointUnavailable if vLLM exits or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise EndpointUnavailable(f"vllm serve exited with status {code} before it was ready",
                                          "read vLLM's output above (out of GPU memory? unknown model?).")
            try:
                with urllib.request.urlopen(self.health, timeout=min(poll_s, 5.0)) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(poll_s)
        self.stop()
        raise EndpointUnavailable(f"vllm serve did not answer {self.health} within {timeout_s:g} s",
                                  "large models take minutes to load: raise --health-timeout.")

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM the process group, SIGKILL after `grace_s`; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        pgid = self.proc.pid  # the leader of its own session
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                return self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    def __enter__(self) -> VLLMProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
