"""Hand-written reference captioners, each a standalone Net API candidate file.

They anchor the tests (every layer must accept and train them), the prompts
(examples of the contract) and the benchmarks (what a plain model reaches).
The CLI accepts `ref-<name>` wherever a candidate FILE is expected.
"""

from __future__ import annotations

from pathlib import Path

NAMES: tuple[str, ...] = ("lstm", "gru", "transformer")
CLI_PREFIX = "ref-"


def path(name: str) -> Path:
    """The file of reference model `name` ("lstm", "gru" or "transformer"; "ref-" prefix allowed)."""
    key = name[len(CLI_PREFIX):] if name.startswith(CLI_PREFIX) else name
    if key not in NAMES:
        raise KeyError(f"unknown reference model {name!r}; choose one of: {', '.join(NAMES)}")
    return Path(__file__).resolve().parent / f"{key}.py"


def source(name: str) -> str:
    """The source text of reference model `name`."""
    return path(name).read_text(encoding="utf-8")
