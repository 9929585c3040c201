"""Per-role LLM endpoint settings.

The designer, reviewer and fixer may each talk to a different server and model;
any role left unset uses the shared endpoint. Defaults target a local vLLM
serving the reference generator (DeepSeek-R1-0528-Qwen3-8B) at
http://127.0.0.1:8000/v1 with the sampling settings recommended for R1 models.
The API key is never stored here: only the *name* of the environment variable
that holds it.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nncaption.netapi.errors import ConfigError

DEFAULT_MODEL = "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
PLACEHOLDER_API_KEY = "EMPTY"  # what vLLM and most local servers accept when no key is configured

Role = Literal["designer", "reviewer", "fixer"]
ROLES: tuple[str, ...] = ("designer", "reviewer", "fixer")


class EndpointSettings(BaseModel):
    """One OpenAI-compatible endpoint and how to call it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=16384, ge=1)
    timeout_s: float = Field(default=600.0, gt=0.0)
    extra_body: dict[str, Any] = Field(default_factory=dict)
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
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host; "
                             f"write it like http://127.0.0.1:8000/v1")
        return value.strip()

    def api_key(self) -> str:
        """The key from the named environment variable, or a placeholder local servers accept."""
        return os.environ.get(self.api_key_env) or PLACEHOLDER_API_KEY

    def describe(self) -> str:
        return f"{self.model} at {self.base_url}"


class LLMSettings(BaseModel):
    """Endpoints for the three roles plus the shared concurrency limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shared: EndpointSettings = Field(default_factory=lambda: EndpointSettings())
    designer: EndpointSettings | None = None
    reviewer: EndpointSettings | None = None
    fixer: EndpointSettings | None = None
    # Requests in flight at once, across all roles (the graph fans out; vLLM batches).
    max_concurrency: int = Field(default=8, ge=1)

    def for_role(self, role: str) -> EndpointSettings:
        """Settings of `role`, falling back to the shared endpoint (unknown roles use it too)."""
        specific = getattr(self, role, None) if role in ROLES else None
        return specific or self.shared

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
                f"{'.'.join(str(p) for p in err['loc'])}: {str(err['msg']).removeprefix('Value error, ')}"
                for err in e.errors()
            )
            raise ConfigError(f"invalid LLM settings: {problems}",
                              "fix the named fields (see nncaption.agents.settings.EndpointSettings).") from None
