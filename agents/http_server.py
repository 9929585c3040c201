"""A small OpenAI-compatible HTTP server base (stdlib only) for the offline, replay and test endpoints.

Subclasses implement `chat(body) -> Reply` (and optionally `model_ids()`); this
module does the HTTP: routing `POST /v1/chat/completions`, `GET /v1/models`,
`GET /health`, JSON error bodies in OpenAI's shape, keep-alive, and running in a
background thread as a context manager (`with Server(...) as s: s.base_url`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass
class Reply:
    """An HTTP answer: status, body (a JSON value, or raw bytes sent as they are) and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.headers.get("Content-Type", "application/json")
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8"), "application/json"


def error_reply(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                headers: dict[str, str] | None = None) -> Reply:
    """An error in OpenAI's JSON shape."""
    return Reply(status, {"error": {"message": message, "type": type_, "param": None, "code": code}},
                 headers or {})


def count_tokens(text: str) -> int:
    """A rough token count (words and punctuation marks) for usage numbers of local servers."""
    return len(_TOKEN.findall(text))


def completion_body(model: str, content: str, *, reasoning: str = "", prompt_text: str = "",
                    finish_reason: str = "stop", split_reasoning: bool = False) -> dict[str, Any]:
    """A chat.completion JSON object with usage filled in.

    With `split_reasoning` the reasoning goes in `message.reasoning` (as vLLM with a
    reasoning parser does); otherwise it is inlined as a `<think>` block in content.
    """
    message: dict[str, Any] = {"role": "assistant"}
    if split_reasoning:
        message["content"] = content
        message["reasoning"] = reasoning or None
    else:
        message["content"] = (f"<think>\n{reasoning}\n</think>\n\n" if reasoning else "") + content
    reasoning_tokens = count_tokens(reasoning)
    completion_tokens = count_tokens(content) + reasoning_tokens
    prompt_tokens = count_tokens(prompt_text)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        },
    }


def prompt_text(messages: Any) -> str:
    """All text content of a messages list (string or multi-part content)."""
    parts: list[str] = []
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


class OpenAICompatServer:
    """Base class: serve `chat()` over HTTP in a thread, or in the foreground with `serve_forever()`."""

    name = "nncaption-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()  # set on stop; slow handlers should wait on it
        self.requests_served = 0
        self._count_lock = threading.Lock()

    # -- to override -------------------------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def model_ids(self) -> list[str]:
        return [self.name]

    # -- HTTP plumbing -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("server not started: use it as a context manager or call start()")
        return self._bound_port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def bind(self) -> None:
        """Open the listening socket (port 0 picks a free one)."""
        if self._httpd is not None:
            return
        handler = _make_handler(self)
        httpd = ThreadingHTTPServer((self.host, self._requested_port), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # a hanging handler must not block shutdown
        self._httpd = httpd
        self._bound_port = int(httpd.server_address[1])

    def start(self) -> Self:
        """Serve in a background thread."""
        self.bind()
        assert self._httpd is not None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.name}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI)."""
        self.bind()
        assert self._httpd is not None
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self.stop()

    def stop(self) -> None:
        self.stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _count(self) -> None:
        with self._count_lock:
            self.requests_served += 1


def _make_handler(server: OpenAICompatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = server.name

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.debug("%s - %s", self.address_string(), format % args)

        def _send(self, reply: Reply) -> None:
            data, ctype = reply.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    if k.lower() != "content-type":
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its timeout fired)

        def _path(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/")

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = self._path()
            if path in ("/health", "/v1/health"):
                self._send(Reply(200, {"status": "ok"}))
            elif path in ("/v1/models", "/models"):
                self._send(Reply(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": server.name} for m in server.model_ids()
                ]}))
            else:
                self._send(error_reply(404, f"no route GET {path}", "not_found_error"))

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            path = self._path()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if path not in ("/v1/chat/completions", "/chat/completions"):
                self._send(error_reply(404, f"no route POST {path}; this server offers /v1/chat/completions",
                                       "not_found_error"))
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._send(error_reply(400, "the request body is not valid JSON"))
                return
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                self._send(error_reply(400, "the request needs a 'messages' list", code="invalid_messages"))
                return
            if body.get("stream"):
                self._send(error_reply(400, f"{server.name} does not support stream=true", code="stream_unsupported"))
                return
            server._count()
            try:
                reply = server.chat(body)
            except Exception as e:  # noqa: BLE001 - a server must answer, not die
                log.exception("%s failed on a request", server.name)
                reply = error_reply(500, f"{server.name} failed: {type(e).__name__}: {e}", "server_error")
            self._send(reply)

    return Handler
