"""`nncaption llm offline`: an OpenAI-compatible endpoint that is NOT an LLM.

It stands in for a model on machines without one, and it serves the random-search
baseline (`nncaption.agents.baseline`) over HTTP for compatibility and tests:
designer requests are answered by `baseline_design` (a seeded composition from the
snippet library, over the same search space the LLM is offered), reviewer requests
get a JSON verdict from the static validator, fixer requests get the baseline's
ORACLE fix (`baseline_fix`: it re-composes its own file, undoing its own planted
defect). Every reply names the model `nncaption-offline-composer`, whatever model
was asked for, and explains itself only in a labelled baseline trace, never as
first-person reasoning.

The request is read from the ordinary prompt sections (`nncaption.prompts.parse`):
the role from the system text, the decoder hint, the snippet headings, the parent's
or candidate's code and hyperparameters, the error. Its seed is the request's
standard `seed` parameter (what `design()` sends); a request without one is seeded
by (server seed, request hash, how many times that request was seen). So a designer
driven over HTTP gives the same candidates as `BaselineDesigner` in-process.

`fault_rate` plants realistic defects (syntax, shape, missing method, forbidden
import, output contract) in designer replies; fixer replies are never faulted.
`latency_ms` simulates a slow server; `max_context_tokens` makes it refuse long
prompts the way vLLM does; a reply longer than the request's max_tokens is cut and
marked finish_reason="length"; `split_reasoning` puts the baseline trace in
`message.reasoning` (like vLLM's reasoning parser) instead of the content.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from nncaption.agents import compose
from nncaption.agents.baseline import BASELINE_NAME, TRACE_LABEL, baseline_design, baseline_fix
from nncaption.agents.defects import check_fault_settings
from nncaption.agents.hparams import prm_text
from nncaption.agents.http_server import (
    OpenAICompatServer,
    Reply,
    completion_body,
    count_tokens,
    error_reply,
    prompt_text,
)
from nncaption.agents.recording import request_key
from nncaption.agents.reviewer import check_prm
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.validate import static_check
from nncaption.prompts.library import detect_role
from nncaption.prompts.parse import parse_candidate, parse_designer

MODEL_ID = BASELINE_NAME  # the model name of every reply, whatever was asked for


class OfflineComposerServer(OpenAICompatServer):
    """The offline composer endpoint; `with OfflineComposerServer(seed=1) as s: s.base_url`."""

    name = MODEL_ID

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int = 0,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = compose.DEFECT_KINDS,
        latency_ms: float = 0.0,
        split_reasoning: bool = False,
        max_context_tokens: int | None = None,
    ) -> None:
        super().__init__(host, port)
        check_fault_settings(fault_rate, fault_kinds, rate_name="--fault-rate")
        if latency_ms < 0:
            raise ConfigError(f"--latency-ms must be >= 0, got {latency_ms}", "use e.g. 200")
        self.seed = seed
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.latency_s = latency_ms / 1000.0
        self.split_reasoning = split_reasoning
        self.max_context_tokens = max_context_tokens
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self.faults: list[str] = []  # kinds injected so far, in order (for tests and logs)

    def model_ids(self) -> list[str]:
        return [MODEL_ID]

    # -- request handling -----------------------------------------------------------------
    def _request_seed(self, body: dict[str, Any]) -> int:
        key = request_key(body)
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
        return int(hashlib.sha256(f"{self.seed}:{key}:{n}".encode()).hexdigest()[:8], 16) % 1_000_000

    def chat(self, body: dict[str, Any]) -> Reply:
        if self.latency_s:
            self.stopping.wait(self.latency_s)
        messages = body["messages"]
        prompt = prompt_text(messages)
        if self.max_context_tokens is not None and count_tokens(prompt) > self.max_context_tokens:
            return error_reply(
                400,
                f"This model's maximum context length is {self.max_context_tokens} tokens. However, you requested "
                f"{count_tokens(prompt)} tokens in the messages. Please reduce the length of the messages.",
                "BadRequestError",
            )
        role = detect_role(messages) or ("reviewer" if body.get("response_format") else "designer")
        if role == "reviewer":
            trace, content = self._review(prompt)
        elif role == "fixer":
            trace, content = self._fix(prompt)
        else:
            trace, content = self._design(prompt, body)
        return Reply(200, self._completion(body, prompt, trace, content))

    def _completion(self, body: dict[str, Any], prompt: str, trace: str, content: str) -> dict[str, Any]:
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        reasoning = trace if self.split_reasoning else ""
        if not self.split_reasoning:
            content = f"{trace}\n\n{content}"
        finish = "stop"
        if isinstance(limit, int) and limit > 0:
            reasoning, content, cut = _truncate(reasoning, content, limit)
            finish = "length" if cut else "stop"
        return completion_body(MODEL_ID, content, reasoning=reasoning, prompt_text=prompt, finish_reason=finish,
                               split_reasoning=self.split_reasoning)

    def _design(self, prompt: str, body: dict[str, Any]) -> tuple[str, str]:
        req = parse_designer(prompt)
        seed = body.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = self._request_seed(body)
        choice = baseline_design(
            server_seed=self.seed, seed=seed, mode=req.mode, decoder=req.decoder, snippets=req.snippets,
            parent_code=req.parent_code, parent_prm=req.parent_prm,
            fault_rate=self.fault_rate, fault_kinds=self.fault_kinds,
        )
        if choice.fault:
            with self._lock:
                self.faults.append(choice.fault)
        return choice.trace, _answer(choice.code, choice.prm, choice.summary)

    def _review(self, prompt: str) -> tuple[str, str]:
        cand = parse_candidate(prompt)
        if cand.code is None:
            verdict: dict[str, Any] = {"ok": False, "category": "missing-symbol", "line": None,
                                       "message": "the review request holds no candidate code"}
        else:
            v = static_check(cand.code)
            bad_prm = check_prm(cand.code, cand.prm) if v.ok else None
            if bad_prm is not None:
                verdict = {"ok": False, "category": bad_prm.category, "message": bad_prm.message, "line": None}
            else:
                verdict = {"ok": v.ok, "category": v.category.value if v.category else None,
                           "message": v.message, "line": v.line}
        trace = f"{TRACE_LABEL}: verdict of the static Net API validator and the hyperparameter check."
        return trace, json.dumps(verdict)

    def _fix(self, prompt: str) -> tuple[str, str]:
        cand = parse_candidate(prompt)
        if cand.code:
            choice = baseline_fix(cand.code, cand.error, cand.prm, cand.category)
        else:
            choice = baseline_design(server_seed=self.seed, seed=0)
        return choice.trace, _answer(choice.code, choice.prm, choice.summary)


def _answer(code: str, prm: dict[str, Any], summary: str) -> str:
    """The reply body: the file in one python block, its hyperparameters in one json block, a SUMMARY line."""
    return (f"```python\n{code.rstrip()}\n```\n\n```json\n{prm_text(prm)}\n```\n\n"
            f"SUMMARY: {' '.join(summary.split())}\n")


def _truncate(reasoning: str, content: str, limit: int) -> tuple[str, str, bool]:
    """Cut reasoning+content to about `limit` tokens, as a server does at max_tokens."""
    r_tokens = count_tokens(reasoning)
    if r_tokens + count_tokens(content) <= limit:
        return reasoning, content, False
    if r_tokens >= limit:
        return _cut(reasoning, limit), "", True
    return reasoning, _cut(content, limit - r_tokens), True


def _cut(text: str, n_tokens: int) -> str:
    if n_tokens <= 0:
        return ""
    for i, m in enumerate(re.finditer(r"\w+|[^\w\s]", text)):
        if i == n_tokens:
            return text[: m.start()]
    return text
