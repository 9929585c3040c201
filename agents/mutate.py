"""The baseline's edits of a composed model: `improve` mutates a scored parent, `repair_model` re-composes a
failed one from its marker line (`# nncaption-composed: ...`, written by `compose_model`).

Both are seeded and read the parent's hyperparameters as trained (its prm overrides the marker's values); a file
without a readable marker gets a default composition whose decoder follows the layers the file uses.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from nncaption.agents.compose import (
    DECODERS,
    DEFAULT_BACKBONE,
    DEFAULT_DECODER,
    PRM_KEYS,
    ComposedModel,
    available_backbones,
    compose_model,
    parse_marker,
    seeded_rng,
)
from nncaption.netapi.errors import ConfigError

log = logging.getLogger(__name__)


def _code_seed(code: str) -> int:
    return int(hashlib.sha256(code.encode("utf-8", "replace")).hexdigest()[:8], 16)


def _guess_composition(code: str) -> tuple[str, str]:
    """Backbone and decoder for a file without marker: the decoder from the layers it uses, a default backbone."""
    if re.search(r"\bTransformerDecoder\b|\bMultiheadAttention\b", code):
        decoder = "transformer"
    elif re.search(r"\bLSTM(Cell)?\b", code):
        decoder = "lstm"
    else:
        decoder = DEFAULT_DECODER
    names = available_backbones()
    lowered = code.lower()
    mentioned = [n for n in names if re.search(rf"\b{re.escape(n)}\b", lowered)]
    return (mentioned[0] if mentioned else DEFAULT_BACKBONE), decoder


def _effective_hparams(info: Mapping[str, Any], prm: Mapping[str, Any] | None) -> dict[str, Any]:
    """The marker's hyperparameters, overridden by the prm the candidate actually trained with."""
    hp = dict(info["hparams"])
    for key in PRM_KEYS:
        if prm and key in prm and not isinstance(prm[key], bool) and isinstance(prm[key], (int, float)):
            hp[key] = prm[key]
    return hp


def improve(code: str, *, seed: int, prm: Mapping[str, Any] | None = None) -> ComposedModel:
    """A mutation of a composed parent: one of backbone, decoder, sizes, dropout or lr changes (seeded).

    `prm` is the parent's hyperparameters as trained (they override the marker's).
    A parent without a marker is treated like a failed file: a default composition.
    """
    info = parse_marker(code)
    if info is None or info["backbone"] not in available_backbones() or info["decoder"] not in DECODERS:
        backbone, decoder = _guess_composition(code)
        return compose_model(backbone, decoder, seed=seed)  # type: ignore[arg-type]
    rng = seeded_rng("improve", seed, info["seed"])
    backbone, decoder, hp = info["backbone"], info["decoder"], _effective_hparams(info, prm)
    what = rng.choice(["backbone", "decoder", "size", "dropout", "lr"])
    if what == "backbone":
        backbone = rng.choice([b for b in available_backbones() if b != backbone])
    elif what == "decoder":
        decoder = rng.choice([d for d in DECODERS if d != decoder])
        hp = {k: hp[k] for k in ("lr", "momentum", "dropout", "teacher", "batch") if k in hp}
    elif what == "size":
        factor = rng.choice([0.75, 1.5])
        if decoder == "transformer":
            heads = int(hp.get("heads", 2)) or 2
            hp["embed"] = max(heads * 8, int(hp["embed"] * factor) // heads * heads)
            hp["hidden"] = 2 * hp["embed"]
        else:
            hp["embed"] = max(16, int(hp["embed"] * factor))
            hp["hidden"] = max(32, int(hp["hidden"] * factor))
    elif what == "dropout":
        hp["dropout"] = rng.choice([d for d in (0.0, 0.1, 0.2, 0.3) if d != hp.get("dropout")])
    else:
        hp["lr"] = round(min(float(hp["lr"]) * rng.choice([0.5, 2.0]), 0.5), 6)
    try:
        return compose_model(backbone, decoder, seed=seed, hparams=hp)  # type: ignore[arg-type]
    except ConfigError as e:  # the parent's prm was out of the composer's range: keep the structure, reseed
        log.info("improve: parent hyperparameters unusable (%s); using seeded ones", e.message)
        return compose_model(backbone, decoder, seed=seed)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- repair


_SHRINK_WORDS = ("too-large", "out-of-memory", "timeout", "too large", "out of memory", "timed out")


def repair_model(code: str, error: str, prm: Mapping[str, Any] | None = None) -> ComposedModel:
    """The offline fixer: re-compose a valid model from the composition marker in `code`.

    `prm` is what the candidate trained with (it overrides the marker's values). The
    error text steers small adjustments of what trains next: a too-large /
    out-of-memory / timeout failure halves the decoder sizes, a NaN failure divides
    the learning rate by 3 (both reach training through the returned model's prm).
    A file without a (readable) marker gets a default composition whose decoder
    family follows the layers the file uses.
    """
    info = parse_marker(code)
    if info is None or info["backbone"] not in available_backbones() or info["decoder"] not in DECODERS:
        backbone, decoder = _guess_composition(code)
        return compose_model(backbone, decoder, seed=_code_seed(code) % 10_000)  # type: ignore[arg-type]
    hp = _effective_hparams(info, prm)
    text = error.lower()
    if any(w in text for w in _SHRINK_WORDS):
        heads = int(hp.get("heads", 0) or 0)
        if info["decoder"] == "transformer" and heads:
            hp["embed"] = max(heads * 8, int(hp.get("embed", 64)) // 2 // heads * heads)
            hp["hidden"] = 2 * hp["embed"]
        else:
            hp["embed"] = max(16, int(hp.get("embed", 64)) // 2)
            hp["hidden"] = max(32, int(hp.get("hidden", 128)) // 2)
        hp["layers"] = 1
    if re.search(r"\bnan\b|non-finite|not finite", text) and "lr" in hp:
        hp["lr"] = round(float(hp["lr"]) / 3, 6)
    try:
        return compose_model(info["backbone"], info["decoder"], seed=info["seed"], hparams=hp)
    except ConfigError:  # a marker edited into nonsense: fall back to the seeded defaults
        return compose_model(info["backbone"], info["decoder"], seed=info["seed"])


def repair(code: str, error: str, prm: Mapping[str, Any] | None = None) -> str:
    """`repair_model(...).code` (the file only; its prm is on the model)."""
    return repair_model(code, error, prm).code
