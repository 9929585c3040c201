"""A small OpenAI-compatible HTTP server base (stdlib only) for the offline, replay and test endpoints.

Subclasses implement `chat(body) -> Reply` (and optionally `model_ids()`); this
module does the HTTP: routing `POST /v1/chat/completions`, `GET /v1/models`,
`GET /health`, JSON error bodies in OpenAI's shape, keep-alive, and running in a
background thread as a context manager (`with Server(...) as s: s.base_url`).

Whatever connects is untrusted (the servers may listen beyond loopback), so the
HTTP layer is bounded (the connection pool is `agents/http_pool.py`): a request
body over `max_request_bytes` is answered 413 without being read; Content-Length
is required and strict (missing, `abc`, `-1`, duplicates, chunked: 400); a body
must arrive within `body_seconds`; invalid UTF-8, malformed or deeply nested JSON
get a 400 JSON answer; idle keep-alive connections wait in one selector (not one
thread each) and are closed after `idle_seconds`; requests are served by a fixed
pool of `workers` threads; at most `max_connections` stay open.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Self

from nncaption.agents.http_pool import PoolHTTPServer

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
    max_request_bytes = 16 << 20  # a chat request; larger ones are answered 413 unread
    max_json_depth = 64  # nesting of the request's JSON
    body_seconds = 60.0  # the whole body must arrive within this
    idle_seconds = 30.0  # an idle keep-alive connection (or a stalled request) is closed after this
    read_seconds = 90.0  # a whole request (line, headers, body) must arrive within this of its first byte
    workers = 64  # threads serving requests
    max_connections = 4096  # open connections; beyond, the longest idle one is closed

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._httpd: PoolHTTPServer | None = None
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
        httpd = PoolHTTPServer((self.host, self._requested_port), handler, workers=self.workers,
                               idle_seconds=self.idle_seconds, max_connections=self.max_connections,
                               read_seconds=self.read_seconds)
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


class BadRequest(Exception):
    """A request this server will not serve: its HTTP status and message (sent as an OpenAI error body)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def json_depth_ok(raw: bytes, limit: int) -> bool:
    """Whether the brackets of a JSON text nest at most `limit` deep (strings skipped); linear, no parsing."""
    depth, in_str, esc = 0, False, False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def parse_body(raw: bytes, max_depth: int) -> Any:
    """The request's JSON value; BadRequest (400) for invalid UTF-8, malformed or too deeply nested JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the request body is not valid UTF-8 (byte {e.start})", "invalid_utf8") from None
    if not json_depth_ok(raw, max_depth):
        raise BadRequest(400, f"the request JSON nests deeper than {max_depth} levels", "json_too_deep")
    try:
        return json.loads(text or "{}")
    except (ValueError, RecursionError) as e:
        raise BadRequest(400, f"the request body is not valid JSON ({type(e).__name__})", "invalid_json") from None


def _content_length(headers: Any, limit: int) -> int:
    """The strict Content-Length of a request: one value, ASCII digits only, at most `limit` (else BadRequest)."""
    if headers.get("Transfer-Encoding"):
        raise BadRequest(400, "Transfer-Encoding is not supported; send a Content-Length", "bad_length")
    values = headers.get_all("Content-Length") or []
    if not values:
        raise BadRequest(400, "a POST needs a Content-Length header", "bad_length")
    if len(set(values)) > 1 or not (values[0].isascii() and values[0].strip().isdigit()):
        raise BadRequest(400, f"invalid Content-Length {values[0][:40]!r}", "bad_length")
    n = int(values[0].strip())
    if n > limit:
        raise BadRequest(413, f"the request body of {n} bytes is over this server's limit of {limit} bytes",
                         "request_too_large")
    return n


def _make_handler(server: OpenAICompatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        default_request_version = "HTTP/1.0"  # an unparsable request line still gets status line and headers
        server_version = server.name
        timeout = server.idle_seconds  # a stalled request line, header or body read gives up after this
        rbufsize = 0  # unbuffered: a kept-alive connection carries no unread bytes back to the selector

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.debug("%s - %s", self.address_string(), (format % args).encode("unicode_escape").decode()[:500])

        def handle(self) -> None:
            self.close_connection = True
            self.handle_one_request()  # one request per turn; the pool parks a kept-alive connection again

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            self.close_connection = True
            self._send(error_reply(code, message or "bad request", code="bad_request"))

        def _send(self, reply: Reply) -> None:
            data, ctype = reply.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                for k, v in reply.headers.items():
                    if k.lower() not in ("content-type", "content-length", "connection"):
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                self.close_connection = True  # the client gave up (e.g. its timeout fired)

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
                self._send(error_reply(404, f"no route GET {path[:200]}", "not_found_error"))

        def _read_body(self, n: int) -> bytes:
            deadline = time.monotonic() + server.body_seconds
            chunks, left = [], n
            while left > 0:
                if time.monotonic() > deadline:
                    raise BadRequest(408, f"the request body did not arrive within {server.body_seconds:g} s",
                                     "body_timeout")
                try:
                    chunk = self.rfile.read(min(left, 1 << 16))
                except TimeoutError:
                    raise BadRequest(408, "the request body stalled", "body_timeout") from None
                if not chunk:
                    raise BadRequest(400, f"the body ended {left} bytes before its Content-Length", "short_body")
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            try:
                body = self._request_body()
            except BadRequest as e:
                self.close_connection = True  # the body may be unread: this connection cannot carry another
                self._send(error_reply(e.status, e.message, code=e.code))
                return
            if body is None:
                return
            server._count()
            try:
                reply = server.chat(body)
            except Exception as e:  # noqa: BLE001 - a server must answer, not die
                log.exception("%s failed on a request", server.name)
                reply = error_reply(500, f"{server.name} failed: {type(e).__name__}: {e}", "server_error")
            self._send(reply)

        def _request_body(self) -> dict[str, Any] | None:
            path = self._path()
            length = _content_length(self.headers, server.max_request_bytes)
            raw = self._read_body(length)
            request_read = getattr(self.server, "request_read", None)
            if request_read is not None:
                request_read(self.connection)  # the request is in: chat() may take its time
            if path not in ("/v1/chat/completions", "/chat/completions"):
                self._send(error_reply(404, f"no route POST {path[:200]}; this server offers /v1/chat/completions",
                                       "not_found_error"))
                return None
            body = parse_body(raw, server.max_json_depth)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise BadRequest(400, "the request needs a 'messages' list", "invalid_messages")
            if body.get("stream"):
                raise BadRequest(400, f"{server.name} does not support stream=true", "stream_unsupported")
            return body

    return Handler
