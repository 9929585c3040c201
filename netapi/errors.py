"""Exceptions with precise meanings, shared by every layer.

Each error has a `category` (a short stable word), a `message` (what went
wrong) and a `hint` (what the user should do next). The CLI prints the three
and never a bare traceback.
"""

from __future__ import annotations


class NNCaptionError(Exception):
    """Base class of every error nn-caption reports to a user."""

    category: str = "error"

    def __init__(self, message: str, hint: str = "", *, category: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if category is not None:
            self.category = category

    def __str__(self) -> str:
        return self.message


class DatasetError(NNCaptionError):
    """A dataset is missing, partial or malformed."""

    category = "dataset"


class ConfigError(NNCaptionError):
    """A setting or command-line value is invalid."""

    category = "config"


class CandidateError(NNCaptionError):
    """A candidate model failed; `category` is a `Category` value."""

    category = "candidate"
