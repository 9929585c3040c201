"""CIDEr-D against pycocoevalcap's own scorer (a dev dependency) on random corpora, to 1e-6."""

from __future__ import annotations

import random

import pytest

from nncaption.netapi.metrics import corpus_cider_d

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right", "two", "small", "big", "of", "and"]


def _sentence(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


def _corpus(seed: int) -> tuple[list[list[str]], list[list[list[str]]]]:
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    hyps = [_sentence(rng, 0 if rng.random() < 0.15 else 1, 12) for _ in range(n)]  # some empty hypotheses
    refs = [[_sentence(rng, 1, 14) for _ in range(rng.randint(1, 5))] for _ in range(n)]
    if seed % 4 == 0:  # some hypotheses copied from a reference: scores well above 0
        hyps = [list(r[0]) if rng.random() < 0.5 else h for h, r in zip(hyps, refs, strict=True)]
    return hyps, refs


@pytest.mark.parametrize("seed", range(20))
def test_cider_d_matches_pycocoevalcap(seed: int) -> None:
    cider_scorer = pytest.importorskip("pycocoevalcap.cider.cider_scorer")
    hyps, refs = _corpus(seed)
    ref_scorer = cider_scorer.CiderScorer(n=4, sigma=6.0)
    for h, r in zip(hyps, refs, strict=True):
        ref_scorer += (" ".join(h), [" ".join(x) for x in r])
    want_mean, want_each = ref_scorer.compute_score()
    mean, each = corpus_cider_d(hyps, refs)
    assert mean == pytest.approx(float(want_mean), abs=1e-6)
    assert each == pytest.approx([float(x) for x in want_each], abs=1e-6)


def test_cider_d_edge_cases() -> None:
    refs = [[["a", "red", "circle"], ["a", "circle"]], [["two", "blue", "squares"]]]
    mean, each = corpus_cider_d([[], []], refs)
    assert mean == 0.0 and each == [0.0, 0.0]
    perfect, _ = corpus_cider_d([["a", "red", "circle"], ["two", "blue", "squares"]], refs)
    assert perfect > 1.0
    with pytest.raises(ValueError):
        corpus_cider_d([["a"]], [[]])
    with pytest.raises(ValueError):
        corpus_cider_d([], [])
