"""Read a request back from the ordinary sections of a rendered prompt (for the offline composer).

The prompts carry no control markers; the offline composer (the random-search
baseline behind an OpenAI-compatible endpoint) recovers what it needs from the
sections our templates write: the decoder guidance, the backbone snippet
headings, the parent's or candidate's code and hyperparameters, the error text.
Headings inside fenced code blocks are ignored, so candidate code cannot fake a
section.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from nncaption.prompts.library import DECODER_TEXT

log = logging.getLogger(__name__)

_HEADING = re.compile(r"^(#{1,3}) (.+?)\s*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([A-Za-z0-9_+-]*)\s*$")
_SNIPPET = re.compile(r"^\d+\. (\S+) \(")


@dataclass
class Section:
    """A heading's title and the lines under it (until the next heading of any level)."""

    title: str
    level: int
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip()

    def fenced(self, lang: str) -> str | None:
        """The body of the section's first fenced block labelled `lang`, or None."""
        inside: list[str] | None = None
        fence = ""
        for line in self.lines:
            if inside is None:
                m = _FENCE.match(line)
                if m and m.group(2).lower() == lang:
                    inside, fence = [], m.group(1)
            elif line.strip() == fence:
                return "\n".join(inside) + "\n"
            else:
                inside.append(line)
        return "\n".join(inside) + "\n" if inside else None


def sections(text: str) -> list[Section]:
    """The text split at markdown headings (levels 1-3) that lie outside fenced blocks."""
    out: list[Section] = [Section("", 0)]
    fence: str | None = None
    for line in text.splitlines():
        if fence is None:
            m = _HEADING.match(line)
            if m:
                out.append(Section(m.group(2), len(m.group(1))))
                continue
            f = _FENCE.match(line)
            if f:
                fence = f.group(1)
        elif line.strip() == fence:
            fence = None
        out[-1].lines.append(line)
    return out


def _find(parts: list[Section], prefix: str) -> Section | None:
    return next((s for s in parts if s.title.startswith(prefix)), None)


def _json_object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.info("a hyperparameter block in the prompt is not JSON; ignored")
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class DesignerPrompt:
    """What a designer prompt asks for."""

    mode: str = "compose"
    decoder: str | None = None
    snippets: list[str] = field(default_factory=list)
    parent_code: str | None = None
    parent_prm: dict[str, Any] = field(default_factory=dict)


def parse_designer(text: str) -> DesignerPrompt:
    """Mode, decoder hint, snippet names and parent (code and prm) of a designer prompt."""
    parts = sections(text)
    req = DesignerPrompt()
    dec = _find(parts, "Decoder")
    if dec is not None:
        body = dec.text
        req.decoder = next((k for k, v in DECODER_TEXT.items() if k is not None and body.startswith(v)), None)
    req.snippets = [m.group(1) for s in parts if s.level == 3 and (m := _SNIPPET.match(s.title))]
    code = _find(parts, "Parent code")
    if code is not None:
        req.mode = "improve"
        req.parent_code = code.fenced("python")
        req.parent_prm = _json_object((_find(parts, "Parent hyperparameters") or Section("", 0)).fenced("json"))
    return req


@dataclass
class CandidatePrompt:
    """The candidate of a fixer or reviewer prompt: its code, prm, error text and category."""

    code: str | None = None
    prm: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    category: str | None = None


def parse_candidate(text: str) -> CandidatePrompt:
    """Code, hyperparameters and (for a fixer prompt) the error of a fixer/reviewer prompt."""
    parts = sections(text)
    out = CandidatePrompt()
    cand = _find(parts, "Candidate")
    if cand is not None:
        out.code = cand.fenced("python")
    out.prm = _json_object((_find(parts, "Hyperparameters") or Section("", 0)).fenced("json"))
    err = _find(parts, "Error")
    if err is not None:
        out.error = (err.fenced("text") or "").strip()
    req = _find(parts, "Fix request")
    if req is not None:
        m = re.search(r"with category `([^`]+)`", req.text)
        out.category = m.group(1) if m else None
    return out
