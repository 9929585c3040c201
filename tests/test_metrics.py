"""BLEU by the COCO protocol, checked against pycocoevalcap, nltk and hand-computed cases."""

from __future__ import annotations

import math
import random

import pytest
from nltk.translate import bleu_score as nltk_bleu
from pycocoevalcap.bleu.bleu import Bleu

from nncaption.netapi.metrics import corpus_bleu, lemur_bleu4

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the middle", "near the corner"]
COUNTS = ["one", "two", "three", "a", "some", "several"]
FILLER = ["there", "is", "are", "image", "picture", "shows", "with", "and", "of", "the"]


def _caption(rng: random.Random) -> list[str]:
    """A realistic synthetic caption, 4..16 words."""
    parts = [rng.choice(["a picture of", "there is", "an image with", "this shows", ""])]
    for _ in range(rng.randint(1, 2)):
        parts.append(f"{rng.choice(COUNTS)} {rng.choice(COLOURS)} {rng.choice(SHAPES)} {rng.choice(PLACES)}")
    words = " and ".join(p for p in parts[1:] if p).split()
    return (parts[0].split() + words) if parts[0] else words


def _hypothesis(rng: random.Random, refs: list[list[str]], allow_short: bool) -> list[str]:
    """A hypothesis near one reference: word swaps, drops, insertions; sometimes short or empty."""
    if allow_short and rng.random() < 0.12:
        return [rng.choice(COLOURS + SHAPES) for _ in range(rng.randint(0, 3))]
    base = list(rng.choice(refs))
    out: list[str] = []
    for w in base:
        r = rng.random()
        if r < 0.1:
            continue
        if r < 0.25:
            out.append(rng.choice(COLOURS + SHAPES + FILLER))
        else:
            out.append(w)
        if rng.random() < 0.05:
            out.append(rng.choice(FILLER))
    if len(out) < 4 and not allow_short:
        out += rng.sample(FILLER, 4 - len(out))
    return out


def _corpus(seed: int, n: int, allow_short: bool) -> tuple[list[list[str]], list[list[list[str]]]]:
    rng = random.Random(seed)
    refs = [[_caption(rng) for _ in range(rng.randint(1, 5))] for _ in range(n)]
    hyps = [_hypothesis(rng, r, allow_short) for r in refs]
    return hyps, refs


def _coco(hyps: list[list[str]], refs: list[list[list[str]]]) -> list[float]:
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return list(score)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("allow_short", [False, True])
def test_agrees_with_pycocoevalcap(seed: int, allow_short: bool) -> None:
    hyps, refs = _corpus(seed, 120 + 40 * seed, allow_short)
    ours = corpus_bleu(hyps, refs)
    theirs = _coco(hyps, refs)
    for n in range(1, 5):
        assert ours[f"bleu{n}"] == pytest.approx(theirs[n - 1], abs=1e-3), (n, ours, theirs)
    assert 0.05 < ours["bleu4"] < 0.95  # a realistic corpus, not a degenerate one


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_equals_nltk_corpus_bleu_when_hypotheses_have_four_words(seed: int) -> None:
    hyps, refs = _corpus(seed, 150, allow_short=False)
    assert min(len(h) for h in hyps) >= 4
    ours = corpus_bleu(hyps, refs)
    for n in range(1, 5):
        expected = nltk_bleu.corpus_bleu(refs, hyps, weights=tuple([1.0 / n] * n))
        assert ours[f"bleu{n}"] == pytest.approx(expected, abs=1e-12)


def test_perfect_match_is_one() -> None:
    refs = [[["a", "red", "circle", "on", "the", "left"], ["one", "red", "circle"]],
            [["two", "blue", "squares", "at", "the", "top"]]]
    hyps = [refs[0][0], refs[1][0]]
    assert corpus_bleu(hyps, refs) == {"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0}


def test_brevity_penalty_hand_computed() -> None:
    hyp = "the cat sat on mat".split()  # 5 words
    ref = "the cat sat on the mat".split()  # 6 words
    # precisions: 5/5, 3/4, 2/3, 1/2; BP = exp(1 - 6/5)
    bp = math.exp(1 - 6 / 5)
    s = corpus_bleu([hyp], [[ref]])
    assert s["bleu1"] == pytest.approx(bp)
    assert s["bleu2"] == pytest.approx(bp * (1 * 3 / 4) ** (1 / 2))
    assert s["bleu3"] == pytest.approx(bp * (1 * 3 / 4 * 2 / 3) ** (1 / 3))
    assert s["bleu4"] == pytest.approx(bp * (1 * 3 / 4 * 2 / 3 * 1 / 2) ** (1 / 4))
    assert s["bleu4"] == pytest.approx(0.578930, abs=1e-6)  # exp(-0.2) * 0.25 ** 0.25


def test_closest_reference_length_not_shortest_or_average() -> None:
    hyp = "a b c d e".split()  # 5 words, all in the references
    far = "a b c d e f g h i".split()  # 9 words
    near = "a b c d e f".split()  # 6 words: closest
    s = corpus_bleu([hyp], [[far, near]])
    assert s["bleu1"] == pytest.approx(math.exp(1 - 6 / 5))  # not exp(1 - 9/5), not the average 7.5
    # a tie (4 and 6 both one away from 5) goes to the shorter reference: no penalty
    tie = corpus_bleu([hyp], [["a b c d".split(), near]])
    assert tie["bleu1"] == pytest.approx(1.0)
    assert tie["bleu1"] == pytest.approx(_coco([hyp], [["a b c d".split(), near]])[0], abs=1e-9)


def test_brevity_penalty_is_corpus_level() -> None:
    # one short and one long hypothesis: the corpus lengths balance out, so no penalty
    refs = [["a b c d e f".split()], ["g h i j".split()]]
    hyps = ["a b c d".split(), "g h i j k l".split()]
    s = corpus_bleu(hyps, refs)
    assert s["bleu1"] == pytest.approx(8 / 10)  # 8 clipped matches of 10 words, BP = 1 (10 >= 10)


def test_clipping_repeated_words() -> None:
    s = corpus_bleu([["the"] * 7], [["the cat is on the mat".split()]])
    # clipped unigram precision 2/7; no bigram match -> bleu2..4 = 0; BP = 1 (7 > 6)
    assert s["bleu1"] == pytest.approx(2 / 7)
    assert s["bleu2"] == s["bleu3"] == s["bleu4"] == 0.0


def test_empty_hypotheses() -> None:
    assert corpus_bleu([[]], [[["a", "b"]]]) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}
    refs = [["a b c d e".split()], ["f g h i j".split(), "f g".split()]]
    hyps = [refs[0][0], []]
    s = corpus_bleu(hyps, refs)
    # the empty hypothesis adds nothing to the n-gram counts but its closest reference (2 words) to r
    assert s["bleu4"] == pytest.approx(math.exp(1 - 7 / 5))
    assert s["bleu4"] == pytest.approx(_coco(hyps, refs)[3], abs=1e-6)


def test_mismatched_lengths_rejected() -> None:
    with pytest.raises(ValueError):
        corpus_bleu([["a"]], [])
    with pytest.raises(ValueError):
        corpus_bleu([], [])
    with pytest.raises(ValueError):
        corpus_bleu([["a"]], [[]])


def test_lemur_bleu4_matches_sentence_mean() -> None:
    smooth = nltk_bleu.SmoothingFunction().method1
    hyps = [[5, 6, 7, 8, 2, 0, 0], [9, 10, 2], []]
    refs = [[[1, 5, 6, 7, 8, 2, 0], [1, 5, 6, 2, 0, 0, 0]], [[1, 9, 10, 11, 2]], [[1, 4, 2]]]
    expected = [
        nltk_bleu.sentence_bleu([[1, 5, 6, 7, 8, 2], [1, 5, 6, 2]], [5, 6, 7, 8, 2], smoothing_function=smooth),
        nltk_bleu.sentence_bleu([[1, 9, 10, 11, 2]], [9, 10, 2], smoothing_function=smooth),
        0.0,
    ]
    assert lemur_bleu4(hyps, refs) == pytest.approx(sum(expected) / 3)
    assert 0 < lemur_bleu4(hyps, refs) < 1
    assert lemur_bleu4([[1, 5, 6, 7, 8, 2]], [[[1, 5, 6, 7, 8, 2]]]) == pytest.approx(1.0)
    assert lemur_bleu4([[5]], [[[0, 0]]]) == 0.0  # no usable reference: skipped, nothing scored


def test_lemur_differs_from_corpus_bleu() -> None:
    """Mean of smoothed sentence scores is not corpus BLEU: the two must never be confused."""
    hyps, refs = _corpus(7, 80, allow_short=True)
    vocab: dict[str, int] = {}
    ids = lambda ws: [vocab.setdefault(w, len(vocab) + 4) for w in ws]  # noqa: E731
    lemur = lemur_bleu4([ids(h) for h in hyps], [[ids(r) for r in rs] for rs in refs])
    assert abs(lemur - corpus_bleu(hyps, refs)["bleu4"]) > 1e-3
