"""The backbone snippet library: reading, sampling and reusing the snippets.

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
"""

from __future__ import annotations

import ast
import importlib.util
import random
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nncaption.netapi import pyast
from nncaption.netapi.errors import ConfigError, NNCaptionError

SNIPPET_MARKER = "nncaption-snippet:"
CONVENTION_MARKER = "nncaption-convention:"
METADATA_PREFIX = "# nncaption-"
_SNIPPETS_PACKAGE = "nncaption.prompts.snippets"

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
    tree = pyast.parse(source)
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
    tree = pyast.parse(source)
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
