"""A loopback emulator of real LLM servers, speaking each one's own messages and behaviours (for tests).

`Emulator(kind, ...)` serves on 127.0.0.1 with a `ThreadingHTTPServer` of its own (not
the project's servers), so it can stream SSE and misbehave freely. Kinds:

- `vllm`: `/v1/models` with `owned_by: vllm` and `max_model_len`, `/version`; R1 replies with
  the thinking in `reasoning_content` (and `reasoning`), `finish_reason: length` when the
  budget runs out; its 400 context error (old or new wording) and its 404 for an unknown model.
- `sglang`: `owned_by: sglang`, `/get_server_info`, SGLang's context error wording.
- `openai`: `owned_by: system`; reasoning models (o3...) refuse `max_tokens` and a temperature.
- `ollama`: `owned_by: library`, `/api/version`; silently cuts the prompt to 2048 tokens.
- `llamacpp`: `owned_by: llamacpp`, `/props` with `n_ctx`; `exceed_context_size_error`.
- `hung`: lists its models like vLLM and never answers a chat request.

`proxy_errors=N` answers the first N chat requests with a Cloudflare 524 HTML page.
`answer(body) -> (content, reasoning)` decides what the model says; `reply_hook(body)`
may return raw `(status, headers, bytes)` to send instead (hostile replies). `auths` keeps the
Authorization header of every request.
Tokens are counted as characters / 4.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], tuple[str, str]]
RawReply = tuple[int, dict[str, str], bytes]

CLOUDFLARE_524 = (b"<!DOCTYPE html><html><head><title>api.example.com | 524: A timeout occurred</title></head>"
                  b"<body><h1>A timeout occurred</h1><p>Error code 524</p>" + b"<p>cloudflare</p>" * 50
                  + b"</body></html>")
OWNERS = {"vllm": "vllm", "sglang": "sglang", "openai": "system", "ollama": "library", "llamacpp": "llamacpp",
          "hung": "vllm"}


def tokens(text: str) -> int:
    return (len(text) + 3) // 4


def prompt_of(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m, dict))


class Emulator:
    """One emulated server; use as a context manager. `bodies` holds every chat request body, `paths` every path."""

    def __init__(self, kind: str = "vllm", *, models: tuple[str, ...] = ("deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",),
                 context: int = 32768, answer: Answer | None = None, list_context: bool = True,
                 wording: str = "old", proxy_errors: int = 0, ollama_ctx: int = 2048,
                 reply_hook: Callable[[dict[str, Any]], RawReply | None] | None = None,
                 api_key: str | None = None) -> None:
        self.kind, self.models, self.context, self.list_context = kind, models, context, list_context
        self.answer = answer or (lambda body: ("Hello.", "Thinking about it."))
        self.wording, self.proxy_errors, self.ollama_ctx = wording, proxy_errors, ollama_ctx
        self.reply_hook = reply_hook
        self.api_key = api_key  # like `vllm serve --api-key`: anything else is 401
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.auths: list[str | None] = []  # the Authorization header of every request, GET and POST
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Emulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- GET ------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, Any]:
        if path == "/v1/models":
            data = []
            for m in self.models:
                entry: dict[str, Any] = {"id": m, "object": "model", "created": 0, "owned_by": OWNERS[self.kind]}
                if self.kind in ("vllm", "hung", "sglang") and self.list_context:
                    entry["max_model_len"] = self.context
                data.append(entry)
            return 200, {"object": "list", "data": data}
        if path == "/version" and self.kind in ("vllm", "hung"):
            return 200, {"version": "0.10.1"}
        if path == "/api/version" and self.kind == "ollama":
            return 200, {"version": "0.6.2"}
        if path == "/props" and self.kind == "llamacpp":
            return 200, {"default_generation_settings": {"n_ctx": self.context}, "total_slots": 1}
        if path == "/get_server_info" and self.kind == "sglang":
            return 200, {"model_path": self.models[0], "tokenizer_path": self.models[0]}
        return 404, {"detail": "Not Found"}

    # -- POST -----------------------------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> RawReply | tuple[int, Any] | None:
        """A raw reply, an error (status, JSON), or None to answer with a completion."""
        with self._lock:
            self.bodies.append(body)
            n = len(self.bodies)
        if self.kind == "hung":
            self.stopping.wait(600)
            return 503, {"detail": "stopped"}
        if n <= self.proxy_errors:
            return 524, {"Content-Type": "text/html; charset=UTF-8"}, CLOUDFLARE_524
        if self.reply_hook is not None:
            raw = self.reply_hook(body)
            if raw is not None:
                return raw
        model = str(body.get("model"))
        if model not in self.models:
            if self.kind == "ollama":
                return 404, {"error": {"message": f'model "{model}" not found, try pulling it first',
                                       "type": "api_error", "param": None, "code": None}}
            return 404, _vllm_error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        return self._limits(body)

    def _limits(self, body: dict[str, Any]) -> tuple[int, Any] | None:
        prompt = tokens(prompt_of(body))
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if self.kind == "openai" and model_is_reasoning(str(body.get("model"))):
            if "max_tokens" in body:
                return 400, _openai_error("Unsupported parameter: 'max_tokens' is not supported with this model. "
                                          "Use 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
            if body.get("temperature") not in (None, 1):
                return 400, _openai_error(f"Unsupported value: 'temperature' does not support "
                                          f"{body.get('temperature')} with this model. Only the default (1) value "
                                          "is supported.", "temperature", "unsupported_value")
        if self.kind in ("vllm", "sglang") and prompt + max_tokens > self.context:
            if self.kind == "sglang":
                msg = (f"Requested token count exceeds the model's maximum context length of {self.context} tokens. "
                       f"You requested a total of {prompt + max_tokens} tokens: {prompt} tokens from the input "
                       f"messages and {max_tokens} tokens for the completion. Please reduce the number of tokens "
                       "in the input messages or the completion to fit within the limit.")
            elif self.wording == "new":
                msg = (f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                       f"context length is {self.context} tokens and your request has {prompt} input tokens "
                       f"({max_tokens} > {self.context} - {prompt}).")
            else:
                msg = (f"This model's maximum context length is {self.context} tokens. However, you requested "
                       f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion). "
                       "Please reduce the length of the messages or completion.")
            return 400, _vllm_error(msg, "BadRequestError", 400)
        if self.kind == "llamacpp" and prompt > self.context:
            return 400, {"error": {"code": 400, "message": "the request exceeds the available context size, try "
                                   "increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": prompt,
                                   "n_ctx": self.context}}
        if self.kind == "openai" and prompt > self.context:
            return 400, _openai_error(f"This model's maximum context length is {self.context} tokens. However, your "
                                      f"messages resulted in {prompt} tokens. Please reduce the length of the "
                                      "messages.", "messages", "context_length_exceeded")
        return None

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The model's answer, cut at the budget the way a server cuts it."""
        content, reasoning = self.answer(body)
        budget = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        if self.kind == "llamacpp":
            budget = min(budget, max(0, self.context - tokens(prompt_of(body))))
        finish = "stop"
        if tokens(reasoning) + tokens(content) > budget:
            finish = "length"
            if tokens(reasoning) >= budget:
                reasoning, content = reasoning[:budget * 4], ""
            else:
                content = content[:(budget - tokens(reasoning)) * 4]
        prompt = tokens(prompt_of(body))
        if self.kind == "ollama":
            prompt = min(prompt, self.ollama_ctx)  # silently cut to num_ctx (the OpenAI API ignores options)
        completion = tokens(reasoning) + tokens(content)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.kind in ("vllm", "sglang") and reasoning:
            message["reasoning_content"] = reasoning
            message["reasoning"] = reasoning
        elif reasoning and self.kind != "openai":
            message["content"] = f"<think>\n{reasoning}\n</think>\n\n{content}"
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
        if self.kind == "openai":
            usage["completion_tokens_details"] = {"reasoning_tokens": tokens(reasoning)}
        return {"id": f"chatcmpl-{len(self.bodies)}", "object": "chat.completion", "created": 0,
                "model": body.get("model"), "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage}


def model_is_reasoning(model: str) -> bool:
    return model.startswith(("o1", "o3", "o4", "gpt-5"))


def _vllm_error(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": type_, "param": None, "code": code}


def _openai_error(message: str, param: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def sse_events(completion: dict[str, Any], chunk_chars: int = 200) -> list[bytes]:
    """A completion as the SSE chunks a server streams (reasoning first, then content, then usage)."""
    choice = completion["choices"][0]
    msg = choice["message"]
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": 0, "model": completion["model"]}
    events = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None}])]
    reasoning = msg.get("reasoning_content") or ""
    for i in range(0, len(reasoning), chunk_chars):
        events.append(dict(base, choices=[{"index": 0, "delta": {"reasoning_content": reasoning[i:i + chunk_chars]},
                                           "finish_reason": None}]))
    content = msg.get("content") or ""
    for i in range(0, len(content), chunk_chars):
        events.append(dict(base, choices=[{"index": 0, "delta": {"content": content[i:i + chunk_chars]},
                                           "finish_reason": None}]))
    events.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]))
    events.append(dict(base, choices=[], usage=completion["usage"]))
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _handler(emu: Emulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _refused(self) -> bool:
            if emu.api_key is not None and self.headers.get("Authorization") != f"Bearer {emu.api_key}":
                self._send(401, {"error": "Unauthorized"})
                return True
            return False

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0].rstrip("/")
            emu.paths.append(path)
            emu.auths.append(self.headers.get("Authorization"))
            if self._refused():
                return
            status, body = emu.get(path)
            self._send(status, body, {"Server": "uvicorn"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0].rstrip("/")
            emu.paths.append(path)
            emu.auths.append(self.headers.get("Authorization"))
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self._refused():
                return
            result = emu.chat(body)
            if result is not None and len(result) == 3:
                status, headers, raw = result
                self._send(status, raw, headers)
                return
            if result is not None:
                self._send(*result)
                return
            completion = emu.completion(body)
            if not body.get("stream"):
                self._send(200, completion)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for event in sse_events(completion):
                self.wfile.write(event)
                self.wfile.flush()
            self.close_connection = True

    return Handler
