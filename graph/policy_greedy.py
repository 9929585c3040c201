"""The greedy search policy (`[policy] kind = "greedy"`, the default): draft, debug a failure, or improve the best.

In the style of AIDE's `search_policy`. Rules, in order:

1. fewer than `num_drafts` drafts so far -> draft;
2. with probability `p_debug`, a failed candidate that can be repaired (a
   candidate failure, not an endpoint failure; not yet debugged; debug depth
   below `max_debug_depth`) -> debug it (the fixer makes a child, origin `fix`);
3. with probability `p_improve` (of what remains), and some candidate scored ->
   improve one of the `improve_top_k` best (origin `improve`);
4. otherwise draft (origin `compose`).

It keeps no state: everything it needs is in the journal.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from nncaption.graph.journal import Entry, Origin, ranked
from nncaption.graph.policy import Mode, Plan, PolicySettings


class GreedyPolicy:
    """AIDE-style greedy search over one population."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings

    def plan(self, journal: Sequence[Entry], rng: random.Random) -> Plan:
        s = self.settings
        drafts = sum(1 for e in journal if e.origin is Origin.COMPOSE)
        # Draw all three numbers every time, so that one choice does not shift the random stream of the next rule.
        u_debug, u_improve, u_pick = rng.random(), rng.random(), rng.random()
        if drafts < s.num_drafts:
            return Plan(Mode.DRAFT)
        debugged = {e.parent for e in journal if e.origin is Origin.FIX}
        buggy = [e for e in journal if e.debuggable and e.cid not in debugged and e.debug_depth < s.max_debug_depth]
        if buggy and u_debug < s.p_debug:
            return Plan(Mode.DEBUG, buggy[int(u_pick * len(buggy))].cid)
        good = ranked(journal)[: s.improve_top_k]
        if good and u_improve < s.p_improve:
            return Plan(Mode.IMPROVE, good[int(u_pick * len(good))].cid)
        return Plan(Mode.DRAFT)
