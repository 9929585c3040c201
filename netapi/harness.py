"""Compatibility names for the old in-process smoke harness (to be removed).

The smoke check is now the runner on a tiny job (`nncaption.netapi.lifecycle`):
`smoke_check` and `check` run that one lifecycle in this process, the candidate
in a forked child. New code uses the candidate service (`sandbox.service`) or
`nncaption.netapi.lifecycle` directly.
"""

from __future__ import annotations

from nncaption.netapi.job import SMOKE_TRAIN_BATCHES
from nncaption.netapi.lifecycle import check_here as check
from nncaption.netapi.lifecycle import smoke_here as smoke_check

STAGE = "smoke"

__all__ = ["SMOKE_TRAIN_BATCHES", "STAGE", "check", "smoke_check"]
