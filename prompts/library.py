"""The prompt library: backbone snippets, prompt templates and their rendering.

Snippets are data files (`nncaption.prompts.snippets/*.py`), read as text
through importlib.resources and never imported by the library. Each one is a
standalone LEMUR img-classification model (`supported_hyperparameters()`,
`class Net(nn.Module)` with __init__/train_setup/learn/forward) whose first
lines say what it is:

    # nncaption-snippet: name=resnet family=residual summary="..."
    # nncaption-convention: self.features maps images [B,C,H,W] to a map [B, self.feature_dim, h, w]; ...

The convention line is what makes a snippet *composable*: its `Net.__init__`
builds `self.features` (images -> feature map) and sets `self.feature_dim`;
the classification head lives elsewhere (`self.pool`, `self.classifier`).
`backbone_source()` turns such a snippet into a `Backbone` class a captioning
model can reuse.

Templates (`templates/*.md`) are jinja2 templates rendered with langchain-core's
`PromptTemplate`; jinja2 is used because code blocks are full of braces.
Prompts carry no control markers: they are what a real LLM should read. For
vLLM's prefix cache, each user message puts what is constant across a run first
(the contract, the dataset facts, the rules and the answer format) and what
varies last (the task, decoder, snippets, feedback, parent or candidate). The
offline composer reads its requests from these ordinary sections
(`nncaption.prompts.parse`) and its seed from the request's `seed` parameter.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import random
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from nncaption.netapi.categories import Category
from nncaption.netapi.contract import contract_text
from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.netapi.safetext import safe_text

__all__ = [
    "ROLES",
    "DECODER_FAMILIES",
    "DECODER_TEXT",
    "Snippet",
    "DatasetFacts",
    "CandidateFeedback",
    "FailureFeedback",
    "ParentCandidate",
    "load_snippets",
    "sample_snippets",
    "get_snippet",
    "backbone_source",
    "render",
    "template_names",
    "designer_messages",
    "reviewer_messages",
    "fixer_messages",
    "detect_role",
    "system_text",
    "error_tail",
    "contract_text",
]

SNIPPET_MARKER = "nncaption-snippet:"
CONVENTION_MARKER = "nncaption-convention:"
ROLES: tuple[str, ...] = ("designer", "reviewer", "fixer")
DECODER_FAMILIES: tuple[str, ...] = ("lstm", "gru", "transformer")

_SNIPPETS_PACKAGE = "nncaption.prompts.snippets"
_TEMPLATES_PACKAGE = "nncaption.prompts"
DECODER_TEXT: dict[str | None, str] = {
    "lstm": "Use an LSTM decoder: initialise (h, c) from the pooled image features or feed them at every step.",
    "gru": "Use a GRU decoder whose initial hidden state is computed from the pooled image features.",
    "transformer": "Use a Transformer decoder (nn.TransformerDecoder with a causal mask) cross-attending to the "
                   "image feature map\nflattened into a sequence of memory tokens.",
    None: "Choose the decoder family yourself: LSTM, GRU or Transformer.",
}
METADATA_PREFIX = "# nncaption-"

# Classic img-classification models of LEMUR's nn-dataset (file stem -> family).
LEMUR_BACKBONES: dict[str, str] = {
    "AlexNet": "plain",
    "VGG": "plain",
    "ResNet": "residual",
    "DenseNet": "dense",
    "MobileNetV2": "inverted-residual",
    "MobileNetV3": "inverted-residual",
    "EfficientNet": "mbconv-se",
    "ConvNeXt": "convnext",
    "SqueezeNet": "fire",
    "GoogLeNet": "multi-branch",
    "InceptionV3": "multi-branch",
    "ShuffleNet": "shuffle",
    "RegNet": "regnet",
    "MNASNet": "inverted-residual",
    "VisionTransformer": "transformer",
    "SwinTransformer": "transformer",
    "MaxVit": "transformer",
}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Snippet:
    """One backbone example for the designer prompt (and, if composable, for the composer)."""

    name: str
    family: str
    summary: str
    source: str
    origin: str = "nncaption"  # "nncaption" (ours) | "lemur" (nn-dataset)
    composable: bool = True  # follows the features/feature_dim convention

    def prompt_source(self, *, compact: bool = True) -> str:
        """Source shown to the LLM, without the metadata comment lines; compact drops the classification
        training methods."""
        source = "".join(ln for ln in self.source.splitlines(keepends=True) if not ln.startswith(METADATA_PREFIX))
        if not compact:
            return source
        try:
            return _drop_methods(source, "Net", ("train_setup", "learn")).rstrip() + "\n"
        except SyntaxError:
            return source


@dataclass(frozen=True)
class DatasetFacts:
    """What the designer must know about the data."""

    vocab_size: int
    image_size: int
    max_len: int
    n_caps: int
    n_train: int | None = None
    name: str = "synthetic"

    @classmethod
    def from_meta(cls, meta: Any) -> DatasetFacts:
        """Build from a `DatasetMeta`-like object (attributes vocab_size, image_size, max_len, n_caps, ...)."""
        return cls(
            vocab_size=int(meta.vocab_size),
            image_size=int(meta.image_size),
            max_len=int(meta.max_len),
            n_caps=int(meta.n_caps),
            n_train=getattr(meta, "n_train", None),
            name=str(getattr(meta, "name", "synthetic")),
        )


@dataclass(frozen=True)
class CandidateFeedback:
    """An earlier candidate, as shown in the feedback section."""

    summary: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    bleu4_per_epoch: Sequence[float] = ()

    @property
    def hparams_text(self) -> str:
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(self.hparams.items())) or "-"

    @property
    def curve_text(self) -> str:
        return " -> ".join(f"{b:.4f}" for b in self.bleu4_per_epoch) or "no epochs scored"


@dataclass(frozen=True)
class FailureFeedback:
    """A recent failure: its category and the tail of its traceback or verdict message."""

    category: str
    traceback_tail: str = ""
    summary: str = ""


@dataclass(frozen=True)
class ParentCandidate:
    """The candidate to change in `improve` mode."""

    code: str
    summary: str = ""
    bleu4: float | None = None
    bleu4_per_epoch: Sequence[float] = ()
    hparams: Mapping[str, Any] = field(default_factory=dict)

    @property
    def curve_text(self) -> str:
        return " -> ".join(f"{b:.4f}" for b in self.bleu4_per_epoch) or "no epochs scored"

    @property
    def hparams_text(self) -> str:
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(self.hparams.items())) or "-"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------- snippets


def parse_snippet_metadata(source: str) -> dict[str, str]:
    """Key/value pairs of the `# nncaption-snippet:` line (plus `convention` when present)."""
    meta: dict[str, str] = {}
    for line in source.splitlines()[:5]:
        text = line.lstrip("# ").strip()
        if text.startswith(SNIPPET_MARKER):
            for token in shlex.split(text[len(SNIPPET_MARKER) :]):
                key, sep, value = token.partition("=")
                if sep:
                    meta[key.strip()] = value.strip()
        elif text.startswith(CONVENTION_MARKER):
            meta["convention"] = text[len(CONVENTION_MARKER) :].strip()
    return meta


def _builtin_snippets() -> list[Snippet]:
    folder = resources.files(_SNIPPETS_PACKAGE)
    out: list[Snippet] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".py") or entry.name.startswith("_"):
            continue
        source = entry.read_text(encoding="utf-8")
        meta = parse_snippet_metadata(source)
        missing = [k for k in ("name", "family", "summary") if k not in meta]
        if missing:
            raise NNCaptionError(
                f"snippet {entry.name} lacks {', '.join(missing)} in its '# {SNIPPET_MARKER}' line",
                "Add a first line like: # nncaption-snippet: name=resnet family=residual summary=\"...\"",
                category="config",
            )
        out.append(
            Snippet(
                name=meta["name"],
                family=meta["family"],
                summary=meta["summary"],
                source=source,
                origin="nncaption",
                composable="convention" in meta,
            )
        )
    return sorted(out, key=lambda s: s.name)


def _lemur_folder() -> Path:
    """The img-classification model folder of an installed nn-dataset (`ab/nn/nn`)."""
    hint = "Install LEMUR's dataset package: `pip install nn-dataset` (or drop --snippets-from-lemur)."
    try:
        spec = importlib.util.find_spec("ab")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "nn" / "nn"
        if folder.is_dir():
            return folder
    raise NNCaptionError(
        "the nn-dataset package (module ab.nn) is not installed, so no LEMUR backbones can be read",
        hint,
        category="config",
    )


def _lemur_snippets() -> list[Snippet]:
    folder = _lemur_folder()
    out: list[Snippet] = []
    for stem, family in LEMUR_BACKBONES.items():
        path = folder / f"{stem}.py"
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        if "class Net" not in source or "def learn" not in source:
            continue
        out.append(
            Snippet(
                name=f"lemur-{stem.lower()}",
                family=family,
                summary=f"LEMUR nn-dataset img-classification model {stem}",
                source=source,
                origin="lemur",
                composable=False,
            )
        )
    if not out:
        raise NNCaptionError(
            f"no img-classification backbones ({', '.join(LEMUR_BACKBONES)}) found in {folder}",
            "Install a complete nn-dataset (`pip install -U nn-dataset`) or drop --snippets-from-lemur.",
            category="config",
        )
    return out


def load_snippets(from_lemur: bool = False) -> list[Snippet]:
    """All backbone snippets, sorted by name.

    With `from_lemur`, the classic models of an installed `nn-dataset` are added
    (not composable: they lack the features convention); without the package an
    NNCaptionError of category "config" says how to install it.
    """
    snippets = _builtin_snippets()
    if from_lemur:
        snippets += _lemur_snippets()
    return snippets


def get_snippet(name: str, *, from_lemur: bool = False) -> Snippet:
    """The snippet called `name`; ConfigError listing the known names otherwise."""
    snippets = load_snippets(from_lemur=from_lemur)
    for s in snippets:
        if s.name == name:
            return s
    raise ConfigError(
        f"unknown backbone snippet {name!r}",
        f"Choose one of: {', '.join(s.name for s in snippets)}.",
    )


def sample_snippets(
    k: int, seed: int, *, from_lemur: bool = False, snippets: Sequence[Snippet] | None = None
) -> list[Snippet]:
    """K distinct snippets chosen by `seed` (all of them, shuffled, when K exceeds the library)."""
    if k < 1:
        raise ConfigError(f"the number of snippets must be at least 1, got {k}", "Use K = 5 or 10.")
    pool = list(snippets) if snippets is not None else load_snippets(from_lemur=from_lemur)
    rng = random.Random(seed)
    return rng.sample(pool, min(k, len(pool)))


# --------------------------------------------------------- backbone extraction


def _class_node(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise ValueError(f"no class {name} at module level")


def _drop_methods(source: str, class_name: str, methods: Iterable[str]) -> str:
    """Source with the given methods of `class_name` removed (line-based, comments kept elsewhere)."""
    tree = ast.parse(source)
    cls = _class_node(tree, class_name)
    lines = source.splitlines(keepends=True)
    spans: list[tuple[int, int]] = []
    wanted = set(methods)
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in wanted:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            spans.append((start, node.end_lineno or node.lineno))
    for start, end in sorted(spans, reverse=True):
        # also drop the blank lines that followed the method
        while end < len(lines) and not lines[end].strip():
            end += 1
        del lines[start:end]
    return "".join(lines)


def backbone_source(snippet: Snippet, class_name: str = "Backbone") -> tuple[str, str]:
    """Split a composable snippet into (import lines, body) for reuse in a captioning model.

    The body keeps the snippet's helper functions and classes, drops its
    `supported_hyperparameters` and training methods, and renames `Net` to
    `class_name`: `class_name(in_shape, (1,), prm, device).features` is then the
    feature extractor and `.feature_dim` its channel count.
    """
    if not snippet.composable:
        raise ConfigError(
            f"snippet {snippet.name!r} does not follow the features/feature_dim convention",
            "Compose from one of the built-in snippets (load_snippets() without from_lemur).",
        )
    source = _drop_methods(snippet.source, "Net", ("train_setup", "learn"))
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    imports: list[str] = []
    drop: list[tuple[int, int]] = []
    for node in tree.body:
        end = node.end_lineno or node.lineno
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append("".join(lines[node.lineno - 1 : end]).strip())
            drop.append((node.lineno - 1, end))
        elif isinstance(node, ast.FunctionDef) and node.name == "supported_hyperparameters":
            drop.append((node.lineno - 1, end))
        elif isinstance(node, ast.ClassDef) and node.name == class_name:
            raise ConfigError(f"snippet {snippet.name!r} already defines {class_name}", "Rename that class.")
    for start, end in sorted(drop, reverse=True):
        del lines[start:end]
    # leading comment lines (metadata) are dropped too; the composer writes its own header
    body_lines = [ln for ln in lines if not ln.startswith("# nncaption-")]
    body = "".join(body_lines)
    body = re.sub(r"^class Net\(", f"class {class_name}(", body, count=1, flags=re.MULTILINE)
    body = re.sub(r"\n{3,}", "\n\n\n", body).strip() + "\n"
    return "\n".join(imports), body


# ------------------------------------------------------------------ templates


def template_names() -> list[str]:
    """Names accepted by `render` (file stems under templates/)."""
    folder = resources.files(_TEMPLATES_PACKAGE).joinpath("templates")
    return sorted(e.name[: -len(".md")] for e in folder.iterdir() if e.name.endswith(".md"))


def _template_text(name: str) -> str:
    stem = name[: -len(".md")] if name.endswith(".md") else name
    entry = resources.files(_TEMPLATES_PACKAGE).joinpath("templates", f"{stem}.md")
    if not entry.is_file():
        raise ConfigError(f"unknown prompt template {name!r}", f"Use one of: {', '.join(template_names())}.")
    return entry.read_text(encoding="utf-8")


def render(template_name: str, **values: Any) -> str:
    """Render templates/<template_name>.md (jinja2, via langchain-core PromptTemplate).

    Every variable the template uses must be given (None is fine), so a typo in a
    template or a caller fails loudly instead of rendering an empty section.
    """
    from langchain_core.prompts import PromptTemplate

    prompt = PromptTemplate.from_template(_template_text(template_name), template_format="jinja2")
    missing = sorted(set(prompt.input_variables) - set(values))
    if missing:
        raise ConfigError(
            f"template {template_name!r} needs values for: {', '.join(missing)}",
            "Pass every template variable (None for an empty section).",
        )
    text = prompt.format(**{k: v for k, v in values.items() if k in prompt.input_variables})
    return text.strip() + "\n"


def _tail(text: str, max_lines: int, max_chars: int) -> str:
    lines = text.strip().splitlines()[-max_lines:]
    out = "\n".join(lines)
    return out if len(out) <= max_chars else "..." + out[-(max_chars - 3) :]


def error_tail(error: str, max_lines: int = 30, max_chars: int = 3000) -> str:
    """The part of an error text a fixer prompt shows: its last lines, control characters escaped."""
    return safe_text(_tail(error, max_lines, max_chars), max_chars).strip()


def system_text(role: str) -> str:
    """The system message of `role` (designer, reviewer or fixer): constant across a run."""
    if role not in ROLES:
        raise ConfigError(f"unknown agent role {role!r}", f"Use one of: {', '.join(ROLES)}.")
    return render(f"{role}.system")


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return content if isinstance(content, str) else ""


def detect_role(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The role whose system text opens the conversation (as our templates write it); None otherwise."""
    systems = [_content_text(m.get("content")).strip() for m in messages if m.get("role") == "system"]
    if not systems:
        return None
    for role in ROLES:
        if systems[0] == system_text(role).strip():
            return role
    return None


def _prm_json(prm: Mapping[str, Any] | None) -> str:
    return json.dumps({str(k): prm[k] for k in sorted(prm)}) if prm else "{}"


def designer_messages(
    facts: DatasetFacts,
    snippets: Sequence[Snippet],
    *,
    decoder: Literal["lstm", "gru", "transformer"] | None = None,
    mode: Literal["compose", "improve"] = "compose",
    parent: ParentCandidate | None = None,
    top: Sequence[CandidateFeedback] = (),
    failures: Sequence[FailureFeedback] = (),
    max_top: int = 5,
    max_failures: int = 5,
    traceback_lines: int = 8,
    traceback_chars: int = 800,
    compact_snippets: bool = True,
) -> list[dict[str, str]]:
    """System + user messages of a designer request (OpenAI chat format)."""
    if mode not in ("compose", "improve"):
        raise ConfigError(f"unknown designer mode {mode!r}", "Use 'compose' or 'improve'.")
    if mode == "improve" and parent is None:
        raise ConfigError("designer mode 'improve' needs a parent candidate", "Pass parent=ParentCandidate(...).")
    if decoder is not None and decoder not in DECODER_FAMILIES:
        raise ConfigError(f"unknown decoder family {decoder!r}", f"Use one of: {', '.join(DECODER_FAMILIES)}.")
    fails = [
        FailureFeedback(safe_text(f.category, 60, keep="head"),
                        safe_text(_tail(f.traceback_tail, traceback_lines, traceback_chars), traceback_chars),
                        safe_text(f.summary, 300, keep="head"))
        for f in list(failures)[-max_failures:]
    ]
    shown = [
        {"name": s.name, "family": s.family, "summary": s.summary, "code": s.prompt_source(compact=compact_snippets)}
        for s in snippets
    ]
    user = render(
        "designer",
        contract=contract_text().strip(),
        facts=facts,
        snippets=shown,
        decoder_text=DECODER_TEXT[decoder],
        mode=mode,
        parent=replace(parent, summary=safe_text(parent.summary, 300, keep="head")) if parent is not None else None,
        parent_prm=_prm_json(parent.hparams) if parent is not None else "{}",
        top=[replace(c, summary=safe_text(c.summary, 300, keep="head")) for c in list(top)[:max_top]],
        failures=fails,
    )
    return [{"role": "system", "content": system_text("designer")}, {"role": "user", "content": user}]


def reviewer_messages(code: str, *, static_message: str = "accepted",
                      prm: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """System + user messages asking for an API-compliance review of `code` (trained with `prm`) as JSON."""
    user = render(
        "reviewer",
        contract=contract_text().strip(),
        code=code,
        prm=_prm_json(prm),
        static_message=safe_text(static_message, 500, keep="head"),
        categories=[c.value for c in Category],
    )
    return [{"role": "system", "content": system_text("reviewer")}, {"role": "user", "content": user}]


def fixer_messages(
    code: str,
    error: str,
    *,
    category: str | None = None,
    prm: Mapping[str, Any] | None = None,
    error_lines: int = 30,
    error_chars: int = 3000,
) -> list[dict[str, str]]:
    """System + user messages asking for a corrected whole file (and its hyperparameters).

    `error` is candidate-derived (a verdict message or a traceback): its tail is kept
    and control characters are escaped (`safe_text`) before it enters the prompt.
    """
    user = render(
        "fixer",
        contract=contract_text().strip(),
        code=code,
        prm=_prm_json(prm),
        error=error_tail(error, error_lines, error_chars),
        category=safe_text(category, 60, keep="head") if category else None,
    )
    return [{"role": "system", "content": system_text("fixer")}, {"role": "user", "content": user}]
