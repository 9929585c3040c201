"""Caption vocabulary: the four specials first, then words by frequency.

Built from training captions only. `encode` wraps a caption in SOS ... EOS and
pads nothing (padding happens when captions are stacked into arrays);
`decode` cuts at EOS and drops the specials, as scoring does.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from nncaption.netapi.contract import EOS, PAD, SOS, SPECIALS, UNK
from nncaption.netapi.errors import DatasetError


class Vocab:
    """Word <-> id mapping with PAD=0, SOS=1, EOS=2, UNK=3."""

    def __init__(self, itos: Sequence[str]) -> None:
        itos = list(itos)
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the specials {SPECIALS}, got {itos[:4]}")
        if len(set(itos)) != len(itos):
            raise ValueError("a vocabulary must not repeat words")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words)"

    @classmethod
    def build(cls, tokenised_captions: Iterable[Sequence[str]], min_freq: int = 2) -> Vocab:
        """Words seen at least `min_freq` times, most frequent first, ties alphabetical (deterministic)."""
        counts: Counter[str] = Counter()
        for tokens in tokenised_captions:
            counts.update(tokens)
        words = sorted((w for w, c in counts.items() if c >= min_freq and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words)

    def encode(self, tokens: Sequence[str], max_len: int) -> list[int]:
        """SOS, word ids, EOS; at most `max_len` ids in all (words are truncated, EOS always ends it)."""
        if max_len < 2:
            raise ValueError("max_len must leave room for SOS and EOS (>= 2)")
        ids = [self.stoi.get(t, UNK) for t in tokens[: max_len - 2]]
        return [SOS, *ids, EOS]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Words of `ids`, cut at the first EOS, specials and out-of-range ids dropped."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, SOS, UNK) or not 0 <= i < len(self.itos):
                continue
            words.append(self.itos[i])
        return words

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"itos": self.itos}, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(data["itos"])
        except FileNotFoundError as e:
            raise DatasetError(f"vocabulary file {path} is missing",
                               "prepare the dataset again: nncaption data prepare ...") from e
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"vocabulary file {path} is malformed: {e}",
                               "delete the prepared folder and run nncaption data prepare again") from e
