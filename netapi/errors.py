"""Exceptions with precise meanings, shared by every layer.

Each error has a `category` (a short stable word), a `message` (what went
wrong) and a `hint` (what the user should do next). The CLI prints the three
and never a bare traceback, and exits with the error's `exit_code`: 1 for a
categorised failure, 2 when the command could not run as asked (bad argument
combination, a problem with the user's own setup).
"""

from __future__ import annotations


class NNCaptionError(Exception):
    """Base class of every error nn-caption reports to a user."""

    category: str = "error"
    exit_code: int = 1

    def __init__(self, message: str, hint: str = "", *, category: str | None = None,
                 exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if category is not None:
            self.category = category
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class DatasetError(NNCaptionError):
    """A dataset is missing, partial or malformed."""

    category = "dataset"


class ConfigError(NNCaptionError):
    """A setting or command-line value is invalid: the command cannot run as configured (exit 2)."""

    category = "config"
    exit_code = 2


class UsageError(NNCaptionError):
    """The command cannot run as asked: flags that contradict each other or make no sense together."""

    category = "usage"
    exit_code = 2


class EnvironmentProblem(NNCaptionError):
    """The user's own setup stops the command, not a bug: an unwritable or file-valued $NNCAPTION_HOME, a port
    already in use, a full disk, an output path that is a directory."""

    category = "environment"
    exit_code = 2
