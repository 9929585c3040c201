"""The `nncaption` command line.

Each command group lives in its own `cmd_*` module with a `register(subparsers)`
function. Every error a user can cause is printed as category, message and
next step; unexpected errors are logged to a file instead of dumped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Sequence

from nncaption import __version__
from nncaption.netapi.errors import NNCaptionError

COMMAND_MODULES: tuple[str, ...] = (
    "nncaption.cmd_data",
    "nncaption.cmd_eval",
    "nncaption.cmd_sandbox",
    "nncaption.cmd_llm",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="nncaption",
        description="LLM agents design image-captioning networks, train them safely and learn from the results.",
    )
    parser.add_argument("--version", action="version", version=f"nncaption {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def print_error(category: str, message: str, hint: str = "") -> None:
    print(f"error [{category}]: {message}", file=sys.stderr)
    if hint:
        print(f"  next: {hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except NNCaptionError as e:
        print_error(e.category, e.message, e.hint)
        return 1
    except KeyboardInterrupt:
        print_error("interrupted", "stopped by the user", "results written so far are kept; run the command again.")
        return 130
    except Exception as e:  # noqa: BLE001 - last line of defence: no bare tracebacks for users
        log = Path(tempfile.gettempdir()) / "nncaption-crash.log"
        log.write_text(traceback.format_exc())
        print_error("internal", f"{type(e).__name__}: {e}", f"this is a bug in nn-caption; the traceback is in {log}.")
        return 1


if __name__ == "__main__":
    sys.exit(main())
