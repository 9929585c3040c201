"""`nncaption run`: the main job, a search for captioning models; and `nncaption config show`.

With no arguments: the synthetic dataset, the random-search baseline (in-process,
NOT an LLM, announced as such), the local warm sandbox and a small budget that
finishes in a few minutes on 2 CPU cores. With `--llm-base-url` (or a config
with `agents.kind = "llm"`) the designer, reviewer and fixer are LLM endpoints.

Exit codes: 0 the run finished (its best model and BLEU-4 are printed), 1 the run
failed (every LLM endpoint down, or candidate after candidate could not run on this
machine: job-error), 2 usage or configuration error, 130 stopped by SIGINT (in-flight
jobs cancelled and recorded as interrupted; continue with `--resume RUN_DIR`). A second
SIGINT stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import secrets
import signal
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

from nncaption.netapi import paths
from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.run_setup import check_dataset, next_commands, train_keys_help

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Flags that change what the run does: not allowed with --resume (the run keeps its recorded config).
CONFIG_FLAGS: tuple[str, ...] = (
    "config", "llm_base_url", "llm_model", "llm_api_key_env", "llm_max_tokens", "llm_temperature", "dataset",
    "coco_root", "prepared", "sandbox", "ray_address", "docker_runtime", "gpus", "concurrency", "candidates",
    "epochs", "snippets", "seed", "wall_time", "max_tokens", "max_fix_rounds", "fault_rate", "max_train_batches",
    "max_val_images", "threads", "device", "replay", "no_llm_review", "epoch_time_limit", "max_cost",
    "max_train_seconds",
)

def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config values the flags set (flags left out set nothing)."""
    o: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = o
        *head, last = path.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value

    put("seed", args.seed)
    put("concurrency", args.concurrency)
    put("max_fix_rounds", args.max_fix_rounds)
    put("budget.candidates", args.candidates)
    put("budget.wall_time_s", args.wall_time)
    put("budget.max_tokens", args.max_tokens)
    put("budget.max_cost_usd", getattr(args, "max_cost", None))
    put("budget.max_train_seconds", getattr(args, "max_train_seconds", None))
    put("train.epochs", args.epochs)
    put("train.max_train_batches", args.max_train_batches)
    put("train.max_val_images", args.max_val_images)
    put("train.threads", args.threads)
    put("train.device", args.device)
    put("train.epoch_time_limit_s", args.epoch_time_limit)
    put("agents.snippets", args.snippets)
    put("agents.fault_rate", args.fault_rate)
    if args.no_llm_review:
        put("agents.llm_review", False)
    if args.llm_base_url or args.llm_model:
        put("agents.kind", "llm")
    put("agents.llm.shared.base_url", args.llm_base_url)
    put("agents.llm.shared.model", args.llm_model)
    put("agents.llm.shared.api_key_env", args.llm_api_key_env)
    put("agents.llm.shared.max_tokens", args.llm_max_tokens)
    put("agents.llm.shared.temperature", args.llm_temperature)
    put("data.dataset", args.dataset)
    put("data.coco_root", args.coco_root)
    put("data.prepared", args.prepared)
    put("sandbox.kind", args.sandbox)
    put("sandbox.ray_address", args.ray_address)
    put("sandbox.docker_runtime", args.docker_runtime)
    if args.gpus is not None:
        try:
            put("sandbox.gpus", [int(g) for g in args.gpus.split(",") if g.strip()])
        except ValueError:
            raise ConfigError(f"--gpus {args.gpus!r} is not a list of device ids", "e.g. --gpus 0,1,2,3") from None
        if args.device is None:
            put("train.device", "cuda")
    return o


def settings_from_args(args: argparse.Namespace) -> Any:
    """The resolved RunSettings: recorded config (--resume / --replay) <- --config file <- flags."""
    from nncaption import runconfig

    base: dict[str, Any] = {}
    if args.replay:
        base = _recorded_config(Path(args.replay))
        from nncaption.graph import runtrust  # a replayed run from elsewhere: its endpoints, sandbox, folders unused

        if not runtrust.is_trusted(Path(args.replay), base):
            log.warning("--replay %s: not a run started here; its endpoints, sandbox and folders are not used",
                        args.replay)
            base = runtrust.stripped(base)
        base = runconfig.deep_merge(base, {"agents": {"replay": str(Path(args.replay).resolve())}})
    if args.config:
        base = runconfig.deep_merge(base, runconfig.load_toml(Path(args.config)))
    return runconfig.resolve(base, overrides_from_args(args))


def _recorded_config(run_dir: Path) -> dict[str, Any]:
    from nncaption.graph import rundir  # bounded, no links, malformed JSON is a configuration error

    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)",
                          "pass a folder made by `nncaption run` (see $NNCAPTION_HOME/runs)")
    data = rundir.read_json(run_dir, "config.json")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object (malformed, too large, too deeply nested or a link)",
                          "pass a run directory made by `nncaption run`", exit_code=2)
    return dict(data)


def new_run_dir() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return paths.runs_root() / f"run-{stamp}-{secrets.token_hex(2)}"


def _cmd_run(args: argparse.Namespace) -> int:
    from nncaption import runconfig

    try:
        if args.resume:
            given = [f"--{f.replace('_', '-')}" for f in CONFIG_FLAGS if getattr(args, f, None) not in (None, False)]
            if given or args.run_dir:
                drop = ", ".join(given) or "--run-dir"
                raise ConfigError(f"--resume continues a run with its recorded configuration; drop {drop}",
                                  "start a new run instead if you want other settings")
            run_dir = Path(args.resume).expanduser().resolve()
            recorded = _recorded_config(run_dir)
            from nncaption.graph import runtrust  # a run directory from elsewhere: its endpoints need consent

            runtrust.check(run_dir, recorded, trust=bool(getattr(args, "trust_run_config", False)))
            from nncaption.graph import rundir  # its files are written to: no links sending writes elsewhere

            rundir.check_layout(run_dir)
            settings = runconfig.resolve(recorded)
        else:
            settings = settings_from_args(args)
            run_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else new_run_dir()
            if (run_dir / "results.sqlite").exists():
                raise ConfigError(f"{run_dir} already holds a run", f"continue it with --resume {run_dir}, "
                                  "or pick another --run-dir")
            check_dataset(settings, progress=not args.json_logs and sys.stderr.isatty())
    except NNCaptionError as e:
        from nncaption.cli import print_error

        print_error(e.category, e.message, e.hint)
        return EXIT_USAGE
    if not args.resume:  # this user's own run: a later --resume may use its config.json (graph/runtrust.py)
        from nncaption.graph import runtrust

        runtrust.remember(run_dir, runconfig.masked(settings))
    _setup_logging(run_dir)
    return _run(settings, run_dir, resume=bool(args.resume), json_logs=args.json_logs,
                live=not args.no_live and not args.json_logs)


def _no_http_request_lines(record: logging.LogRecord) -> bool:
    """httpx logs each request's full URL at INFO, query-string secrets included: run.log keeps its warnings only
    (the LLM calls are in the run store, with masked URLs)."""
    return record.levelno >= logging.WARNING or not record.name.startswith(("httpx", "httpcore"))


def _setup_logging(run_dir: Path) -> None:
    from nncaption.netapi.safetext import SafeFormatter

    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # a run directory may come from elsewhere: never append through a planted link or into a FIFO
        fd = os.open(run_dir / "run.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o644)
    except OSError as e:
        log.warning("not writing %s: %s", run_dir / "run.log", e.strerror)
        return
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.warning("not writing %s: not a regular file", run_dir / "run.log")
        return
    handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_no_http_request_lines)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def _announce(settings: Any, run_dir: Path, resume: bool) -> None:
    a = settings.agents
    who = ("the random-search baseline (in-process composer, NOT an LLM)" if a.kind == "baseline" else
           f"LLM agents: designer {a.llm.for_role('designer').describe()}")
    b = settings.budget
    limits = [f"{b.candidates} candidates"] + ([f"{b.wall_time_s:g} s"] if b.wall_time_s else []) + \
        ([f"{b.max_tokens} tokens"] if b.max_tokens else []) + \
        ([f"${b.max_cost_usd:g}"] if b.max_cost_usd else []) + \
        ([f"{b.max_train_seconds:g} training s"] if b.max_train_seconds else [])
    print(f"{'resuming' if resume else 'starting'} run {run_dir}\n  agents: {who}\n  data: {settings.data.dataset}; "
          f"sandbox: {settings.sandbox.kind}; concurrency {settings.concurrency}; budget: {', '.join(limits)}; "
          f"{settings.train.epochs} epoch(s) per candidate", file=sys.stderr)


def _run(settings: Any, run_dir: Path, *, resume: bool, json_logs: bool, live: bool) -> int:
    from nncaption import runconfig
    from nncaption.graph.runner import EndpointsDown, MachineUnusable, SearchRun
    from nncaption.run_view import JsonLines, LiveView

    if not json_logs:
        _announce(settings, run_dir, resume)
    view = LiveView(settings.budget.candidates, f"nncaption run {run_dir.name}", enabled=live)
    sink = JsonLines() if json_logs else view
    search = SearchRun(settings, run_dir, emit=sink, resume=resume, masked_config=runconfig.masked(settings))

    # One process-wide handler for the whole command (not the loop's: those are gone while asyncio.run shuts down,
    # which waits for the jobs being cancelled): the first signal cancels the search, the next stops at once.
    running: dict[str, Any] = {"hits": 0}

    def on_signal(signum: int, frame: Any) -> None:
        running["hits"] += 1
        loop, task = running.get("loop"), running.get("task")
        if running["hits"] == 1 and loop is not None and task is not None and not loop.is_closed():
            print("\nstopping: cancelling in-flight jobs (Ctrl-C again to stop at once)", file=sys.stderr)
            loop.call_soon_threadsafe(task.cancel)
            return
        _kill_descendants()
        _release_job_stages()
        os._exit(EXIT_INTERRUPTED)

    async def main() -> int:
        running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
        try:
            await search.run()
            return EXIT_OK
        except asyncio.CancelledError:
            return EXIT_INTERRUPTED

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with view:
            code = asyncio.run(main())
    except (EndpointsDown, MachineUnusable) as e:
        from nncaption.cli import print_error

        print_error(e.category, e.message, e.hint)
        return EXIT_FAILED
    except NNCaptionError as e:
        from nncaption.cli import print_error

        print_error(e.category, e.message, e.hint)
        return EXIT_USAGE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not json_logs:
        _summary(search, code)
    return code


def _summary(search: Any, code: int) -> None:
    out = getattr(search, "outcome", None)
    if out is None:
        return
    from nncaption.netapi.safetext import safe_text  # texts from the run's database (a resumed run may be edited)

    counts = safe_text(", ".join(f"{v} {k}" for k, v in sorted(out.counts.items(), key=str)), 2000)
    print(f"\nrun {'interrupted' if code == EXIT_INTERRUPTED else out.status} after {out.elapsed_s:.0f} s "
          f"({safe_text(out.stop_reason or 'stopped', 200)}): {counts}")
    if out.failures:
        print("failures by category: " + safe_text(", ".join(f"{k} {v}" for k, v in out.failures.items()), 2000))
    if out.best:
        b4 = out.best.get("bleu4")
        print(f"best model: {safe_text(out.best['cid'], 40)}  BLEU-4 "
              f"{format(b4, '.4f') if isinstance(b4, (int, float)) else '-'}  "
              f"({safe_text(out.best.get('summary') or '', 300, keep='head')})")
        print(f"best model file: {out.best_file}")
    else:
        print("no candidate was scored")
    print(f"run directory: {out.run_dir}")
    if code == EXIT_INTERRUPTED:
        print(f"continue with: nncaption run --resume {out.run_dir}")
    print("\n".join(next_commands(out.run_dir)))


def _release_job_stages() -> None:
    """Unmount the job stages this process made (their jobs were just killed), so nothing stays mounted."""
    from nncaption.sandbox.quota import reap_orphan_stages

    try:
        reap_orphan_stages(frozenset({os.getpid()}))
    except OSError as e:  # stopping at once: report, never block the exit
        log.warning("could not unmount this run's job stages: %s", e)


def _kill_descendants() -> None:
    """SIGKILL every process below this one (the second SIGINT: stop at once, leave nothing behind)."""
    from nncaption.sandbox.hostenv import process_tree

    me = os.getpid()
    for pid in process_tree(me) - {me}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            log.debug("process %d already gone", pid)


def _cmd_config_show(args: argparse.Namespace) -> int:
    from nncaption import runconfig

    try:
        settings = runconfig.resolve(_recorded_config(Path(args.resume))) if args.resume \
            else settings_from_args(args)
    except NNCaptionError as e:
        from nncaption.cli import print_error

        print_error(e.category, e.message, e.hint)
        return EXIT_USAGE
    print(runconfig.show(settings))
    return EXIT_OK


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Every flag of `nncaption run` (also accepted by `nncaption config show`)."""
    g = p.add_argument_group("run")
    g.add_argument("--config", metavar="FILE.toml", help="TOML config file (flags override it)")
    g.add_argument("--run-dir", metavar="DIR", help="run directory (default: a new folder under $NNCAPTION_HOME/runs)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted or killed run with its recorded config")
    g.add_argument("--trust-run-config", action="store_true",
                   help="with --resume: use the endpoints, key variables and sandbox of a run directory not started "
                        "here (shown when refused)")
    g.add_argument("--replay", metavar="RUN_DIR", help="answer every LLM call from that run's recorded exchanges "
                   "(same candidates, verdicts and scores)")
    g.add_argument("--seed", type=int, metavar="S", help="fixes every random choice of the search (default 0)")
    g.add_argument("--json-logs", action="store_true", help="one JSON event per line on stdout, no live view")
    g.add_argument("--no-live", action="store_true", help="no live view (plain summary at the end)")
    b = p.add_argument_group("budget (whichever comes first)")
    b.add_argument("--candidates", type=int, metavar="N", help="candidates to make (default 4)")
    b.add_argument("--wall-time", type=float, metavar="S", help="seconds of wall time")
    b.add_argument("--max-tokens", type=int, metavar="N", help="LLM tokens over all roles")
    b.add_argument("--max-cost", type=float, metavar="USD", help="US dollars of LLM calls (needs the endpoints' "
                   "price_in_per_mtok / price_out_per_mtok in the config)")
    b.add_argument("--max-train-seconds", type=float, metavar="S", help="seconds of training jobs (CPU and GPU)")
    s = p.add_argument_group("search")
    s.add_argument("--concurrency", type=int, metavar="N", help="candidates in flight at once (default 2)")
    s.add_argument("--snippets", type=int, metavar="K", help="backbone snippets per designer prompt (default 5)")
    s.add_argument("--max-fix-rounds", type=int, metavar="N", help="fixer rounds per candidate (default 2)")
    s.add_argument("--fault-rate", type=float, metavar="F", help="baseline only: plant defects in designs (0..1)")
    s.add_argument("--no-llm-review", action="store_true", help="static review only (no reviewer LLM call)")
    llm = p.add_argument_group("LLM endpoints (per-role endpoints: [agents.llm.designer] etc. in --config)")
    llm.add_argument("--llm-base-url", metavar="URL", help="OpenAI-compatible base URL (.../v1); selects LLM agents")
    llm.add_argument("--llm-model", metavar="NAME", help="model name served there")
    llm.add_argument("--llm-api-key-env", metavar="VAR", help="environment variable holding the API key")
    llm.add_argument("--llm-max-tokens", type=int, metavar="N", help="max tokens per reply")
    llm.add_argument("--llm-temperature", type=float, metavar="T", help="sampling temperature")
    d = p.add_argument_group("data and training")
    d.add_argument("--dataset", choices=("synthetic", "coco"), help="dataset (default synthetic)")
    d.add_argument("--coco-root", metavar="DIR", help="COCO 2017 folder (with --dataset coco)")
    d.add_argument("--prepared", metavar="DIR", help="an already prepared dataset folder")
    d.add_argument("--epochs", type=int, metavar="N", help="training epochs per candidate (default 2)")
    d.add_argument("--max-train-batches", type=int, metavar="N",
                   help="batches per epoch (default: the whole training split)")
    d.add_argument("--max-val-images", type=int, metavar="N",
                   help="validation images decoded (default: the whole recorded validation subset)")
    d.add_argument("--threads", type=int, metavar="N", help="torch threads per job")
    d.add_argument("--epoch-time-limit", type=float, metavar="S",
                   help="compute one epoch may use: CPU seconds per core on CPU, wall seconds on a GPU "
                   "(default 300)")
    d.add_argument("--device", choices=("cpu", "cuda"), help="training device")
    x = p.add_argument_group("sandbox")
    x.add_argument("--sandbox", choices=("local", "docker", "ray"), help="where candidate code runs (default local)")
    x.add_argument("--ray-address", metavar="ADDR", help="with --sandbox ray: the cluster address")
    x.add_argument("--docker-runtime", metavar="NAME", help="with --sandbox docker: e.g. runsc")
    x.add_argument("--gpus", metavar="IDS", help="GPU ids for jobs, e.g. 0,1,2,3 (implies --device cuda)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run` and `config show`."""
    run = subparsers.add_parser(
        "run", help="search for captioning models (the main job)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Search for image-captioning models: design, check, review, smoke-test, fix, train and score "
            "candidates in sandboxes, in parallel, until the budget is used. Without flags: synthetic data, "
            "the random-search baseline (NOT an LLM), local sandbox, a few minutes on 2 cores. "
            "Exit codes: 0 finished, 1 failed (all endpoints down, or jobs cannot run here), 2 usage/config "
            "error, 130 interrupted.", 100),
        epilog=train_keys_help())
    add_run_options(run)
    run.set_defaults(func=_cmd_run)
    cfg = subparsers.add_parser("config", help="show the resolved run configuration")
    sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser("show", help="print the resolved config (file <- flags), secrets masked")
    add_run_options(show)
    show.set_defaults(func=_cmd_config_show)
