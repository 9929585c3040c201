"""Parent-side scoring of a finished job: check what it wrote, score it, flag scores nobody honest reaches.

Everything here reads what a candidate's job produced, so it is hostile input:
the predictions must cover exactly the validation images the job was given,
each a list of token ids in the vocabulary and within the runner's length cap;
anything else is `eval-contract`, a candidate failure and never a crash of the
parent. References, the constant-caption baseline and the suspicion ceiling
come from the private part of the dataset, which never enters a sandbox.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nncaption.netapi.evaluate import ScoreReport, constant_caption_baseline, score
from nncaption.netapi.job import EpochPredictions
from nncaption.netapi.metrics import corpus_bleu

if TYPE_CHECKING:
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.data.prepare import PreparedPaths

log = logging.getLogger(__name__)

MAX_PREDICTION_IDS = 100  # the runner keeps at most this many ids per image (netapi.train.MAX_PREDICTION_LEN)
SUSPECT_MARGIN = 0.15  # BLEU-4 points above the references' oracle before a score is flagged
SUSPECT_CAP = 0.9  # the derived threshold never exceeds this
REFERENCE_FACTOR = 1.5  # ... nor falls below this multiple of the best reference model's recorded BLEU-4
CEILING_IMAGES = 1000


class PredictionError(ValueError):
    """The predictions a job wrote break the output contract (reported as eval-contract)."""


@dataclass
class DatasetFacts:
    """What the parent knows about the prepared dataset, loaded once per service."""

    key: str
    name: str
    vocab: Any  # netapi.data.vocab.Vocab
    vocab_size: int
    expected_ids: list[str]  # the validation images a job decodes (the recorded subset, cut to max_val_images)
    refs: dict[str, list[list[str]]]  # tokenised references of expected_ids
    train_captions: Any  # int array [N, Ncap, T]
    _baseline: tuple[float, str] | None = field(default=None, repr=False)
    _ceiling: float | None = field(default=None, repr=False)

    @classmethod
    def load(cls, paths: PreparedPaths, max_val_images: int | None) -> DatasetFacts:
        """Open the prepared dataset (DatasetError when missing, partial or inconsistent)."""
        from nncaption.netapi.data.loader import PreparedData
        from nncaption.netapi.data.prepare import load_references
        from nncaption.netapi.errors import DatasetError

        data: PreparedData = PreparedData.open(paths.public_dir)
        refs = load_references(paths.private_dir)
        expected = list(data.val_ids[:max_val_images] if max_val_images is not None else data.val_ids)
        missing = [i for i in expected if i not in refs]
        if missing:
            raise DatasetError(f"prepared dataset {paths.root}: {len(missing)} validation image(s) have no "
                               f"references (e.g. {missing[0]})", "prepare the dataset again")
        return cls(key=paths.key, name=data.meta.name, vocab=data.vocab, vocab_size=len(data.vocab),
                   expected_ids=expected, refs={i: refs[i] for i in expected}, train_captions=data.train_captions)

    def baseline(self) -> tuple[float, str]:
        """(BLEU-4, caption) of the best constant caption chosen on training captions, on the expected images."""
        if self._baseline is None:
            base = constant_caption_baseline(self.train_captions, self.vocab, self.refs)
            self._baseline = (round(float(base.val["bleu4"]), 6), " ".join(base.caption))
        return self._baseline

    def ceiling(self) -> float:
        """The references' oracle BLEU-4: per image, the human caption that best matches the others, scored on them.

        It is what "pick the right human caption for each image" reaches (computed on at most CEILING_IMAGES
        images). Honest models trained here stay well below it plus SUSPECT_MARGIN; a forged score (a candidate
        that re-derived the references) sits near 1.
        """
        if self._ceiling is None:
            hyps: list[list[str]] = []
            refs: list[list[list[str]]] = []
            for caps in list(self.refs.values())[:CEILING_IMAGES]:
                if len(caps) < 2:
                    continue
                others = [caps[:k] + caps[k + 1:] for k in range(len(caps))]
                best = max(range(len(caps)), key=lambda k: corpus_bleu([caps[k]], [others[k]])["bleu4"])
                hyps.append(caps[best])
                refs.append(others[best])
            self._ceiling = float(corpus_bleu(hyps, refs)["bleu4"]) if hyps else 1.0
        return self._ceiling


def check_predictions(predictions: Sequence[EpochPredictions], facts: DatasetFacts, epochs: int) -> None:
    """PredictionError unless every epoch 1..epochs decoded exactly the expected images with valid id lists."""
    numbers = [p.epoch for p in predictions]
    if numbers != list(range(1, epochs + 1)):
        raise PredictionError(f"predictions for epochs {numbers[:10]}, expected 1..{epochs}")
    expected = set(facts.expected_ids)
    for ep in predictions:
        if not isinstance(ep.ids, dict):
            raise PredictionError(f"epoch {ep.epoch}: predictions are not a mapping of image id to token ids")
        got = set(ep.ids)
        if got != expected:
            extra, missing = sorted(got - expected), sorted(expected - got)
            raise PredictionError(
                f"epoch {ep.epoch}: predictions must cover exactly the {len(expected)} validation images the job "
                f"was given ({len(missing)} missing, {len(extra)} unknown"
                + (f", e.g. unknown {str(extra[0])[:40]!r}" if extra else "") + ")")
        for image_id, ids in ep.ids.items():
            if not isinstance(ids, list) or len(ids) > MAX_PREDICTION_IDS:
                raise PredictionError(f"epoch {ep.epoch}, image {image_id}: expected a list of at most "
                                      f"{MAX_PREDICTION_IDS} token ids")
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < facts.vocab_size:
                    raise PredictionError(f"epoch {ep.epoch}, image {image_id}: token {str(t)[:20]!r} is not an id "
                                          f"in the vocabulary (0..{facts.vocab_size - 1})")


def score_predictions(predictions: Sequence[EpochPredictions], facts: DatasetFacts, *, epochs: int,
                      params: int | None) -> ScoreReport:
    """Check and score; PredictionError for anything that breaks the output contract or cannot be scored."""
    check_predictions(predictions, facts, epochs)
    report = score(predictions, facts.refs, facts.vocab, params=params, expected_ids=facts.expected_ids)
    if report.error is not None or report.bleu4 is None:
        raise PredictionError(report.error or "the predictions could not be scored")
    return report


def suspicion(bleu4: float, facts: DatasetFacts, threshold: float | None = None,
              reference_best: float | None = None) -> tuple[bool, str]:
    """(suspect, reason): a BLEU-4 far above what honest models reach on this dataset.

    `threshold` (configured) wins; else the references' oracle BLEU-4 plus SUSPECT_MARGIN (at most SUSPECT_CAP),
    raised to REFERENCE_FACTOR x `reference_best` (the best reference model's BLEU-4 recorded on this dataset).
    """
    if threshold is not None:
        basis = "the configured threshold"
    else:
        threshold = min(facts.ceiling() + SUSPECT_MARGIN, SUSPECT_CAP)
        basis = f"the references' oracle BLEU-4 {facts.ceiling():.3f} plus {SUSPECT_MARGIN:.2f}"
        if reference_best is not None and reference_best * REFERENCE_FACTOR > threshold:
            threshold = reference_best * REFERENCE_FACTOR
            basis = f"{REFERENCE_FACTOR:g} x the best reference model's {reference_best:.3f}"
    if bleu4 > threshold:
        return True, (f"BLEU-4 {bleu4:.4f} is above {threshold:.4f} ({basis}): the candidate may have seen the "
                      "validation references; check its code before trusting this score")
    return False, ""
