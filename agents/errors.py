"""Typed errors of the LLM layer: every way an endpoint can fail, with what to do next.

The client maps transport failures and HTTP statuses onto these classes, so callers
(the agents, the graph, the CLI) branch on a type instead of parsing messages.
Each error carries the endpoint it concerns and, where one exists, the recorded
exchange (`LLMExchange`) so the trace keeps even failed calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nncaption.netapi.errors import NNCaptionError

if TYPE_CHECKING:
    from nncaption.agents.records import LLMExchange


class LLMError(NNCaptionError):
    """Base class of every failure talking to an LLM endpoint."""

    category = "llm"
    default_hint = "check the endpoint settings (base_url, model, API key variable) and that the server is up."
    retry_after_s: float | None = None  # what the server asked to wait (Retry-After), when it did

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        endpoint: str = "",
        status: int | None = None,
        exchange: LLMExchange | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(message, hint or self.default_hint, category=category)
        self.endpoint = endpoint
        self.status = status
        self.exchange = exchange

    @property
    def retryable(self) -> bool:
        """Whether trying the same request again may succeed."""
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "message": self.message, "hint": self.hint,
                "endpoint": self.endpoint, "status": self.status}


class EndpointUnavailable(LLMError):
    """The server could not be reached, or kept answering 5xx."""

    category = "endpoint-unavailable"
    default_hint = ("start the server (e.g. `nncaption llm serve-vllm MODEL` or `nncaption llm offline`) "
                    "and check base_url; 5xx errors mean the server itself is failing: read its log.")

    @property
    def retryable(self) -> bool:
        return True


class EndpointTimeout(LLMError):
    """The server accepted the request but did not answer within timeout_s."""

    category = "endpoint-timeout"
    default_hint = "raise timeout_s for this role, lower max_tokens, or check that the server is not overloaded."

    @property
    def retryable(self) -> bool:
        return True


class RateLimited(LLMError):
    """The server answered 429 until the retries ran out (or asked for a long wait)."""

    category = "rate-limited"
    default_hint = "lower the concurrency limit, raise max_retries, or wait and run again."

    def __init__(self, message: str, hint: str = "", *, retry_after_s: float | None = None, **kw: Any) -> None:
        super().__init__(message, hint, **kw)
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return True


class ContextLengthExceeded(LLMError):
    """The prompt (plus max_tokens) does not fit the model's context window."""

    category = "context-length"
    default_hint = ("use fewer snippets (the designer retries with fewer by itself), lower max_tokens, "
                    "or serve the model with a longer --max-model-len.")

    def __init__(self, message: str, hint: str = "", *, prompt_tokens: int | None = None,
                 context_tokens: int | None = None, **kw: Any) -> None:
        super().__init__(message, hint, **kw)
        self.prompt_tokens = prompt_tokens  # the prompt's size in tokens, when the server said it
        self.context_tokens = context_tokens  # the model's context window, when the server said it


class BadResponse(LLMError):
    """The server answered 2xx with something that is not a usable chat completion."""

    category = "bad-response"
    default_hint = "the endpoint is not OpenAI-compatible or is broken: check base_url (it must end in /v1)."


class EndpointRejected(LLMError):
    """The server refused the request (4xx other than 429 and context length)."""

    category = "endpoint-rejected"
    default_hint = ("read the endpoint's message: a wrong model name, a missing/invalid API key "
                    "(set the variable named by api_key_env) or an unsupported parameter.")


class StructuredReplyError(LLMError):
    """A reply that should hold a JSON object held none that matches the schema."""

    category = "bad-structured-reply"
    default_hint = "the model did not follow the JSON format; retry, or use a server that honours response_format."


class VLLMNotInstalled(LLMError):
    """`nncaption llm serve-vllm` was asked to start vLLM where it is not installed."""

    category = "vllm-not-installed"
    default_hint = ("install the optional extra on a machine with a GPU: pip install 'nn-caption[vllm]' "
                    "(or point base_url at a vLLM server running elsewhere).")


class TruncatedReply(LLMError):
    """The reply hit max_tokens (finish_reason "length") before a complete final answer.

    Code is never taken from such a reply (a draft in the reasoning may have been rejected
    by the model itself); the designer may ask again with a larger budget or for brevity.
    """

    category = "truncated"
    default_hint = ("the model ran out of tokens before answering: raise max_tokens (and the server's "
                    "--max-model-len), or ask for a smaller model and shorter reasoning.")


class ContextTruncated(LLMError):
    """The server reported far fewer prompt tokens than the prompt holds: it cut the prompt silently."""

    category = "context-truncated"
    default_hint = ("give the server a longer context: Ollama `options.num_ctx` or OLLAMA_CONTEXT_LENGTH, "
                    "vLLM --max-model-len, llama.cpp -c / --ctx-size.")


class EmptyReply(LLMError):
    """A 2xx chat completion without any text in content or reasoning."""

    category = "empty-reply"
    default_hint = "the model returned nothing: check max_tokens and the server's log, then ask again."


class ReplyTooLarge(LLMError):
    """The reply body or its reasoning exceeded the configured cap; it was not read further."""

    category = "reply-too-large"
    default_hint = "lower max_tokens, or raise max_reply_bytes / max_reasoning_chars if the replies are genuine."
