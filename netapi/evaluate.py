"""Parent-side evaluation: build job directories, score predictions, constant-caption baseline.

The runner (inside a sandbox) only writes token ids. Scoring happens here, in
the parent, against references the sandbox never sees: COCO-protocol corpus
BLEU-1..4 on words (the main figure is the last epoch's BLEU-4) and, labelled
as such, LEMUR's mean sentence BLEU-4 on token ids.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nncaption.netapi.data.vocab import Vocab
from nncaption.netapi.job import (
    CANDIDATE_FILE,
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    EpochPredictions,
    JobSpec,
)
from nncaption.netapi.metrics import corpus_bleu, corpus_cider_d, lemur_bleu4
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)


@dataclass
class EpochScore:
    """Scores of the free-running decodes after one epoch."""

    epoch: int
    bleu1: float
    bleu2: float
    bleu3: float
    bleu4: float
    lemur_bleu4: float  # LEMUR-compatible (mean sentence BLEU-4, smoothing 1, token ids): not the main figure
    seconds: float  # training time of the epoch
    decode_seconds: float = 0.0
    train_loss: float | None = None
    images: int = 0
    mean_length: float = 0.0  # words per decoded caption
    cider_d: float | None = None  # CIDEr-D (COCO protocol, x10) of the epoch; None in reports made before it


@dataclass
class ScoreReport:
    """All epochs' scores; `bleu4` (the main figure) and `lemur_bleu4` are the last epoch's."""

    epochs: list[EpochScore] = field(default_factory=list)
    bleu4: float | None = None
    lemur_bleu4: float | None = None
    cider_d: float | None = None
    params: int | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few decoded captions of the last epoch
    error: str | None = None  # why the predictions could not be scored (an eval-contract failure); no scores then

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_job_dir(job_dir: Path, candidate_source: str, spec: JobSpec) -> Path:
    """Create `job_dir` with candidate.py and job.json; outputs of an earlier run there are removed."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    for name in (PROGRESS_FILE, PREDICTIONS_FILE, RESULT_FILE):
        (job_dir / name).unlink(missing_ok=True)
    spec.candidate = CANDIDATE_FILE
    (job_dir / CANDIDATE_FILE).write_text(candidate_source, encoding="utf-8")
    spec.write(job_dir)
    return job_dir


def new_job_dir(runs_root: Path, label: str) -> Path:
    """A fresh, uniquely named directory under `runs_root` (e.g. runs/20250101-120000-ref-gru-1a2b3c)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:40] or "job"
    path = Path(runs_root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def score(
    predictions: Sequence[EpochPredictions],
    refs: dict[str, list[list[str]]],
    vocab: Vocab,
    *,
    params: int | None = None,
    n_examples: int = 3,
    expected_ids: Sequence[str] | None = None,
) -> ScoreReport:
    """Score every epoch's decodes against the tokenised references (image id -> captions).

    Never raises for what a job wrote: predictions that name an image without references, miss
    an expected image (`expected_ids`: every epoch must cover exactly those), hold no image, or
    break in any other way give a report with `error` set and no scores (an eval-contract failure).
    Hypotheses are decoded with the vocabulary (cut at EOS, specials and unknown ids dropped). The
    LEMUR score compares raw ids (PAD dropped) with the references encoded by the same vocabulary.
    """
    report = ScoreReport(params=params)
    try:
        _score_into(report, predictions, refs, vocab, n_examples, expected_ids)
    except Exception as e:  # noqa: BLE001 - hostile predictions must end as a failure value, not an exception
        log.warning("scoring failed", exc_info=True)
        report.error = f"the predictions could not be scored ({type(e).__name__})"
    if report.error is not None:
        report.epochs, report.examples, report.bleu4, report.lemur_bleu4, report.cider_d = [], [], None, None, None
    elif report.epochs:
        report.bleu4 = report.epochs[-1].bleu4
        report.lemur_bleu4 = report.epochs[-1].lemur_bleu4
        report.cider_d = report.epochs[-1].cider_d
    return report


def _score_into(report: ScoreReport, predictions: Sequence[EpochPredictions], refs: dict[str, list[list[str]]],
                vocab: Vocab, n_examples: int, expected_ids: Sequence[str] | None) -> None:
    expected = set(expected_ids) if expected_ids is not None else None
    ref_ids_cache: dict[str, list[list[int]]] = {}
    if not predictions:
        report.error = "no epoch has predictions"
        return
    for ep in predictions:
        image_ids = sorted(ep.ids)
        unknown = [i for i in image_ids if i not in refs]
        if unknown:
            report.error = (f"epoch {ep.epoch}: predictions for {len(unknown)} image id(s) without references "
                            f"(e.g. {safe_text(unknown[0], 40)!r})")
            return
        if expected is not None and set(image_ids) != expected:
            report.error = (f"epoch {ep.epoch}: predictions cover {len(image_ids)} image(s), not exactly the "
                            f"{len(expected)} recorded validation images")
            return
        if not image_ids:
            report.error = f"epoch {ep.epoch} has no predictions"
            return
        hyps = [vocab.decode(ep.ids[i]) for i in image_ids]
        ref_words = [refs[i] for i in image_ids]
        bleu = corpus_bleu(hyps, ref_words)
        for i in image_ids:
            if i not in ref_ids_cache:
                ref_ids_cache[i] = [vocab.encode(r, max_len=len(r) + 2) for r in refs[i]]
        lemur = lemur_bleu4([ep.ids[i] for i in image_ids], [ref_ids_cache[i] for i in image_ids])
        cider, _ = corpus_cider_d(hyps, ref_words)
        values = {k: round(v, 6) for k, v in bleu.items()}
        if not all(math.isfinite(v) for v in [*values.values(), lemur, cider]):
            report.error = f"epoch {ep.epoch}: a non-finite score"
            return
        loss = ep.train_loss if ep.train_loss is None or math.isfinite(ep.train_loss) else None
        report.epochs.append(EpochScore(
            epoch=ep.epoch, **values, lemur_bleu4=round(lemur, 6), cider_d=round(cider, 6),
            seconds=ep.seconds, decode_seconds=ep.decode_seconds, train_loss=loss, images=len(image_ids),
            mean_length=round(sum(len(h) for h in hyps) / len(hyps), 3),
        ))
        report.examples = [
            {"image_id": i, "caption": " ".join(h), "reference": " ".join(refs[i][0])}
            for i, h in list(zip(image_ids, hyps, strict=True))[:n_examples]
        ]


@dataclass
class Baseline:
    """The best constant caption chosen on training captions, and its validation scores."""

    caption: list[str]
    train_bleu4: float
    val: dict[str, float]


def constant_caption_baseline(
    train_captions: Sequence[Sequence[Sequence[int]]],
    vocab: Vocab,
    refs: dict[str, list[list[str]]],
    *,
    candidates: int = 50,
    sample: int = 500,
) -> Baseline:
    """Pick the constant caption that scores best (corpus BLEU-4) on training images, then score it on val.

    `train_captions[i]` holds the id sequences of training image i (e.g. the
    prepared train_captions array). The candidates are the `candidates` most
    frequent distinct training captions; the choice uses the first `sample`
    training images only, and never the validation references. The choice is
    made with a fast scorer of the same arithmetic; the reported validation
    scores come from `corpus_bleu`.
    """
    train_words = [[vocab.decode(c) for c in caps] for caps in train_captions]
    train_words = [[w for w in caps if w] for caps in train_words]
    train_words = [caps for caps in train_words if caps]
    if not train_words:
        raise ValueError("constant_caption_baseline: no training captions")
    counts = Counter(tuple(c) for caps in train_words for c in caps)
    pool = [list(c) for c, _ in counts.most_common(candidates)]
    cooked = [_cook_refs(caps) for caps in train_words[:sample]]
    best, best_score = pool[0], -1.0
    for cand in pool:
        s = _constant_bleu4(cand, cooked)
        if s > best_score:
            best, best_score = cand, s
    val_ids = sorted(refs)
    val = corpus_bleu([best] * len(val_ids), [refs[i] for i in val_ids])
    return Baseline(caption=best, train_bleu4=best_score, val=val)


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _cook_refs(ref_set: Sequence[Sequence[str]]) -> tuple[list[int], dict[tuple[str, ...], int]]:
    """Reference lengths and the max count of every 1..4-gram over the references (as COCO's scorer)."""
    maxcounts: dict[tuple[str, ...], int] = {}
    for ref in ref_set:
        for n in range(1, 5):
            for g, c in _ngrams(ref, n).items():
                maxcounts[g] = max(maxcounts.get(g, 0), c)
    return [len(r) for r in ref_set], maxcounts


def _constant_bleu4(hyp: Sequence[str], cooked: Sequence[tuple[list[int], dict[tuple[str, ...], int]]]) -> float:
    """Corpus BLEU-4 of one hypothesis repeated for every item (closest reference length, no smoothing)."""
    import math

    hyp_ngrams = [_ngrams(hyp, n) for n in range(1, 5)]
    correct = [0] * 4
    ref_len = 0
    for lens, maxcounts in cooked:
        for n in range(4):
            correct[n] += sum(min(c, maxcounts.get(g, 0)) for g, c in hyp_ngrams[n].items())
        ref_len += min(lens, key=lambda r: (abs(r - len(hyp)), r))
    guess = [max(0, len(hyp) - n) * len(cooked) for n in range(4)]
    if min(correct) == 0 or min(guess) == 0:
        return 0.0
    hyp_len = len(hyp) * len(cooked)
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(sum(math.log(c / g) for c, g in zip(correct, guess, strict=False)) / 4)
