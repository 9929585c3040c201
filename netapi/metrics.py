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

`corpus_cider_d` is CIDEr-D as the COCO caption evaluation computes it
(pycocoevalcap's `Cider`, which is the "-D" variant): tf-idf vectors of 1..4-grams
with document frequencies taken from the reference corpus, clipped hypothesis
weights, a Gaussian length penalty (sigma 6), the mean over n and over the
references of an image, times 10. Its quirks are kept on purpose so numbers agree
with published ones: the "length" in the penalty counts bigrams, not words, and
an n-gram no reference contains gets document frequency 1.
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
CIDER_SIGMA = 6.0

NGramCounts = dict[tuple[str, ...], int]


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


def _ngram_counts(words: Sequence[str], n: int = MAX_N) -> NGramCounts:
    counts: NGramCounts = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            g = tuple(words[i:i + k])
            counts[g] = counts.get(g, 0) + 1
    return counts


def _tfidf(counts: NGramCounts, df: dict[tuple[str, ...], float], log_n_images: float
           ) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
    """Per-order tf-idf weights, their norms, and the "length" (bigram count, as in the COCO code)."""
    vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(MAX_N)]
    norm = [0.0] * MAX_N
    length = 0
    for g, tf in counts.items():
        n = len(g) - 1
        w = float(tf) * (log_n_images - math.log(max(1.0, df.get(g, 0.0))))
        vec[n][g] = w
        norm[n] += w * w
        if n == 1:
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def corpus_cider_d(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]
                   ) -> tuple[float, list[float]]:
    """CIDEr-D of a corpus: (mean over images, per-image scores), on tokenised words as `corpus_bleu` takes them.

    Agrees with pycocoevalcap's `CiderScorer` (n = 4, sigma 6) to floating-point
    rounding; an empty hypothesis scores 0. Document frequencies come from this
    corpus's references, so the score of one image depends on the whole set.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"corpus_cider_d: {len(hyps)} hypotheses but {len(refs)} reference sets")
    if not hyps:
        raise ValueError("corpus_cider_d: empty corpus")
    ref_counts = []
    for i, ref_set in enumerate(refs):
        if not ref_set:
            raise ValueError(f"corpus_cider_d: item {i} has no reference")
        ref_counts.append([_ngram_counts(list(r)) for r in ref_set])
    df: dict[tuple[str, ...], float] = {}
    for rc in ref_counts:
        for g in {g for counts in rc for g in counts}:
            df[g] = df.get(g, 0.0) + 1.0
    log_n = math.log(float(len(refs)))
    penalty_scale = 2 * CIDER_SIGMA ** 2
    scores: list[float] = []
    for hyp, rc in zip(hyps, ref_counts, strict=True):
        vec, norm, length = _tfidf(_ngram_counts(list(hyp)), df, log_n)
        total = [0.0] * MAX_N
        for counts in rc:
            vref, nref, lref = _tfidf(counts, df, log_n)
            penalty = math.exp(-float(length - lref) ** 2 / penalty_scale)
            for n in range(MAX_N):
                val = sum(min(w, vref[n].get(g, 0.0)) * vref[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] != 0 and nref[n] != 0:
                    val /= norm[n] * nref[n]
                total[n] += val * penalty
        scores.append(sum(total) / MAX_N / len(rc) * 10.0)
    return (sum(scores) / len(scores), scores)
