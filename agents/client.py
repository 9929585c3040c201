"""`LLMClient`: chat completions over any OpenAI-compatible endpoint, with retries and a trace.

Built on `openai.AsyncOpenAI` with the SDK's own retries switched off, so that one
loop here decides what is retried (timeouts, connection errors, 429, 5xx: with
exponential backoff and jitter, honouring a short Retry-After) and every failure
becomes a typed `LLMError`. One semaphore bounds the requests in flight across
all roles. Each call returns an `LLMExchange` (reply, reasoning, usage, latency,
attempts); with `record_path` every HTTP exchange is appended to a JSONL file
that `nncaption llm replay` serves back.

The client binds its HTTP connections and semaphore to the running event loop;
when it is used from a new loop (sync wrappers call `asyncio.run` per call) it
quietly opens fresh ones. Do not share one client between threads running
different loops at the same time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import openai

from nncaption.agents.errors import (
    BadResponse,
    ContextLengthExceeded,
    EndpointRejected,
    EndpointTimeout,
    EndpointUnavailable,
    LLMError,
    RateLimited,
    StructuredReplyError,
)
from nncaption.agents.jsonparse import parse_json_object
from nncaption.agents.reasoning import split_reasoning
from nncaption.agents.recording import Recorder
from nncaption.agents.records import LLMExchange, Usage
from nncaption.agents.settings import EndpointSettings, LLMSettings

log = logging.getLogger(__name__)

_CONTEXT_PATTERNS = re.compile(
    r"context[ _-]?length|maximum context|context window|too many tokens|prompt is too long|"
    r"input tokens? exceed|exceeds? the model'?s? max|max_model_len",
    re.IGNORECASE,
)


@dataclass
class _HTTPReply:
    """What one HTTP try produced, before interpretation."""

    status: int
    text: str
    headers: dict[str, str]
    request_body: dict[str, Any] | None


def error_message(body: Any, fallback: str = "") -> str:
    """The human message in an OpenAI / vLLM / FastAPI style error body."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def is_context_length_error(status: int, body: Any) -> bool:
    """A 400/413 that says the prompt does not fit the model's context."""
    if status not in (400, 413, 422):
        return False
    code = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or "")
    return code == "context_length_exceeded" or bool(_CONTEXT_PATTERNS.search(error_message(body)))


_HTML_START = re.compile(r"^\s*(<!doctype html|<html|<head|<body|<\?xml)", re.IGNORECASE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def html_page_summary(text: str, content_type: str = "") -> str | None:
    """A one-line description of an HTML page ("an HTML page titled '502 Bad Gateway'"); None when not HTML."""
    if "html" not in content_type.lower() and not _HTML_START.match(text[:500]):
        return None
    m = _HTML_TITLE.search(text[:20_000])
    title = " ".join(m.group(1).split())[:120] if m else ""
    return f"an HTML page titled {title!r}" if title else "an HTML page"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class LLMClient:
    """Async chat client for the designer, reviewer and fixer roles."""

    def __init__(
        self,
        settings: LLMSettings | None = None,
        *,
        record_path: Path | str | None = None,
        seed: int | None = None,
        keep_exchanges: bool = False,
    ) -> None:
        self.settings = settings or LLMSettings()
        self.keep_exchanges = keep_exchanges
        self.recorder = Recorder(record_path) if record_path else None
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sdk: dict[tuple[str, str], openai.AsyncOpenAI] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self._no_response_format: set[tuple[str, str]] = set()
        self.exchanges: list[LLMExchange] = []  # with keep_exchanges: every exchange made, in order

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections opened on the current loop."""
        clients, self._sdk = self._sdk, {}
        for c in clients.values():
            try:
                await c.close()
            except RuntimeError:  # opened on a loop that is gone
                pass

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections and the semaphore belong to the old loop: start afresh on this one.
            self._loop = loop
            self._sdk = {}
            self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)

    def _sdk_for(self, ep: EndpointSettings) -> openai.AsyncOpenAI:
        key = (ep.base_url, ep.api_key_env)
        if key not in self._sdk:
            self._sdk[key] = openai.AsyncOpenAI(
                base_url=ep.base_url, api_key=ep.api_key(), max_retries=0, timeout=ep.timeout_s
            )
        return self._sdk[key]

    # -- public calls ----------------------------------------------------------------------
    async def chat(
        self,
        role: str,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> LLMExchange:
        """One chat completion for `role`; raises an `LLMError` subclass carrying the exchange.

        `seed` is OpenAI's standard sampling seed (reproducible sampling on servers that
        honour it; the offline composer draws its choices from it).
        """
        self._bind_loop()
        ep = self.settings.for_role(role)
        params: dict[str, Any] = {"temperature": ep.temperature, "top_p": ep.top_p,
                                  "max_tokens": max_tokens or ep.max_tokens}
        if seed is not None:
            params["seed"] = int(seed)
        if response_format is not None:
            params["response_format"] = response_format
        ex = LLMExchange(role=role, endpoint=ep.base_url, model=ep.model, messages=list(messages),
                         params={**params, **ep.extra_body}, started_at=time.time())
        t0 = time.perf_counter()
        t_start = t0
        assert self._semaphore is not None
        try:
            async with self._semaphore:
                t_start = time.perf_counter()
                ex.queued_s = t_start - t0
                data = await self._with_retries(ep, messages, params, ex)
            self._fill(ex, data)
        except LLMError as e:
            ex.error = f"{e.category}: {e.message}"
            e.exchange = ex
            raise
        finally:
            ex.latency_s = time.perf_counter() - t_start
            ex.finished_at = time.time()
            if self.keep_exchanges:
                self.exchanges.append(ex)
        return ex

    async def chat_json(
        self,
        role: str,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any],
        schema_name: str = "reply",
        max_tokens: int | None = None,
    ) -> tuple[dict[str, Any], list[LLMExchange]]:
        """A chat call whose answer is a JSON object following `schema`.

        Asks for `response_format={"type": "json_schema", ...}`; when the endpoint
        rejects that (a 400 that is not about context length) it asks again without
        it, remembers that for the endpoint, and parses the first JSON object in the
        answer. Returns the object and the exchanges made.
        """
        ep = self.settings.for_role(role)
        exchanges: list[LLMExchange] = []
        fmt: dict[str, Any] | None = {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema, "strict": True},
        }
        if (ep.base_url, ep.model) in self._no_response_format:
            fmt = None
        try:
            ex = await self.chat(role, messages, response_format=fmt, max_tokens=max_tokens)
        except EndpointRejected as e:
            if fmt is None or e.status not in (400, 422):
                raise
            assert e.exchange is not None
            exchanges.append(e.exchange)
            log.info("%s rejected response_format (%s); falling back to tolerant JSON parsing",
                     ep.base_url, e.message)
            ex = await self.chat(role, messages, response_format=None, max_tokens=max_tokens)
            self._no_response_format.add((ep.base_url, ep.model))  # it was the format: skip it from now on
        exchanges.append(ex)
        obj = parse_json_object(ex.reply)
        if obj is None:
            raise StructuredReplyError(
                f"the {role} reply holds no JSON object: {ex.reply[:200]!r}",
                endpoint=ep.base_url, exchange=ex,
            )
        return obj, exchanges

    # -- internals -------------------------------------------------------------------------
    async def _with_retries(
        self, ep: EndpointSettings, messages: list[dict[str, Any]], params: dict[str, Any], ex: LLMExchange
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            ex.attempts = attempt
            try:
                return await self._try_once(ep, messages, params)
            except LLMError as e:
                if not e.retryable or attempt > ep.max_retries:
                    if e.retryable:
                        e.message = f"{e.message} (gave up after {attempt} attempts)"
                    raise
                delay = min(ep.backoff_max_s, ep.backoff_base_s * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
                if isinstance(e, RateLimited) and e.retry_after_s is not None:
                    if e.retry_after_s > ep.retry_after_max_s:
                        e.message = f"{e.message} (the server asked to wait {e.retry_after_s:.0f} s)"
                        raise
                    delay = max(delay, e.retry_after_s)
                log.warning("%s attempt %d/%d failed (%s: %s); retrying in %.2f s", ep.base_url, attempt,
                            ep.max_retries + 1, e.category, e.message, delay)
                await asyncio.sleep(delay)

    async def _try_once(
        self, ep: EndpointSettings, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        reply = await self._http(ep, messages, params)
        if self.recorder is not None and reply.request_body is not None:
            self.recorder.write(reply.request_body, reply.status, reply.text)
        return self._interpret(ep, reply)

    async def _http(self, ep: EndpointSettings, messages: list[dict[str, Any]], params: dict[str, Any]) -> _HTTPReply:
        """One HTTP try. Transport failures raise; any HTTP status comes back as a reply."""
        sdk = self._sdk_for(ep)
        kwargs: dict[str, Any] = {k: v for k, v in params.items()}
        try:
            async with asyncio.timeout(ep.timeout_s):
                raw = await sdk.chat.completions.with_raw_response.create(
                    model=ep.model, messages=cast(Any, messages), extra_body=ep.extra_body or None,
                    timeout=ep.timeout_s, **kwargs,
                )
                text = raw.text
            return _HTTPReply(raw.status_code, text, dict(raw.headers), _sent_body(raw.http_response.request))
        except (openai.APITimeoutError, TimeoutError):
            raise EndpointTimeout(f"{ep.describe()} did not answer within {ep.timeout_s:g} s",
                                  endpoint=ep.base_url) from None
        except openai.APIConnectionError as e:
            raise EndpointUnavailable(f"cannot connect to {ep.base_url}: {e.__cause__ or e.message}",
                                      endpoint=ep.base_url) from None
        except openai.APIStatusError as e:
            resp = e.response
            return _HTTPReply(resp.status_code, resp.text, dict(resp.headers), _sent_body(resp.request))

    def _interpret(self, ep: EndpointSettings, reply: _HTTPReply) -> dict[str, Any]:
        """Turn an HTTP reply into the response JSON or the right typed error."""
        try:
            body: Any = json.loads(reply.text)
        except ValueError:
            body = reply.text
        status = reply.status
        where = ep.base_url
        if not isinstance(body, (dict, list)):
            page = html_page_summary(reply.text, reply.headers.get("content-type", ""))
            if page is not None:  # not an OpenAI-compatible server: retrying cannot help, and once is enough
                raise BadResponse(
                    f"{ep.describe()} answered HTTP {status} with {page}, not an OpenAI-compatible JSON reply",
                    "point base_url at an OpenAI-compatible API (for vLLM: http://HOST:PORT/v1); "
                    f"open {where}/models in a browser to see what answers there.",
                    endpoint=where, status=status)
        if status == 429:
            raise RateLimited(f"{ep.describe()} is rate limiting (429): {error_message(body, 'too many requests')}",
                              endpoint=where, status=status,
                              retry_after_s=parse_retry_after(reply.headers.get("retry-after")))
        if status >= 500:
            raise EndpointUnavailable(
                f"{ep.describe()} failed with HTTP {status}: {error_message(body, 'server error')}",
                endpoint=where, status=status)
        if status >= 400:
            msg = error_message(body, f"HTTP {status}")
            if is_context_length_error(status, body):
                raise ContextLengthExceeded(f"the prompt does not fit {ep.model}'s context: {msg}",
                                            endpoint=where, status=status)
            raise EndpointRejected(f"{ep.describe()} rejected the request (HTTP {status}): {msg}",
                                   endpoint=where, status=status)
        if not isinstance(body, dict):
            raise BadResponse(f"{ep.describe()} answered HTTP {status} with invalid JSON: {reply.text[:200]!r}",
                              endpoint=where, status=status)
        if "error" in body and not body.get("choices"):
            raise EndpointRejected(f"{ep.describe()} answered with an error: {error_message(body)}",
                                   endpoint=where, status=status)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get("message"), dict):
            raise BadResponse(f"{ep.describe()} answered without choices[0].message: {reply.text[:200]!r}",
                              endpoint=where, status=status)
        return body

    @staticmethod
    def _fill(ex: LLMExchange, data: dict[str, Any]) -> None:
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
        server_reasoning = message.get("reasoning") or message.get("reasoning_content")
        ex.reply, ex.reasoning = split_reasoning(content if isinstance(content, str) else "",
                                                 server_reasoning if isinstance(server_reasoning, str) else None)
        ex.finish_reason = choice.get("finish_reason")
        ex.response_id = data.get("id")
        returned = data.get("model")
        ex.model_returned = returned if isinstance(returned, str) else None
        ex.usage = Usage.from_response(data.get("usage"), ex.reasoning, ex.reply)


def _sent_body(request: Any) -> dict[str, Any] | None:
    """The JSON body the SDK actually sent (what record and replay hash)."""
    try:
        body = json.loads(request.content)
    except (ValueError, AttributeError, TypeError):
        return None
    return body if isinstance(body, dict) else None


def run_sync(coro: Any, client: LLMClient | None = None) -> Any:
    """Run an agent coroutine from synchronous code (the agents' *_sync wrappers).

    Each call runs a fresh event loop; the client's connections opened on it are
    closed before it ends, so no socket outlives the loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError("called a *_sync agent function inside a running event loop; await the async version")

    async def run_and_close() -> Any:
        try:
            return await coro
        finally:
            if client is not None:
                await client.aclose()

    return asyncio.run(run_and_close())
