"""Whose settings a resumed or forked run uses: the run directory's `config.json` only when this user made it.

A run directory can come from someone else (a shared fork, a bug report), and its
`config.json` names the LLM endpoints, the environment variable whose key is sent
to them as a bearer token, the sandbox and the data and job folders. `--resume`
and `--fork` must never take those silently from a copied file: every run this
user starts (or forks, or explicitly trusts) is remembered under
`$NNCAPTION_HOME/trusted-runs/` with a fingerprint of exactly those settings; a run
directory that is not remembered, or whose settings changed since, is refused with
what it asks for, until the user passes `--trust-run-config` (or, for a fork, gives
the endpoint with `--llm-base-url`, which replaces all of them by the user's own).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from nncaption.graph import rundir
from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

TRUST_DIR = "trusted-runs"
# The settings that decide where data, keys and code go: (section, key) or a whole section.
SENSITIVE: tuple[tuple[str, ...], ...] = (
    ("agents", "kind"), ("agents", "llm"), ("agents", "replay"), ("sandbox",), ("train", "jobs_root"),
    ("data", "coco_root"), ("data", "prepared"),
)


class UntrustedRunConfig(NNCaptionError):
    """A run directory from elsewhere asks for endpoints, keys or a sandbox the user has not agreed to."""

    category = "untrusted-run"
    exit_code = 2


def asks(config: dict[str, Any]) -> dict[str, Any]:
    """The sensitive part of a recorded config, flattened to dotted keys (absent ones left out)."""
    out: dict[str, Any] = {}
    for path in SENSITIVE:
        node: Any = config
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[".".join(path)] = node
    return out


def stripped(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without its sensitive settings (the defaults and the user's flags apply instead)."""
    data: dict[str, Any] = json.loads(json.dumps(config, default=str))
    for path in SENSITIVE:
        node: Any = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return data


def fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(asks(config), sort_keys=True, default=str).encode()).hexdigest()


def _home() -> Path:
    from nncaption.netapi import paths

    return paths.home()


def _name(run_dir: Path) -> str:
    return hashlib.sha256(str(Path(run_dir).expanduser().resolve()).encode()).hexdigest()[:40]


def remember(run_dir: Path, config: dict[str, Any]) -> None:
    """Record that this user started (or agreed to) `run_dir` with these settings (best effort)."""
    try:
        rundir.write_file(_home(), [TRUST_DIR, _name(run_dir)], fingerprint(config) + "\n", mode=0o600)
    except (OSError, NNCaptionError) as e:
        log.warning("cannot record %s as trusted: %s", safe_text(str(run_dir), 300), e)


def is_trusted(run_dir: Path, config: dict[str, Any]) -> bool:
    data = rundir.read_bytes(_home(), [TRUST_DIR, _name(run_dir)], 200)
    return data is not None and data.decode("ascii", "replace").strip() == fingerprint(config)


def describe(config: dict[str, Any]) -> str:
    """What the recorded config asks for, one `key = value` per line (escaped, capped)."""
    lines = [f"  {k} = {safe_text(json.dumps(v, sort_keys=True, default=str), 400, keep='head')}"
             for k, v in asks(config).items()]
    return "\n".join(lines) or "  (nothing beyond the defaults)"


def check(run_dir: Path, config: dict[str, Any], *, trust: bool, action: str = "--resume") -> None:
    """Pass when `run_dir` is one of this user's runs with unchanged settings, or `trust`; else refuse."""
    if trust:
        remember(run_dir, config)
        return
    if is_trusted(run_dir, config):
        return
    raise UntrustedRunConfig(
        f"{safe_text(str(run_dir), 300)} was not started here (or its config.json changed since), and its "
        f"config.json asks for these endpoints, key variables, sandbox and folders:\n{describe(config)}",
        "check them, then repeat with --trust-run-config to use them"
        + (", or fork with your own endpoint: --llm-base-url URL" if action == "--fork" else ""))
