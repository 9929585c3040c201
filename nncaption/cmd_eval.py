"""`nncaption check FILE` and `nncaption eval-model FILE`.

`check` runs the static validator in this process (it never imports the
candidate), then the smoke check inside a sandbox (`python -m
nncaption.netapi.smoke JOB_DIR`). `eval-model` statically checks the candidate,
trains it through the runner inside a sandbox (`python -m nncaption.netapi.run
JOB_DIR`) with a live progress display, and scores its free-running decodes
here, in the parent, against references the sandbox never sees.

Exit codes: 0 accepted / trained, 1 rejected / failed, 2 usage error (bad
path, bad option, missing dataset). `--json` prints exactly one JSON object on
stdout; progress and messages go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from nncaption import config
from nncaption.netapi.errors import ConfigError, NNCaptionError

if TYPE_CHECKING:  # torch comes in with the data layer: keep `nncaption --help` fast
    from nncaption.netapi.categories import Verdict
    from nncaption.netapi.data.prepare import PreparedPaths
    from nncaption.sandbox import RunResult

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
SANDBOXES: tuple[str, ...] = ("local", "docker", "ray")
DATASETS: tuple[str, ...] = ("synthetic", "coco")
SMOKE_TIME_LIMIT_S = 120.0
STARTUP_SLACK_S = 120.0  # importing torch in a cold sandbox, writing files


# ---------------------------------------------------------------- shared helpers


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
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{text} is not UTF-8 text", "pass a Python source file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {text}: {e.strerror or e}", "check the path and its permissions") from None
    return Candidate(path.name, path.resolve(), source)


def resolve_data(args: argparse.Namespace, *, progress: bool) -> "PreparedPaths":
    """The prepared dataset the options name: --prepared DIR, else --dataset (generated/prepared on first use)."""
    from nncaption.netapi.data.prepare import PreparedPaths

    if getattr(args, "prepared", None):
        root = Path(args.prepared).expanduser().resolve()
        paths = PreparedPaths(key=root.name, root=root, public_dir=root / "public", private_dir=root / "private")
        for sub in (paths.public_dir, paths.private_dir):
            if not sub.is_dir():
                raise ConfigError(f"{root} is not a prepared dataset (no {sub.name}/ folder)",
                                  "pass the folder printed by `nncaption data prepare` (it holds public/ and "
                                  "private/), or leave --prepared out")
        return paths
    if args.dataset == "coco" and not args.coco_root:
        raise ConfigError("--dataset coco needs --coco-root DIR",
                          "pass --coco-root pointing at annotations/, train2017/ and val2017/, or use "
                          "--dataset synthetic")
    from nncaption.cmd_data import resolve_dataset

    return resolve_dataset(args.dataset, coco_root=Path(args.coco_root) if args.coco_root else None,
                           size=args.size, seed=args.data_seed, progress=progress,
                           val_limit=getattr(args, "val_limit", None))


def _emit_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str))


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# ---------------------------------------------------------------- check


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        return _check(args)
    except NNCaptionError as e:
        return _usage_error(args, e, {"ok": False, "stage": "usage", "line": None})


def _usage_error(args: argparse.Namespace, e: NNCaptionError, fields: dict[str, Any]) -> int:
    if args.json:
        _emit_json({**fields, "category": e.category, "message": e.message, "hint": e.hint})
    else:
        from nncaption.cli import print_error

        print_error(e.category, e.message, e.hint)
    return EXIT_USAGE


def _check(args: argparse.Namespace) -> int:
    from nncaption.netapi.validate import static_check

    cand = resolve_candidate(args.file)
    verdict = static_check(cand.source, filename=cand.path.name)
    if verdict.ok:
        paths = resolve_data(args, progress=not args.json)
        verdict = smoke_in_sandbox(cand, paths, sandbox=args.sandbox, device=args.device,
                                   sandbox_options=sandbox_options(args))
    if args.json:
        _emit_json(verdict.to_dict())
    else:
        _print_verdict(cand, verdict)
    return EXIT_OK if verdict.ok else EXIT_REJECTED


def sandbox_options(args: argparse.Namespace) -> dict[str, Any]:
    """Backend options from the command line for `get_sandbox(args.sandbox, **options)`."""
    if args.sandbox == "ray" and args.ray_address:
        return {"address": args.ray_address}
    if args.sandbox == "docker" and args.docker_runtime:
        return {"runtime": args.docker_runtime}
    return {}


def smoke_in_sandbox(cand: Candidate, paths: "PreparedPaths", *, sandbox: str = "local", device: str = "cpu",
                     time_limit_s: float = SMOKE_TIME_LIMIT_S,
                     sandbox_options: dict[str, Any] | None = None) -> "Verdict":
    """Run the smoke check of `cand` inside sandbox `sandbox`; return its Verdict (stage "smoke")."""
    from nncaption.netapi.categories import Category, Verdict
    from nncaption.netapi.evaluate import new_job_dir
    from nncaption.netapi.job import JobSpec
    from nncaption.netapi.smoke import ERROR_FILE, write_smoke_job
    from nncaption.sandbox import SMOKE_ENTRY, Job, Limits, get_sandbox

    job_dir = new_job_dir(config.runs_root(), f"check-{cand.label}")
    write_smoke_job(job_dir, cand.source, paths.public_dir, time_limit_s=time_limit_s, device=device)
    job = Job(job_dir=job_dir, spec=JobSpec.read(job_dir), entry=SMOKE_ENTRY,
              limits=Limits(timeout_s=time_limit_s + STARTUP_SLACK_S), gpus=[0] if device == "cuda" else [])
    result = get_sandbox(sandbox, **(sandbox_options or {})).run(job)
    if result.verdict is not None:
        return Verdict.from_dict(result.verdict)
    error = job_dir / ERROR_FILE
    if error.is_file():
        info = json.loads(error.read_text(encoding="utf-8"))
        raise NNCaptionError(info.get("message", "the smoke check could not start"), info.get("hint", ""),
                             category=info.get("category", "error"))
    category = Category(result.category) if result.category in {c.value for c in Category} else Category.CRASHED
    tail = (result.traceback_tail or result.stderr_tail or "").strip()[-1500:]
    message = f"the smoke check ended without a verdict ({result.status}): {result.message}"
    if tail:
        message += f"\nstderr tail:\n{tail}"
    return Verdict.reject("smoke", category, f"{message}\nWhat to change: {category.hint}")


def _print_verdict(cand: Candidate, verdict: "Verdict") -> None:
    console = _stderr_console()
    if verdict.ok:
        print(f"{cand.label}: accepted (static and smoke checks passed)")
        return
    where = f", line {verdict.line}" if verdict.line else ""
    print(f"{cand.label}: rejected at the {verdict.stage} stage [{verdict.category}{where}]")
    console.print(verdict.message, markup=False)


# ---------------------------------------------------------------- eval-model


class ProgressDisplay:
    """Rich progress for a training job, fed by the runner's progress events."""

    def __init__(self, epochs: int, enabled: bool) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self._progress: Any = None
        self._epoch_task: Any = None
        self._batch_task: Any = None

    def __enter__(self) -> "ProgressDisplay":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                      console=_stderr_console(), transient=False)
            self._progress.__enter__()
            self._epoch_task = self._progress.add_task("starting sandbox", total=self.epochs, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def on_event(self, event: dict[str, Any]) -> None:
        if self._progress is None:
            return
        kind = event.get("event")
        p = self._progress
        if kind == "start":
            p.update(self._epoch_task, description="loading the candidate")
        elif kind == "model":
            p.update(self._epoch_task, info=f"{event.get('params', 0):,} params")
        elif kind == "epoch_start":
            epoch, batches = event.get("epoch"), event.get("batches")
            p.update(self._epoch_task, description=f"epoch {epoch}/{self.epochs}")
            if self._batch_task is None:
                self._batch_task = p.add_task("  batches", total=batches, info="")
            p.reset(self._batch_task, total=batches, description=f"  epoch {epoch} batches", info="")
        elif kind == "batch" and self._batch_task is not None:
            loss = event.get("loss")
            info = f"loss {loss:.3f}" if isinstance(loss, (int, float)) and math.isfinite(loss) else ""
            p.update(self._batch_task, completed=event.get("batch"), info=info)
        elif kind == "epoch_end":
            p.update(self._batch_task, description=f"  epoch {event.get('epoch')} decoding val")
        elif kind == "decoded":
            p.update(self._epoch_task, completed=event.get("epoch"))
        elif kind in ("done", "error"):
            p.update(self._epoch_task, description="finished" if kind == "done" else f"failed: {event.get('category')}")


def _cmd_eval_model(args: argparse.Namespace) -> int:
    try:
        return _eval_model(args)
    except NNCaptionError as e:
        return _usage_error(args, e, {"status": "error", "bleu4": None, "lemur_bleu4": None, "epochs": [],
                                      "params": None, "job_dir": None})


def _check_eval_options(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}", f"pass --{name} 1 or more")
    if args.max_train_batches is not None and args.max_train_batches < 1:
        raise ConfigError("--max-train-batches must be >= 1", "leave it out to train on the whole split")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ConfigError(f"--lr must be a positive number, got {args.lr}", "e.g. --lr 0.001")
    if not 0 <= args.dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {args.dropout}", "e.g. --dropout 0.1")
    if args.epoch_time_limit <= 0:
        raise ConfigError("--epoch-time-limit must be positive", "e.g. --epoch-time-limit 600")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is visible", "use --device cpu, or run on a GPU machine")


def _eval_model(args: argparse.Namespace) -> int:
    from nncaption.netapi.categories import Category
    from nncaption.netapi.job import JobSpec, read_predictions
    from nncaption.netapi.validate import static_check

    _check_eval_options(args)
    cand = resolve_candidate(args.file)
    show = not (args.json or args.quiet)
    paths = resolve_data(args, progress=show)

    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.data.prepare import load_references
    from nncaption.netapi.evaluate import make_job_dir, new_job_dir

    data = PreparedData.open(paths.public_dir)  # DatasetError (exit 2) when missing or partial
    refs = load_references(paths.private_dir)

    verdict = static_check(cand.source, filename=cand.path.name)
    if not verdict.ok:  # never run code the static check rejects
        report = {"status": "failed", "category": verdict.category.value if verdict.category else None,
                  "message": verdict.message, "stage": "static", "line": verdict.line, "bleu4": None,
                  "lemur_bleu4": None, "epochs": [], "params": None, "job_dir": None}
        return _finish(args, cand, report, None, None)

    prm = {"lr": args.lr, "momentum": args.momentum, "dropout": args.dropout, "batch": args.batch,
           "epoch": args.epochs}
    spec = JobSpec(data_dir=str(paths.public_dir), epochs=args.epochs, batch_size=args.batch, prm=prm,
                   seed=args.seed, device=args.device, epoch_time_limit_s=float(args.epoch_time_limit),
                   max_train_batches=args.max_train_batches, max_val_images=args.max_val_images,
                   threads=args.threads)
    job_dir = make_job_dir(new_job_dir(config.runs_root(), f"eval-{cand.label}"), cand.source, spec)
    result = run_in_sandbox(job_dir, spec, sandbox=args.sandbox, show_progress=show,
                            sandbox_options=sandbox_options(args))

    predictions = result.predictions or read_predictions(job_dir)
    runner = result.runner
    params = runner.params if runner else None
    report: dict[str, Any] = {
        "status": "ok" if result.ok else "failed",
        "category": None if result.ok else (result.category or Category.CRASHED.value),
        "message": result.message,
        "bleu4": None, "lemur_bleu4": None, "epochs": [], "params": params,
        "job_dir": str(job_dir), "sandbox": result.backend or args.sandbox, "isolation": result.isolation,
        "dataset": {"name": data.meta.name, "key": paths.key, "image_size": data.meta.image_size,
                    "n_train": data.meta.n_train, "n_val": data.meta.n_val},
        "seed": args.seed, "timings": result.timings,
    }
    if not result.ok:
        cat = report["category"]
        report["hint"] = Category(cat).hint if cat in {c.value for c in Category} else ""
        report["traceback"] = (result.traceback_tail or "")[-4000:]
    scored = None
    if predictions:
        from nncaption.netapi.evaluate import constant_caption_baseline, score

        scored_ids = set(predictions[-1].ids)
        scored = score(predictions, {k: v for k, v in refs.items() if k in scored_ids}, data.vocab, params=params)
        report["bleu4"], report["lemur_bleu4"] = scored.bleu4, scored.lemur_bleu4
        report["epochs"] = [asdict(e) for e in scored.epochs]
        report["examples"] = scored.examples
        if not args.no_baseline:
            base = constant_caption_baseline(data.train_captions, data.vocab,
                                             {k: v for k, v in refs.items() if k in scored_ids})
            report["baseline"] = {"caption": " ".join(base.caption), "bleu4": round(base.val["bleu4"], 6),
                                  "note": "best constant caption chosen on training captions"}
    return _finish(args, cand, report, scored, result)


def run_in_sandbox(job_dir: Path, spec: Any, *, sandbox: str, show_progress: bool,
                   on_event: Callable[[dict[str, Any]], None] | None = None,
                   sandbox_options: dict[str, Any] | None = None) -> "RunResult":
    """Run the prepared job dir through `get_sandbox(sandbox)` with a wall-clock backstop."""
    from nncaption.sandbox import Job, Limits, get_sandbox

    timeout = spec.epochs * 2 * spec.epoch_time_limit_s + STARTUP_SLACK_S  # learn + decode per epoch, both capped
    job = Job(job_dir=Path(job_dir), spec=spec, limits=Limits(timeout_s=timeout),
              gpus=[0] if spec.device.startswith("cuda") else [])
    backend = get_sandbox(sandbox, **(sandbox_options or {}))
    with ProgressDisplay(spec.epochs, show_progress) as display:
        def forward(event: dict[str, Any]) -> None:
            display.on_event(event)
            if on_event is not None:
                on_event(event)

        return backend.run(job, on_event=forward)


def _finish(args: argparse.Namespace, cand: Candidate, report: dict[str, Any], scored: Any,
            result: "RunResult | None") -> int:
    code = EXIT_OK if report["status"] == "ok" else EXIT_REJECTED
    if args.json:
        _emit_json(report)
        return code
    _print_report(cand, report)
    return code


def _fmt(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _print_report(cand: Candidate, report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:  # files and pipes: wide enough for the table
        console = Console(highlight=False, width=120)
    if report["epochs"]:
        table = Table(title=f"{cand.label}: free-running BLEU on {report.get('dataset', {}).get('name', 'val')} "
                            f"({report['epochs'][-1]['images']} val images)")
        for col in ("epoch", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "LEMUR B-4*", "loss", "train s",
                    "decode s", "words"):
            table.add_column(col, justify="right")
        for e in report["epochs"]:
            table.add_row(str(e["epoch"]), _fmt(e["bleu1"]), _fmt(e["bleu2"]), _fmt(e["bleu3"]), _fmt(e["bleu4"]),
                          _fmt(e["lemur_bleu4"]), _fmt(e["train_loss"], 3), _fmt(e["seconds"], 1),
                          _fmt(e["decode_seconds"], 1), _fmt(e["mean_length"], 1))
        console.print(table)
        console.print("* LEMUR-compatible: mean sentence BLEU-4 (smoothing 1) on token ids, for comparison with "
                      "LEMUR's stats only. The main figure is COCO-protocol corpus BLEU-4.", style="dim")
        for ex in report.get("examples", []):
            console.print(f"  image {ex['image_id']}: [bold]{ex['caption'] or '(empty)'}[/bold]  "
                          f"(a reference: {ex['reference']})")
    if report["status"] == "ok":
        line = f"BLEU-4 {report['bleu4']:.4f}"
        base = report.get("baseline")
        if base:
            ratio = report["bleu4"] / base["bleu4"] if base["bleu4"] else float("inf")
            line += f"  vs constant-caption baseline {base['bleu4']:.4f} ('{base['caption']}'), ratio {ratio:.2f}"
        console.print(line)
        console.print(f"params {report['params']:,}; job dir {report['job_dir']}")
    else:
        from nncaption.cli import print_error

        print_error(str(report["category"]), str(report["message"]), str(report.get("hint", "")))
        if report.get("traceback"):
            print(report["traceback"], file=sys.stderr)
        if report.get("job_dir"):
            print(f"  job dir: {report['job_dir']}", file=sys.stderr)


# ---------------------------------------------------------------- registration


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="synthetic",
                   help="synthetic (generated on first use) or coco (needs --coco-root)")
    p.add_argument("--coco-root", metavar="DIR", help="COCO 2017 folder: annotations/, train2017/, val2017/")
    p.add_argument("--prepared", metavar="DIR", help="an already prepared dataset folder (holding public/ and "
                   "private/); overrides --dataset")
    p.add_argument("--size", type=int, default=config.DEFAULT_IMAGE_SIZE, metavar="PX", help="image side in pixels")
    p.add_argument("--data-seed", type=int, default=config.DEFAULT_SEED, metavar="S",
                   help="seed of the synthetic data and of the validation subset")
    p.add_argument("--sandbox", choices=SANDBOXES, default="local", help="where candidate code runs")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="with --sandbox ray: an existing Ray cluster (default: start Ray locally)")
    p.add_argument("--docker-runtime", metavar="NAME", default=None,
                   help="with --sandbox docker: container runtime, e.g. runsc (gVisor)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `check` and `eval-model`."""
    check = subparsers.add_parser("check", help="validate a candidate: static checks, then a smoke run in a sandbox",
                                  description="Exit 0 accepted, 1 rejected, 2 usage error.")
    check.add_argument("file", metavar="FILE", help="candidate .py file, or ref-lstm / ref-gru / ref-transformer")
    _add_data_options(check)
    check.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    check.set_defaults(func=_cmd_check)

    ev = subparsers.add_parser("eval-model", help="train a candidate in a sandbox and score it (BLEU-4)",
                               description="Exit 0 trained and scored, 1 the candidate failed, 2 usage error.")
    ev.add_argument("file", metavar="FILE", help="candidate .py file, or ref-lstm / ref-gru / ref-transformer")
    _add_data_options(ev)
    ev.add_argument("--epochs", type=int, default=3, metavar="N")
    ev.add_argument("--batch", type=int, default=32, metavar="N", help="training batch size")
    ev.add_argument("--lr", type=float, default=1e-3, metavar="F", help="prm['lr']")
    ev.add_argument("--momentum", type=float, default=0.9, metavar="F", help="prm['momentum']")
    ev.add_argument("--dropout", type=float, default=0.1, metavar="F", help="prm['dropout']")
    ev.add_argument("--seed", type=int, default=0, metavar="S", help="training seed (torch, numpy, random)")
    ev.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ev.add_argument("--max-train-batches", type=int, default=None, metavar="N", help="cap batches per epoch")
    ev.add_argument("--max-val-images", type=int, default=None, metavar="N", help="decode only the first N val images")
    ev.add_argument("--val-limit", type=int, default=None, metavar="N",
                    help="prepare a seeded validation subset of N images (COCO)")
    ev.add_argument("--epoch-time-limit", type=float, default=600.0, metavar="S",
                    help="seconds allowed per epoch of training (and per decode pass)")
    ev.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads in the sandbox")
    ev.add_argument("--no-baseline", action="store_true", help="skip the constant-caption baseline")
    ev.add_argument("--quiet", action="store_true", help="no progress display")
    ev.set_defaults(func=_cmd_eval_model)
