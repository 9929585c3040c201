"""The prompt library: prompt templates and their rendering (snippets: `nncaption.prompts.snippet_library`).

Templates (`templates/*.md`) are jinja2 templates rendered with langchain-core's
`PromptTemplate`; jinja2 is used because code blocks are full of braces.
Prompts carry no control markers: they are what a real LLM should read. For
vLLM's prefix cache, each user message puts what is constant across a run first
(the contract, the dataset facts, the rules and the answer format) and what
varies last (the task, decoder, snippets, feedback, parent or candidate). The
offline composer reads its requests from these ordinary sections
(`nncaption.prompts.parse`) and its seed from the request's `seed` parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Literal

from nncaption.netapi.categories import Category
from nncaption.netapi.contract import contract_text
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.safetext import safe_text
from nncaption.prompts.snippet_library import (
    LEMUR_BACKBONES,
    Snippet,
    backbone_source,
    get_snippet,
    load_snippets,
    parse_snippet_metadata,
    sample_snippets,
)

__all__ = [
    "ROLES",
    "DECODER_FAMILIES",
    "DECODER_TEXT",
    "LEMUR_BACKBONES",
    "Snippet",
    "parse_snippet_metadata",
    "DatasetFacts",
    "CandidateFeedback",
    "FailureFeedback",
    "ParentCandidate",
    "load_snippets",
    "sample_snippets",
    "get_snippet",
    "backbone_source",
    "render",
    "template_names",
    "designer_messages",
    "reviewer_messages",
    "fixer_messages",
    "detect_role",
    "system_text",
    "error_tail",
    "contract_text",
    "edit_text",
]

ROLES: tuple[str, ...] = ("designer", "reviewer", "fixer")
DECODER_FAMILIES: tuple[str, ...] = ("lstm", "gru", "transformer")

_TEMPLATES_PACKAGE = "nncaption.prompts"
DECODER_TEXT: dict[str | None, str] = {
    "lstm": "Use an LSTM decoder: initialise (h, c) from the pooled image features or feed them at every step.",
    "gru": "Use a GRU decoder whose initial hidden state is computed from the pooled image features.",
    "transformer": "Use a Transformer decoder (nn.TransformerDecoder with a causal mask) cross-attending to the "
                   "image feature map\nflattened into a sequence of memory tokens.",
    None: "Choose the decoder family yourself: LSTM, GRU or Transformer.",
}

EditFormat = Literal["full", "diff"]
DIFF_ANSWER = """Do not repeat the whole file: answer with SEARCH/REPLACE edits to the {what} code above, one block
per change, in this exact format:
<<<<<<< SEARCH
lines copied exactly from the {what} code (enough of them to be unique)
=======
the lines that replace them
>>>>>>> REPLACE
Each SEARCH part must match consecutive whole lines of the {what} code exactly once; the blocks are applied
in order. Use at most 32 blocks. After the blocks give ONE fenced ```json block with the hyperparameters, then
one line:
SUMMARY: <one line: what the model is and what you changed>"""


def edit_text(edit_format: str, what: str) -> str | None:
    """The answer-format section for SEARCH/REPLACE edits (None for whole-file answers)."""
    if edit_format not in ("full", "diff"):
        raise ConfigError(f"unknown edit format {edit_format!r}", "Use 'full' or 'diff'.")
    return DIFF_ANSWER.format(what=what) if edit_format == "diff" else None


# Classic img-classification models of LEMUR's nn-dataset (file stem -> family).

# --------------------------------------------------------------------------- data



@dataclass(frozen=True)
class DatasetFacts:
    """What the designer must know about the data."""

    vocab_size: int
    image_size: int
    max_len: int
    n_caps: int
    n_train: int | None = None
    name: str = "synthetic"

    @classmethod
    def from_meta(cls, meta: Any) -> DatasetFacts:
        """Build from a `DatasetMeta`-like object (attributes vocab_size, image_size, max_len, n_caps, ...)."""
        return cls(
            vocab_size=int(meta.vocab_size),
            image_size=int(meta.image_size),
            max_len=int(meta.max_len),
            n_caps=int(meta.n_caps),
            n_train=getattr(meta, "n_train", None),
            name=str(getattr(meta, "name", "synthetic")),
        )


@dataclass(frozen=True)
class CandidateFeedback:
    """An earlier candidate, as shown in the feedback section."""

    summary: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    bleu4_per_epoch: Sequence[float] = ()

    @property
    def hparams_text(self) -> str:
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(self.hparams.items())) or "-"

    @property
    def curve_text(self) -> str:
        return " -> ".join(f"{b:.4f}" for b in self.bleu4_per_epoch) or "no epochs scored"


@dataclass(frozen=True)
class FailureFeedback:
    """A recent failure: its category and the tail of its traceback or verdict message."""

    category: str
    traceback_tail: str = ""
    summary: str = ""


@dataclass(frozen=True)
class ParentCandidate:
    """The candidate to change in `improve` mode."""

    code: str
    summary: str = ""
    bleu4: float | None = None
    bleu4_per_epoch: Sequence[float] = ()
    hparams: Mapping[str, Any] = field(default_factory=dict)

    @property
    def curve_text(self) -> str:
        return " -> ".join(f"{b:.4f}" for b in self.bleu4_per_epoch) or "no epochs scored"

    @property
    def hparams_text(self) -> str:
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(self.hparams.items())) or "-"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------ templates


def template_names() -> list[str]:
    """Names accepted by `render` (file stems under templates/)."""
    folder = resources.files(_TEMPLATES_PACKAGE).joinpath("templates")
    return sorted(e.name[: -len(".md")] for e in folder.iterdir() if e.name.endswith(".md"))


def _template_text(name: str) -> str:
    stem = name[: -len(".md")] if name.endswith(".md") else name
    entry = resources.files(_TEMPLATES_PACKAGE).joinpath("templates", f"{stem}.md")
    if not entry.is_file():
        raise ConfigError(f"unknown prompt template {name!r}", f"Use one of: {', '.join(template_names())}.")
    return entry.read_text(encoding="utf-8")


def render(template_name: str, **values: Any) -> str:
    """Render templates/<template_name>.md (jinja2, via langchain-core PromptTemplate).

    Every variable the template uses must be given (None is fine), so a typo in a
    template or a caller fails loudly instead of rendering an empty section.
    """
    from langchain_core.prompts import PromptTemplate

    prompt = PromptTemplate.from_template(_template_text(template_name), template_format="jinja2")
    missing = sorted(set(prompt.input_variables) - set(values))
    if missing:
        raise ConfigError(
            f"template {template_name!r} needs values for: {', '.join(missing)}",
            "Pass every template variable (None for an empty section).",
        )
    text = prompt.format(**{k: v for k, v in values.items() if k in prompt.input_variables})
    return text.strip() + "\n"


def _tail(text: str, max_lines: int, max_chars: int) -> str:
    lines = text.strip().splitlines()[-max_lines:]
    out = "\n".join(lines)
    return out if len(out) <= max_chars else "..." + out[-(max_chars - 3) :]


def error_tail(error: str, max_lines: int = 30, max_chars: int = 3000) -> str:
    """The part of an error text a fixer prompt shows: its last lines, control characters escaped."""
    return safe_text(_tail(error, max_lines, max_chars), max_chars).strip()


def system_text(role: str) -> str:
    """The system message of `role` (designer, reviewer or fixer): constant across a run."""
    if role not in ROLES:
        raise ConfigError(f"unknown agent role {role!r}", f"Use one of: {', '.join(ROLES)}.")
    return render(f"{role}.system")


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return content if isinstance(content, str) else ""


def detect_role(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The role whose system text opens the conversation (as our templates write it); None otherwise."""
    systems = [_content_text(m.get("content")).strip() for m in messages if m.get("role") == "system"]
    if not systems:
        return None
    for role in ROLES:
        if systems[0] == system_text(role).strip():
            return role
    return None


def _prm_json(prm: Mapping[str, Any] | None) -> str:
    return json.dumps({str(k): prm[k] for k in sorted(prm)}) if prm else "{}"


def designer_messages(
    facts: DatasetFacts,
    snippets: Sequence[Snippet],
    *,
    decoder: Literal["lstm", "gru", "transformer"] | None = None,
    mode: Literal["compose", "improve"] = "compose",
    parent: ParentCandidate | None = None,
    top: Sequence[CandidateFeedback] = (),
    failures: Sequence[FailureFeedback] = (),
    max_top: int = 5,
    max_failures: int = 5,
    traceback_lines: int = 8,
    traceback_chars: int = 800,
    compact_snippets: bool = True,
    edit_format: EditFormat = "full",
    edit_note: str | None = None,
) -> list[dict[str, str]]:
    """System + user messages of a designer request (OpenAI chat format).

    `edit_format="diff"` (improve mode) asks for SEARCH/REPLACE edits to the parent instead of
    the whole file; `edit_note` is appended last (why a previous answer could not be used).
    """
    if mode not in ("compose", "improve"):
        raise ConfigError(f"unknown designer mode {mode!r}", "Use 'compose' or 'improve'.")
    if mode == "improve" and parent is None:
        raise ConfigError("designer mode 'improve' needs a parent candidate", "Pass parent=ParentCandidate(...).")
    if decoder is not None and decoder not in DECODER_FAMILIES:
        raise ConfigError(f"unknown decoder family {decoder!r}", f"Use one of: {', '.join(DECODER_FAMILIES)}.")
    fails = [
        FailureFeedback(safe_text(f.category, 60, keep="head"),
                        safe_text(_tail(f.traceback_tail, traceback_lines, traceback_chars), traceback_chars),
                        safe_text(f.summary, 300, keep="head"))
        for f in list(failures)[-max_failures:]
    ]
    shown = [
        {"name": s.name, "family": s.family, "summary": s.summary, "code": s.prompt_source(compact=compact_snippets)}
        for s in snippets
    ]
    user = render(
        "designer",
        contract=contract_text().strip(),
        facts=facts,
        snippets=shown,
        decoder_text=DECODER_TEXT[decoder],
        mode=mode,
        parent=replace(parent, summary=safe_text(parent.summary, 300, keep="head")) if parent is not None else None,
        parent_prm=_prm_json(parent.hparams) if parent is not None else "{}",
        top=[replace(c, summary=safe_text(c.summary, 300, keep="head")) for c in list(top)[:max_top]],
        failures=fails,
        edit_text=edit_text(edit_format, "parent") if mode == "improve" else None,
        edit_note=edit_note,
    )
    return [{"role": "system", "content": system_text("designer")}, {"role": "user", "content": user}]


def reviewer_messages(code: str, *, static_message: str = "accepted",
                      prm: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """System + user messages asking for an API-compliance review of `code` (trained with `prm`) as JSON."""
    user = render(
        "reviewer",
        contract=contract_text().strip(),
        code=code,
        prm=_prm_json(prm),
        static_message=safe_text(static_message, 500, keep="head"),
        categories=[c.value for c in Category],
    )
    return [{"role": "system", "content": system_text("reviewer")}, {"role": "user", "content": user}]


def fixer_messages(
    code: str,
    error: str,
    *,
    category: str | None = None,
    prm: Mapping[str, Any] | None = None,
    error_lines: int = 30,
    error_chars: int = 3000,
    edit_format: EditFormat = "full",
    edit_note: str | None = None,
) -> list[dict[str, str]]:
    """System + user messages asking for a corrected whole file (and its hyperparameters).

    `edit_format="diff"` asks for SEARCH/REPLACE edits to the candidate instead; `edit_note`
    is appended last (why a previous answer could not be used).

    `error` is candidate-derived (a verdict message or a traceback): its tail is kept
    and control characters are escaped (`safe_text`) before it enters the prompt.
    """
    user = render(
        "fixer",
        contract=contract_text().strip(),
        code=code,
        prm=_prm_json(prm),
        error=error_tail(error, error_lines, error_chars),
        category=safe_text(category, 60, keep="head") if category else None,
        edit_text=edit_text(edit_format, "candidate"),
        edit_note=edit_note,
    )
    return [{"role": "system", "content": system_text("fixer")}, {"role": "user", "content": user}]
