"""`nncaption llm serve-vllm MODEL`: start vLLM's OpenAI-compatible server with the right flags.

R1-style models (DeepSeek-R1 and its distills, QwQ) need `--reasoning-parser
deepseek_r1` so that the thinking arrives in `message.reasoning` instead of the
content; Qwen3 models use `qwen3`. The launcher waits until `/health` answers,
keeps the server in the foreground, and stops it on exit (SIGTERM to its process
group, SIGKILL after a grace period). vLLM is an optional extra (`nn-caption[vllm]`)
and needs a GPU (0.9 or later: `--reasoning-parser` without the old
`--enable-reasoning`).

The context is capped (`--max-model-len`, default 32768): without it vLLM takes the
model's full 131072 tokens, whose KV cache (about 18 GiB for Qwen3-8B) does not fit
beside the ~16 GB of bf16 weights on a 24 GB card. `--max-num-seqs` defaults to the
run's concurrency, since that many requests are in flight at once.
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
DEFAULT_MAX_MODEL_LEN = 32768


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
    max_model_len: int | None = DEFAULT_MAX_MODEL_LEN,
    served_model_name: str | None = None,
    gpu_memory_utilization: float | None = None,
    max_num_seqs: int | None = None,
    extra: Sequence[str] | str = (),
    executable: str = "vllm",
) -> list[str]:
    """The argv of `vllm serve` for `model` (reasoning parser chosen from the name when AUTO).

    `max_model_len` None or 0 leaves vLLM's own default (the model's full context).
    """
    cmd = [executable, "serve", model, "--host", host, "--port", str(port)]
    parser = reasoning_parser_for(model) if reasoning_parser == AUTO else reasoning_parser
    if parser and parser.lower() != "none":
        cmd += ["--reasoning-parser", parser]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if max_num_seqs:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    cmd += shlex.split(extra) if isinstance(extra, str) else list(extra)
    return cmd


def url_host(host: str) -> str:
    """`host` as it goes in a URL: IPv6 addresses in brackets ([::1]), names and IPv4 as they are."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host` (a wildcard means loopback)."""
    bare = host.strip().strip("[]")
    if bare in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bare == "::":
        return "::1"
    return bare


def health_url(host: str, port: int) -> str:
    """The /health URL of a server listening on `host`:`port` (http://[::1]:8000/health for IPv6)."""
    return f"http://{url_host(connect_host(host))}:{port}/health"


def base_url(host: str, port: int) -> str:
    """The OpenAI-compatible base URL of a server listening on `host`:`port`."""
    return f"http://{url_host(connect_host(host))}:{port}/v1"


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
