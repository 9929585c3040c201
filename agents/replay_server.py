"""`nncaption llm replay FILE.jsonl`: serve recorded LLM replies back, deterministically.

A run recorded with `--llm-record FILE.jsonl` (or `LLMClient(record_path=...)`)
can be replayed against this server: each request is matched by the SHA-256 of
its canonical JSON body, so the same run gets the same replies without the
model, in tests and bug reports. When one request was recorded several times
(retries after a 429 or a 5xx, or identical prompts) the recorded replies are
served in order and the last one repeats. An unknown request gets an OpenAI-style
404 error that says so.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from nncaption.agents.http_server import OpenAICompatServer, Reply, error_reply
from nncaption.agents.recording import load_recording, request_key


class ReplayServer(OpenAICompatServer):
    """Serves a record file; usable as a context manager (`with ReplayServer(path) as s: s.base_url`)."""

    name = "nncaption-replay"

    def __init__(self, record_path: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.record_path = Path(record_path)
        self.entries = load_recording(self.record_path)
        self._cursor: dict[str, int] = {}
        self._lock = threading.Lock()
        self.misses = 0

    def model_ids(self) -> list[str]:
        models = {str(e["request"].get("model")) for es in self.entries.values() for e in es}
        return sorted(models) or [self.name]

    def chat(self, body: dict[str, Any]) -> Reply:
        key = request_key(body)
        with self._lock:
            recorded = self.entries.get(key)
            if not recorded:
                self.misses += 1
                return error_reply(
                    404,
                    f"no recorded reply for this request (hash {key[:12]}) in {self.record_path.name}: "
                    "the prompt, model or sampling parameters differ from the recorded run; "
                    "record it again with --llm-record",
                    "not_found_error", code="replay_miss",
                )
            i = self._cursor.get(key, 0)
            self._cursor[key] = i + 1
            entry = recorded[min(i, len(recorded) - 1)]
        if "response" in entry:
            return Reply(entry["status"], entry["response"])
        return Reply(entry["status"], str(entry.get("response_text", "")).encode("utf-8"))
