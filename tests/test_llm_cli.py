"""`nncaption llm ...`: the vLLM command line, its lifecycle (with a stand-in executable), and the
offline / replay servers run as real CLI processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.errors import EndpointUnavailable, VLLMNotInstalled
from nncaption.agents.vllm_server import VLLMProcess, find_vllm, reasoning_parser_for, vllm_command

pytestmark = pytest.mark.timeout(120)

R1 = "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"


# ------------------------------------------------------------------ the command it builds


def test_vllm_command_for_the_reference_generator() -> None:
    assert vllm_command(R1, 8001) == ["vllm", "serve", R1, "--host", "127.0.0.1", "--port", "8001",
                                      "--reasoning-parser", "deepseek_r1", "--max-model-len", "32768"]
    assert "--max-model-len" not in vllm_command(R1, max_model_len=0)  # vLLM's own default


def _serve_vllm_argv(*flags: str) -> list[str]:
    from nncaption.cli import build_parser
    from nncaption.cmd_llm import serve_vllm_argv

    return serve_vllm_argv(build_parser().parse_args(["llm", "serve-vllm", R1, *flags]))


def test_serve_vllm_flags_become_vllm_arguments() -> None:
    assert _serve_vllm_argv() == ["vllm", "serve", R1, "--host", "127.0.0.1", "--port", "8000",
                                  "--reasoning-parser", "deepseek_r1", "--max-model-len", "32768"]
    argv = _serve_vllm_argv("--host", "::", "--port", "8011", "--max-model-len", "16384",
                            "--gpu-memory-utilization", "0.85", "--concurrency", "6", "--served-model-name", "r1")
    assert argv == ["vllm", "serve", R1, "--host", "::", "--port", "8011", "--reasoning-parser", "deepseek_r1",
                    "--max-model-len", "16384", "--gpu-memory-utilization", "0.85", "--max-num-seqs", "6",
                    "--served-model-name", "r1"]
    assert _serve_vllm_argv("--concurrency", "6", "--max-num-seqs", "3")[-2:] == ["--max-num-seqs", "3"]
    assert _serve_vllm_argv("--host", "[::1]")[3:5] == ["--host", "::1"]


@pytest.mark.parametrize("flags,needle", [
    (("--gpu-memory-utilization", "1.5"), "outside (0, 1]"),
    (("--max-num-seqs", "0"), "at least 1"),
    (("--max-model-len", "-1"), "negative"),
])
def test_serve_vllm_bad_flags_are_usage_errors(flags: tuple[str, ...], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.cli import main

    assert main(["llm", "serve-vllm", R1, *flags]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("host,health,base", [
    ("127.0.0.1", "http://127.0.0.1:8000/health", "http://127.0.0.1:8000/v1"),
    ("0.0.0.0", "http://127.0.0.1:8000/health", "http://127.0.0.1:8000/v1"),
    ("::1", "http://[::1]:8000/health", "http://[::1]:8000/v1"),
    ("[::1]", "http://[::1]:8000/health", "http://[::1]:8000/v1"),
    ("::", "http://[::1]:8000/health", "http://[::1]:8000/v1"),
    ("fe80::1", "http://[fe80::1]:8000/health", "http://[fe80::1]:8000/v1"),
    ("gpu-box", "http://gpu-box:8000/health", "http://gpu-box:8000/v1"),
])
def test_urls_bracket_ipv6_hosts(host: str, health: str, base: str) -> None:
    from nncaption.agents.vllm_server import base_url, health_url

    assert (health_url(host, 8000), base_url(host, 8000)) == (health, base)


@pytest.mark.parametrize("model,parser", [
    (R1, "deepseek_r1"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "deepseek_r1"),
    ("Qwen/QwQ-32B", "deepseek_r1"),
    ("Qwen/Qwen3-8B", "qwen3"),
    ("meta-llama/Llama-3.1-8B-Instruct", None),
    ("someone/r1chat", None),
])
def test_reasoning_parser_from_the_model_name(model: str, parser: str | None) -> None:
    assert reasoning_parser_for(model) == parser
    cmd = vllm_command(model)
    assert ("--reasoning-parser" in cmd) is (parser is not None)


def test_vllm_command_options() -> None:
    cmd = vllm_command("m/x", 9000, "0.0.0.0", reasoning_parser="none", max_model_len=32768,
                       served_model_name="gen", extra="--gpu-memory-utilization 0.85 --enforce-eager",
                       executable="/opt/vllm")
    assert cmd == ["/opt/vllm", "serve", "m/x", "--host", "0.0.0.0", "--port", "9000", "--max-model-len", "32768",
                   "--served-model-name", "gen", "--gpu-memory-utilization", "0.85", "--enforce-eager"]
    assert vllm_command("llama", reasoning_parser="deepseek_r1")[-4:-2] == ["--reasoning-parser", "deepseek_r1"]


def test_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VLLMNotInstalled) as ei:
        find_vllm()
    assert "nn-caption[vllm]" in ei.value.hint
    from nncaption.cli import main

    assert main(["llm", "serve-vllm", R1]) == 1
    err = capsys.readouterr().err
    assert "vllm-not-installed" in err and "pip install" in err


# ------------------------------------------------------------------ lifecycle with a stand-in vllm

FAKE_VLLM = textwrap.dedent('''\
    #!{python}
    """Stand-in for `vllm serve`: answers /health after a short load; SIGTERM handling per $FAKE_MODE."""
    import http.server, os, signal, socket, sys, time
    argv = sys.argv[1:]
    assert argv[0] == "serve", argv
    port = int(argv[argv.index("--port") + 1])
    mode = os.environ.get("FAKE_MODE", "normal")
    open(os.environ["FAKE_PIDFILE"], "w").write(str(os.getpid()))
    if mode == "crash":
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    time.sleep(0.3)  # "loading weights"
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *a):
            pass
    host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    class S(http.server.HTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    S((host, port), H).serve_forever()
''')


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir()
    exe.write_text(FAKE_VLLM.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
@pytest.mark.parametrize("mode", ["normal", "stubborn"])
def test_vllm_process_waits_for_health_and_stops(fake_vllm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 mode: str) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    monkeypatch.setenv("FAKE_MODE", mode)
    port = free_port()
    proc = VLLMProcess(vllm_command(R1, port, executable=str(fake_vllm)), f"http://127.0.0.1:{port}/health")
    proc.start()
    try:
        proc.wait_ready(timeout_s=30, poll_s=0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200
    finally:
        t0 = time.monotonic()
        code = proc.stop(grace_s=0.5)
    pid = int(pidfile.read_text())
    assert not alive(pid)
    if mode == "normal":
        assert code == 0
    else:  # ignored SIGTERM: killed after the grace period
        assert code == -signal.SIGKILL and time.monotonic() - t0 >= 0.5


def test_vllm_exiting_early_is_reported(fake_vllm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PIDFILE", str(tmp_path / "pid"))
    monkeypatch.setenv("FAKE_MODE", "crash")
    port = free_port()
    with VLLMProcess(vllm_command(R1, port, executable=str(fake_vllm)), f"http://127.0.0.1:{port}/health") as p:
        with pytest.raises(EndpointUnavailable, match="status 3"):
            p.wait_ready(timeout_s=30, poll_s=0.1)


# ------------------------------------------------------------------ the CLI as real processes


def start_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, str]:
    """Start `nncaption ARGS`, wait for its 'serving at'/'ready at' URL line; returns (process, URL, output so far)."""
    proc = subprocess.Popen([sys.executable, "-m", "nncaption.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"(?:serving|ready) at (http://\S+/v1)", line)
        if m:
            return proc, m.group(1), "".join(seen)
    proc.kill()
    raise AssertionError("no URL line from the CLI:\n" + "".join(seen))


@pytest.fixture
def cli_procs() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def stop_cli(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_cli_offline_then_replay(tmp_path: Path, cli_procs: list[subprocess.Popen[str]]) -> None:
    from nncaption.agents.client import LLMClient, run_sync
    from nncaption.agents.settings import LLMSettings

    messages = [{"role": "user", "content": "Write an image captioning model in PyTorch."}]
    record = tmp_path / "rec.jsonl"
    proc, url, banner = start_cli(["llm", "offline", "--port", "0", "--seed", "5"])
    assert "NOT an LLM" in banner
    cli_procs.append(proc)
    with urllib.request.urlopen(url + "/models", timeout=10) as r:
        assert json.load(r)["data"][0]["id"] == "nncaption-offline-composer"
    c = LLMClient(LLMSettings.single(url, "any"), record_path=record)
    ex = run_sync(c.chat("designer", messages), c)
    assert "class Net" in ex.reply and "SUMMARY:" in ex.reply  # unknown role -> designer
    assert ex.model_returned == "nncaption-offline-composer" and ex.reply.startswith("Baseline trace (")
    code, out = stop_cli(proc)
    assert code == 0 and "stopped" in out

    proc, url, banner = start_cli(["llm", "replay", str(record), "--port", "0"])
    assert "1 recorded replies" in banner
    cli_procs.append(proc)
    c = LLMClient(LLMSettings.single(url, "any"))
    again = run_sync(c.chat("designer", messages), c)
    assert (again.reply, again.reasoning, again.response_id) == (ex.reply, ex.reasoning, ex.response_id)
    code, out = stop_cli(proc)
    assert code == 0 and "stopped" in out


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_cli_serve_vllm_with_stand_in(fake_vllm: Path, tmp_path: Path, cli_procs: list[subprocess.Popen[str]]) -> None:
    pidfile = tmp_path / "pid"
    port = free_port()
    env = {"PATH": f"{fake_vllm.parent}:{os.environ.get('PATH', '')}", "FAKE_PIDFILE": str(pidfile)}
    if (Path(sys.executable).parent / "vllm").exists():  # pragma: no cover - a real vLLM beside this Python
        pytest.skip("a real vllm is installed beside this Python")
    proc, url, started = start_cli(["llm", "serve-vllm", R1, "--port", str(port)], env)
    assert "--reasoning-parser deepseek_r1" in started
    cli_procs.append(proc)
    assert url == f"http://127.0.0.1:{port}/v1"
    vllm_pid = int(pidfile.read_text())
    assert alive(vllm_pid)
    code, out = stop_cli(proc)
    assert code == 0 and "stopping vLLM" in out
    assert not alive(vllm_pid)  # stopped on exit


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_cli_serve_vllm_on_ipv6_loopback(fake_vllm: Path, tmp_path: Path,
                                        cli_procs: list[subprocess.Popen[str]]) -> None:
    if (Path(sys.executable).parent / "vllm").exists():  # pragma: no cover - a real vLLM beside this Python
        pytest.skip("a real vllm is installed beside this Python")
    port = free_port()
    env = {"PATH": f"{fake_vllm.parent}:{os.environ.get('PATH', '')}", "FAKE_PIDFILE": str(tmp_path / "pid")}
    proc, url, started = start_cli(["llm", "serve-vllm", R1, "--host", "::1", "--port", str(port),
                                    "--served-model-name", "r1"], env)
    cli_procs.append(proc)
    assert url == f"http://[::1]:{port}/v1"  # /health was reached at http://[::1]:PORT/health
    assert "--max-model-len 32768" in started and "--served-model-name r1" in started
    with urllib.request.urlopen(f"http://[::1]:{port}/health", timeout=5) as r:
        assert r.status == 200
    code, _ = stop_cli(proc)
    assert code == 0


@pytest.mark.sandbox
def test_cli_design_writes_a_candidate_that_check_accepts(tiny_dataset: object, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from candidate_check import check_code

    from nncaption.agents.offline_server import OfflineComposerServer
    from nncaption.cli import main

    out = tmp_path / "designed.py"
    record = tmp_path / "design.jsonl"
    public = tiny_dataset.public_dir  # type: ignore[attr-defined]
    with OfflineComposerServer(seed=4) as srv:
        rc = main(["llm", "design", "--out", str(out), "--data-dir", str(public), "--k", "10",
                   "--decoder", "transformer", "--llm-base-url", srv.base_url, "--llm-record", str(record),
                   "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["out"] == str(out) and len(report["snippets"]) == 10
    assert report["prompt_tokens"] > 0 and "Transformer" in report["summary"]
    assert report["model_returned"] == "nncaption-offline-composer" and report["prm"]["lr"] > 0
    assert len(record.read_text().splitlines()) == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        verdict = check_code(out.read_text(), public, tmp_path / "copy", prm=report["prm"], time_limit_s=60)
    finally:
        torch.set_num_threads(threads)
    assert verdict.ok, verdict.message
    # and the user-facing command accepts it too (static, then smoke in the local sandbox)
    prepared = Path(public).parent
    rc = main(["check", str(out), "--prepared", str(prepared), "--json"])
    checked = json.loads(capsys.readouterr().out)
    assert rc == 0 and checked["ok"] is True and checked["stage"] == "smoke", checked


def test_cli_llm_config_file_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from nncaption.cmd_llm import add_llm_options, llm_settings_from_args
    from nncaption.netapi.errors import ConfigError

    cfg = tmp_path / "llm.json"
    cfg.write_text(json.dumps({"shared": {"model": "a", "timeout_s": 5}, "reviewer": {"model": "small"},
                               "max_concurrency": 3}))
    p = argparse.ArgumentParser()
    add_llm_options(p)
    s = llm_settings_from_args(p.parse_args(["--llm-config", str(cfg), "--llm-model", "b",
                                             "--llm-base-url", "http://h:1/v1"]))
    assert (s.shared.model, s.shared.base_url, s.shared.timeout_s) == ("b", "http://h:1/v1", 5)
    assert s.for_role("reviewer").model == "small" and s.max_concurrency == 3
    cfg.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        llm_settings_from_args(p.parse_args(["--llm-config", str(cfg)]))
    with pytest.raises(ConfigError, match="timeout_s"):
        llm_settings_from_args(p.parse_args(["--llm-timeout", "-1"]))


# ------------------------------------------------------------------ what a new user hit


def test_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.cli import main

    for cmd in (["llm", "offline", "--port", "70000"], ["llm", "replay", "x.jsonl", "--port", "-1"],
                ["llm", "serve-vllm", R1, "--port", "99999"]):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert "error [usage]" in err and "out of range" in err and "0 to let the system pick" in err
        assert "Traceback" not in err and "internal" not in err


def test_port_already_in_use_is_reported_with_a_next_step(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from nncaption.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for cmd in (["llm", "offline", "--port", str(port)], ["llm", "serve-vllm", R1, "--port", str(port)]):
            assert main(cmd) == 2, cmd
            err = capsys.readouterr().err
            assert "error [environment]" in err and f"127.0.0.1:{port} is already in use" in err
            assert "choose another --port" in err and "Traceback" not in err


def test_design_out_pointing_at_a_folder_is_refused_before_the_llm_call(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_servers import ScriptedServer, ok

    from nncaption.cli import main

    with ScriptedServer([ok("unused")]) as srv:
        rc = main(["llm", "design", "--out", str(tmp_path), "--data-dir", str(tmp_path / "nowhere"),
                   "--llm-base-url", srv.base_url, "--json"])
    captured = capsys.readouterr()
    assert rc == 2 and srv.bodies == []  # no LLM call was made (nor any data work)
    report = json.loads(captured.out)  # exactly one strict JSON object
    assert report["ok"] is False and report["category"] == "usage" and "is a folder" in report["message"]
    assert "candidate.py" in report["hint"]


def test_endpoint_url_without_a_scheme_fails_fast_with_one_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.cli import main

    t0 = time.monotonic()
    rc = main(["llm", "design", "--out", str(tmp_path / "c.py"), "--data-dir", str(tmp_path),
               "--llm-base-url", "127.0.0.1:8000/v1", "--json"])
    captured = capsys.readouterr()
    assert rc != 0 and time.monotonic() - t0 < 5  # no retries, no backoff, no data work
    report = json.loads(captured.out)
    assert report["category"] == "config" and "http://" in report["message"] and "base_url" in report["message"]
    assert captured.err.count("127.0.0.1:8000/v1") <= 2 and "retrying" not in captured.err


def test_an_html_error_page_is_reported_once_and_briefly(tiny_dataset: Any, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from llm_servers import ScriptedServer

    from nncaption.agents.http_server import Reply
    from nncaption.cli import main

    page = ("<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
            "</h1></center><hr><center>nginx/1.25.3</center>" + "<p>padding</p>" * 200 + "</body></html>")

    def html(body: dict[str, Any], server: ScriptedServer) -> Reply:
        return Reply(404, page.encode(), {"Content-Type": "text/html"})  # a 5xx page would be retried (proxy)

    public = tiny_dataset.public_dir
    with ScriptedServer(html) as srv:
        rc = main(["llm", "design", "--out", str(tmp_path / "c.py"), "--data-dir", str(public),
                   "--llm-base-url", srv.base_url])
    err = capsys.readouterr().err
    assert rc == 1 and len(srv.bodies) == 1  # a non-OpenAI server is not retried
    assert err.count("502 Bad Gateway") == 1 and "HTML page titled '502 Bad Gateway'" in err
    assert "<center>" not in err and "padding" not in err and len(err) < 1200


def test_llm_help_mentions_no_command_that_may_not_exist(capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.cli import main

    with pytest.raises(SystemExit):
        main(["llm", "--help"])
    out = capsys.readouterr().out
    assert not re.search(r"\brun\b", out), out
    for sub in ("offline", "replay", "serve-vllm", "design", "NOT an LLM"):
        assert sub in out
