"""Code blocks in LLM replies: fenced blocks, unfenced code, and how promising each block is.

`fenced_blocks` finds ```/~~~ blocks (a final one left open becomes closed=False);
`bare_code` finds code written without fences in time linear in the text (a parse
is cut at the line it fails on, a bounded number of times); `judge` ranks a block
by whether it parses, defines `Net` and `supported_hyperparameters`.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from nncaption.netapi import pyast

PYTHON_LABELS = {"", "python", "py", "python3", "py3", "pytorch", "torch", "python-code"}
_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\n]*?)\s*$")
_CODE_START = re.compile(r"^(import |from \S+ import |class |def |@|#!|\"\"\"|''')")
NET_TEXT = re.compile(r"^\s*class\s+Net\b", re.MULTILINE)


@dataclass
class CodeBlock:
    """A fenced block: its label, code, whether it was closed, and its first line in the text."""

    lang: str
    code: str
    closed: bool
    line: int


@dataclass
class Judged:
    block: CodeBlock
    parses: bool
    has_net: bool
    has_hparams: bool

    @property
    def rank(self) -> tuple[bool, bool, bool]:
        return (self.parses and self.has_net and self.has_hparams, self.parses and self.has_net, self.parses)


def fenced_blocks(text: str) -> list[CodeBlock]:
    """All fenced blocks in order; a final fence left open becomes a block with closed=False."""
    blocks: list[CodeBlock] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group("fence"), m.group("info").split()[0].lower() if m.group("info").strip() else ""
        body: list[str] = []
        j = i + 1
        closed = False
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                closed = True
                break
            body.append(lines[j])
            j += 1
        blocks.append(CodeBlock(lang=lang, code=textwrap.dedent("\n".join(body)).strip("\n") + "\n",
                                closed=closed, line=i + 1))
        i = j + 1
    return blocks


def judge(block: CodeBlock) -> Judged:
    try:
        tree = pyast.parse(block.code)
    except (SyntaxError, ValueError):
        return Judged(block, False, bool(NET_TEXT.search(block.code)), "supported_hyperparameters" in block.code)
    has_net = any(isinstance(n, ast.ClassDef) and n.name == "Net" for n in tree.body)
    has_hp = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "supported_hyperparameters"
                 for n in tree.body)
    return Judged(block, True, has_net, has_hp)


def parses(code: str) -> bool:
    try:
        pyast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


MAX_BARE_CUTS = 8  # syntax-error cuts tried on unfenced code (each parse is linear: the whole is linear)


def bare_code(section: str) -> str | None:
    """Code written without fences: the whole text, or the run from the first code-like line up to the prose after it.

    Linear in the text's size: instead of re-parsing after trimming each line, the text is cut
    just before the line a parse fails on (trailing prose), at most MAX_BARE_CUTS times.
    """
    text = section.strip("\n")
    if not text.strip():
        return None
    if re.search(r"^\s*(class|def|import|from)\s", text, re.MULTILINE) and parses(text):
        return text + "\n"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if _CODE_START.match(ln)), None)
    if start is None:
        return None
    end = len(lines)
    for _ in range(MAX_BARE_CUTS):
        chunk = "\n".join(lines[start:end])
        if not NET_TEXT.search(chunk):
            return None
        try:
            pyast.parse(chunk)
            return chunk + "\n"
        except SyntaxError as e:
            bad = (e.lineno or 0) - 1  # 0-based within chunk
            cut = start + bad if bad > 0 else end - 1
            if cut >= end:  # an error at the very end (unclosed bracket...): drop the last line
                cut = end - 1
            if cut <= start:
                return None
            end = cut
        except ValueError:
            return None
    return None
