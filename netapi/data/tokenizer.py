"""The one tokeniser shared by vocabulary building and BLEU.

COCO-caption style (a light version of the PTB tokeniser that pycocoevalcap
uses): lower-case, split English clitics ("dog's" -> "dog 's", "don't" ->
"do n't"), drop punctuation, keep in-word hyphens and decimal numbers
("t-shirt", "3.5"), split on whitespace. References and hypotheses must go
through the same function, otherwise BLEU compares different things.
"""

from __future__ import annotations

import re

# "dog's" -> "dog 's", "they're" -> "they 're", "don't" -> "do n't"
_CLITIC = re.compile(r"(?<=[^\W_])(n't|'s|'re|'ve|'ll|'d|'m)\b")
# A token: a clitic, a number with decimals, or a word with inner hyphens/apostrophes.
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\d+(?:[.,]\d+)+|[^\W_]+(?:[-'][^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-case `text`, strip punctuation and split it into word tokens.

    >>> tokenize("Two RED circles, on the left!")
    ['two', 'red', 'circles', 'on', 'the', 'left']
    """
    text = text.lower().replace("\u2019", "'").replace("`", "'")
    text = _CLITIC.sub(r" \1", text)
    return _TOKEN.findall(text)
