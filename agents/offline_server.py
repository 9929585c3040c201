"""`nncaption llm offline`: an OpenAI-compatible endpoint that is NOT an LLM.

It stands in for a model on machines without one, and it is the random-search
baseline that LLM-guided runs must beat: designer requests are answered by
composing a valid Net API model from the snippet library, a decoder family and
seeded hyperparameters (`nncaption.agents.compose`), over the same search space
the LLM is offered; reviewer requests get a JSON verdict from the static
validator; fixer requests get a repaired composition. Replies look like a
reasoning model's: a `<think>` block (or a separate `reasoning` field with
`split_reasoning`), prose, one fenced python block and a `SUMMARY:` line.

Roles come from the prompt's role marker (`nncaption.prompts.library.detect_role`);
a request whose role cannot be told is a designer request, so any OpenAI client
that asks it for a captioning model gets one. `fault_rate` plants realistic
defects (syntax, shape, missing method, forbidden import, output contract) in
designer replies so the fixer path is exercised; fixer replies are never
faulted. `latency_ms` simulates a slow server; `max_context_tokens` makes it
refuse long prompts the way vLLM does; a reply longer than the request's
max_tokens is cut and marked finish_reason="length".

Replies are deterministic: each is seeded by (server seed, request hash, how
many times that same request was seen).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from typing import Any, Sequence

from nncaption.agents import compose
from nncaption.agents.extract import ExtractionError, extract_code
from nncaption.agents.http_server import (
    OpenAICompatServer,
    Reply,
    completion_body,
    count_tokens,
    error_reply,
    prompt_text,
)
from nncaption.agents.recording import request_key
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.validate import static_check
from nncaption.prompts.library import detect_role, extract_request_code, parse_request_hints

MODEL_ID = "nncaption-offline-composer"
_ERROR_SECTION = re.compile(r"## Error\s*```[a-z]*\n(.*?)\n```", re.DOTALL)


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
        if not 0.0 <= fault_rate <= 1.0:
            raise ConfigError(f"--fault-rate must be between 0 and 1, got {fault_rate}", "use e.g. 0.3")
        unknown = sorted(set(fault_kinds) - set(compose.DEFECT_KINDS))
        if unknown or not fault_kinds:
            raise ConfigError(f"unknown fault kinds: {', '.join(unknown) or '(none given)'}",
                              f"use some of: {', '.join(compose.DEFECT_KINDS)}")
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
        seed = self._request_seed(body)
        role = detect_role(messages) or "designer"
        if role == "reviewer":
            reasoning, content = self._review(prompt)
        elif role == "fixer":
            reasoning, content = self._fix(prompt, seed)
        else:
            reasoning, content = self._design(prompt, seed)
        return Reply(200, self._completion(body, prompt, reasoning, content))

    def _completion(self, body: dict[str, Any], prompt: str, reasoning: str, content: str) -> dict[str, Any]:
        model = str(body.get("model") or MODEL_ID)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if isinstance(limit, int) and limit > 0:
            reasoning, content, cut = _truncate(reasoning, content, limit)
            finish = "length" if cut else "stop"
            if cut and not content and not self.split_reasoning:
                # Cut while thinking: the think block stays open, as in a real truncated reply.
                data = completion_body(model, "<think>\n" + reasoning, prompt_text=prompt, finish_reason=finish)
                data["usage"]["completion_tokens_details"]["reasoning_tokens"] = count_tokens(reasoning)
                return data
        return completion_body(model, content, reasoning=reasoning, prompt_text=prompt, finish_reason=finish,
                               split_reasoning=self.split_reasoning)

    def _design(self, prompt: str, seed: int) -> tuple[str, str]:
        hints = parse_request_hints(prompt)
        parent = extract_request_code(prompt) if hints.get("mode") == "improve" else None
        model = compose.improve(parent, seed=seed) if parent else compose.compose_for_request(hints, seed=seed)
        code = model.code
        rng = random.Random(seed)
        fault = None
        if rng.random() < self.fault_rate:
            fault, code = self._inject(code, rng, seed)
        offered = hints.get("backbones") or []
        reasoning = (
            f"The request asks for an image-captioning model that obeys the Net API"
            f"{' and improves the parent candidate' if parent else ''}. "
            f"{'Snippets offered: ' + ', '.join(offered) + '. ' if offered else ''}"
            f"I take the feature extractor of the {model.backbone} snippet, drop its classifier head, and "
            f"condition a {model.decoder} decoder on the feature map. Hyperparameters: "
            + ", ".join(f"{k}={v}" for k, v in sorted(model.hparams.items()))
            + ". Teacher forcing in learn(), greedy decoding from SOS in forward(images)."
        )
        content = (
            f"Here is the complete candidate file ({model.backbone} encoder, {model.decoder} decoder).\n\n"
            f"```python\n{code.rstrip()}\n```\n\n"
            f"It trains with teacher forcing and decodes free-running from images alone.\n"
            f"SUMMARY: {model.summary}\n"
        )
        return reasoning, content

    def _inject(self, code: str, rng: random.Random, seed: int) -> tuple[str | None, str]:
        kinds = list(self.fault_kinds)
        rng.shuffle(kinds)
        for kind in kinds:  # a kind that does not apply to this composition falls through to the next
            try:
                faulty = compose.inject_defect(code, kind, seed)
            except ConfigError:
                continue
            with self._lock:
                self.faults.append(kind)
            return kind, faulty
        return None, code

    def _review(self, prompt: str) -> tuple[str, str]:
        code = _request_code(prompt)
        if code is None:
            verdict = {"ok": False, "category": "missing-symbol", "line": None,
                       "message": "the review request holds no candidate code"}
        else:
            v = static_check(code)
            verdict = {"ok": v.ok, "category": v.category.value if v.category else None,
                       "message": v.message, "line": v.line}
        reasoning = "I check the candidate with the static Net API validator and report its verdict as JSON."
        return reasoning, json.dumps(verdict)

    def _fix(self, prompt: str, seed: int) -> tuple[str, str]:
        code = _request_code(prompt)
        m = _ERROR_SECTION.search(prompt)
        error = m.group(1) if m else str(parse_request_hints(prompt).get("category", ""))
        if code:
            fixed = compose.repair(code, error)
        else:
            fixed = compose.compose_for_request({}, seed=seed).code
        info = compose.parse_marker(fixed) or {}
        first_error = error.strip().splitlines()[0][:160] if error.strip() else "the reported error"
        reasoning = (f"The error says: {first_error}. The file carries its composition marker "
                     f"(backbone={info.get('backbone')}, decoder={info.get('decoder')}), so I rebuild the "
                     "composition cleanly, which removes the defect.")
        summary = (f"{info.get('backbone')} encoder + {info.get('decoder')} decoder, re-composed to fix: "
                   f"{first_error}")
        content = (f"The corrected file:\n\n```python\n{fixed.rstrip()}\n```\n\n"
                   f"SUMMARY: {' '.join(summary.split())}\n")
        return reasoning, content


def _request_code(prompt: str) -> str | None:
    """The candidate code in a reviewer/fixer request: between the code markers, else any fenced block."""
    code = extract_request_code(prompt)
    if code is not None:
        return code
    try:
        return extract_code(prompt)
    except ExtractionError:
        return None


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
