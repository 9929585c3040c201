"""Read an endpoint's HTTP reply: its status, error message and body, into a completion or a typed `LLMError`.

The order matters: the status code is looked at before the body's shape, so a
proxy's 502/504/524 HTML page is a transient `EndpointUnavailable` (retried, with
a hint naming the proxy's timeout when the page says so), while an HTML page with
200 or 404 means base_url points at something that is not an OpenAI-compatible
API (not retried). Context-length errors of vLLM, SGLang, llama.cpp and OpenAI are
recognised, and the prompt size and context window they state are read out so
the client can lower max_tokens and ask again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nncaption.agents.errors import (
    BadResponse,
    ContextLengthExceeded,
    EndpointRejected,
    EndpointTimeout,
    EndpointUnavailable,
    RateLimited,
)
from nncaption.agents.jsonparse import loads
from nncaption.netapi.safetext import safe_text

_CONTEXT_PATTERNS = re.compile(
    r"context[ _-]?length|maximum context|context window|too many tokens|prompt is too long|"
    r"input tokens? exceed|exceeds? the model'?s? max|max_model_len|exceeds the available context size|"
    r"context size",
    re.IGNORECASE,
)
_HTML_START = re.compile(r"^\s*(<!doctype html|<html|<head|<body|<\?xml)", re.IGNORECASE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_PROXY_TIMEOUT = re.compile(r"time-?out|timed out", re.IGNORECASE)
# "maximum context length is N tokens" (vLLM, OpenAI), "maximum context length of N tokens" (SGLang),
# "the model's context length (N tokens)" (SGLang, older).
_CONTEXT_SIZE = re.compile(r"(?:maximum context length (?:is|of)|context length \(|context window of)\s*(\d+)",
                           re.IGNORECASE)
_PROMPT_SIZE = (
    re.compile(r"\((\d+) in the messages", re.IGNORECASE),  # vLLM: (P in the messages, C in the completion)
    re.compile(r"requested (\d+) tokens in the messages", re.IGNORECASE),  # vLLM, prompt-only wording
    re.compile(r"your request has (\d+) input tokens", re.IGNORECASE),  # vLLM >= 0.9
    re.compile(r"(\d+) tokens from the input messages", re.IGNORECASE),  # SGLang
    re.compile(r"the input \((\d+) tokens\)", re.IGNORECASE),  # SGLang, older
    re.compile(r"messages resulted in (\d+) tokens", re.IGNORECASE),  # OpenAI
)
TRANSIENT_STATUSES = frozenset({408, 425, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


@dataclass
class HTTPReply:
    """What one HTTP try produced, before interpretation. `data` is set when a stream was assembled."""

    status: int
    text: str
    headers: dict[str, str]
    request_body: dict[str, Any] | None
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class ContextInfo:
    """What a context-length error says: the prompt's tokens and the model's window (None: not stated)."""

    prompt_tokens: int | None = None
    context_tokens: int | None = None


def error_message(body: Any, fallback: str = "") -> str:
    """The human message in an OpenAI / vLLM / FastAPI style error body (escaped, at most 500 characters)."""
    msg = ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            msg = str(err["message"])
        elif isinstance(err, str) and err:
            msg = err
        else:
            for key in ("message", "detail"):
                if body.get(key):
                    msg = str(body[key])
                    break
    elif isinstance(body, str) and body.strip():
        msg = body.strip()
    return safe_text(" ".join(msg.split()), 500, keep="head") if msg else fallback  # one line: no fake log lines


def _error_field(body: Any, name: str) -> Any:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get(name)
    return body.get(name) if isinstance(body, dict) else None


def is_context_length_error(status: int, body: Any) -> bool:
    """A 400/413/422 that says the prompt does not fit the model's context."""
    if status not in (400, 413, 422):
        return False
    code = str(_error_field(body, "code") or "")
    kind = str(_error_field(body, "type") or "")
    return (code == "context_length_exceeded" or kind == "exceed_context_size_error"
            or bool(_CONTEXT_PATTERNS.search(error_message(body))))


def context_info(body: Any) -> ContextInfo:
    """Prompt tokens and context window from a context error (llama.cpp's fields or the servers' wordings)."""
    def number(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 100_000_000 else None

    prompt, ctx = number(_error_field(body, "n_prompt_tokens")), number(_error_field(body, "n_ctx"))
    msg = error_message(body)
    if ctx is None:
        m = _CONTEXT_SIZE.search(msg)
        ctx = int(m.group(1)) if m else None
    if prompt is None:
        for pattern in _PROMPT_SIZE:
            m = pattern.search(msg)
            if m:
                prompt = int(m.group(1))
                break
    return ContextInfo(prompt, ctx)


def html_page_summary(text: str, content_type: str = "") -> str | None:
    """A one-line description of an HTML page ("an HTML page titled '502 Bad Gateway'"); None when not HTML."""
    if "html" not in content_type.lower() and not _HTML_START.match(text[:500]):
        return None
    m = _HTML_TITLE.search(text[:20_000])
    title = safe_text(" ".join(m.group(1).split()), 120, keep="head") if m else ""
    return f"an HTML page titled {title!r}" if title else "an HTML page"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0.0 <= seconds < 1e9 else None


def parse_body(text: str) -> Any:
    """The body as JSON when it is JSON (depth-limited), else the text."""
    try:
        return loads(text)
    except ValueError:
        return text


def raise_for_reply(where: str, describe: str, model: str, reply: HTTPReply) -> dict[str, Any]:
    """The completion in `reply`, or the typed error its status and body call for."""
    status = reply.status
    body: Any = reply.data if reply.data is not None else parse_body(reply.text)
    ctype = reply.headers.get("content-type", "")
    page = None if isinstance(body, (dict, list)) else html_page_summary(reply.text, ctype)
    retry_after = parse_retry_after(reply.headers.get("retry-after"))
    if 300 <= status < 400:
        location = safe_text(reply.headers.get("location", ""), 200, keep="head")
        raise BadResponse(f"{describe} answered HTTP {status}, a redirect (to {location or 'nowhere'}); "
                          "redirects are never followed (the key would go with them)",
                          "set base_url to the final address (https:// if the server redirects to it).",
                          endpoint=where, status=status)
    if status == 429:
        raise RateLimited(f"{describe} is rate limiting (429): {error_message(body, 'too many requests')}",
                          endpoint=where, status=status, retry_after_s=retry_after)
    if status >= 500 or status in TRANSIENT_STATUSES:
        what = page or error_message(body, "server error")
        proxy_timeout = status == 524 or (status in (504, 522) or bool(_PROXY_TIMEOUT.search(what)))
        hint = ("a proxy in front of the server (nginx, Cloudflare, LiteLLM) gave up waiting: raise its read "
                "timeout (Cloudflare cuts at 100 s: stream, or bypass it) or lower max_tokens."
                if proxy_timeout and (page or status >= 520 or status == 504) else "")
        error_cls = EndpointTimeout if status == 408 else EndpointUnavailable
        err = error_cls(f"{describe} failed with HTTP {status}: {what}", hint, endpoint=where, status=status)
        err.retry_after_s = retry_after
        raise err
    if page is not None:  # not an OpenAI-compatible server: retrying cannot help, and once is enough
        raise BadResponse(
            f"{describe} answered HTTP {status} with {page}, not an OpenAI-compatible JSON reply",
            "point base_url at an OpenAI-compatible API (for vLLM: http://HOST:PORT/v1); "
            f"open {where}/models in a browser to see what answers there.",
            endpoint=where, status=status)
    if status >= 400:
        msg = error_message(body, f"HTTP {status}")
        if is_context_length_error(status, body):
            info = context_info(body)
            raise ContextLengthExceeded(f"the prompt does not fit {model}'s context: {msg}", endpoint=where,
                                        status=status, prompt_tokens=info.prompt_tokens,
                                        context_tokens=info.context_tokens)
        raise EndpointRejected(f"{describe} rejected the request (HTTP {status}): {msg}", endpoint=where, status=status)
    if not isinstance(body, dict):
        raise BadResponse(f"{describe} answered HTTP {status} with invalid JSON: {safe_text(reply.text, 200)}",
                          endpoint=where, status=status)
    if "error" in body and not body.get("choices"):
        if is_context_length_error(400, body):
            info = context_info(body)
            raise ContextLengthExceeded(f"the prompt does not fit {model}'s context: {error_message(body)}",
                                        endpoint=where, status=status, prompt_tokens=info.prompt_tokens,
                                        context_tokens=info.context_tokens)
        code = _error_field(body, "code")
        if isinstance(code, int) and code >= 500:  # a failure reported inside a 200 stream
            raise EndpointUnavailable(f"{describe} failed while answering: {error_message(body)}", endpoint=where,
                                      status=code)
        raise EndpointRejected(f"{describe} answered with an error: {error_message(body)}", endpoint=where,
                               status=status)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
            or not isinstance(choices[0].get("message"), dict):
        raise BadResponse(f"{describe} answered without choices[0].message: {safe_text(reply.text, 200)}",
                          endpoint=where, status=status)
    return body
