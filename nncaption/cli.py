"""The `nncaption` command line.

Each command group lives in its own `nncaption/cmd_*.py` module with a `register(subparsers)` function; every such
module is a command group (found by name, so a new group needs no edit here). This module owns what is common to all
commands: the global options (`--log-level`, `--log-file`), logging set-up, and the last line of defence that turns
any exception into a category, a message and a next step, with exit 1 for a categorised failure, 2 when the command
could not run as asked (including problems with the user's own setup), and an internal-error log under
`$NNCAPTION_HOME/logs/` for real bugs. Under `--json` every error is one strict JSON object on stdout.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nncaption
from nncaption import __version__, parsing
from nncaption.netapi import paths as config
from nncaption.netapi.errors import EnvironmentProblem, NNCaptionError
from nncaption.netapi.safetext import safe_text, strict_dumps

log = logging.getLogger(__name__)

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
EXIT_BROKEN_PIPE = 141
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_installed_handlers: list[logging.Handler] = []
_saved_root_level: list[int] = []


def command_modules() -> list[str]:
    """The command-group modules: every `nncaption/cmd_*.py`, in name order."""
    return sorted(f"nncaption.{m.name}" for m in pkgutil.iter_modules(nncaption.__path__) if m.name.startswith("cmd_"))


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every sub-command parser below `parser`, at any depth (`data synth`, `llm offline`, ...)."""
    return parsing.subparsers(parser)


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """`--log-level` and `--log-file`, accepted before the command and after it.

    On sub-commands the defaults are SUPPRESS so that an option given before the command is not reset after it.
    """
    if "--log-level" in parser._option_string_actions or "--log-file" in parser._option_string_actions:
        return
    group = parser.add_argument_group("logging (global options)")
    group.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                       default="warning" if top else argparse.SUPPRESS,
                       help="log records at this level and above go to stderr (and --log-file); default warning")
    group.add_argument("--log-file", type=Path, metavar="FILE", default=None if top else argparse.SUPPRESS,
                       help="also append the log records to FILE")


def build_parser() -> argparse.ArgumentParser:
    parser = parsing.Parser(
        prog="nncaption",
        description="LLM agents design image-captioning networks, train them safely and learn from the results.",
    )
    parser.add_argument("--version", action="version", version=f"nncaption {__version__}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(name).register(sub)
    for child in _subparsers(parser):
        _add_global_options(child, top=False)
    return parser


def configure_logging(level: str = "warning", log_file: Path | None = None) -> None:
    """Send log records at `level` and above to stderr and, when given, append them to `log_file`.

    Replaces only the handlers an earlier call installed (main() may run several times in one process, as in tests).
    Raises OSError when `log_file` cannot be opened.
    """
    reset_logging()
    numeric = getattr(logging, level.upper())
    from nncaption.netapi.safetext import SafeFormatter  # log lines quote hostile text: no raw control bytes

    formatter = SafeFormatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.setLevel(numeric)
        root.addHandler(handler)
        _installed_handlers.append(handler)
    _saved_root_level.append(root.level)
    root.setLevel(numeric)


def reset_logging() -> None:
    """Remove and close the handlers that configure_logging installed, and restore the root logger's level."""
    root = logging.getLogger()
    while _installed_handlers:
        handler = _installed_handlers.pop()
        root.removeHandler(handler)
        handler.close()
    if _saved_root_level:
        root.setLevel(_saved_root_level[0])
        _saved_root_level.clear()


def print_error(category: str, message: str, hint: str = "") -> None:
    print(f"error [{category}]: {message}", file=sys.stderr)
    if hint:
        print(f"  next: {hint}", file=sys.stderr)


def _emit(category: str, message: str, hint: str, *, json_mode: bool, **extra: Any) -> None:
    """Report an error: always as text on stderr; under --json also as ONE strict JSON object on stdout."""
    print_error(category, message, hint)
    if json_mode:
        print(strict_dumps({"ok": False, "status": "error", "category": category, "message": message, "hint": hint,
                            **extra}), flush=True)


_ENV_HINTS: dict[int, str] = {
    errno.EACCES: "check the permissions of {path}; data, caches and runs go under $NNCAPTION_HOME (now {home}): "
    "point it at a folder you can write.",
    errno.EPERM: "check the permissions of {path}, or run where this operation is allowed.",
    errno.EROFS: "{path} is on a read-only file system: set NNCAPTION_HOME (or the output path) to a writable folder.",
    errno.ENOSPC: "free disk space where {path} lives, or set NNCAPTION_HOME to a folder on a larger disk.",
    errno.EDQUOT: "free some of your disk quota, or set NNCAPTION_HOME to a folder on another disk.",
    errno.ENOTDIR: "a part of {path} is a file, not a folder: NNCAPTION_HOME and output folders must be folders.",
    errno.EEXIST: "{path} exists and is in the way (a file where a folder is needed?): move it or choose another path.",
    errno.EISDIR: "{path} is a folder: give the path of a file.",
    errno.ENAMETOOLONG: "use a shorter path (NNCAPTION_HOME or the output path).",
    errno.ELOOP: "{path} is a symbolic link where a real file or folder is needed: remove it or use another path.",
    errno.EADDRINUSE: "the port is taken: choose another --port, or stop the program that uses it.",
    errno.EADDRNOTAVAIL: "that address is not on this machine: listen on 127.0.0.1 or a local address.",
}


def environment_problem(e: OSError) -> EnvironmentProblem | None:
    """The user-facing error for an OSError caused by the user's own setup, or None when it looks like a bug."""
    if e.errno not in _ENV_HINTS:
        return None
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    path = safe_text(" -> ".join(paths), 300) if paths else "the path"
    what = safe_text(e.strerror or str(e), 300)
    message = f"{what}: {path}" if paths else what
    hint = _ENV_HINTS[e.errno].format(path=path, home=safe_text(str(config.home()), 300))
    return EnvironmentProblem(message, hint)


def write_crash_log(text: str) -> Path:
    """Write `text` to a NEW file `$NNCAPTION_HOME/logs/crash-<UTC time>-<pid>[-n].log` and return its path.

    The file is created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600, so an existing file or a planted symlink is
    never written through. When the home cannot take it, a new file from tempfile.mkstemp (same guarantees) is used.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"crash-{stamp}-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        logs = config.home() / "logs"
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        for n in range(1000):
            path = logs / (f"{base}.log" if n == 0 else f"{base}-{n}.log")
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return path
    except OSError:
        log.debug("cannot write the crash log under %s; using the temp folder", config.home(), exc_info=True)
    fd, name = tempfile.mkstemp(prefix=f"nncaption-{base}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(name)


def _internal_error(e: BaseException, *, json_mode: bool) -> int:
    log.debug("internal error", exc_info=e)
    message = safe_text(f"{type(e).__name__}: {e}", 1000)
    try:
        crash = str(write_crash_log(traceback.format_exc()))
        hint = f"this is a bug in nn-caption; please report it with the traceback in {crash}."
    except OSError as write_error:
        crash = None
        hint = (f"this is a bug in nn-caption; the traceback could not be saved ({write_error}):\n"
                f"{traceback.format_exc()}")
    _emit("internal", message, hint, json_mode=json_mode, log=crash)
    return 1


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (`nncaption trace RUN | head -2`): stop quietly, like other Unix tools.

    As the Python docs recommend, stdout is pointed at /dev/null so that the interpreter's final flush cannot raise
    again; the exit status is 141 (128 + SIGPIPE), what a shell reports for a tool killed by a closed pipe.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        log.debug("could not point stdout at %s", os.devnull, exc_info=True)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv: list[str]) -> int:
    parser = build_parser()
    parsing.prepare(parser, argv)
    args = parser.parse_args(argv)
    json_mode = bool(getattr(args, "json", False))
    try:
        configure_logging(args.log_level, args.log_file)
    except OSError as e:
        problem = environment_problem(e) or EnvironmentProblem(f"cannot open the log file: {safe_text(e, 300)}",
                                                               "give --log-file a path in a folder you can write.")
        _emit(problem.category, problem.message, problem.hint, json_mode=json_mode)
        return problem.exit_code
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        reset_logging()
        parser.print_help()
        return 2
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except NNCaptionError as e:
        log.debug("command failed: [%s] %s", e.category, e.message, exc_info=True)
        _emit(e.category, e.message, e.hint, json_mode=json_mode)
        return e.exit_code
    except KeyboardInterrupt:
        _emit("interrupted", "stopped by the user", "results written so far are kept; run the command again.",
              json_mode=json_mode)
        return 130
    except OSError as e:
        setup = environment_problem(e)
        if setup is None:
            return _internal_error(e, json_mode=json_mode)
        log.debug("command failed: [%s] %s", setup.category, setup.message, exc_info=True)
        _emit(setup.category, setup.message, setup.hint, json_mode=json_mode)
        return setup.exit_code
    except Exception as e:  # last line of defence: no bare tracebacks for users
        return _internal_error(e, json_mode=json_mode)
    finally:
        reset_logging()


if __name__ == "__main__":
    sys.exit(main())
