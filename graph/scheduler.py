"""The dispatcher: keeps candidates in flight, each in its own LangGraph thread, with no barrier between them.

    reason = await Scheduler(settings, store, app, emit, clock=RunClock(...)).run()

A candidate's pipeline (design, static, review, smoke, train, fix, record) is one
asyncio task running its thread of the per-candidate graph (graph/build.py) with
the run's checkpointer. Up to `concurrency + lookahead` candidates are in flight;
the moment one finishes (`asyncio.wait(FIRST_COMPLETED)`) the search policy plans
the next one from the journal as it stands (a `dispatch` step) and its thread
starts. Nothing waits for a step of another candidate; what candidates share is
bounded by slots of their own kind (graph/nodes.py `Slots`): CPU-light checks,
sandbox check jobs and training jobs (`concurrency` each), so with a lookahead the
next candidates design and check while the training slots are full.

Run-level facts come from the run store, never from a shared graph state: the
counts, the tokens used, and the stop reason (candidates, tokens, wall-time,
budget-cost, budget-train-seconds, endpoints-down, machine-unusable). On `--resume` the candidates left in flight
continue their threads from their last checkpoint (a candidate killed before its
first checkpoint starts again from its plan, which is rebuilt from its row and
the seed); finished candidates are final in the store and never run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nncaption.graph import journal as jr
from nncaption.graph.budget import BudgetMeter
from nncaption.graph.build import PLAN_NODE, thread_config
from nncaption.graph.nodes import ENDPOINT_CATEGORIES, JOB_ERROR_CATEGORIES, EventSink
from nncaption.graph.policy import Plan, make_policy
from nncaption.graph.settings import RunSettings
from nncaption.graph.state import Task
from nncaption.graph.store import RunStore

log = logging.getLogger(__name__)

IN_FLIGHT = ("planned", "interrupted")


@dataclass
class RunClock:
    """Wall time of the whole run: the seconds of earlier sessions plus this one's."""

    started_at: float
    elapsed_before: float = 0.0
    now: Callable[[], float] = time.monotonic

    def elapsed(self) -> float:
        return self.elapsed_before + self.now() - self.started_at


def stop_condition(settings: RunSettings, store: RunStore, since_step: int = 0) -> str | None:
    """endpoints-down / machine-unusable from the candidates finished since `since_step` (this session), in the
    order they were recorded: the last `endpoint_down_after` (`job_error_after`) all failed that way, or every
    candidate of a smaller budget did."""
    final = store.final_categories(since_step)
    down = min(settings.endpoint_down_after, settings.budget.candidates)
    if jr.ends_with_run(final, ENDPOINT_CATEGORIES, down):
        return "endpoints-down"
    if jr.ends_with_run(final, JOB_ERROR_CATEGORIES, min(settings.job_error_after, settings.budget.candidates)):
        return "machine-unusable"
    return None


class Scheduler:
    """Plans candidates and runs their threads, `concurrency + lookahead` at once, until the budget is used."""

    def __init__(self, settings: RunSettings, store: RunStore, app: Any, emit: EventSink, clock: RunClock, *,
                 retry: frozenset[str] = frozenset()) -> None:
        """`retry`: final categories whose candidates run again (after a stop for endpoints-down or
        machine-unusable, `--resume` redoes the candidates that lost their endpoint or could not run)."""
        self.settings = settings
        self.store = store
        self.app = app
        self.emit = emit
        self.clock = clock
        self.limit = settings.concurrency + settings.lookahead
        self.running: dict[asyncio.Task[None], str] = {}
        self.reason: str | None = None
        self.retry = retry
        self.since_step = store.last_step() + 1  # stop conditions count this session's candidates only
        self.meter = BudgetMeter(settings)  # dollars and training seconds spent, from the store
        self.policy = make_policy(settings.policy)  # `[policy] kind` (graph/policy.py)

    # ------------------------------------------------------------------ planning
    def plan(self, index: int) -> Task:
        """Plan candidate `index` from the journal as it stands now (a `dispatch` step in the steps table)."""
        cid = f"c{index + 1:04d}"
        step = self.store.step_begin(0, PLAN_NODE, cid, None)
        entries = self.store.journal(step)
        rng, plan = self._ask_policy(entries, index)
        parent = jr.by_id(entries).get(plan.parent) if plan.parent else None
        decoder = self._decoder(plan, parent, rng)
        origin = plan.mode.origin
        entry = jr.Entry(cid=cid, index=index, origin=origin, parent=plan.parent,
                         debug_depth=jr.debug_depth_of(origin, parent), decoder=decoder)
        self.store.plan_candidate(entry, mode=plan.mode.value, snippets=[], step=step)
        task = self._task(entry, plan.mode.value, rng.randrange(1_000_000), plan)
        self.store.step_end(step, "ok", detail={"planned": [cid], "mode": plan.mode.value, "parent": plan.parent,
                                                "parents": list(plan.parents), "inspirations": list(plan.inspirations),
                                                "policy": self.settings.policy.kind,
                                                "inflight": sorted(self.running.values())})
        self.emit({"event": "candidate_planned", "candidate": cid, "mode": plan.mode.value, "parent": plan.parent,
                   "decoder": decoder, "step": step})
        return task

    def replan(self, row: dict[str, Any]) -> Task:
        """The task `plan` made for a stored candidate row, for a thread with no checkpoint: the policy is asked
        again with the journal as it stood at the row's planning step and the same seed, so its draws (and the
        plan's parents and inspirations) are the same; mode, parent and decoder are the row's."""
        entries = self.store.journal(row["planned_step"])
        rng, plan = self._ask_policy(entries, int(row["idx"]))
        parent = jr.by_id(entries).get(plan.parent) if plan.parent else None
        self._decoder(plan, parent, rng)
        entry = jr.Entry(cid=row["cid"], index=row["idx"], origin=jr.Origin(row["origin"]), parent=row["parent"],
                         debug_depth=row["debug_depth"] or 0, decoder=row["decoder"])
        return self._task(entry, row["mode"], rng.randrange(1_000_000), plan)

    def _ask_policy(self, entries: list[jr.Entry], index: int) -> tuple[random.Random, Plan]:
        """The policy's plan for candidate `index` and the seeded generator, left where the policy left it."""
        rng = random.Random(f"{self.settings.seed}:plan:{index}")
        return rng, self.policy.plan(entries, rng)

    def _decoder(self, plan: Plan, parent: jr.Entry | None, rng: random.Random) -> str | None:
        """The plan's decoder family, else the parent's, else a seeded draw."""
        if plan.decoder is not None:
            return plan.decoder
        return parent.decoder if parent is not None else rng.choice(self.settings.agents.decoders)

    @staticmethod
    def _task(e: jr.Entry, mode: str, seed: int, plan: Plan) -> Task:
        return {"cid": e.cid, "index": e.index, "mode": mode, "origin": e.origin.value, "parent": e.parent,
                "decoder": e.decoder, "seed": seed, "debug_depth": e.debug_depth, "attempt": 0, "fix_rounds": 0,
                "code_ref": None, "prm": {}, "summary": "", "failure": None, "unchanged": False, "status": None,
                "parents": list(plan.parents), "inspirations": list(plan.inspirations), "feedback": plan.feedback}

    # ------------------------------------------------------------------ threads
    async def _thread(self, task: Task, resume: bool) -> None:
        """Run (or continue) one candidate's thread to its end."""
        config: Any = thread_config(task["cid"], self.settings.recursion_limit)
        if resume:
            snapshot = await self.app.aget_state(config)
            if snapshot.next:
                log.info("%s: continuing its thread at %s", task["cid"], ", ".join(snapshot.next))
                await self.app.ainvoke(None, config, durability="sync")
                return
        await self.app.ainvoke(task, config, durability="sync")

    def _start(self, task: Task, resume: bool = False) -> None:
        t = asyncio.create_task(self._thread(task, resume), name=f"candidate-{task['cid']}")
        self.running[t] = task["cid"]

    # ------------------------------------------------------------------ the loop
    def _stop_reason(self, next_index: int) -> str | None:
        b = self.settings.budget
        condition = stop_condition(self.settings, self.store, self.since_step)
        if condition:
            return condition
        if b.max_tokens is not None and self.store.tokens_used() >= b.max_tokens:
            return "tokens"
        spent = self.meter.reason(self.store)  # budget-cost / budget-train-seconds (graph/budget.py)
        if spent:
            return spent
        if b.wall_time_s is not None and self.clock.elapsed() >= b.wall_time_s:
            return "wall-time"
        if next_index >= b.candidates:
            return "candidates"
        return None

    def _update_reason(self, next_index: int) -> None:
        reason = self._stop_reason(next_index)
        if reason is None or reason == self.reason:
            return
        if self.reason is not None and reason not in ("endpoints-down", "machine-unusable"):
            return  # the first reason stays, unless the endpoints or the machine failed since
        self.reason = reason
        self.emit({"event": "budget_reached", "reason": reason, "inflight": sorted(self.running.values())})

    async def run(self) -> str:
        """Run the search to its end; returns the stop reason. Cancelling it cancels every candidate's thread
        (which kills their sandbox jobs) and waits for them."""
        rows = self.store.candidate_rows()
        for row in rows:
            if row["status"] in IN_FLIGHT:
                self.store.update_candidate(row["cid"], status=jr.Status.PLANNED.value)
                self._start(self.replan(row), resume=True)
            elif row["status"] == jr.Status.FAILED.value and row["category"] in self.retry:
                log.info("%s: running it again (it failed with %s)", row["cid"], row["category"])
                self.store.reopen_candidate(row["cid"])
                self._start(self.replan(row))
        next_index = max((int(r["idx"]) + 1 for r in rows), default=0)
        try:
            while True:
                self._update_reason(next_index)
                while self.reason is None and len(self.running) < self.limit:
                    self._start(self.plan(next_index))
                    next_index += 1
                    self._update_reason(next_index)
                if not self.running:
                    break
                done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    self.running.pop(t)
                    t.result()  # a bug in a node ends the run (the others are cancelled below)
        except BaseException:
            await self._cancel_all()
            raise
        return self.reason or "candidates"

    async def _cancel_all(self) -> None:
        for t in self.running:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self.running, return_exceptions=True)
        self.running.clear()
