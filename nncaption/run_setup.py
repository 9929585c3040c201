"""What `nncaption run` checks and says around a run: the dataset opened before the run directory exists, the
documented [train] keys, and the commands to look at the run afterwards. (The concurrency is checked by the run
itself: graph/preflight.py, a warning and a `concurrency_adjusted` event.)"""

from __future__ import annotations

import logging
import shlex
import textwrap
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Every key of the [train] TOML table, for `run --help` (tests/test_cli_basics.py checks it covers TrainSettings).
TRAIN_KEYS: dict[str, str] = {
    "epochs": "training epochs per candidate (default 2; --epochs)",
    "batch_size": "training batch size (default 32)",
    "max_train_batches": "batches per epoch (default: the whole training split; --max-train-batches)",
    "max_val_images": "validation images decoded for BLEU-4 (default: the whole recorded subset; --max-val-images)",
    "epoch_time_limit_s": "compute one training epoch (and one decode pass) may use: CPU seconds per allotted core on "
                          "CPU, wall seconds on a GPU (default 300; --epoch-time-limit)",
    "smoke_time_limit_s": "the whole smoke check (2 batches of 4 and one decode), counted the same way (default 120)",
    "max_params": "largest model accepted, in parameters (default 20000000)",
    "threads": "torch threads (and cores) of each job (default: cores / jobs at once; --threads)",
    "device": "\"cpu\" or \"cuda\" (default cpu; --device, implied by --gpus)",
    "jobs_root": "folder of the content-addressed sandbox jobs (default RUN_DIR/jobs); share one between runs to "
                 "reuse identical trainings",
}


def train_keys_help() -> str:
    """The epilog of `run --help`: every key of the [train] table of a --config file."""
    width = max(len(k) for k in TRAIN_KEYS)
    lines = ["[train] keys of a --config TOML file (flags override them):"]
    for key, text in TRAIN_KEYS.items():
        wrapped = textwrap.wrap(text, 100 - width - 4) or [""]
        lines.append(f"  {key:<{width}}  {wrapped[0]}")
        lines += [f"  {'':<{width}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def check_dataset(settings: Any, *, progress: bool) -> None:
    """Open (or prepare, once: it is cached) the run's dataset now, so a bad one fails before a run directory exists."""
    from nncaption.netapi.data.resolve import resolve_dataset

    d = settings.data
    resolve_dataset(d.dataset, coco_root=Path(d.coco_root) if d.coco_root else None,
                    prepared=Path(d.prepared) if d.prepared else None, size=d.size, seed=d.data_seed,
                    val_limit=d.val_limit, progress=progress)


def next_commands(run_dir: Path | str) -> list[str]:
    """The summary's last lines: how to inspect, report and export the run."""
    q = shlex.quote(str(run_dir))
    return ["next:", f"  inspect: nncaption trace {q}   (or --html trace.html for the viewer)",
            f"  report:  nncaption report {q}", f"  export:  nncaption export {q} --lemur OUT_DIR"]
