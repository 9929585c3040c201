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
- seeded hyperparameters (lr, momentum, dropout, embedding/hidden sizes ...).

Every composed file starts with a marker line

    # nncaption-composed: backbone=resnet decoder=gru seed=3 embed=96 hidden=192 ...

so that `repair(code, error)` can re-compose the same (valid) model after a
defect, and `improve(code, seed)` can mutate it. `inject_defect` plants the
realistic mistakes an LLM makes, to exercise the fixer path.

This is not an LLM: it is a random composer over the same search space, which
makes it the random-search baseline that LLM-guided runs must beat.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import math
import random
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
    "improve",
    "inject_defect",
    "parse_marker",
    "repair",
    "repair_model",
]

Decoder = Literal["lstm", "gru", "transformer"]
DECODERS: tuple[str, ...] = ("lstm", "gru", "transformer")
DEFECT_KINDS: tuple[str, ...] = ("syntax", "shape", "missing-method", "forbidden-import", "output-contract")
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


def _rng(*parts: Any) -> random.Random:
    """A random generator seeded by a stable string (str seeds are hashed with SHA-512)."""
    return random.Random(":".join(str(p) for p in parts))


def sample_hparams(decoder: str, seed: int, backbone: str = "") -> dict[str, Any]:
    """Seeded hyperparameters for one composition."""
    rng = _rng("hparams", seed, backbone, decoder)
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


# --------------------------------------------------------------------------- code pieces

_HEADER = '''{marker}
"""{summary}

{details}
"""

'''

_CONSTANTS = '''PAD, SOS, EOS = 0, 1, 2
MAX_DECODE_LEN = 20
EMBED_DIM = {embed}
HIDDEN_DIM = {hidden}
NUM_LAYERS = {layers}
NUM_HEADS = {heads}
DROPOUT = {dropout}
FEED_FEATURES = {feed}
GRAD_CLIP = 1.0
# decoder sizes: read from prm (the designer's hyperparameters), these are the defaults
DECODER_SIZES = {sizes}


def supported_hyperparameters():
    return {supported}
'''

_PICK_RANDOM = '''def pick_captions(captions):
    """One reference per image ([B, Ncap, T] -> [B, T]): a random non-empty caption, trailing PAD columns cut."""
    if captions.dim() == 3:
        b = captions.shape[0]
        valid = (captions[:, :, 0] != PAD).float() + 1e-6
        idx = torch.multinomial(valid, 1).squeeze(1)
        captions = captions[torch.arange(b, device=captions.device), idx]
    length = int((captions != PAD).sum(dim=1).max())
    return captions[:, : max(length, 2)]
'''

_PICK_FIRST = '''def pick_captions(captions):
    """The first reference of each image ([B, Ncap, T] -> [B, T]), trailing PAD columns cut."""
    if captions.dim() == 3:
        captions = captions[:, 0, :]
    length = int((captions != PAD).sum(dim=1).max())
    return captions[:, : max(length, 2)]
'''

_TEACHER_INPUTS = '''

def teacher_inputs(captions):
    """Decoder inputs for teacher forcing: tokens 0..T-2 of one caption per image."""
    if captions.dim() == 3:
        captions = captions[:, 0, :]
    return captions[:, :-1]
'''

_RNN_DECODER = '''class CaptionDecoder(nn.Module):
    """{cell} decoder: pooled image features set the initial state{feed_doc}."""

    def __init__(self, feature_dim, vocab_size, dropout, embed_dim, hidden_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        self.feat_proj = nn.Linear(feature_dim, hidden_dim)
{cell_proj}        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        rnn_input = embed_dim + (hidden_dim if FEED_FEATURES else 0)
        rnn_dropout = dropout if num_layers > 1 else 0.0
        self.rnn = nn.{cell}(rnn_input, hidden_dim, num_layers, batch_first=True, dropout=rnn_dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, vocab_size)

    def context(self, fmap):
        """Global image context [B, hidden_dim] from the feature map [B, D, h, w]."""
        return torch.tanh(self.feat_proj(fmap.mean(dim=(2, 3))))

    def init_state(self, ctx):
        h = ctx.unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous()
{init_return}

    def step_inputs(self, tokens, ctx):
        emb = self.drop(self.embed(tokens))
        if FEED_FEATURES:
            emb = torch.cat([emb, ctx.unsqueeze(1).expand(-1, emb.shape[1], -1)], dim=-1)
        return emb

    def forward(self, fmap, inputs, state=None):
        """Teacher forcing: logits [B, T, V] for the given input tokens, and the final state."""
        ctx = self.context(fmap)
        state = self.init_state(ctx) if state is None else state
        out, state = self.rnn(self.step_inputs(inputs, ctx), state)
        return self.head(self.drop(out)), state

    def greedy(self, fmap, state=None):
        """Free-running greedy decoding from SOS: ids [B, L] and the final state."""
        ctx = self.context(fmap)
        state = self.init_state(ctx) if state is None else state
        b = fmap.shape[0]
        token = torch.full((b, 1), SOS, dtype=torch.long, device=fmap.device)
        done = torch.zeros(b, dtype=torch.bool, device=fmap.device)
        steps = []
        for _ in range(MAX_DECODE_LEN):
            out, state = self.rnn(self.step_inputs(token, ctx), state)
            token = self.head(out[:, -1]).argmax(dim=-1, keepdim=True)
            token = token.masked_fill(done.unsqueeze(1), PAD)
            steps.append(token)
            done = done | (token.squeeze(1) == EOS)
            if bool(done.all()):
                break
        return torch.cat(steps, dim=1), state
'''

_TRANSFORMER_DECODER = '''def sinusoid_positions(n, dim, device):
    """Fixed sinusoidal position codes [1, n, dim]."""
    pos = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe.unsqueeze(0)


class CaptionDecoder(nn.Module):
    """Transformer decoder (pre-norm, causal self-attention) cross-attending to the flattened feature map."""

    def __init__(self, feature_dim, vocab_size, dropout, embed_dim, hidden_dim, num_layers, num_heads):
        super().__init__()
        self.embed_dim = embed_dim
        self.feat_proj = nn.Linear(feature_dim, embed_dim)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        layer = nn.TransformerDecoderLayer(embed_dim, num_heads, hidden_dim, dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.norm = nn.LayerNorm(embed_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, vocab_size)

    def memory(self, fmap):
        """Memory tokens [B, h*w, embed_dim] from the feature map [B, D, h, w]."""
        tokens = fmap.flatten(2).transpose(1, 2)
        mem = self.feat_proj(tokens)
        return mem + sinusoid_positions(mem.shape[1], self.embed_dim, mem.device)

    def forward(self, fmap, inputs, state=None):
        """Teacher forcing: logits [B, T, V] for the given input tokens, and the memory."""
        mem = self.memory(fmap) if state is None else state
        t = inputs.shape[1]
        x = self.drop(self.embed(inputs) + sinusoid_positions(t, self.embed_dim, inputs.device))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=inputs.device), diagonal=1)
        out = self.decoder(x, mem, tgt_mask=causal)
        return self.head(self.norm(out)), mem

    def greedy(self, fmap, state=None):
        """Free-running greedy decoding from SOS: ids [B, L] and the memory."""
        mem = self.memory(fmap) if state is None else state
        b = fmap.shape[0]
        tokens = torch.full((b, 1), SOS, dtype=torch.long, device=fmap.device)
        done = torch.zeros(b, dtype=torch.bool, device=fmap.device)
        for _ in range(MAX_DECODE_LEN):
            logits, _ = self.forward(fmap, tokens, mem)
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            token = token.masked_fill(done.unsqueeze(1), PAD)
            tokens = torch.cat([tokens, token], dim=1)
            done = done | (token.squeeze(1) == EOS)
            if bool(done.all()):
                break
        return tokens[:, 1:], mem
'''

_NET = '''class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.vocab_size = int(out_shape[0])
        dropout = float(prm.get('dropout', DROPOUT))
        sizes = [int(prm.get(key, default)) for key, default in DECODER_SIZES]
        backbone = Backbone(in_shape, (1,), prm, device)
        self.encoder = backbone.features  # images -> [B, feature_dim, h, w]; the classifier head is dropped
        self.decoder = CaptionDecoder(backbone.feature_dim, self.vocab_size, dropout, *sizes)
        self.last_loss = None
        self.to(device)

    def train_setup(self, prm):
        self.to(self.device)
        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD)
        beta1 = min(float(prm.get('momentum', 0.9)), 0.999)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=float(prm['lr']), betas=(beta1, 0.999))

    def learn(self, train_data):
        self.train()
        total, batches = 0.0, 0
        for images, captions in train_data:
            images = images.to(self.device)
            caps = pick_captions(captions.to(self.device).long())
            logits, _ = self.forward(images, caps)
            loss = self.criterion(logits.reshape(-1, self.vocab_size), caps[:, 1:].reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), GRAD_CLIP)
            self.optimizer.step()
            self.last_loss = float(loss.detach())
            total += self.last_loss
            batches += 1
        return total / max(batches, 1)

    def forward(self, images, captions=None, hidden_state=None):
        fmap = self.encoder(images.to(self.device))
        if captions is not None:
            return self.decoder(fmap, teacher_inputs(captions), hidden_state)
        return self.decoder.greedy(fmap, hidden_state)
'''

_SECTION = "# " + "-" * 75 + " {title}\n"


def _rnn_decoder_source(cell: str, feed: bool) -> str:
    if cell == "LSTM":
        cell_proj = "        self.cell_proj = nn.Linear(hidden_dim, hidden_dim)\n"
        init_return = (
            "        c = torch.tanh(self.cell_proj(ctx)).unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous()\n"
            "        return (h, c)"
        )
    else:
        cell_proj = ""
        init_return = "        return h"
    feed_doc = " and are fed at every step" if feed else ""
    return _RNN_DECODER.format(cell=cell, cell_proj=cell_proj, init_return=init_return, feed_doc=feed_doc)


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
        _HEADER.format(
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
        "\n" + _SECTION.format(title=f"encoder: {snippet.name} snippet") + "\n" + body,
        "\n\n" + _SECTION.format(title="captioning model") + "\n",
        _CONSTANTS.format(
            embed=hp["embed"], hidden=hp["hidden"], layers=hp["layers"], heads=hp["heads"],
            dropout=hp["dropout"], feed=hp["fuse"] == "concat",
            sizes=_sizes_literal(decoder), supported=_supported_literal(decoder),
        ),
        "\n\n" + (_PICK_RANDOM if hp["teacher"] == "random" else _PICK_FIRST) + _TEACHER_INPUTS,
        "\n\n" + (
            _TRANSFORMER_DECODER if decoder == "transformer"
            else _rnn_decoder_source("LSTM" if decoder == "lstm" else "GRU", hp["fuse"] == "concat")
        ),
        "\n\n" + _NET,
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


def compose_for_request(hints: Mapping[str, Any], *, seed: int) -> ComposedModel:
    """A composition for a designer request's hints (decoder, backbones = snippet names, seed).

    The backbone is drawn (seeded) among the hinted snippets the composer knows,
    else among all; the decoder is the hinted family, else drawn too.
    """
    rng = _rng("request", seed, hints.get("seed", ""))
    names = available_backbones()
    wanted = [b for b in hints.get("backbones", []) or [] if b in names]
    backbone = rng.choice(wanted or names)
    decoder = hints.get("decoder")
    if decoder not in DECODERS:
        decoder = rng.choice(DECODERS)
    return compose_model(backbone, decoder, seed=seed)  # type: ignore[arg-type]


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
    rng = _rng("improve", seed, info["seed"])
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


# --------------------------------------------------------------------------- defects

# (old, new) text replacements; the first variant whose `old` occurs in the code is used,
# starting at a seeded offset. Each makes the model fail in the way its kind names.
_SHAPE_VARIANTS: tuple[tuple[str, str], ...] = (
    # thinks the pooled vector is avg+max concatenated
    ("self.feat_proj = nn.Linear(feature_dim, ", "self.feat_proj = nn.Linear(feature_dim * 2, "),
    # output layer sized as if the RNN were bidirectional
    ("self.head = nn.Linear(hidden_dim, vocab_size)", "self.head = nn.Linear(hidden_dim * 2, vocab_size)"),
    # forgot that image features are concatenated / miscounted the decoder input
    ("rnn_input = embed_dim + (hidden_dim if FEED_FEATURES else 0)", "rnn_input = embed_dim + 1"),
    ("self.head = nn.Linear(embed_dim, vocab_size)", "self.head = nn.Linear(embed_dim * 2, vocab_size)"),
)
_OUTPUT_VARIANTS: tuple[tuple[str, str], ...] = (
    # forgot the return: forward(images) gives None
    ("        return self.decoder.greedy(fmap, hidden_state)\n", "        self.decoder.greedy(fmap, hidden_state)\n"),
    # copy-paste: teacher forcing also without captions
    (
        "        return self.decoder.greedy(fmap, hidden_state)\n",
        "        return self.decoder(fmap, teacher_inputs(captions), hidden_state)\n",
    ),
)
_SYNTAX_VARIANTS: tuple[tuple[str, str], ...] = (
    ("    def learn(self, train_data):\n", "    def learn(self, train_data)\n"),
    (
        "        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD)\n",
        "        self.criterion = nn.CrossEntropyLoss(ignore_index=PAD\n",
    ),
    # indentation slip inside learn
    ("        total, batches = 0.0, 0\n", "      total, batches = 0.0, 0\n"),
)
_FORBIDDEN_VARIANTS: tuple[tuple[str, str, str], ...] = (
    # (import line, anchor inside train_setup, inserted statement)
    ("import subprocess", "        self.to(self.device)\n", "        subprocess.run(['nvidia-smi'], check=False)\n"),
    ("import os", "        self.to(self.device)\n", "        os.system('nvidia-smi')\n"),
    (
        "import socket",
        "        self.to(self.device)\n",
        "        self.host = socket.gethostbyname(socket.gethostname())\n",
    ),
)


def _pick_replacement(code: str, variants: tuple[tuple[str, str], ...], seed: int, kind: str) -> str:
    n = len(variants)
    start = seed % n
    for i in range(n):
        old, new = variants[(start + i) % n]
        if old in code:
            return code.replace(old, new, 1)
    raise ConfigError(
        f"cannot inject a {kind!r} defect: the code does not contain any of the expected lines",
        "inject_defect works on files made by compose_model.",
    )


def _drop_method(code: str, method: str) -> str:
    tree = ast.parse(code)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Net":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    lines = code.splitlines(keepends=True)
                    start, end = item.lineno - 1, item.end_lineno or item.lineno
                    while end < len(lines) and not lines[end].strip():
                        end += 1
                    return "".join(lines[:start] + lines[end:])
    raise ConfigError(f"cannot remove Net.{method}: not found", "inject_defect works on files made by compose_model.")


def inject_defect(code: str, kind: str, seed: int) -> str:
    """`code` with one realistic defect of `kind` (one of DEFECT_KINDS), chosen by `seed`.

    Expected verdicts: syntax -> syntax; shape -> shape-error (smoke, while learning);
    missing-method -> missing-symbol; forbidden-import -> forbidden-call;
    output-contract -> eval-contract (forward(images) gives None or needs captions).
    The composition marker line is never touched, so `repair` can undo any of them.
    """
    if kind == "syntax":
        return _pick_replacement(code, _SYNTAX_VARIANTS, seed, kind)
    if kind == "shape":
        return _pick_replacement(code, _SHAPE_VARIANTS, seed, kind)
    if kind == "output-contract":
        return _pick_replacement(code, _OUTPUT_VARIANTS, seed, kind)
    if kind == "missing-method":
        return _drop_method(code, ("learn", "train_setup", "forward")[seed % 3])
    if kind == "forbidden-import":
        imp, anchor, stmt = _FORBIDDEN_VARIANTS[seed % len(_FORBIDDEN_VARIANTS)]
        if anchor not in code or "\nimport torch\n" not in code:
            raise ConfigError("cannot inject a forbidden import here", "inject_defect works on composed files.")
        code = code.replace("\nimport torch\n", f"\n{imp}\n\nimport torch\n", 1)
        return code.replace(anchor, anchor + stmt, 1)
    raise ConfigError(f"unknown defect kind {kind!r}", f"Use one of: {', '.join(DEFECT_KINDS)}.")
