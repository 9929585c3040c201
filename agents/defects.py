"""Realistic defects planted in composed candidates, to exercise the fixer path (`inject_defect`).

Each kind makes a composed file fail the way an LLM's mistake would: syntax -> syntax; shape -> shape-error
(smoke, while learning); missing-method -> missing-symbol; forbidden-import -> forbidden-call;
output-contract -> eval-contract. The composition marker line is never touched, so the baseline's oracle
fixer (`mutate.repair_model`) can undo any of them.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from nncaption.netapi import pyast
from nncaption.netapi.errors import ConfigError

DEFECT_KINDS: tuple[str, ...] = ("syntax", "shape", "missing-method", "forbidden-import", "output-contract")


def check_fault_settings(fault_rate: float, fault_kinds: Sequence[str], *, rate_name: str = "fault_rate") -> None:
    """Raise ConfigError unless `fault_rate` is in [0, 1] and `fault_kinds` is a non-empty subset of DEFECT_KINDS."""
    if not 0.0 <= fault_rate <= 1.0:
        raise ConfigError(f"{rate_name} must be between 0 and 1, got {fault_rate}", "use e.g. 0.3")
    unknown = sorted(set(fault_kinds) - set(DEFECT_KINDS))
    if unknown or not fault_kinds:
        raise ConfigError(f"unknown fault kinds: {', '.join(unknown) or '(none given)'}",
                          f"use some of: {', '.join(DEFECT_KINDS)}")

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
    tree = pyast.parse(code)
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
