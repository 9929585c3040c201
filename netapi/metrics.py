"""Caption metrics: BLEU-1..4 by the COCO protocol, and a LEMUR-compatible BLEU-4.

The main figure is `corpus_bleu`: corpus-level BLEU on words (specials already
stripped by the caller), brevity penalty from the reference length *closest* to
each hypothesis (ties go to the shorter one), no smoothing. That is what
pycocoevalcap's `Bleu` scorer computes, and what nltk's `corpus_bleu` computes
with one exception this module corrects: nltk counts at least one n-gram in the
denominator of a hypothesis shorter than n words (`max(1, ...)`), the COCO
scorer counts none. We build the score from nltk's own pieces
(`modified_precision`, `closest_ref_length`, `brevity_penalty`) so that, for
hypotheses of four words or more, the result is bit-for-bit nltk's, and for
short or empty ones it is COCO's.

`lemur_bleu4` reproduces LEMUR's (nn-dataset) `BLEUMetric`: the *mean of
sentence-level* BLEU-4 with `SmoothingFunction().method1`, on token ids with
PAD removed. It exists so numbers can be compared with LEMUR's stored stats; it
is never the main figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nltk.translate.bleu_score import (
    SmoothingFunction,
    brevity_penalty,
    closest_ref_length,
    modified_precision,
    sentence_bleu,
)

MAX_N = 4
PAD_ID = 0


def corpus_bleu(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]) -> dict[str, float]:
    """COCO-protocol corpus BLEU-1..4 (keys "bleu1".."bleu4"), each in [0, 1].

    `hyps[i]` is the tokenised hypothesis of image i (may be empty), `refs[i]`
    its tokenised references (at least one). BLEU-n is cumulative: the geometric
    mean of the 1..n-gram precisions (clipped counts summed over the corpus)
    times the corpus brevity penalty. An order with no matching n-gram makes
    that BLEU-n (and every higher one) 0, as unsmoothed BLEU must.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"corpus_bleu: {len(hyps)} hypotheses but {len(refs)} reference sets")
    if not hyps:
        raise ValueError("corpus_bleu: empty corpus")
    correct = [0] * (MAX_N + 1)
    guess = [0] * (MAX_N + 1)
    hyp_len = ref_len = 0
    for i, (hyp, ref_set) in enumerate(zip(hyps, refs, strict=True)):
        hyp = list(hyp)
        ref_set = [list(r) for r in ref_set]
        if not ref_set:
            raise ValueError(f"corpus_bleu: item {i} has no reference")
        for n in range(1, MAX_N + 1):
            p = modified_precision(ref_set, hyp, n)  # Fraction, not normalised
            correct[n] += p.numerator
            guess[n] += max(0, len(hyp) - n + 1)  # COCO: 0, not nltk's max(1, .), for short hypotheses
        hyp_len += len(hyp)
        ref_len += closest_ref_length(ref_set, len(hyp))
    bp = brevity_penalty(ref_len, hyp_len)  # 0 for an all-empty corpus
    scores: dict[str, float] = {}
    log_sum = 0.0
    dead = False
    for n in range(1, MAX_N + 1):
        if dead or correct[n] == 0 or guess[n] == 0:
            dead = True
            scores[f"bleu{n}"] = 0.0
            continue
        log_sum += math.log(correct[n] / guess[n])
        scores[f"bleu{n}"] = bp * math.exp(log_sum / n)
    return scores


def lemur_bleu4(hyp_ids: Sequence[Sequence[int]], ref_ids: Sequence[Sequence[Sequence[int]]]) -> float:
    """LEMUR-compatible BLEU-4: mean sentence BLEU-4 (smoothing method 1) on token ids.

    As in LEMUR's `BLEUMetric`: PAD (0) ids are dropped from hypotheses and
    references, references left empty are ignored, and an item with no
    reference at all is skipped. Returns 0.0 when nothing could be scored.
    """
    if len(hyp_ids) != len(ref_ids):
        raise ValueError(f"lemur_bleu4: {len(hyp_ids)} hypotheses but {len(ref_ids)} reference sets")
    smooth = SmoothingFunction().method1
    scores: list[float] = []
    for hyp, ref_set in zip(hyp_ids, ref_ids, strict=True):
        h = [int(t) for t in hyp if int(t) != PAD_ID]
        rs = [[int(t) for t in r if int(t) != PAD_ID] for r in ref_set]
        rs = [r for r in rs if r]
        if not rs:
            continue
        scores.append(float(sentence_bleu(rs, h, weights=(0.25, 0.25, 0.25, 0.25), smoothing_function=smooth)))
    return sum(scores) / len(scores) if scores else 0.0
