"""Compatibility name for the old in-process smoke harness (to be removed).

The smoke check is now the runner on a tiny job (`nncaption.netapi.lifecycle`):
`smoke_check` runs that one lifecycle in this process, the candidate in a forked
child. New code uses the candidate service (`sandbox.service`) or
`nncaption.netapi.lifecycle` directly (`smoke_here`, `check_here`).
"""

from __future__ import annotations

from nncaption.netapi.lifecycle import smoke_here as smoke_check

__all__ = ["smoke_check"]
