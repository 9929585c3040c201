"""`LLMClient`: chat completions over any OpenAI-compatible endpoint, with retries, budgets and a trace.

Requests stream (SSE) by default, with an idle timeout (no byte for `idle_timeout_s`)
separate from the total deadline `timeout_s` (see `agents/stream.py`); a server
that refuses `stream` is asked without it from then on, one that ignores it is
read as plain JSON. One loop here decides what is retried: connection errors,
5xx (also a proxy's HTML page), 429 with exponential backoff and jitter honouring
a short Retry-After; an idle timeout is retried `timeout_retries` times with a new
seed, and an endpoint that sent nothing for several requests in a row fails fast
for a while (a hung server costs minutes, not hours). Each endpoint's kind and
context window are read once (`agents/profiles.py`): `max_tokens` is clamped to
fit, lowered again from the numbers in a context error (every role), and only a
prompt that does not fit by itself raises `ContextLengthExceeded`. A reply cut at
max_tokens without an answer is `TruncatedReply`; a prompt the server silently cut
is `ContextTruncated`. Every failure is a typed `LLMError` carrying its exchange.

The client binds its HTTP connections and semaphore to the running event loop;
when it is used from a new loop (sync wrappers call `asyncio.run` per call) it
quietly opens fresh ones. Do not share one client between threads running
different loops at the same time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any

import httpx

from nncaption.agents import profiles
from nncaption.agents.errors import (
    ContextLengthExceeded,
    EndpointRejected,
    EndpointTimeout,
    LLMError,
    StructuredReplyError,
    TruncatedReply,
)
from nncaption.agents.interpret import (  # noqa: F401 - re-exported for callers and tests
    HTTPReply,
    error_message,
    html_page_summary,
    is_context_length_error,
    parse_retry_after,
    raise_for_reply,
)
from nncaption.agents.jsonparse import parse_json_object
from nncaption.agents.recording import Recorder, masked_request
from nncaption.agents.records import LLMExchange
from nncaption.agents.reply import check_reply, fill_exchange
from nncaption.agents.settings import EndpointSettings, LLMSettings
from nncaption.agents.stream import Limits, Timing, post
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

HUNG_AFTER = 3  # idle timeouts in a row (across calls) after which an endpoint fails fast ...
HUNG_COOLDOWN_S = 300.0  # ... for this long after the last one
MAX_ADJUSTMENTS = 4  # re-asks after a context error or a rejected parameter, per call


class LLMClient:
    """Async chat client for the designer, reviewer and fixer roles."""

    def __init__(self, settings: LLMSettings | None = None, *, record_path: Path | str | None = None,
                 seed: int | None = None, keep_exchanges: bool = False) -> None:
        self.settings = settings or LLMSettings()
        self.keep_exchanges = keep_exchanges
        self.recorder = Recorder(record_path) if record_path else None
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._info: dict[str, profiles.EndpointInfo] = {}
        self._info_locks: dict[str, asyncio.Lock] = {}
        self._no_response_format: set[tuple[str, str]] = set()
        self._no_stream: set[str] = set()  # endpoints that refused stream=true
        self._plain: set[str] = set()  # endpoints that answered a stream request with plain JSON
        self._quirks: dict[tuple[str, str], set[str]] = {}
        self._hung: dict[str, tuple[int, float]] = {}  # endpoint -> (idle timeouts in a row, when the last was)
        self.exchanges: list[LLMExchange] = []  # with keep_exchanges: every exchange made, in order

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections opened on the current loop."""
        http, self._http = self._http, None
        if http is not None:
            try:
                await http.aclose()
            except RuntimeError:  # opened on a loop that is gone
                pass

    def _bind_loop(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._http is None:
            # Connections and the semaphore belong to the old loop: start afresh on this one.
            if loop is not self._loop:
                self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)
                self._info_locks = {}
            self._loop = loop
            self._http = httpx.AsyncClient(follow_redirects=False, trust_env=True,
                                           limits=httpx.Limits(max_connections=None))
        return self._http

    @staticmethod
    def _headers(ep: EndpointSettings) -> dict[str, str]:
        return {"Authorization": f"Bearer {ep.api_key()}", "Accept": "application/json, text/event-stream",
                "User-Agent": "nn-caption"}

    async def endpoint_info(self, ep: EndpointSettings) -> profiles.EndpointInfo:
        """The endpoint's kind and context windows, read once per client (see agents/profiles.py)."""
        http = self._bind_loop()
        url = ep.base_url.rstrip("/")
        lock = self._info_locks.setdefault(url, asyncio.Lock())
        async with lock:
            if url in self._info:
                return self._info[url]
            info = await profiles.discover(http, url, self._headers(ep), profile=ep.profile)
            if info.listing_status is not None:  # unreachable now: ask again on the next call
                self._info[url] = info
        return info

    # -- public calls ----------------------------------------------------------------------
    async def chat(self, role: str, messages: list[dict[str, Any]], *, response_format: dict[str, Any] | None = None,
                   max_tokens: int | None = None, seed: int | None = None) -> LLMExchange:
        """One chat completion for `role`; raises an `LLMError` subclass carrying the exchange.

        `seed` is OpenAI's standard sampling seed (reproducible sampling on servers that
        honour it; the offline composer draws its choices from it).
        """
        self._bind_loop()
        ep = self.settings.for_role(role)
        ex = LLMExchange(role=role, endpoint=ep.safe_url(), model=ep.model, messages=list(messages),
                         started_at=time.time())
        t0 = time.perf_counter()
        t_start = t0
        try:
            info = await self.endpoint_info(ep)
            ex.profile = info.profile
            prompt_tokens = profiles.estimate_prompt_tokens(messages)
            params: dict[str, Any] = {
                "temperature": ep.temperature, "top_p": ep.top_p,
                "max_tokens": profiles.fit_max_tokens(max_tokens or ep.max_tokens, info.context_for(ep.model),
                                                      prompt_tokens)}
            if seed is not None:
                params["seed"] = int(seed)
            if response_format is not None:
                params["response_format"] = response_format
            assert self._semaphore is not None
            async with self._semaphore:
                t_start = time.perf_counter()
                ex.queued_s = t_start - t0
                data, timing = await self._with_retries(ep, info, messages, params, ex)
            fill_exchange(ex, data, timing, sum(len(str(m.get("content") or "")) for m in messages))
            check_reply(ep, ex)
        except LLMError as e:
            ex.error = safe_text(f"{e.category}: {e.message}", 2000)
            e.exchange = ex
            raise
        finally:
            ex.latency_s = time.perf_counter() - t_start
            ex.finished_at = time.time()
            if self.keep_exchanges:
                self.exchanges.append(ex)
        return ex

    async def chat_json(self, role: str, messages: list[dict[str, Any]], *, schema: dict[str, Any],
                        schema_name: str = "reply", max_tokens: int | None = None
                        ) -> tuple[dict[str, Any], list[LLMExchange]]:
        """A chat call whose answer is a JSON object following `schema`.

        Asks for `response_format={"type": "json_schema", ...}`; when the endpoint
        rejects that (a 400 that is not about context length) it asks again without
        it, remembers that for the endpoint, and parses the first JSON object in the
        answer. Returns the object and the exchanges made.
        """
        ep = self.settings.for_role(role)
        exchanges: list[LLMExchange] = []
        fmt: dict[str, Any] | None = {"type": "json_schema",
                                      "json_schema": {"name": schema_name, "schema": schema, "strict": True}}
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
                     ep.safe_url(), e.message)
            ex = await self.chat(role, messages, response_format=None, max_tokens=max_tokens)
            self._no_response_format.add((ep.base_url, ep.model))  # it was the format: skip it from now on
        exchanges.append(ex)
        obj = await asyncio.to_thread(parse_json_object, ex.reply)
        if obj is None:
            cls = TruncatedReply if ex.truncated else StructuredReplyError
            raise cls(f"the {role} reply holds no JSON object: {safe_text(ex.reply, 200, keep='head')}",
                      endpoint=ep.safe_url(), exchange=ex)
        return obj, exchanges

    # -- internals -------------------------------------------------------------------------
    def _limits(self, ep: EndpointSettings) -> Limits:
        url = ep.base_url.rstrip("/")
        idle = ep.idle_timeout_s
        if url in self._plain or url in self._no_stream or not ep.stream:
            idle = ep.timeout_s  # the whole reply comes at once: only the total deadline means anything
        return Limits(idle_s=min(idle, ep.timeout_s), total_s=ep.timeout_s,
                      max_bytes=ep.max_reply_bytes, max_reasoning_chars=ep.max_reasoning_chars)

    def _body(self, ep: EndpointSettings, info: profiles.EndpointInfo, messages: list[dict[str, Any]],
              params: dict[str, Any]) -> dict[str, Any]:
        quirks = frozenset(self._quirks.get((ep.base_url, ep.model), set()))
        shaped = profiles.shape_params(info.profile, ep.model, params, profiles.estimate_prompt_tokens(messages),
                                       quirks)
        body: dict[str, Any] = {"model": ep.model, "messages": messages, **shaped, **ep.extra_body}
        if ep.stream and ep.base_url.rstrip("/") not in self._no_stream:
            body["stream"] = True
            if "no-stream-options" not in quirks:
                body["stream_options"] = {"include_usage": True}
        return body

    def _hung_problem(self, ep: EndpointSettings) -> str | None:
        count, last = self._hung.get(ep.base_url.rstrip("/"), (0, 0.0))
        if count >= HUNG_AFTER and time.monotonic() - last < HUNG_COOLDOWN_S:
            return f"{ep.describe()} sent nothing for its last {count} requests (hung server?)"
        return None

    async def _with_retries(self, ep: EndpointSettings, info: profiles.EndpointInfo, messages: list[dict[str, Any]],
                            params: dict[str, Any], ex: LLMExchange) -> tuple[dict[str, Any], Timing]:
        attempt = adjustments = timeouts = 0
        url = ep.base_url.rstrip("/")
        while True:
            hung = self._hung_problem(ep)
            if hung:
                raise EndpointTimeout(hung, "check the server's log; it accepted connections but never answered.",
                                      endpoint=ep.safe_url())
            attempt += 1
            ex.attempts = attempt
            body = self._body(ep, info, messages, params)
            ex.params = {k: v for k, v in masked_request(body).items() if k not in ("model", "messages")}
            timing = Timing()
            reply: HTTPReply | None = None
            try:
                reply = await post(self._bind_loop(), f"{url}/chat/completions", self._headers(ep), body,
                                   self._limits(ep), timing, describe=ep.describe(), where=ep.safe_url())
                if reply.data is None and reply.status == 200 and body.get("stream"):
                    self._plain.add(url)
                data = raise_for_reply(ep.safe_url(), ep.describe(), ep.model, reply)
                self._record(body, reply)
                self._hung.pop(url, None)
                return data, timing
            except ContextLengthExceeded as e:
                self._record(body, reply)
                lower = self._lower_budget(ep, info, e, params, messages)
                if lower is None or adjustments >= MAX_ADJUSTMENTS:
                    raise
                adjustments += 1
                log.info("%s: prompt + max_tokens do not fit; asking again with max_tokens %d (was %d)",
                         ep.describe(), lower, params["max_tokens"])
                params["max_tokens"] = lower
            except EndpointRejected as e:
                if adjustments >= MAX_ADJUSTMENTS or not self._learn(ep, body, e):
                    self._record(body, reply)
                    raise
                adjustments += 1
                if url in self._no_stream and body.get("stream"):
                    attempt -= 1  # the server only refused streaming: not a failed try of this request
                else:
                    self._record(body, reply)
            except LLMError as e:
                self._record(body, reply)
                if isinstance(e, EndpointTimeout) and timing.first_byte is None:
                    count, _ = self._hung.get(url, (0, 0.0))
                    self._hung[url] = (count + 1, time.monotonic())
                elif timing.first_byte is not None:
                    self._hung.pop(url, None)
                await self._backoff(ep, e, attempt, timeouts, params)
                if isinstance(e, EndpointTimeout):
                    timeouts += 1

    def _record(self, body: dict[str, Any], reply: HTTPReply | None) -> None:
        """Append the exchange to the recording (not a server's refusal of streaming: a replay never needs it)."""
        if self.recorder is not None and reply is not None:
            self.recorder.write(body, reply.status, reply.text)

    async def _backoff(self, ep: EndpointSettings, e: LLMError, attempt: int, timeouts: int,
                       params: dict[str, Any]) -> None:
        """Sleep before the next try, or re-raise `e` when no try is left."""
        if not e.retryable:
            raise e
        if isinstance(e, EndpointTimeout):
            if timeouts >= ep.timeout_retries:
                e.message = f"{e.message} (gave up after {timeouts + 1} tries)"
                raise e
            if "seed" in params:  # the same seed may walk into the same endless generation
                params["seed"] = self._rng.randrange(2**31)
        elif attempt > ep.max_retries:
            e.message = f"{e.message} (gave up after {attempt} attempts)"
            raise e
        delay = min(ep.backoff_max_s, ep.backoff_base_s * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
        if e.retry_after_s is not None:
            if e.retry_after_s > ep.retry_after_max_s:
                e.message = f"{e.message} (the server asked to wait {e.retry_after_s:.0f} s)"
                raise e
            delay = max(delay, e.retry_after_s)
        log.warning("%s attempt %d failed (%s: %s); retrying in %.2f s", ep.describe(), attempt, e.category,
                    safe_text(e.message, 300), delay)
        await asyncio.sleep(delay)

    def _lower_budget(self, ep: EndpointSettings, info: profiles.EndpointInfo, e: ContextLengthExceeded,
                      params: dict[str, Any], messages: list[dict[str, Any]]) -> int | None:
        """A max_tokens that fits after context error `e`; None when the prompt alone does not fit."""
        current = int(params["max_tokens"])
        prompt = e.prompt_tokens
        if e.context_tokens and prompt is None:
            prompt = profiles.estimate_prompt_tokens(messages)
        if e.context_tokens and prompt is not None:
            room = e.context_tokens - prompt - profiles.SAFETY_TOKENS
            if room < profiles.MIN_REPLY_TOKENS:
                e.message = f"{e.message} (the prompt alone is {prompt} of {e.context_tokens} tokens)"
                return None
            if room < current:
                return room
            if e.prompt_tokens is not None:
                return None  # it fits by the server's own numbers: something else is wrong
        half = current // 2
        return half if half >= profiles.MIN_REPLY_TOKENS else None

    def _learn(self, ep: EndpointSettings, body: dict[str, Any], e: EndpointRejected) -> bool:
        """Adapt to a parameter the endpoint refused; True when asking again may succeed."""
        msg = e.message.lower()
        url = ep.base_url.rstrip("/")
        quirks = self._quirks.setdefault((ep.base_url, ep.model), set())
        if "stream_options" in msg and "stream_options" in body:
            quirks.add("no-stream-options")
        elif "stream" in msg and body.get("stream"):
            self._no_stream.add(url)
        elif "max_completion_tokens" in msg and "max_tokens" in body:
            quirks.add("max_completion_tokens")
        elif ("temperature" in msg or "top_p" in msg) and ("temperature" in body or "top_p" in body) \
                and ("unsupported" in msg or "not support" in msg):
            quirks.add("no-sampling")
        else:
            return False
        log.info("%s refused a parameter (%s); asking again without it", ep.describe(), safe_text(e.message, 200))
        return True


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
