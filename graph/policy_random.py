"""Pure random drafting (`[policy] kind = "random"`): every candidate a fresh draft, no feedback from the others.

The nn-gpt-style arm of the search-efficiency comparison: independent designs, each
trained in full. The decoder family of each draft is the scheduler's seeded draw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from nncaption.graph.journal import Entry
from nncaption.graph.policy import Mode, Plan, PolicySettings


class RandomDraftPolicy:
    """Always a draft, designed without feedback; the journal is not read."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings

    def plan(self, journal: Sequence[Entry], rng: random.Random) -> Plan:
        return Plan(Mode.DRAFT, feedback=False)
