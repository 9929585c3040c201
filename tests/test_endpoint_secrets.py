"""Secrets in the endpoint settings never reach what a run keeps or shows.

A base_url with credentials (http://user:password@host/v1) and an `extra_body` that
carries a key are real settings people use (proxies, gateways). One small real run
through the offline composer: neither secret may appear in any file of the run
directory (the recording, results.sqlite with its llm_calls rows, the blobs,
config.json, run.log) nor in `nncaption trace` output; the recording still replays.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.recording import load_recording, masked_request, request_key
from nncaption.agents.settings import LLMSettings

pytestmark = pytest.mark.timeout(300)

PASSWORD = "pw-h9-0123456789-secret"
EXTRA_KEY = "sk-extra-h9-abcdef-secret"
EXTRA_TOKEN = "tok-h9-nested-secret"
SECRETS = (PASSWORD, EXTRA_KEY, EXTRA_TOKEN)
EXTRA_BODY = {"api_key": EXTRA_KEY, "metadata": {"auth_token": EXTRA_TOKEN, "team": "vision"}}


def with_credentials(base_url: str) -> str:
    return base_url.replace("http://", f"http://alice:{PASSWORD}@", 1)


def leaks(root: Path) -> list[str]:
    """Files under `root` holding any of the secrets (as bytes: SQLite pages and blobs included)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {s}" for s in SECRETS if s.encode() in data]
    return found


def test_the_exchange_and_the_recording_keep_no_secret_and_still_replay(tmp_path: Path) -> None:
    from nncaption.agents.offline_server import MODEL_ID, OfflineComposerServer

    record = tmp_path / "rec.jsonl"
    with OfflineComposerServer(seed=1) as srv:
        settings = LLMSettings.single(with_credentials(srv.base_url), MODEL_ID, extra_body=EXTRA_BODY)
        client = LLMClient(settings, record_path=record, keep_exchanges=True)
        ex = run_sync(client.chat("reviewer", [{"role": "user", "content": "say ok"}]), client)
    shown = repr(ex.to_dict())
    assert not [s for s in SECRETS if s in shown], shown
    assert ex.endpoint.startswith("http://***@127.0.0.1") and ex.params["api_key"] == "***"
    assert ex.params["metadata"] == {"auth_token": "***", "team": "vision"}, "only the secret is masked"
    assert not leaks(tmp_path)
    # the live request (secrets and all) still finds its recorded reply
    sent = {"model": MODEL_ID, "messages": [{"role": "user", "content": "say ok"}], **EXTRA_BODY}
    assert request_key(sent) == request_key(masked_request(sent))
    entries = load_recording(record)
    assert len(entries) == 1 and next(iter(entries.values()))[0]["request"]["api_key"] == "***"


@pytest.mark.sandbox
@pytest.mark.slow
def test_a_run_with_credentials_in_its_url_and_a_key_in_extra_body_keeps_neither(
        tiny_dataset: Any, tmp_path: Path) -> None:
    from nncaption.agents.offline_server import MODEL_ID, OfflineComposerServer

    run_dir = tmp_path / "run"
    with OfflineComposerServer(seed=1) as srv:
        cfg = tmp_path / "run.toml"
        cfg.write_text('[agents]\nkind = "llm"\nsnippets = 2\n[agents.llm.shared]\n'
                       f'base_url = "{with_credentials(srv.base_url)}"\nmodel = "{MODEL_ID}"\n'
                       f'extra_body = {{ api_key = "{EXTRA_KEY}", metadata = {{ auth_token = "{EXTRA_TOKEN}" }} }}\n')
        out = subprocess.run([sys.executable, "-m", "nncaption.cli", "run", "--prepared", str(tiny_dataset.root),
                              "--run-dir", str(run_dir), "--config", str(cfg), "--candidates", "1", "--epochs", "1",
                              "--max-train-batches", "2", "--max-val-images", "8", "--no-live",
                              "--log-level", "info"],
                             capture_output=True, text=True, timeout=280, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "llm-record.jsonl").is_file() and (run_dir / "results.sqlite").is_file()
    assert not leaks(run_dir), leaks(run_dir)
    assert not [s for s in SECRETS if s in out.stdout + out.stderr]
    db = sqlite3.connect(run_dir / "results.sqlite")
    try:
        cid = str(db.execute("SELECT cid FROM candidates LIMIT 1").fetchone()[0])
        endpoints = {str(r[0]) for r in db.execute("SELECT endpoint FROM llm_calls")}
    finally:
        db.close()
    assert endpoints and all(e.startswith("http://***@127.0.0.1") for e in endpoints), endpoints
    for extra in ([], ["--json"], ["--step", "1"], ["--candidate", cid]):
        shown = subprocess.run([sys.executable, "-m", "nncaption.cli", "trace", str(run_dir), *extra],
                               capture_output=True, text=True, timeout=120, env=dict(os.environ))
        assert shown.returncode == 0, (extra, shown.stderr[-2000:])
        assert not [s for s in SECRETS if s in shown.stdout + shown.stderr], extra
    html = tmp_path / "trace.html"
    subprocess.run([sys.executable, "-m", "nncaption.cli", "trace", str(run_dir), "--html", str(html)],
                   capture_output=True, text=True, timeout=120, env=dict(os.environ), check=True)
    assert not [s for s in SECRETS if s in html.read_text(encoding="utf-8")]


def test_run_log_keeps_no_http_request_lines() -> None:
    """httpx's INFO line names the request URL (query-string secrets included): run.log's handler drops it."""
    import logging

    from nncaption.cmd_run import _no_http_request_lines

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "HTTP Request: POST https://h/v1?key=s3cret", None, None)

    assert not _no_http_request_lines(record("httpx", logging.INFO))
    assert not _no_http_request_lines(record("httpcore.connection", logging.DEBUG))
    assert _no_http_request_lines(record("httpx", logging.WARNING))
    assert _no_http_request_lines(record("nncaption.agents.client", logging.INFO))
