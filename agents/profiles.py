"""Endpoint profiles: what kind of server answers (vLLM, SGLang, OpenAI, Ollama, llama.cpp, generic) and what fits it.

Detected once per endpoint from what the server says about itself: the models
listing (`owned_by`, vLLM's `max_model_len`), then the kind-specific routes
(`/props` of llama.cpp, `/api/version` of Ollama, `/get_server_info` of SGLang,
`/version` of vLLM); a `profile` in the endpoint settings skips the detection.
The profile shapes each request: OpenAI's reasoning models (o1, o3, o4, gpt-5)
get `max_completion_tokens` and no sampling parameters, Ollama gets
`options.num_ctx` large enough for prompt and reply, and every profile's
`max_tokens` is clamped to the context window where the server reports one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from nncaption.agents.jsonparse import loads
from nncaption.agents.settings import mask_url
from nncaption.agents.stream import without_userinfo

log = logging.getLogger(__name__)

PROFILES: tuple[str, ...] = ("vllm", "sglang", "openai", "ollama", "llamacpp", "generic")
OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)
MAX_INFO_BYTES = 2_000_000
SAFETY_TOKENS = 64  # room left beside prompt + reply for the chat template's own tokens
MIN_REPLY_TOKENS = 1024  # below this the prompt itself is the problem (drop snippets), not the budget
_OWNERS = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp", "llama.cpp": "llamacpp", "library": "ollama",
           "ollama": "ollama", "openai": "openai", "system": "openai", "openai-internal": "openai"}


@dataclass
class EndpointInfo:
    """What an endpoint said about itself. `models` is None when its listing could not be read."""

    profile: str = "generic"
    models: list[str] | None = None
    context: dict[str, int] = field(default_factory=dict)  # model id -> context window in tokens
    server_context: int | None = None  # a window the server reports for whatever it serves (llama.cpp n_ctx)
    listing_status: int | None = None
    listing_problem: str | None = None  # why the listing is unusable (HTML page, 401, not JSON...)

    def context_for(self, model: str) -> int | None:
        return self.context.get(model) or self.server_context


def root_url(base_url: str) -> str:
    """The server's root: base_url without a trailing /v1."""
    url = base_url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def is_openai_reasoning(profile: str, model: str) -> bool:
    """OpenAI's reasoning models take max_completion_tokens and no temperature / top_p."""
    return profile == "openai" and bool(OPENAI_REASONING.match(model.rsplit("/", 1)[-1]))


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A generous estimate of the prompt's tokens (3 characters per token plus the template's per-message cost)."""
    chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 0 for m in messages)
    return chars // 3 + 8 * len(messages)


def fit_max_tokens(requested: int, context: int | None, prompt_tokens: int) -> int:
    """`requested`, lowered so that prompt + reply fit `context` (never below MIN_REPLY_TOKENS)."""
    if context is None or context <= 0:
        return requested
    room = context - prompt_tokens - SAFETY_TOKENS
    return max(1, min(requested, max(room, MIN_REPLY_TOKENS)))


def shape_params(profile: str, model: str, params: dict[str, Any], prompt_tokens: int,
                 quirks: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The request's parameters as `profile` wants them (a new dict; `params` is left alone).

    `quirks` are what the endpoint taught us by rejecting a parameter:
    "max_completion_tokens" (use it instead of max_tokens) and "no-sampling" (drop temperature/top_p).
    """
    out = dict(params)
    if is_openai_reasoning(profile, model) or "max_completion_tokens" in quirks:
        if "max_tokens" in out:
            out["max_completion_tokens"] = out.pop("max_tokens")
    if is_openai_reasoning(profile, model) or "no-sampling" in quirks:
        out.pop("temperature", None)
        out.pop("top_p", None)
    if profile == "ollama":
        reply = int(out.get("max_tokens") or out.get("max_completion_tokens") or 0)
        num_ctx = -(-(prompt_tokens + reply + SAFETY_TOKENS) // 1024) * 1024
        options = dict(out.get("options") or {})
        options.setdefault("num_ctx", num_ctx)
        out["options"] = options
    return out


async def _get_json(http: httpx.AsyncClient, url: str, headers: dict[str, str], timeout_s: float) -> tuple[int, Any]:
    """(status, JSON body or None) of a small GET; transport errors propagate."""
    target, auth = without_userinfo(url)  # no password in httpx's request log
    async with http.stream("GET", target, headers=headers, timeout=timeout_s, auth=auth) as resp:
        size, chunks = 0, []
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > MAX_INFO_BYTES:
                return resp.status_code, None
            chunks.append(chunk)
        try:
            return resp.status_code, loads(b"".join(chunks))
        except ValueError:
            return resp.status_code, None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 100_000_000 else None


def read_listing(info: EndpointInfo, body: Any) -> None:
    """Models, context windows and a profile guess from a /v1/models body."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        info.listing_problem = "its /models answer has no `data` list"
        return
    info.models = []
    for entry in data[:1000]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        mid = entry["id"]
        info.models.append(mid)
        ctx = _positive_int(entry.get("max_model_len")) or _positive_int(entry.get("context_length"))
        if ctx:
            info.context[mid] = ctx
        owner = str(entry.get("owned_by") or "").lower()
        if owner in _OWNERS and info.profile == "generic":
            info.profile = _OWNERS[owner]


async def discover(http: httpx.AsyncClient, base_url: str, headers: dict[str, str], *, timeout_s: float = 10.0,
                   profile: str = "auto") -> EndpointInfo:
    """Read the endpoint's models listing and, when needed, its kind-specific routes. Never raises for HTTP."""
    info = EndpointInfo()
    url = base_url.rstrip("/")
    shown = mask_url(url)  # what messages and logs may carry (no user:password, no key in the query)
    try:
        status, body = await _get_json(http, f"{url}/models", headers, timeout_s)
        info.listing_status = status
        if status >= 400:
            info.listing_problem = f"GET {shown}/models answered HTTP {status}"
        elif body is None:
            info.listing_problem = f"GET {shown}/models did not answer JSON (is base_url missing /v1?)"
        else:
            read_listing(info, body)
    except httpx.HTTPError as e:
        info.listing_problem = f"GET {shown}/models failed: {type(e).__name__}"
        return info
    if (urlsplit(base_url).hostname or "").lower() == "api.openai.com":
        info.profile = "openai"
    root = root_url(base_url)
    if profile in PROFILES:
        info.profile = profile
    if info.profile in ("generic", "llamacpp"):
        await _probe_kind(http, root, headers, info)
    log.info("endpoint %s: profile %s, models %s, context %s", shown, info.profile, info.models,
             info.context or info.server_context)
    return info


async def _probe_kind(http: httpx.AsyncClient, root: str, headers: dict[str, str], info: EndpointInfo) -> None:
    """Ask the kind-specific routes who answers (each a quick GET; failures just mean 'not this kind')."""
    checks = (("/props", "llamacpp"), ("/api/version", "ollama"), ("/get_server_info", "sglang"), ("/version", "vllm"))
    for path, kind in checks:
        try:
            status, body = await _get_json(http, root + path, headers, 5.0)
        except httpx.HTTPError:
            continue
        if status != 200 or not isinstance(body, dict):
            continue
        if kind == "llamacpp" and isinstance(body.get("default_generation_settings"), dict):
            settings = body["default_generation_settings"]
            info.server_context = _positive_int(settings.get("n_ctx")) or _positive_int(body.get("n_ctx"))
            info.profile = "llamacpp"
            return
        if kind == "ollama" and isinstance(body.get("version"), str) and info.profile == "generic":
            info.profile = "ollama"
            return
        if kind == "sglang" and ("model_path" in body or "tokenizer_path" in body) and info.profile == "generic":
            info.profile = "sglang"
            ctx = _positive_int(body.get("context_length"))
            if ctx:
                info.server_context = ctx
            return
        if kind == "vllm" and isinstance(body.get("version"), str) and info.profile == "generic":
            info.profile = "vllm"
            return
