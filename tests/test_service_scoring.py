"""Parent-side scoring (sandbox.scoring): hostile predictions are candidate failures, forged scores suspect."""

from __future__ import annotations

from typing import Any

import pytest

from nncaption.netapi.contract import EOS, SOS
from nncaption.netapi.job import EpochPredictions
from nncaption.sandbox.scoring import DatasetFacts, PredictionError, score_predictions, suspicion


@pytest.fixture(scope="module")
def facts(tiny_dataset: Any) -> DatasetFacts:
    return DatasetFacts.load(tiny_dataset, max_val_images=8)


def perfect(facts: DatasetFacts, epoch: int = 1) -> EpochPredictions:
    """Every image decoded as its first reference: what a candidate that re-derived the references would write."""
    ids = {i: facts.vocab.encode(facts.refs[i][0], max_len=len(facts.refs[i][0]) + 2) for i in facts.expected_ids}
    return EpochPredictions(epoch=epoch, seconds=1.0, decode_seconds=0.1, train_loss=1.0, ids=ids)


def test_the_expected_images_are_the_recorded_subset(facts: DatasetFacts) -> None:
    assert len(facts.expected_ids) == 8 and set(facts.refs) == set(facts.expected_ids)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda ids: ids.pop(next(iter(ids))), "exactly"),
        (lambda ids: ids.__setitem__("999999", [SOS, EOS]), "unknown"),
        (lambda ids: ids.__setitem__(next(iter(ids)), [SOS, 10**9]), "vocabulary"),
        (lambda ids: ids.__setitem__(next(iter(ids)), [SOS, -1]), "vocabulary"),
        (lambda ids: ids.__setitem__(next(iter(ids)), [SOS] * 5000), "at most"),
        (lambda ids: ids.__setitem__(next(iter(ids)), "1 2 3"), "list"),
        (lambda ids: ids.__setitem__(next(iter(ids)), [1.5]), "not an id"),
    ],
)
def test_predictions_breaking_the_contract_are_eval_contract(facts: DatasetFacts, mutate: Any, words: str) -> None:
    ep = perfect(facts)
    mutate(ep.ids)
    with pytest.raises(PredictionError, match=words):
        score_predictions([ep], facts, epochs=1, params=10)


def test_missing_epochs_are_refused(facts: DatasetFacts) -> None:
    with pytest.raises(PredictionError, match="epochs"):
        score_predictions([perfect(facts)], facts, epochs=2, params=10)


def test_a_forged_perfect_score_is_suspect_and_the_baseline_is_not(facts: DatasetFacts) -> None:
    scored = score_predictions([perfect(facts)], facts, epochs=1, params=10)
    assert scored.bleu4 is not None and scored.bleu4 > 0.9
    suspect, reason = suspicion(scored.bleu4, facts)
    assert suspect and "BLEU-4" in reason
    base, caption = facts.baseline()
    assert caption and 0 <= base < facts.ceiling()
    assert suspicion(base, facts) == (False, "")
    assert suspicion(0.2, facts, threshold=0.1)[0]
