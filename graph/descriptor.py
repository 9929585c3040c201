"""A candidate's descriptor: what kind of captioner it is, for search policies that keep diversity.

Four coordinates, derived by small pure functions from what the run store holds
(the code, the composer's one-line summary, the planned decoder family and the
training report's parameter count), so a policy can read them from the journal
and nothing has to be stored twice:

- `decoder`: lstm | gru | transformer (from the layers the code builds; else the planned family; else "other");
- `encoder`: the backbone family named in the composer's summary ("resnet (residual) encoder + ..."), else a
  coarse guess from the code ("transformer" for a transformer encoder, "cnn" for convolutions, "mlp"), else "unknown";
- `conditioning`: how the image reaches the decoder, "+"-joined in a fixed order: initial-state (the recurrent
  layer is called with a state built from the image), per-step-input (an image feature is expanded along time and
  concatenated to the word inputs), cross-attention (a transformer decoder or an attention layer whose query is not
  its key); the composer's marker (`fuse=init|concat|attention`) decides when present; "unknown" otherwise;
- `params_bin`: the parameter count's half-decade bin ("300K-1M"), "unknown" before training reports it.

The code is hostile input: it is parsed with `ast` (never run), and a file that does not parse gets "unknown"
where the code would have decided.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from nncaption.netapi import pyast

CONDITIONING_ORDER = ("initial-state", "per-step-input", "cross-attention")
PARAM_BINS = ((1e5, "<100K"), (3e5, "100K-300K"), (1e6, "300K-1M"), (3e6, "1M-3M"), (1e7, "3M-10M"),
              (3e7, "10M-30M"), (1e8, "30M-100M"))
MAX_CODE_CHARS = 400_000  # a longer file is not parsed (its code-derived coordinates stay "unknown")

_RNN = {"LSTM": "lstm", "LSTMCell": "lstm", "GRU": "gru", "GRUCell": "gru"}
_TRANSFORMER_DECODER = {"TransformerDecoder", "TransformerDecoderLayer", "Transformer"}
_SUMMARY_ENCODER = re.compile(r"^\s*[\w.+-]+\s+\(([\w .+-]{1,40})\)\s+encoder\b")
_MARKER = re.compile(r"^\s*#\s*nncaption-composed:([^\n]*)", re.MULTILINE)
_FUSE = {"init": ("initial-state",), "concat": ("initial-state", "per-step-input"),
         "attention": ("cross-attention",)}


@dataclass(frozen=True)
class Descriptor:
    """Where a candidate sits in the space of captioners (a MAP-Elites cell is the tuple `cell`)."""

    decoder: str = "other"
    encoder: str = "unknown"
    conditioning: str = "unknown"
    params_bin: str = "unknown"
    params: int | None = None

    @property
    def cell(self) -> tuple[str, str, str, str]:
        return (self.decoder, self.encoder, self.conditioning, self.params_bin)


def params_bin(params: int | None) -> str:
    """The half-decade bin of a parameter count ("unknown" when not reported)."""
    if params is None or params < 0:
        return "unknown"
    return next((label for bound, label in PARAM_BINS if params < bound), ">=100M")


def encoder_from_summary(summary: str) -> str | None:
    """The backbone family of a composer summary ("resnet (residual) encoder + ...") or None."""
    m = _SUMMARY_ENCODER.match(summary or "")
    return m.group(1).strip().lower() if m else None


def _layer_name(node: ast.AST) -> str | None:
    """`nn.LSTM(...)` / `torch.nn.GRU(...)` / `LSTM(...)` -> the class name."""
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute):
            return f.attr
        if isinstance(f, ast.Name):
            return f.id
    return None


def _target_name(t: ast.AST) -> str | None:
    if isinstance(t, ast.Attribute):
        return t.attr
    if isinstance(t, ast.Name):
        return t.id
    return None


def _false_flags(tree: ast.Module) -> set[str]:
    """Module-level names bound to a falsy constant (`FEED_FEATURES = False`): code under `if NAME:` is dead."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and not node.value.value:
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def _live_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node except the bodies of `if FLAG:` where FLAG is a module-level falsy constant."""
    dead = _false_flags(tree)
    out: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id in dead:
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _layers(nodes: list[ast.AST]) -> dict[str, str]:
    """Attribute/variable name -> layer class for assignments like `self.rnn = nn.GRU(...)`."""
    out: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Assign) and (name := _layer_name(node.value)):
            for t in node.targets:
                if (target := _target_name(t)) is not None:
                    out[target] = name
    return out


def _calls_of(nodes: list[ast.AST], names: set[str]) -> list[ast.Call]:
    return [n for n in nodes if isinstance(n, ast.Call) and _target_name(n.func) in names]


def _has_expand(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("expand", "repeat")
               for n in ast.walk(node))


def decoder_from_code(tree: ast.Module) -> str | None:
    """The decoder family the code builds: the first recurrent layer's, else transformer, else None."""
    names = [_layer_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    rnn = [_RNN[n] for n in names if n in _RNN]
    if rnn:
        return rnn[0]
    return "transformer" if any(n in _TRANSFORMER_DECODER for n in names) else None


def conditioning_from_code(tree: ast.Module) -> str:
    """How the image reaches the decoder, from the code's structure (see the module docstring)."""
    nodes = _live_nodes(tree)
    layers = _layers(nodes)
    found: set[str] = set()
    rnns = {name for name, cls in layers.items() if cls in _RNN}
    for call in _calls_of(nodes, rnns):
        state = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "hx"), None)
        if state is not None and not (isinstance(state, ast.Constant) and state.value is None):
            found.add("initial-state")
    for call in _calls_of(nodes, {"cat", "concat", "concatenate"}):
        if call.args and isinstance(call.args[0], ast.List | ast.Tuple) and any(
                _has_expand(e) for e in call.args[0].elts):
            found.add("per-step-input")
    if any(cls in _TRANSFORMER_DECODER for cls in layers.values()):
        found.add("cross-attention")
    attn = {name for name, cls in layers.items() if cls == "MultiheadAttention"}
    for call in _calls_of(nodes, attn):
        if len(call.args) >= 2 and ast.dump(call.args[0]) != ast.dump(call.args[1]):
            found.add("cross-attention")
    return "+".join(c for c in CONDITIONING_ORDER if c in found) or "unknown"


def encoder_from_code(tree: ast.Module) -> str:
    names = {_layer_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    if "TransformerEncoder" in names or "TransformerEncoderLayer" in names:
        return "transformer"
    if names & {"Conv2d", "conv2d"}:
        return "cnn"
    return "mlp" if "Linear" in names else "unknown"


def _marker_fields(code: str) -> dict[str, str]:
    m = _MARKER.search(code)
    if not m:
        return {}
    return dict(tok.split("=", 1) for tok in m.group(1).split() if "=" in tok)


def describe(code: str | None, *, summary: str = "", decoder: str | None = None,
             params: int | None = None) -> Descriptor:
    """The descriptor of a candidate from its code (None before one was designed), summary, planned decoder
    family and reported parameter count. Pure and deterministic."""
    tree: ast.Module | None = None
    if code and len(code) <= MAX_CODE_CHARS:
        try:
            tree = pyast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
    marker = _marker_fields(code or "")
    dec = (decoder_from_code(tree) if tree is not None else None) or marker.get("decoder") or decoder or "other"
    enc = encoder_from_summary(summary) or (encoder_from_code(tree) if tree is not None else "unknown")
    if dec == "transformer" and marker:
        cond = "cross-attention"
    elif marker.get("fuse") in _FUSE:
        cond = "+".join(_FUSE[marker["fuse"]])
    else:
        cond = conditioning_from_code(tree) if tree is not None else "unknown"
    return Descriptor(decoder=dec, encoder=enc, conditioning=cond, params_bin=params_bin(params), params=params)
