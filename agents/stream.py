"""One HTTP try of a chat completion: streamed (SSE) or plain, bounded in bytes and in time.

Two clocks bound a try: `idle_s` (no byte for that long: the server is hung; the
socket's read timeout) and `total_s` (the whole try). A streamed reply is
assembled into the same dict a non-streaming server returns, so the rest of the
client never sees the difference; a server that ignores `stream` and answers
plain JSON is read as it is. The body is read incrementally and abandoned beyond
`max_bytes` (reasoning beyond `max_reasoning_chars`), JSON lines are parsed with
a depth limit, and redirects are never followed (httpx's default here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from nncaption.agents.errors import BadResponse, EndpointTimeout, EndpointUnavailable, ReplyTooLarge
from nncaption.agents.interpret import HTTPReply
from nncaption.agents.jsonparse import loads
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]*@")  # the user:password@ part of a URL


@dataclass
class Limits:
    """How long and how much one try may take."""

    idle_s: float
    total_s: float
    max_bytes: int
    max_reasoning_chars: int


@dataclass
class Timing:
    """When the bytes of one try arrived (perf_counter seconds)."""

    sent: float = 0.0
    first_byte: float | None = None
    first_token: float | None = None
    done: float | None = None
    streamed: bool = False  # the reply came as server-sent events


@dataclass
class _Assembly:
    """A streamed completion being put together from its chunks."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    reasoning_chars: int = 0
    finish_reason: str | None = None
    usage: Any = None
    id: Any = None
    model: Any = None
    error: dict[str, Any] | None = None

    def to_completion(self) -> dict[str, Any]:
        if self.error is not None:
            return self.error
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        return {"id": self.id, "object": "chat.completion", "model": self.model, "usage": self.usage,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}]}


def without_userinfo(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """`url` without its user:password@ part, and that part as Basic auth (what httpx would send for it).

    Requests go to the bare URL so no log line (httpx logs every request URL at INFO, and run.log keeps INFO)
    and no error message carries the password.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return url, None
    if not parsed.username and not parsed.password:
        return url, None
    return str(parsed.copy_with(userinfo=b"")), httpx.BasicAuth(parsed.username, parsed.password)


async def post(http: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any], limits: Limits,
               timing: Timing, *, describe: str, where: str) -> HTTPReply:
    """POST `body`; any HTTP status comes back as an `HTTPReply`, transport failures raise typed errors."""
    timeout = httpx.Timeout(connect=min(CONNECT_TIMEOUT_S, limits.idle_s), read=limits.idle_s,
                            write=limits.idle_s, pool=None)
    timing.sent = time.perf_counter()
    try:
        async with asyncio.timeout(limits.total_s):
            target, auth = without_userinfo(url)
            async with http.stream("POST", target, json=body, headers=headers, timeout=timeout, auth=auth) as resp:
                resp_headers = {k.lower(): v for k, v in resp.headers.items()}
                ctype = resp_headers.get("content-type", "")
                if resp.status_code == 200 and "text/event-stream" in ctype:
                    timing.streamed = True
                    data = await _read_sse(resp, limits, timing, describe=describe, where=where)
                    text = json.dumps(data, ensure_ascii=False)
                    return HTTPReply(resp.status_code, text, resp_headers, body, data)
                raw = await _read_capped(resp, limits, timing, describe=describe, where=where)
                return HTTPReply(resp.status_code, raw.decode("utf-8", "replace"), resp_headers, body)
    except (httpx.ReadTimeout, httpx.WriteTimeout):
        what = "stopped sending" if timing.first_byte is not None else "sent nothing"
        raise EndpointTimeout(f"{describe} {what} for {limits.idle_s:g} s (idle timeout)", endpoint=where) from None
    except TimeoutError:
        raise EndpointTimeout(f"{describe} did not finish within {limits.total_s:g} s (total deadline)",
                              endpoint=where) from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
        raise EndpointUnavailable(f"cannot connect to {where}: {_shown(e)}", endpoint=where) from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        raise EndpointUnavailable(f"{describe} dropped the connection: {_shown(e) or type(e).__name__}",
                                  endpoint=where) from None
    except httpx.HTTPError as e:
        raise EndpointUnavailable(f"{describe}: {type(e).__name__}: {_shown(e)}", endpoint=where) from None


def _shown(e: Exception) -> str:
    """An httpx error's text for messages: bounded, and any user:password@ of a URL in it masked."""
    return _URL_CREDENTIALS.sub("***@", safe_text(e, 300))


async def _capped_chunks(resp: httpx.Response, limits: Limits, timing: Timing, *, what: str,
                         where: str) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive (the first byte timed); ReplyTooLarge past `limits.max_bytes`."""
    size = 0
    async for chunk in resp.aiter_bytes():
        if timing.first_byte is None:
            timing.first_byte = time.perf_counter()
        size += len(chunk)
        if size > limits.max_bytes:
            raise ReplyTooLarge(f"{what} over {limits.max_bytes} bytes; stopped reading it",
                                endpoint=where, status=resp.status_code)
        yield chunk


async def _read_capped(resp: httpx.Response, limits: Limits, timing: Timing, *, describe: str, where: str) -> bytes:
    chunks = [c async for c in _capped_chunks(resp, limits, timing, what=f"{describe} sent a body", where=where)]
    timing.done = time.perf_counter()
    return b"".join(chunks)


async def _read_sse(resp: httpx.Response, limits: Limits, timing: Timing, *, describe: str,
                    where: str) -> dict[str, Any]:
    """Assemble `data:` events until `[DONE]` or the end of the body."""
    acc = _Assembly()
    pending: list[bytes] = []  # the part of the current line received so far (no quadratic joins)
    async for chunk in _capped_chunks(resp, limits, timing, what=f"{describe} streamed", where=where):
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        *lines, rest = (b"".join(pending) + chunk).split(b"\n")
        pending = [rest]
        for line in lines:
            if _event(line.strip(), acc, limits, timing, describe=describe, where=where):
                timing.done = time.perf_counter()
                return acc.to_completion()
    buffer = b"".join(pending).strip()
    if buffer:
        _event(buffer, acc, limits, timing, describe=describe, where=where)
    timing.done = time.perf_counter()
    return acc.to_completion()


def _event(line: bytes, acc: _Assembly, limits: Limits, timing: Timing, *, describe: str, where: str) -> bool:
    """Take one SSE line into `acc`; True at the end of the stream."""
    if not line.startswith(b"data:"):
        return False  # comments (": ping"), event names, ids, blank lines
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return True
    try:
        event = loads(payload)
    except ValueError as e:
        raise BadResponse(f"{describe} streamed an event that is not JSON ({safe_text(e, 120)}): "
                          f"{safe_text(payload[:120].decode('utf-8', 'replace'), 120)}",
                          endpoint=where, status=200) from None
    if not isinstance(event, dict):
        return False
    if "error" in event and not event.get("choices"):
        acc.error = event
        return True
    acc.id = acc.id or event.get("id")
    acc.model = acc.model or event.get("model")
    if event.get("usage") is not None:
        acc.usage = event.get("usage")
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice.get("message")
    if isinstance(delta, dict):
        text = delta.get("content")
        thought = delta.get("reasoning_content")
        if not isinstance(thought, str):
            thought = delta.get("reasoning")
        if isinstance(text, str) and text:
            acc.content.append(text)
        if isinstance(thought, str) and thought:
            acc.reasoning.append(thought)
            acc.reasoning_chars += len(thought)
            if acc.reasoning_chars > limits.max_reasoning_chars:
                raise ReplyTooLarge(f"{describe} streamed over {limits.max_reasoning_chars} characters of "
                                    "reasoning; stopped reading it", endpoint=where, status=200)
        if timing.first_token is None and ((isinstance(text, str) and text) or (isinstance(thought, str) and thought)):
            timing.first_token = time.perf_counter()
    if isinstance(choice.get("finish_reason"), str):
        acc.finish_reason = choice["finish_reason"]
    return False
