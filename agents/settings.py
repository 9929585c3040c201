"""Per-role LLM endpoint settings.

The designer, reviewer and fixer may each talk to a different server and model.
A role's settings inherit the shared endpoint field by field: `{"fixer":
{"temperature": 0.2}}` keeps the shared base_url, model and key variable and only
changes the temperature (`LLMSettings.for_role` resolves it). Defaults target a
local vLLM serving the reference generator (DeepSeek-R1-0528-Qwen3-8B) at
http://127.0.0.1:8000/v1 with the sampling settings recommended for R1 models and
a reply budget (`max_tokens` 32768) a reasoning model needs.

Keys: the key is never stored here, only the *name* of the environment variable
that holds it (`api_key_env`). With no variable named, `OPENAI_API_KEY` is used for
OpenAI's own host (api.openai.com) only; every other server gets the placeholder
"EMPTY". A named key is never sent over plain http to a host that is not loopback
unless `allow_insecure_key = true`. `EndpointSettings.masked_dump()` is what may be
printed or stored.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from nncaption.netapi.errors import ConfigError

DEFAULT_MODEL = "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MAX_TOKENS = 32768  # a reasoning model's reply (thinking + a ~2.4K-token model file); clamped to fit
DEFAULT_DIFF_EDITS = 0.5  # improve/fix requests that ask for SEARCH/REPLACE edits (agents/diffedit.py)
DEFAULT_IDLE_TIMEOUT_S = 120.0  # no byte from a streaming reply for this long: the request is hung
PLACEHOLDER_API_KEY = "EMPTY"  # what vLLM and most local servers accept when no key is configured
OPENAI_HOSTS: frozenset[str] = frozenset({"api.openai.com"})
OPENAI_KEY_ENV = "OPENAI_API_KEY"
MASK = "***"

Role = Literal["designer", "reviewer", "fixer"]
ROLES: tuple[str, ...] = ("designer", "reviewer", "fixer")
Profile = Literal["auto", "vllm", "sglang", "openai", "ollama", "llamacpp", "generic"]
PROFILES: tuple[str, ...] = ("auto", "vllm", "sglang", "openai", "ollama", "llamacpp", "generic")

# Names whose values are secrets (api_key, x-api-key, access_token, client_secret...); not max_tokens, api_key_env.
_SECRET_NAME = re.compile(r"(api[_-]?key|key|token|secret|password|passwd|authorization|auth|bearer|signature|sig)$",
                          re.IGNORECASE)


def is_loopback_host(host: str | None) -> bool:
    """Whether `host` (a URL's hostname, brackets stripped) is this machine: localhost or a loopback address."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_url(url: str) -> str:
    """`url` with its user:password part and secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_NAME.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of JSON-like `value` with values under secret-looking keys (api_key, token, ...) replaced by ***."""
    if isinstance(value, dict):
        return {k: (MASK if _SECRET_NAME.search(str(k)) and isinstance(v, str) and v
                    else mask_secrets(v, str(k)))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


class EndpointSettings(BaseModel):
    """One OpenAI-compatible endpoint and how to call it (the one place for the defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    # Name of the environment variable holding the key; None: OPENAI_API_KEY for api.openai.com, else no key.
    api_key_env: str | None = None
    # Send a named key over plain http to a host that is not loopback (off: such a config is refused).
    allow_insecure_key: bool = False
    # Server kind: picks request shapes (OpenAI reasoning models, Ollama's num_ctx...); auto detects it.
    profile: Profile = "auto"
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    # Reply budget (reasoning + answer); clamped to what fits the served context where the server reports it.
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    # Total deadline of one request (a long reasoning reply takes minutes).
    timeout_s: float = Field(default=600.0, gt=0.0)
    # Stream the reply (SSE); a server that refuses it is asked without. No byte for idle_timeout_s: timed out.
    stream: bool = True
    idle_timeout_s: float = Field(default=DEFAULT_IDLE_TIMEOUT_S, gt=0.0)
    # Tries after a timed-out request (each with a new seed) before the call fails as endpoint-timeout.
    timeout_retries: int = Field(default=1, ge=0)
    # Caps on what one reply may hold (a reply over them is reply-too-large, not read further).
    max_reply_bytes: int = Field(default=8_000_000, ge=1024)
    max_reasoning_chars: int = Field(default=2_000_000, ge=1024)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # Share of improve/fix requests that ask for SEARCH/REPLACE edits to the parent instead of the whole file
    # (a stable draw per request; edits that do not apply are followed by one whole-file request). Designer and
    # fixer only; 0 = always whole files, 1 = always edits.
    diff_edits: float = Field(default=DEFAULT_DIFF_EDITS, ge=0.0, le=1.0)
    # Price in US dollars per million prompt (input) and completion (output) tokens, for `[budget] max_cost_usd`
    # and the cost shown in reports (graph/budget.py); 0 = free (a local server).
    price_in_per_mtok: float = Field(default=0.0, ge=0.0)
    price_out_per_mtok: float = Field(default=0.0, ge=0.0)
    max_retries: int = Field(default=4, ge=0)
    # Backoff: delay = min(backoff_max_s, backoff_base_s * 2**(attempt-1)) * U(0.5, 1.0)
    backoff_base_s: float = Field(default=1.0, ge=0.0)
    backoff_max_s: float = Field(default=30.0, ge=0.0)
    # A Retry-After header is honoured when it asks for at most this many seconds.
    retry_after_max_s: float = Field(default=60.0, ge=0.0)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        """An http(s) URL with a host: a URL without a scheme would otherwise fail on every retry."""
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{mask_url(value)!r} is not an http:// or https:// URL with a host; "
                             f"write it like http://127.0.0.1:8000/v1")
        return value.strip()

    @field_validator("api_key_env")
    @classmethod
    def _check_key_env(cls, value: str | None) -> str | None:
        """A variable *name*: refuse what looks like a pasted key (it would be printed and stored)."""
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
            raise ValueError("must be the NAME of an environment variable (like MY_API_KEY), not the key itself")
        return value

    # -- keys ------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return (urlsplit(self.base_url).hostname or "").lower()

    def is_openai_host(self) -> bool:
        return self.host in OPENAI_HOSTS

    def key_variable(self) -> str | None:
        """The environment variable this endpoint's key is read from (None: no key is sent)."""
        if self.api_key_env:
            return self.api_key_env
        return OPENAI_KEY_ENV if self.is_openai_host() else None

    def key_transport_problem(self) -> str | None:
        """Why a key may not go to this URL (plain http to a non-loopback host), or None."""
        if self.key_variable() is None or self.allow_insecure_key:
            return None
        if urlsplit(self.base_url).scheme == "http" and not is_loopback_host(self.host):
            return (f"api_key_env {self.key_variable()} would send a key over plain http to {self.host}; "
                    "use https, a loopback address, or set allow_insecure_key = true for a trusted network")
        return None

    def api_key(self) -> str:
        """The key to send: from the named variable (OPENAI_API_KEY only for api.openai.com), else "EMPTY"."""
        var = self.key_variable()
        if var is None:
            return PLACEHOLDER_API_KEY
        problem = self.key_transport_problem()
        if problem:  # settings built without validation (model_copy): refuse rather than leak
            raise ConfigError(problem, "fix base_url or api_key_env in the LLM settings")
        return os.environ.get(var) or PLACEHOLDER_API_KEY

    def key_status(self) -> str:
        """For display: which variable the key comes from and whether it is set (never the key)."""
        var = self.key_variable()
        if var is None:
            return "none (no key is sent; the placeholder EMPTY)"
        return f"${var} set ({MASK})" if os.environ.get(var) else f"${var} unset (EMPTY is sent)"

    # -- display ---------------------------------------------------------------------------
    def safe_url(self) -> str:
        """base_url with any credentials in it masked (for logs, traces and errors)."""
        return mask_url(self.base_url)

    def describe(self) -> str:
        return f"{self.model} at {self.safe_url()}"

    def masked_dump(self) -> dict[str, Any]:
        """Every field as JSON-able data, secrets masked, plus `api_key`: where the key comes from."""
        data = mask_secrets(self.model_dump(mode="json"))
        data["base_url"] = self.safe_url()
        data["api_key"] = self.key_status()
        return dict(data)


class LLMSettings(BaseModel):
    """Endpoints for the three roles plus the shared concurrency limit.

    A role entry holds only the fields it changes (the rest come from `shared`, field by
    field); a dump keeps only those fields, so a recorded config resolves the same way.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    shared: EndpointSettings = Field(default_factory=lambda: EndpointSettings())
    designer: EndpointSettings | None = None
    reviewer: EndpointSettings | None = None
    fixer: EndpointSettings | None = None
    # Requests in flight at once, across all roles (the graph fans out; vLLM batches).
    max_concurrency: int = Field(default=8, ge=1)

    @field_serializer("designer", "reviewer", "fixer")
    def _dump_role(self, value: EndpointSettings | None) -> dict[str, Any] | None:
        return None if value is None else value.model_dump(mode="json", exclude_unset=True)

    @model_validator(mode="after")
    def _check_roles(self) -> LLMSettings:
        for role in ROLES:
            problem = self.for_role(role).key_transport_problem()
            if problem:
                raise ValueError(f"{role}: {problem}")
        return self

    def for_role(self, role: str) -> EndpointSettings:
        """Settings of `role`: the shared endpoint with the role's own fields laid over it (unknown roles: shared)."""
        specific: EndpointSettings | None = getattr(self, role, None) if role in ROLES else None
        if specific is None:
            return self.shared
        own = {name: getattr(specific, name) for name in specific.model_fields_set}
        return self.shared.model_copy(update=own) if own else self.shared

    def resolved(self) -> dict[str, EndpointSettings]:
        """Each role's resolved endpoint."""
        return {role: self.for_role(role) for role in ROLES}

    def masked_dump(self) -> dict[str, Any]:
        """The settings with each role resolved, secrets masked (for `config show`, traces and logs)."""
        return {"shared": self.shared.masked_dump(),
                **{role: ep.masked_dump() for role, ep in self.resolved().items()},
                "max_concurrency": self.max_concurrency}

    @classmethod
    def single(cls, base_url: str = DEFAULT_BASE_URL, model: str = DEFAULT_MODEL, **endpoint: Any) -> LLMSettings:
        """Every role on one endpoint; `endpoint` holds further EndpointSettings fields."""
        max_concurrency = endpoint.pop("max_concurrency", 8)
        return cls.from_dict({"shared": {"base_url": base_url, "model": model, **endpoint},
                              "max_concurrency": max_concurrency})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMSettings:
        """Validate settings from a config file or CLI values; errors become ConfigError."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: "
                f"{str(err['msg']).removeprefix('Value error, ')}"
                for err in e.errors()
            )
            raise ConfigError(f"invalid LLM settings: {problems}",
                              "fix the named fields (see nncaption.agents.settings.EndpointSettings).") from None
