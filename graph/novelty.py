"""Near-duplicate detection before training: Jaccard similarity over token shingles of normalised code.

The exact check (graph/dedup.py) catches a file that differs from an earlier one
only in formatting, comments, docstrings or local names. A designer can also
answer with an earlier network under new attribute names or with other constants
(`self.fc` -> `self.head`, 256 -> 512): the same architecture, trained again. This
module measures how close two files are:

- `tokens`: the file without docstrings and comments (`ast.unparse` of the parsed
  file, so formatting vanishes), tokenised; every name the file itself binds
  (classes, functions, parameters, assigned names, `self.x = ...` attributes) becomes
  `ID`, numbers become `NUM` and strings `STR`; names the file does not bind
  (`nn.LSTM`, `torch.cat`, `F.relu`) are kept, so changing a layer type or the data flow
  changes the stream;
- `shingles`: the set of hashed k-token windows (k = 5 by default);
- `jaccard`: |A & B| / |A | B| of two shingle sets.

`nearest` returns the earlier candidate most similar to a new file when the
similarity reaches the threshold. The graph compares only against a bounded set
(the most recent and the best trained candidates, graph/nodes.py) and treats a
candidate whose hyperparameters differ as new (a different training).
"""

from __future__ import annotations

import ast
import hashlib
import io
import keyword
import re
import threading
import tokenize
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from nncaption.agents.feedback import FailureSummary, Feedback
from nncaption.graph import journal as jr
from nncaption.graph.dedup import _canonical_prm, _strip_docstring
from nncaption.graph.settings import NoveltySettings
from nncaption.netapi import pyast

SHINGLE = 5
MAX_CODE_CHARS = 400_000  # bounded work on hostile input: longer files are compared by their head
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d*)?|\S")


@dataclass(frozen=True)
class Near:
    """The closest earlier candidate and how close it is (Jaccard of shingles, 0..1)."""

    cid: str
    similarity: float


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the file binds itself: classes, functions, parameters, assigned names and assigned attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    names.discard("self")
    return names


def _strip_all_docstrings(tree: ast.Module) -> ast.Module:
    tree.body = _strip_docstring(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.body = _strip_docstring(node.body)
    return tree


def tokens(code: str) -> list[str]:
    """The normalised token stream of a file (see the module docstring); a file that does not parse is split
    into words and symbols, numbers still `NUM`."""
    code = code[:MAX_CODE_CHARS].lstrip("\ufeff")
    try:
        tree = _strip_all_docstrings(pyast.parse(code))
        text = ast.unparse(tree)
    except (SyntaxError, ValueError, RecursionError):
        return ["NUM" if w[0].isdigit() else w for w in _WORD.findall(code)]
    bound = _bound_names(tree)
    out: list[str] = []
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in skip:
                continue
            if tok.type == tokenize.NAME:
                out.append("ID" if tok.string in bound and not keyword.iskeyword(tok.string) else tok.string)
            elif tok.type == tokenize.NUMBER:
                out.append("NUM")
            elif tok.type == tokenize.STRING or tok.type >= getattr(tokenize, "FSTRING_START", 10_000):
                out.append("STR")
            else:
                out.append(tok.string)
    except (tokenize.TokenError, SyntaxError):  # unparse output always tokenises; belt and braces
        return ["NUM" if w[0].isdigit() else w for w in _WORD.findall(text)]
    return out


def shingles(stream: list[str], k: int = SHINGLE) -> frozenset[int]:
    """The set of k-token windows, each hashed to 64 bits (a stream shorter than k is one shingle)."""
    if not stream:
        return frozenset()
    windows = [stream[i:i + k] for i in range(max(1, len(stream) - k + 1))]
    return frozenset(int.from_bytes(hashlib.blake2b("\x1f".join(w).encode(), digest_size=8).digest(), "big")
                     for w in windows)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def code_shingles(code: str, k: int = SHINGLE) -> frozenset[int]:
    return shingles(tokens(code), k)


def similarity(a: str, b: str, k: int = SHINGLE) -> float:
    """How close two files are: Jaccard of their normalised token shingles."""
    return jaccard(code_shingles(a, k), code_shingles(b, k))


class ShingleCache:
    """Shingle sets of files already seen (keyed by a hash of the text and k), so the trained candidates are
    tokenised once per run, not once per design; bounded (least recently used dropped), safe across threads."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._sets: OrderedDict[bytes, frozenset[int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, code: str, k: int = SHINGLE) -> frozenset[int]:
        key = hashlib.blake2b(f"{k}\0{code}".encode("utf-8", "replace"), digest_size=16).digest()
        with self._lock:
            if key in self._sets:
                self._sets.move_to_end(key)
                return self._sets[key]
        value = code_shingles(code, k)
        with self._lock:
            self._sets[key] = value
            while len(self._sets) > self.size:
                self._sets.popitem(last=False)
        return value


def nearest(code: str, others: Iterable[tuple[str, str]], threshold: float, k: int = SHINGLE,
            cache: ShingleCache | None = None) -> Near | None:
    """The most similar of `others` ((cid, code) pairs) when its similarity is at least `threshold`, else None.
    A threshold of 0 (or below) disables the check; `cache` keeps the shingles of `others` between calls."""
    if threshold <= 0:
        return None
    mine = code_shingles(code, k)
    best: Near | None = None
    for cid, other in others:
        s = jaccard(mine, cache.get(other, k) if cache is not None else code_shingles(other, k))
        if s >= threshold and (best is None or s > best.similarity):
            best = Near(cid, s)
    return best


def too_close_note(near: Near) -> str:
    """What the designer is told when its answer is a near-duplicate (it is asked once more)."""
    return (f"too close to {near.cid} (similarity {near.similarity:.2f}): change the architecture, not only names "
            f"or constants")


def pool(entries: Iterable[jr.Entry], settings: NoveltySettings, cid: str,
         prm: Mapping[str, Any] | None) -> list[jr.Entry]:
    """The candidates a new design is compared with: trained ones (scored, or failed while training) with the
    same hyperparameters, the `recent` most recent and the `best` best scored (bounded work, however long the
    journal). Other hyperparameters are another training, never a near-duplicate."""
    mine = _canonical_prm(prm)
    trained = [e for e in entries if e.cid != cid and e.code_ref and _canonical_prm(e.prm) == mine
               and (e.status is jr.Status.SCORED or (e.status is jr.Status.FAILED and e.stage == "train"))]
    recent = sorted(trained, key=lambda e: e.index)[-settings.recent:] if settings.recent else []
    best = [e for e in jr.ranked(trained) if e.scored][:settings.best]
    chosen = {e.cid: e for e in [*recent, *best]}
    return sorted(chosen.values(), key=lambda e: e.index)


def with_note(request: Any, note: str) -> Any:
    """The design request again with `note` as its most recent feedback line (category `too-close`), which the
    designer's prompt shows among the recent failures."""
    feedback = getattr(request, "feedback", None) or Feedback()
    extra = FailureSummary("too-close", note)
    return replace(request, feedback=Feedback(top=feedback.top, failures=[*feedback.failures, extra]))
