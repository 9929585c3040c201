"""The offline composer: builds valid captioning candidates without an LLM.

`compose_model(backbone, decoder, seed=...)` writes one Net API file (see
netapi/CONTRACT.md) from

- the feature extractor of a backbone snippet (`nncaption.prompts.snippets`):
  the snippet's `Net` is renamed `Backbone`, its classification training
  methods are dropped, and the captioning model keeps `Backbone(...).features`
  (images -> [B, feature_dim, h, w]) and discards the classifier head;
- an LSTM or GRU decoder whose state is initialised from the pooled features
  (optionally also fed the features at every step), or a Transformer decoder
  cross-attending to the flattened feature map;
- seeded hyperparameters (lr, momentum, dropout, embedding/hidden sizes, batch):
  `ComposedModel.prm` is what training uses (the design's prm); the Net reads its
  sizes, dropout and lr from `prm`, the file's constants are only defaults.

The source pieces are real Python modules in `nncaption.agents.templates`, filled in by `compose_source`.
Every composed file starts with a marker line

    # nncaption-composed: backbone=resnet decoder=gru seed=3 embed=96 hidden=192 ...

so that `nncaption.agents.mutate` can re-compose the same (valid) model after a
defect (`repair_model`), adjusting the prm that trains next, or mutate it
(`improve`). `inject_defect` (`nncaption.agents.defects`) plants the realistic
mistakes an LLM makes, to exercise the fixer path.

This is not an LLM: it is a random composer over the same search space, which
makes it the random-search baseline that LLM-guided runs must beat.
"""

from __future__ import annotations

import logging
import math
import random
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nncaption.agents import compose_source as src
from nncaption.agents.defects import DEFECT_KINDS, inject_defect
from nncaption.netapi.errors import ConfigError
from nncaption.prompts.library import backbone_source, get_snippet, load_snippets

log = logging.getLogger(__name__)

__all__ = [
    "DECODERS",
    "DEFECT_KINDS",
    "DEFAULT_BACKBONE",
    "DEFAULT_DECODER",
    "ComposedModel",
    "available_backbones",
    "compose_model",
    "compose_for_request",
    "inject_defect",
    "parse_marker",
]

Decoder = Literal["lstm", "gru", "transformer"]
DECODERS: tuple[str, ...] = ("lstm", "gru", "transformer")
DEFAULT_BACKBONE = "resnet"
DEFAULT_DECODER = "gru"
MARKER = "# nncaption-composed:"

# Hyperparameters the composer knows; everything else in `hparams` is rejected.
HPARAM_KEYS: tuple[str, ...] = (
    "lr", "momentum", "dropout", "embed", "hidden", "layers", "heads", "fuse", "teacher", "batch",
)
_INT_KEYS = frozenset({"embed", "hidden", "layers", "heads", "batch"})
# What travels as the design's prm (what training uses); fuse and teacher are structure, fixed in the code.
PRM_KEYS: tuple[str, ...] = ("lr", "momentum", "dropout", "embed", "hidden", "layers", "heads", "batch")
BATCH_CHOICES: tuple[int, ...] = (16, 32, 64)
_FLOAT_KEYS = frozenset({"lr", "momentum", "dropout"})
_CHOICES: dict[str, tuple[str, ...]] = {"fuse": ("init", "concat"), "teacher": ("random", "first")}


@dataclass(frozen=True)
class ComposedModel:
    """A composed candidate: the file, a one-line summary and how it was made."""

    code: str
    summary: str
    backbone: str
    decoder: str
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def prm(self) -> dict[str, float | int]:
        """The hyperparameters training uses (the design's prm): lr, momentum, dropout, decoder sizes, batch.

        The code reads them from `prm`; its constants are only the defaults.
        """
        keys = [k for k in PRM_KEYS if k != "heads" or self.decoder == "transformer"]
        return {k: (int(self.hparams[k]) if k in _INT_KEYS else float(self.hparams[k])) for k in keys}


def available_backbones() -> list[str]:
    """Names of the snippets the composer can use (those following the features convention)."""
    return [s.name for s in load_snippets() if s.composable]


# --------------------------------------------------------------------------- hyperparameters


def seeded_rng(*parts: Any) -> random.Random:
    """A random generator seeded by a stable string (str seeds are hashed with SHA-512)."""
    return random.Random(":".join(str(p) for p in parts))


def sample_hparams(decoder: str, seed: int, backbone: str = "") -> dict[str, Any]:
    """Seeded hyperparameters for one composition."""
    rng = seeded_rng("hparams", seed, backbone, decoder)
    hp: dict[str, Any] = {
        "lr": round(math.exp(rng.uniform(math.log(5e-4), math.log(3e-3))), 6),
        "momentum": rng.choice([0.85, 0.9, 0.95]),
        "dropout": rng.choice([0.0, 0.1, 0.2, 0.3]),
        "teacher": rng.choice(["random", "first"]),
    }
    if decoder == "transformer":
        hp["embed"] = rng.choice([64, 96, 128])  # d_model
        hp["hidden"] = 2 * hp["embed"]  # feed-forward width
        hp["heads"] = rng.choice([2, 4])
        hp["layers"] = rng.choice([1, 2])
        hp["fuse"] = "attention"
    else:
        hp["embed"] = rng.choice([64, 96, 128])
        hp["hidden"] = rng.choice([h for h in (128, 192, 256) if h != hp["embed"]])
        hp["layers"] = rng.choice([1, 1, 2])
        hp["heads"] = 0
        hp["fuse"] = rng.choice(["init", "concat"])
    hp["batch"] = rng.choice(BATCH_CHOICES)
    return hp


def _check_hparams(decoder: str, hp: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(hp)
    unknown = sorted(set(out) - set(HPARAM_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown composer hyperparameter(s): {', '.join(unknown)}", f"Use only: {', '.join(HPARAM_KEYS)}."
        )
    try:
        for k in _INT_KEYS & set(out):
            out[k] = int(out[k])
        for k in _FLOAT_KEYS & set(out):
            out[k] = float(out[k])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad composer hyperparameter value: {e}", "Give numbers for sizes and rates.") from e
    if not (0 < out["lr"] < 1) or not (0 <= out["momentum"] < 1) or not (0 <= out["dropout"] < 1):
        raise ConfigError(
            f"composer hyperparameters out of range: lr={out['lr']}, momentum={out['momentum']}, "
            f"dropout={out['dropout']}",
            "Use 0 < lr < 1, 0 <= momentum < 1, 0 <= dropout < 1.",
        )
    if out["embed"] < 8 or out["hidden"] < 8 or not (1 <= out["layers"] <= 4):
        raise ConfigError("composer sizes out of range", "Use embed, hidden >= 8 and 1 <= layers <= 4.")
    out.setdefault("batch", 32)
    if not 1 <= out["batch"] <= 512:
        raise ConfigError(f"composer batch {out['batch']} out of range", "Use 1 <= batch <= 512.")
    if decoder == "transformer":
        if out["heads"] < 1 or out["embed"] % out["heads"]:
            raise ConfigError(
                f"transformer width {out['embed']} is not divisible by {out['heads']} heads",
                "Choose embed as a multiple of heads.",
            )
        out["fuse"] = "attention"
    elif out["fuse"] not in _CHOICES["fuse"]:
        raise ConfigError(f"unknown fuse {out['fuse']!r}", "Use 'init' or 'concat'.")
    if out["teacher"] not in _CHOICES["teacher"]:
        raise ConfigError(f"unknown teacher {out['teacher']!r}", "Use 'random' or 'first'.")
    return out


def _summary(backbone: str, family: str, decoder: str, hp: Mapping[str, Any]) -> str:
    if decoder == "transformer":
        dec = (
            f"Transformer decoder ({hp['layers']} layer(s), d_model {hp['embed']}, {hp['heads']} heads) "
            "cross-attending to the feature map"
        )
    else:
        how = "feature-initialised state" + (" + per-step feature input" if hp["fuse"] == "concat" else "")
        dec = f"{decoder.upper()} decoder ({hp['layers']} layer(s), embed {hp['embed']}, hidden {hp['hidden']}, {how})"
    return (
        f"{backbone} ({family}) encoder + {dec}; dropout {hp['dropout']}, AdamW lr {hp['lr']:.2g}, "
        f"teacher forcing on {'a random' if hp['teacher'] == 'random' else 'the first'} caption"
    )


def _sizes_literal(decoder: str) -> str:
    pairs = ["('embed', EMBED_DIM)", "('hidden', HIDDEN_DIM)", "('layers', NUM_LAYERS)"]
    if decoder == "transformer":
        pairs.append("('heads', NUM_HEADS)")
    return "(" + ", ".join(pairs) + ")"


def _supported_literal(decoder: str) -> str:
    keys = ["lr", "momentum", "dropout", "embed", "hidden", "layers"] + (["heads"] if decoder == "transformer" else [])
    return "{" + ", ".join(repr(k) for k in keys) + "}"


def _marker_line(backbone: str, decoder: str, seed: int, hp: Mapping[str, Any]) -> str:
    fields = [f"backbone={backbone}", f"decoder={decoder}", f"seed={seed}"]
    fields += [f"{k}={hp[k]}" for k in HPARAM_KEYS if k in hp]
    return f"{MARKER} " + " ".join(fields)


_BASE_IMPORTS = ("import math", "import torch", "import torch.nn as nn")


def compose_model(
    backbone: str, decoder: Decoder, *, seed: int, hparams: Mapping[str, Any] | None = None
) -> ComposedModel:
    """Compose a valid captioning candidate from a backbone snippet and a decoder family.

    `hparams` overrides any of the seeded hyperparameters (keys in HPARAM_KEYS).
    Raises ConfigError for an unknown backbone/decoder or bad hyperparameters.
    """
    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder family {decoder!r}", f"Use one of: {', '.join(DECODERS)}.")
    snippet = get_snippet(backbone)
    if not snippet.composable:  # pragma: no cover - built-in snippets are all composable (tested)
        raise ConfigError(f"snippet {backbone!r} cannot be composed", f"Use one of {available_backbones()}.")
    hp = _check_hparams(decoder, {**sample_hparams(decoder, seed, backbone), **dict(hparams or {})})
    summary = _summary(snippet.name, snippet.family, decoder, hp)
    imports, body = backbone_source(snippet)
    extra_imports = [ln for ln in imports.splitlines() if ln.strip() and ln.strip() not in _BASE_IMPORTS]
    decoder_text = {
        "lstm": "an LSTM whose (h, c) come from the pooled features",
        "gru": "a GRU whose hidden state comes from the pooled features",
        "transformer": "a Transformer decoder cross-attending to the flattened feature map",
    }[decoder]
    if decoder != "transformer" and hp["fuse"] == "concat":
        decoder_text += ", with the features also fed at every step"
    teacher_text = (
        "a random reference caption per image" if hp["teacher"] == "random"
        else "the first reference caption of each image"
    )
    parts = [
        src.HEADER.format(
            marker=_marker_line(snippet.name, decoder, seed, hp),
            summary=summary,
            details=textwrap.fill(
                "Composed offline by nn-caption's composer (a random composer over the snippet library, "
                f"not an LLM). Encoder: the feature extractor of the `{snippet.name}` snippet "
                f"({snippet.summary}), classifier head dropped. Decoder: {decoder_text}. "
                f"Teacher forcing in `learn` on {teacher_text}; greedy free-running decoding from SOS "
                "(at most MAX_DECODE_LEN tokens, stopping at EOS) when called with images only.",
                width=100,
            ),
        ),
        "import math\n\nimport torch\nimport torch.nn as nn\n" + "".join(f"{ln}\n" for ln in extra_imports),
        "\n" + src.SECTION.format(title=f"encoder: {snippet.name} snippet") + "\n" + body,
        "\n\n" + src.SECTION.format(title="captioning model") + "\n",
        src.piece("constants", {
            "EMBED": str(hp["embed"]), "HIDDEN": str(hp["hidden"]), "LAYERS": str(hp["layers"]),
            "HEADS": str(hp["heads"]), "DROPOUT": str(hp["dropout"]), "FEED": str(hp["fuse"] == "concat"),
            "SIZES": _sizes_literal(decoder), "SUPPORTED": _supported_literal(decoder),
        }),
        "\n\n" + src.piece("pick_random" if hp["teacher"] == "random" else "pick_first"),
        "\n\n" + src.piece("teacher"),
        "\n\n" + (
            src.piece("transformer_decoder") if decoder == "transformer"
            else src.rnn_decoder_source("LSTM" if decoder == "lstm" else "GRU", hp["fuse"] == "concat")
        ),
        "\n\n" + src.piece("net"),
    ]
    code = "".join(parts)
    return ComposedModel(code=code, summary=summary, backbone=snippet.name, decoder=decoder, hparams=hp, seed=seed)


# --------------------------------------------------------------------------- markers, requests, improve


def parse_marker(code: str) -> dict[str, Any] | None:
    """The fields of a `# nncaption-composed:` line (backbone, decoder, seed, hparams), or None."""
    match = re.search(r"^\s*" + re.escape(MARKER) + r"([^\n]*)", code, flags=re.MULTILINE)
    if not match:
        return None
    fields: dict[str, str] = {}
    for token in match.group(1).split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    if "backbone" not in fields or "decoder" not in fields:
        return None
    hp: dict[str, Any] = {}
    for key in HPARAM_KEYS:
        if key in fields:
            value = fields[key]
            hp[key] = int(value) if key in _INT_KEYS else float(value) if key in _FLOAT_KEYS else value
    try:
        seed = int(fields.get("seed", "0"))
    except ValueError:
        seed = 0
    return {"backbone": fields["backbone"], "decoder": fields["decoder"], "seed": seed, "hparams": hp}


def compose_for_request(hints: Mapping[str, Any], *, seed: int) -> ComposedModel:
    """A composition for a designer request's hints (decoder, backbones = snippet names, seed).

    The backbone is drawn (seeded) among the hinted snippets the composer knows,
    else among all; the decoder is the hinted family, else drawn too.
    """
    rng = seeded_rng("request", seed, hints.get("seed", ""))
    names = available_backbones()
    wanted = [b for b in hints.get("backbones", []) or [] if b in names]
    backbone = rng.choice(wanted or names)
    decoder = hints.get("decoder")
    if decoder not in DECODERS:
        decoder = rng.choice(DECODERS)
    return compose_model(backbone, decoder, seed=seed)  # type: ignore[arg-type]
