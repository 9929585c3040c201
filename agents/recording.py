"""Record LLM requests and replies to JSONL, and look them up again by request hash.

A record line is one HTTP exchange as the endpoint saw it:
`{"key", "request", "status", "response", "recorded_at"}` where `request` is the
JSON body the client sent (secret-looking values outside the messages masked),
`key` the SHA-256 of its canonical form (without the streaming and budget fields,
see UNKEYED_FIELDS) and
`response` the endpoint's JSON body (or its raw text when it was not JSON, under
`response_text`). Retries of the same request produce several lines with the
same key; the replay server serves them in order.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from nncaption.agents.jsonparse import clean_text, loads
from nncaption.agents.settings import mask_secrets
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.safetext import safe_text


def canonical_request(body: dict[str, Any]) -> str:
    """A stable text form of a request body: sorted keys, no whitespace, unicode kept."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Transport and budget fields: a replay matches a streamed recording, and a budget clamped to a context the replay
# server does not report; same-key entries (a cut-off reply, then the retry with more room) are served in order.
UNKEYED_FIELDS: frozenset[str] = frozenset({"stream", "stream_options", "max_tokens", "max_completion_tokens",
                                            "options"})


def masked_request(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as it may be stored: the messages as sent, every other field with secret-looking values masked
    (an extra_body `api_key` or `token`, credentials in a URL); masking twice changes nothing."""
    masked = dict(mask_secrets({k: v for k, v in body.items() if k != "messages"}))
    if "messages" in body:
        masked["messages"] = body["messages"]
    return masked


def request_key(body: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical request without UNKEYED_FIELDS, secrets masked: what record and replay
    match on (a recording keeps no secret, and the live request with its secret still finds it)."""
    keyed = {k: v for k, v in masked_request(body).items() if k not in UNKEYED_FIELDS}
    return hashlib.sha256(canonical_request(keyed).encode("utf-8")).hexdigest()


class Recorder:
    """Appends exchanges to a JSONL file; safe to share between tasks and threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, request: dict[str, Any], status: int, response_text: str) -> None:
        entry: dict[str, Any] = {"key": request_key(request), "request": masked_request(request), "status": status,
                                 "recorded_at": time.time()}
        try:
            entry["response"] = loads(response_text)  # depth-limited: a hostile body must not crash the recording
        except ValueError:
            entry["response_text"] = clean_text(response_text)
        line = json.dumps(entry, ensure_ascii=True) + "\n"  # ASCII: a lone surrogate cannot break the UTF-8 file
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)


def load_recording(path: Path | str) -> dict[str, list[dict[str, Any]]]:
    """Entries of a record file grouped by request key, in file order."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"record file {p} does not exist",
                          "record one first with --llm-record FILE.jsonl (or LLMClient(record_path=...)).")
    by_key: dict[str, list[dict[str, Any]]] = {}
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read record file {p}: {e.strerror}", "check the path", exit_code=2) from None
    for n, bline in enumerate(raw.splitlines(), start=1):
        if not bline.strip():
            continue
        try:  # a hostile file: invalid UTF-8, deep nesting, odd shapes are configuration errors with the line
            entry = json.loads(bline.decode("utf-8"))
            request = entry["request"]
            status = int(entry["status"])
            if not isinstance(entry, dict) or not isinstance(request, dict):
                raise TypeError("an entry and its request must be JSON objects")
            if not 100 <= status <= 599:
                raise ValueError(f"HTTP status {status} out of range")
        except (ValueError, KeyError, TypeError, RecursionError, IndexError) as e:
            why = "too deeply nested" if isinstance(e, RecursionError) else safe_text(str(e), 200)
            raise ConfigError(f"{p}:{n} is not a record line ({why})",
                              "the file must be the JSONL written by --llm-record; do not edit it by hand.",
                              exit_code=2) from None
        entry["status"] = status
        by_key.setdefault(request_key(request), []).append(entry)
    return by_key
