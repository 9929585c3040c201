"""The argument parser of every `nncaption` command: no abbreviations, "did you mean" on a typo, categorised usage.

argparse by default accepts any unambiguous prefix of an option (`run --candidate 2` silently meant
`--candidates 2`), and a typo showed the top-level usage with no suggestion. `Parser` turns prefixes off
(`allow_abbrev=False`), reports unknown options at the sub-command that received them (so its own usage is shown),
suggests the closest command or option (difflib), and prints the error as `error [usage]: ...` with a next step,
exit 2; with `--json` on the command line also as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from nncaption.netapi.safetext import safe_text, strict_dumps

EXIT_USAGE = 2
_INVALID_CHOICE = re.compile(r"argument ([^:]+): invalid choice: '([^']*)'")


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every sub-command parser below `parser`, at any depth (`data synth`, `llm offline`, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield child
                yield from subparsers(child)


def _choices(parser: argparse.ArgumentParser, name: str) -> list[str]:
    """The choices of the argument argparse calls `name` (`COMMAND`, `--dataset`, ...)."""
    for action in parser._actions:
        if action.choices is not None and argparse._get_action_name(action) == name:
            return [str(c) for c in action.choices]
    return []


def _close_options(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> list[str]:
    """For each unknown `--option` among `tokens`, the closest option `parser` knows."""
    options = list(parser._option_string_actions)
    found: list[str] = []
    for token in tokens:
        if token.startswith("-") and token != "-":
            word = token.split("=", 1)[0]
            if word not in options:
                found += [o for o in difflib.get_close_matches(word, options, n=1, cutoff=0.7) if o not in found]
    return found


def suggest(parser: argparse.ArgumentParser, message: str) -> list[str]:
    """The closest known commands/choices or options for what `message` says was not understood."""
    found: list[str] = []
    m = _INVALID_CHOICE.search(message)
    if m:
        # an unknown option before the command makes its value look like the command: name the option first
        found += _close_options(parser, getattr(parser, "_nn_argv", ()))
        found += [c for c in difflib.get_close_matches(m.group(2), _choices(parser, m.group(1)), n=3, cutoff=0.6)
                  if c != m.group(2)]
    if message.startswith("unrecognized arguments:"):
        found += _close_options(parser, message.split(":", 1)[1].split())
    return found


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching, with suggestions and categorised usage errors (see the module doc)."""

    json_errors = False  # set per parse by `prepare` when --json is on the command line

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras and getattr(self, "_nn_sub", False):
            # report here, where the options are known and the usage is this sub-command's
            self.error("unrecognized arguments: " + " ".join(extras))
        return ns, extras

    def error(self, message: str) -> NoReturn:
        usage_error(self, message)


def usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Print `parser`'s usage and the error (category usage, a suggestion when there is one), then exit 2."""
    message = safe_text(message, 1000)
    close = suggest(parser, message)
    hint = (f"did you mean {' or '.join(close)}? " if close else "") + f"see `{parser.prog} --help`"
    parser.print_usage(sys.stderr)
    print(f"error [usage]: {parser.prog}: {message}", file=sys.stderr)
    print(f"  next: {hint}", file=sys.stderr)
    if getattr(parser, "json_errors", False):
        print(strict_dumps({"ok": False, "status": "error", "category": "usage", "message": message, "hint": hint}),
              flush=True)
    sys.exit(EXIT_USAGE)


def prepare(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Before parsing `argv`: no abbreviations anywhere, sub-commands report their own unknown options, JSON errors
    when `--json` is among the arguments (parsers of any class, including ones a command group made itself)."""
    json_errors = "--json" in argv
    parser._nn_argv = list(argv)  # type: ignore[attr-defined]
    parser.allow_abbrev = False
    parser.json_errors = json_errors  # type: ignore[attr-defined]
    for child in subparsers(parser):
        child.allow_abbrev = False
        child._nn_sub = True  # type: ignore[attr-defined]
        child.json_errors = json_errors  # type: ignore[attr-defined]
