"""`nncaption check FILE` and `nncaption eval-model FILE`: argument parsing and printing only.

The work is done by the candidate service (nncaption.sandbox.service), the same
library the graph calls: `check` runs the static validator, then the smoke job
in a sandbox; `eval-model` runs the smoke job first (failing fast with the very
verdict `check` gives), trains the candidate in a sandbox and scores it in the
parent. Jobs are content-addressed under NNCAPTION_HOME/jobs: an identical job
returns its recorded report (`--no-reuse` trains again).

Every option combination that makes no sense is refused before any data or
torch work. Exit codes: 0 accepted / trained, 1 rejected / failed, 2 usage
error (bad path, bad option, missing dataset, no CUDA). `--json` prints exactly
one strict JSON object on stdout, whatever happens; progress and messages go to
stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from nncaption.eval_display import ProgressDisplay, print_check, print_report, stderr_console
from nncaption.netapi import paths as config
from nncaption.netapi.errors import ConfigError, NNCaptionError, UsageError
from nncaption.netapi.safetext import safe_text, strict_dumps
from nncaption.parsing import Parser

if TYPE_CHECKING:  # torch comes in with the data layer: keep `nncaption --help` and usage errors fast
    from nncaption.sandbox.service import CandidateService

log = logging.getLogger(__name__)

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
SANDBOXES: tuple[str, ...] = ("local", "docker", "ray")
DATASETS: tuple[str, ...] = ("synthetic", "coco")
BATCH_MAX = 512


def jobs_root() -> Path:
    """Where content-addressed jobs live: NNCAPTION_HOME/runs/jobs."""
    return config.runs_root() / "jobs"


# ---------------------------------------------------------------- the candidate argument


@dataclass
class Candidate:
    """A candidate file named on the command line (a path or ref-lstm / ref-gru / ref-transformer)."""

    label: str
    path: Path
    source: str


def resolve_candidate(text: str) -> Candidate:
    """The candidate FILE argument: `ref-<name>` for a reference model, else a path to a Python file."""
    from nncaption.netapi import reference

    if text.startswith(reference.CLI_PREFIX):
        try:
            path = reference.path(text)
        except KeyError:
            names = ", ".join(reference.CLI_PREFIX + n for n in reference.NAMES)
            raise ConfigError(f"unknown reference model {text!r}", f"use one of: {names}") from None
        return Candidate(text, path, path.read_text(encoding="utf-8"))
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"candidate file {text} does not exist" if not path.exists() else f"{text} is not a file",
                          "pass the path of a Python file defining the Net API, or ref-lstm / ref-gru / "
                          "ref-transformer")
    try:
        source = path.read_text(encoding="utf-8-sig")  # Python accepts a UTF-8 byte-order mark: so do we
    except UnicodeDecodeError:
        raise ConfigError(f"{text} is not UTF-8 text", "pass a Python source file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {text}: {e.strerror or e}", "check the path and its permissions") from None
    return Candidate(path.name, path.resolve(), source)


# ---------------------------------------------------------------- options, checked before any heavy work


def _fail(message: str, hint: str) -> NoReturn:
    raise ConfigError(message, hint)


def _conflict(message: str, hint: str) -> NoReturn:
    raise UsageError(message, hint)


def validate_args(args: argparse.Namespace) -> None:
    """Refuse every option combination (UsageError) or value (ConfigError) that makes no sense; nothing heavy runs."""
    if args.prepared:
        for flag, value in (("--dataset", args.dataset), ("--coco-root", args.coco_root), ("--size", args.size),
                            ("--data-seed", args.data_seed), ("--val-limit", args.val_limit)):
            if value is not None:
                _conflict(f"{flag} has no effect with --prepared (a prepared dataset is fixed)",
                      f"leave {flag} out, or leave --prepared out")
    dataset = args.dataset or "synthetic"
    if dataset == "coco" and not args.coco_root and not args.prepared:
        _fail("--dataset coco needs --coco-root DIR",
              "pass --coco-root pointing at annotations/, train2017/ and val2017/, or use --dataset synthetic")
    if args.coco_root and dataset != "coco":
        _conflict("--coco-root is only used with --dataset coco (the synthetic set would be used instead)",
              "add --dataset coco, or leave --coco-root out")
    if args.docker_runtime and args.sandbox != "docker":
        _conflict(f"--docker-runtime applies to the docker sandbox, not --sandbox {args.sandbox}",
              "add --sandbox docker, or leave --docker-runtime out")
    if args.ray_address and args.sandbox != "ray":
        _conflict(f"--ray-address applies to the ray sandbox, not --sandbox {args.sandbox}",
              "add --sandbox ray, or leave --ray-address out")
    if args.size is not None and not 16 <= args.size <= 1024:
        _fail(f"--size {args.size} is out of range", "use an image side between 16 and 1024 pixels (e.g. 64)")
    for flag in ("epochs", "max_train_batches", "max_val_images", "val_limit", "threads"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            name = "--" + flag.replace("_", "-")
            _fail(f"{name} must be >= 1, got {value}", f"pass {name} 1 or more, or leave it out")
    if not 1 <= args.batch <= BATCH_MAX:
        _fail(f"--batch must be in 1..{BATCH_MAX}, got {args.batch}", "e.g. --batch 32")
    if not (math.isfinite(args.lr) and 0 < args.lr <= 1):
        _fail(f"--lr must be in (0, 1], got {args.lr}", "e.g. --lr 0.001")
    if not (math.isfinite(args.momentum) and 0 <= args.momentum < 1):
        _fail(f"--momentum must be in [0, 1), got {args.momentum}", "e.g. --momentum 0.9")
    if not (math.isfinite(args.dropout) and 0 <= args.dropout < 1):
        _fail(f"--dropout must be in [0, 1), got {args.dropout}", "e.g. --dropout 0.1")
    limit = getattr(args, "epoch_time_limit", None)
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        _fail(f"--epoch-time-limit must be a positive number of seconds, got {limit}", "e.g. --epoch-time-limit 600")


def sandbox_options(args: argparse.Namespace) -> dict[str, Any]:
    """Backend options from the command line for `get_sandbox(args.sandbox, **options)`."""
    if args.sandbox == "ray" and args.ray_address:
        return {"address": args.ray_address}
    if args.sandbox == "docker" and args.docker_runtime:
        return {"runtime": args.docker_runtime}
    return {}


def _check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is visible",
                              "use --device cpu, or run on a GPU machine")


def build_service(args: argparse.Namespace, *, progress: bool) -> CandidateService:
    """The dataset, sandbox and settings the options name, checked (preflight) before any job starts."""
    from nncaption.netapi.data.resolve import resolve_dataset
    from nncaption.sandbox import get_sandbox
    from nncaption.sandbox.service import CandidateService, EvalSettings

    _check_device(args.device)
    config.ensure_home()  # an unusable NNCAPTION_HOME is the user's setup (exit 2), found before any work
    paths = resolve_dataset(args.dataset or "synthetic", coco_root=Path(args.coco_root) if args.coco_root else None,
                            prepared=Path(args.prepared) if args.prepared else None,
                            size=args.size if args.size is not None else config.DEFAULT_IMAGE_SIZE,
                            seed=args.data_seed if args.data_seed is not None else config.DEFAULT_SEED,
                            val_limit=args.val_limit, progress=progress)
    settings = EvalSettings(
        epochs=getattr(args, "epochs", 1), batch_size=args.batch, seed=args.seed, device=args.device,
        epoch_time_limit_s=float(getattr(args, "epoch_time_limit", 600.0)),
        max_train_batches=getattr(args, "max_train_batches", None),
        max_val_images=getattr(args, "max_val_images", None), threads=args.threads,
        baseline=not getattr(args, "no_baseline", False), reuse=not args.no_reuse,
    )
    service = CandidateService(paths, get_sandbox(args.sandbox, **sandbox_options(args)), jobs_root=jobs_root(),
                               settings=settings)
    service.preflight()
    return service


def prm_from_args(args: argparse.Namespace) -> dict[str, float | int]:
    return {"lr": args.lr, "momentum": args.momentum, "dropout": args.dropout, "batch": args.batch}


def _close(service: CandidateService) -> None:
    close = getattr(service.sandbox, "close", None)
    if callable(close):
        close()


# ---------------------------------------------------------------- one JSON object, whatever happens


def _emit_json(obj: dict[str, Any]) -> None:
    print(strict_dumps(obj))


def _guarded(args: argparse.Namespace, body: Callable[[argparse.Namespace], int],
             error_fields: dict[str, Any]) -> int:
    """Run a command: usage errors exit 2, and under --json every outcome is exactly one JSON object."""
    try:
        validate_args(args)
        return body(args)
    except NNCaptionError as e:  # everything else goes to the CLI's last line of defence (crash log, one JSON object)
        if args.json:
            _emit_json({**error_fields, "category": e.category, "message": safe_text(e.message, 2000, keep="head"),
                        "hint": e.hint})
        else:
            from nncaption.cli import print_error

            print_error(e.category, e.message, e.hint)
        return EXIT_USAGE


class _JsonAwareParser(Parser):
    """A sub-command parser whose usage errors print one JSON object when --json is on the command line."""

    _argv: list[str] = []

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        self._argv = list(args) if args is not None else list(sys.argv[1:])
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if "--json" in self._argv:
            _emit_json({"ok": False, "status": "error", "category": "usage", "message": safe_text(message, 2000),
                        "hint": f"see `{self.prog} --help`"})
            sys.exit(EXIT_USAGE)
        super().error(message)


# ---------------------------------------------------------------- check


def _cmd_check(args: argparse.Namespace) -> int:
    return _guarded(args, _check, {"ok": False, "stage": "usage", "line": None, "job_id": None})


def _check(args: argparse.Namespace) -> int:
    cand = resolve_candidate(args.file)
    show = not args.json
    service = build_service(args, progress=show)
    console = stderr_console()
    try:
        def on_event(event: dict[str, Any]) -> None:
            if show and event.get("event") == "stage" and event.get("stage") == "smoke":
                console.print(f"{cand.label}: static check passed; smoke run in the {service.sandbox.name} sandbox "
                              f"(at most {service.settings.smoke_time_limit_s:g} s) ...", markup=False)
            elif show and event.get("event") == "reused":
                console.print(f"{cand.label}: an identical check already ran; its result is reused", markup=False)

        if show:
            with console.status(f"checking {cand.label}", spinner="dots"):
                result = service.check_sync(cand.source, prm_from_args(args), on_event=on_event)
        else:
            result = service.check_sync(cand.source, prm_from_args(args))
    finally:
        _close(service)
    if args.json:
        _emit_json(result.to_dict())
    else:
        print_check(cand.label, result, console)
    return EXIT_OK if result.ok else EXIT_REJECTED


# ---------------------------------------------------------------- eval-model


def _cmd_eval_model(args: argparse.Namespace) -> int:
    return _guarded(args, _eval_model, {"status": "error", "bleu4": None, "lemur_bleu4": None, "epochs": [],
                                        "params": None, "job_id": None, "job_dir": None})


def _eval_model(args: argparse.Namespace) -> int:
    cand = resolve_candidate(args.file)
    show = not (args.json or args.quiet)
    service = build_service(args, progress=show)
    try:
        with ProgressDisplay(args.epochs, show) as display:
            report = service.evaluate_sync(cand.source, prm_from_args(args), on_event=display.on_event)
    finally:
        _close(service)
    if args.json:
        _emit_json(report.to_dict())
    else:
        print_report(cand.label, report)
    return EXIT_OK if report.ok else EXIT_REJECTED


# ---------------------------------------------------------------- registration


def _add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="candidate .py file, or ref-lstm / ref-gru / ref-transformer")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="synthetic (default; generated on first use) or coco (needs --coco-root)")
    p.add_argument("--coco-root", metavar="DIR", help="with --dataset coco: annotations/, train2017/, val2017/")
    p.add_argument("--prepared", metavar="DIR", help="an already prepared dataset folder (holding public/ and "
                   "private/); excludes --dataset, --coco-root, --size, --data-seed and --val-limit")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help=f"image side in pixels (default {config.DEFAULT_IMAGE_SIZE})")
    p.add_argument("--data-seed", type=int, default=None, metavar="S",
                   help=f"seed of the synthetic data and of the validation subset (default {config.DEFAULT_SEED})")
    p.add_argument("--val-limit", type=int, default=None, metavar="N",
                   help="prepare a seeded validation subset of N images (COCO)")
    p.add_argument("--sandbox", choices=SANDBOXES, default="local", help="where candidate code runs")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="with --sandbox ray: an existing Ray cluster (default: start Ray locally)")
    p.add_argument("--docker-runtime", metavar="NAME", default=None,
                   help="with --sandbox docker: container runtime, e.g. runsc (gVisor)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads in the sandbox")
    p.add_argument("--batch", type=int, default=32, metavar="N",
                   help=f"training batch size, prm['batch'] (1..{BATCH_MAX})")
    p.add_argument("--lr", type=float, default=1e-3, metavar="F", help="prm['lr'], in (0, 1]")
    p.add_argument("--momentum", type=float, default=0.9, metavar="F", help="prm['momentum'], in [0, 1)")
    p.add_argument("--dropout", type=float, default=0.1, metavar="F", help="prm['dropout'], in [0, 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="training seed (torch, numpy, random)")
    p.add_argument("--no-reuse", action="store_true",
                   help="run again even when an identical job (same code, options and dataset) has a recorded result")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `check` and `eval-model`."""
    check = subparsers.add_parser("check", help="validate a candidate: static checks, then a smoke run in a sandbox",
                                  description="Exit 0 accepted, 1 rejected, 2 usage error.")
    check.__class__ = _JsonAwareParser
    _add_common_options(check)
    check.set_defaults(func=_cmd_check)

    ev = subparsers.add_parser("eval-model", help="train a candidate in a sandbox and score it (BLEU-4)",
                               description="Runs the smoke check first, then trains and scores. Exit 0 trained and "
                               "scored, 1 the candidate failed, 2 usage error.")
    ev.__class__ = _JsonAwareParser
    _add_common_options(ev)
    ev.add_argument("--epochs", type=int, default=3, metavar="N")
    ev.add_argument("--max-train-batches", type=int, default=None, metavar="N", help="cap batches per epoch")
    ev.add_argument("--max-val-images", type=int, default=None, metavar="N", help="decode only the first N val images")
    ev.add_argument("--epoch-time-limit", type=float, default=600.0, metavar="S",
                    help="seconds allowed per epoch of training (and per decode pass)")
    ev.add_argument("--no-baseline", action="store_true", help="skip the constant-caption baseline")
    ev.add_argument("--quiet", action="store_true", help="no progress display")
    ev.set_defaults(func=_cmd_eval_model)
