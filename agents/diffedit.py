"""SEARCH/REPLACE edits against a parent file (OpenEvolve's diff format): parse, apply, report.

An `improve` or `fix` reply may change the parent with blocks like

    <<<<<<< SEARCH
    old lines
    =======
    new lines
    >>>>>>> REPLACE

`parse_diff` reads them line by line (one pass, linear in the reply; fences around
blocks are ignored). A reply is hostile input: at most `MAX_BLOCKS` blocks, each side
at most `MAX_SIDE_CHARS` characters, an unterminated or nested block is a format
error, and an edited file over `MAX_CODE_CHARS` is refused.

`apply_diff` applies the blocks in order, each to the file as the earlier ones left
it, and always whole lines: first exactly, then with trailing whitespace ignored,
then with indentation ignored (the replacement is re-indented by the difference the
match showed). A block applies only where its SEARCH lines match exactly once; no
match or several is a failed block. Each level is one `str.find` scan over the
file's normalised lines, so a block costs linear time. The per-block results say
which level matched, or why none did; `nncaption.agents.diffask` uses them to ask
for the whole file when any block fails.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nncaption.netapi.safetext import safe_text

MAX_BLOCKS = 32
MAX_SIDE_CHARS = 100_000  # one SEARCH or REPLACE side
MAX_CODE_CHARS = 400_000  # the edited file
PREVIEW_CHARS = 80

_START = re.compile(r"^[ \t]*<{7}[ \t]*SEARCH[ \t]*\r?$")
_MID = re.compile(r"^[ \t]*={7}[ \t]*\r?$")
_END = re.compile(r"^[ \t]*>{7}[ \t]*REPLACE[ \t]*\r?$")
_INDENT = re.compile(r"^[ \t]*")


class DiffFormatError(ValueError):
    """The reply's SEARCH/REPLACE blocks cannot be read (unterminated, nested, too many, too large)."""


@dataclass(frozen=True)
class EditBlock:
    """One SEARCH/REPLACE block: the lines to find, the lines to put there, its first line in the reply."""

    search: list[str]
    replace: list[str]
    line: int


@dataclass
class BlockResult:
    """What became of one block: applied (at which match level and file line) or why not."""

    index: int
    applied: bool
    match: str = ""  # exact | trailing-whitespace | indentation ("" when not applied)
    reason: str = ""
    at_line: int | None = None
    search_lines: int = 0
    replace_lines: int = 0
    preview: str = ""  # the first non-blank SEARCH line, escaped and short

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "applied": self.applied, "match": self.match, "reason": self.reason,
                "at_line": self.at_line, "search_lines": self.search_lines, "replace_lines": self.replace_lines,
                "preview": self.preview}

    def note(self, total: int) -> str:
        head = f"diff block {self.index}/{total} ({self.search_lines} -> {self.replace_lines} lines"
        head += f", '{self.preview}')" if self.preview else ")"
        if self.applied:
            return f"{head}: applied ({self.match}) at line {self.at_line}"
        return f"{head}: not applied: {self.reason}"


@dataclass
class DiffOutcome:
    """The edited file (the parts that applied) and one result per block."""

    code: str
    results: list[BlockResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.applied for r in self.results)


def parse_diff(text: str, *, max_blocks: int = MAX_BLOCKS, max_side_chars: int = MAX_SIDE_CHARS) -> list[EditBlock]:
    """The SEARCH/REPLACE blocks of `text`, in order ([] when it holds none); raises DiffFormatError."""
    blocks: list[EditBlock] = []
    state = "out"
    search: list[str] = []
    replace: list[str] = []
    size = 0
    start = 0
    for no, line in enumerate(text.split("\n"), 1):
        if state == "out":
            if _START.match(line):
                if len(blocks) == max_blocks:
                    raise DiffFormatError(f"the reply holds more than {max_blocks} SEARCH/REPLACE blocks")
                state, search, replace, size, start = "search", [], [], 0, no
            elif _MID.match(line) or _END.match(line):
                raise DiffFormatError(f"line {no}: a '{line.strip()}' marker outside a SEARCH/REPLACE block")
            continue
        if _START.match(line):
            raise DiffFormatError(f"line {no}: a SEARCH marker inside the block that starts at line {start}")
        if state == "search" and _MID.match(line):
            state, size = "replace", 0
            continue
        if _END.match(line):
            if state == "search":
                raise DiffFormatError(f"the block at line {start} has no '=======' line before REPLACE")
            blocks.append(EditBlock(search=search, replace=replace, line=start))
            state = "out"
            continue
        if state == "replace" and _MID.match(line):
            raise DiffFormatError(f"line {no}: a second '=======' in the block that starts at line {start}")
        size += len(line) + 1
        if size > max_side_chars:
            raise DiffFormatError(f"the block at line {start} has a side over {max_side_chars} characters")
        (search if state == "search" else replace).append(line.rstrip("\r"))
    if state != "out":
        raise DiffFormatError(f"the block at line {start} is not closed with '>>>>>>> REPLACE'")
    return blocks


def _trim_blank(lines: Sequence[str]) -> list[str]:
    lo, hi = 0, len(lines)
    while lo < hi and not lines[lo].strip():
        lo += 1
    while hi > lo and not lines[hi - 1].strip():
        hi -= 1
    return list(lines[lo:hi])


def _find(code: Sequence[str], search: Sequence[str], norm: Callable[[str], str]) -> tuple[int | None, int]:
    """(first line index, matches found up to 2) of `search` as whole lines of `code`, compared after `norm`."""
    hay = "\n" + "\n".join(norm(x) for x in code) + "\n"
    needle = "\n" + "\n".join(norm(x) for x in search) + "\n"
    first = hay.find(needle)
    if first < 0:
        return None, 0
    second = hay.find(needle, first + 1)
    return hay.count("\n", 0, first), 1 if second < 0 else 2


def _indent(line: str) -> str:
    m = _INDENT.match(line)
    return m.group(0) if m else ""


def _reindent(replace: Sequence[str], search: Sequence[str], matched: Sequence[str]) -> list[str]:
    """`replace` shifted by the indentation difference between the first non-blank SEARCH line and its match."""
    pairs = [(s, c) for s, c in zip(search, matched, strict=True) if s.strip()]
    if not pairs:
        return list(replace)
    s_ind, c_ind = _indent(pairs[0][0]), _indent(pairs[0][1])
    out = []
    for line in replace:
        if not line.strip():
            out.append("")
        elif line.startswith(s_ind):
            out.append(c_ind + line[len(s_ind):])
        else:
            out.append(c_ind + line.lstrip(" \t"))
    return out


_LEVELS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("exact", lambda s: s),
    ("trailing-whitespace", lambda s: s.rstrip()),
    ("indentation", lambda s: s.strip()),
)


def apply_block(lines: list[str], block: EditBlock, index: int) -> BlockResult:
    """Apply one block to `lines` in place (unchanged when it does not apply); returns its result."""
    preview = next((safe_text(x.strip(), PREVIEW_CHARS, keep="head") for x in block.search if x.strip()), "")
    result = BlockResult(index=index, applied=False, search_lines=len(block.search),
                         replace_lines=len(block.replace), preview=preview)
    if not preview:
        result.reason = "the SEARCH part is empty"
        return result
    for level, norm in _LEVELS:
        search = block.search if level == "exact" else _trim_blank(block.search)
        replace = block.replace if level == "exact" else _trim_blank(block.replace)
        at, count = _find(lines, search, norm)
        if count > 1:
            result.reason = f"the SEARCH lines match more than once ({level} comparison): ambiguous"
            return result
        if at is None:
            continue
        matched = lines[at:at + len(search)]
        new = _reindent(replace, search, matched) if level == "indentation" else list(replace)
        lines[at:at + len(search)] = new
        result.applied, result.match, result.at_line = True, level, at + 1
        return result
    result.reason = "the SEARCH lines are not in the file (even ignoring whitespace)"
    return result


def apply_diff(code: str, blocks: Sequence[EditBlock], *, max_code_chars: int = MAX_CODE_CHARS) -> DiffOutcome:
    """Apply `blocks` in order to `code`; every block is tried and reported, the ones that fail change nothing."""
    lines = code.split("\n")
    results: list[BlockResult] = []
    size = len(code)
    for i, block in enumerate(blocks, 1):
        grows = sum(len(x) + 1 for x in block.replace) - sum(len(x) + 1 for x in block.search)
        if size + grows > max_code_chars:
            results.append(BlockResult(index=i, applied=False, reason=f"the edited file would exceed "
                                       f"{max_code_chars} characters", search_lines=len(block.search),
                                       replace_lines=len(block.replace)))
            continue
        result = apply_block(lines, block, i)
        if result.applied:
            size += grows
        results.append(result)
    return DiffOutcome(code="\n".join(lines), results=results)


def wants_diff(probability: float, *keys: object) -> bool:
    """Whether this request asks for edits: a stable draw from `keys` (same request, same choice; resume-safe)."""
    if probability <= 0.0:
        return False
    if probability >= 1.0:
        return True
    digest = hashlib.sha256("\x1f".join(str(k) for k in keys).encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < probability
