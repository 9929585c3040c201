"""A scripted, fault-injecting OpenAI-compatible server for the LLM tests (real HTTP on loopback).

`ScriptedServer(script)` answers the n-th chat request with `script[n]` (the last
entry repeats), or with `script(body)` when `script` is a callable. Entries are
functions `(body, server) -> Reply` built by the helpers below: a good reply, an
HTTP error status (optionally with Retry-After), a hanging response, invalid
JSON, a context-length 400 above a prompt size, a 400 for response_format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nncaption.agents.http_server import OpenAICompatServer, Reply, completion_body, error_reply, prompt_text

Behaviour = Callable[[dict[str, Any], "ScriptedServer"], Reply]


class ScriptedServer(OpenAICompatServer):
    name = "scripted-test-server"

    def __init__(self, script: Sequence[Behaviour] | Behaviour, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.script = script
        self.bodies: list[dict[str, Any]] = []  # every chat request received, in order

    def chat(self, body: dict[str, Any]) -> Reply:
        self.bodies.append(body)
        if callable(self.script):
            return self.script(body, self)
        step = self.script[min(len(self.bodies) - 1, len(self.script) - 1)]
        return step(body, self)


def ok(content: str, reasoning: str = "", *, split: bool = False, finish_reason: str = "stop") -> Behaviour:
    def answer(body: dict[str, Any], server: ScriptedServer) -> Reply:
        return Reply(200, completion_body(str(body.get("model")), content, reasoning=reasoning,
                                          prompt_text=prompt_text(body["messages"]), finish_reason=finish_reason,
                                          split_reasoning=split))
    return answer


def status(code: int, message: str = "boom", headers: dict[str, str] | None = None,
           error_code: str | None = None) -> Behaviour:
    def answer(body: dict[str, Any], server: ScriptedServer) -> Reply:
        return error_reply(code, message, "server_error" if code >= 500 else "invalid_request_error",
                           code=error_code, headers=headers)
    return answer


def hang(seconds: float = 30.0) -> Behaviour:
    """Accept the request and answer nothing for `seconds` (or until the server stops)."""
    def answer(body: dict[str, Any], server: ScriptedServer) -> Reply:
        server.stopping.wait(seconds)
        return error_reply(503, "hung request released")
    return answer


def invalid_json() -> Behaviour:
    def answer(body: dict[str, Any], server: ScriptedServer) -> Reply:
        return Reply(200, b'{"id": "x", "choices": [ {"message": ', {"Content-Type": "application/json"})
    return answer


def context_limit(max_prompt_chars: int, then: Behaviour) -> Behaviour:
    """vLLM's 400 when the prompt is longer than `max_prompt_chars`, else `then`."""
    def answer(body: dict[str, Any], server: ScriptedServer) -> Reply:
        n = len(prompt_text(body["messages"]))
        if n > max_prompt_chars:
            return error_reply(400, f"This model's maximum context length is 4096 tokens. However, you requested "
                                    f"{n} tokens in the messages. Please reduce the length of the messages.",
                               "BadRequestError")
        return then(body, server)
    return answer


def reject_response_format(then: Behaviour) -> Behaviour:
    """A server without structured output: 400 whenever response_format is sent."""
    def answer(body: dict[str, Any], server: ScriptedServer) -> Reply:
        if "response_format" in body:
            return error_reply(400, "response_format is not supported by this server", code="unsupported_parameter")
        return then(body, server)
    return answer
