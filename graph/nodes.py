"""The graph's nodes: dispatch (the outer loop) and the per-candidate pipeline.

Per candidate: design -> static -> review -> smoke -> train -> record, with `fix`
after any failed check or failed training while fix rounds remain (the fixed code
goes back through the checks, starting at the static one). Every node receives its
candidate's `Task` through `Send` and hands it on with `Command(goto=Send(...))`;
`record` writes the candidate's final row and returns to `dispatch`, which plans
new candidates for the free slots (the search policy) or ends the run at the
budget. Nodes write what they did to the run store (a `steps` row, LLM calls,
verdicts, attempts, jobs) and keep only ids and short texts in the state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from langgraph.types import Command, Send

from nncaption.graph import journal as jr
from nncaption.graph.dedup import dedup_key
from nncaption.graph.pipeline import Checked, Pipeline, Produced, TransientEndpointError
from nncaption.graph.policy import Mode, choose
from nncaption.graph.settings import RunSettings
from nncaption.graph.state import RunState, Task
from nncaption.graph.store import RunStore
from nncaption.netapi import categories as _categories
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
ENDPOINT_CATEGORIES = _categories.ENDPOINT_CATEGORIES  # the endpoint is down: a run of these stops the search
JOB_ERROR_CATEGORIES = _categories.JOB_ERROR_CATEGORIES  # the machine could not run the job: no candidate can fix that


@dataclass
class StepLog:
    """What one node execution did, for its `steps` row."""

    step: int
    exchanges: list[Any] = field(default_factory=list)
    refs: dict[str, str | None] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"

    @property
    def tokens(self) -> int:
        return sum(int(getattr(ex.usage, "total_tokens", 0) or 0) for ex in self.exchanges)


def superstep_of(config: RunnableConfig) -> int:
    return int((config.get("metadata") or {}).get("langgraph_step", 0))


class Nodes:
    """The node functions, closed over the run's settings, store, pipeline and event sink."""

    def __init__(self, settings: RunSettings, store: RunStore, pipeline: Pipeline, emit: EventSink,
                 started_at: float | None = None, elapsed_before: float = 0.0) -> None:
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.emit = emit
        self.started_at = started_at if started_at is not None else time.monotonic()
        self.elapsed_before = elapsed_before
        self._tries: dict[tuple[int, str, str], int] = {}
        self.facts: Any = None  # DatasetFacts for design requests (set by the runner)
        self.request_factory: Callable[..., Any] | None = None

    # ------------------------------------------------------------------ helpers
    @contextlib.asynccontextmanager
    async def _step(self, config: RunnableConfig, node: str, task: Task | None) -> AsyncIterator[StepLog]:
        superstep = superstep_of(config)
        cid = task["cid"] if task else ""
        step = self.store.step_begin(superstep, node, cid, task.get("attempt") if task else None)
        self.emit({"event": "node_started", "node": node, "candidate": cid or None, "step": step})
        st = StepLog(step=step)
        try:
            yield st
        except TransientEndpointError:
            st.status = "retry"
            raise
        except BaseException:
            st.status = "interrupted"
            raise
        finally:
            for ex in st.exchanges:
                refs = self.store.add_llm_call(step, cid, ex)
                st.refs.setdefault("prompt", refs["prompt"])
                st.refs["reply"], st.refs["reasoning"] = refs["reply"], refs["reasoning"]
            self.store.step_end(step, st.status, tokens=st.tokens, refs=st.refs, detail=st.detail)
            self.emit({"event": "node_finished", "node": node, "candidate": cid or None, "step": step,
                       "status": st.status, "tokens": st.tokens, **st.detail})

    def _retry_transient(self, config: RunnableConfig, node: str, task: Task) -> bool:
        """True when a transient endpoint failure should be raised for RetryPolicy (tries remain)."""
        key = (superstep_of(config), node, task["cid"])
        self._tries[key] = self._tries.get(key, 0) + 1
        return self._tries[key] < self.settings.node_retries

    def _next(self, task: Task, node: str, tokens: int = 0, **changes: Any) -> Command:
        update: dict[str, Any] = {"inflight": {task["cid"]: node}}
        if tokens:
            update["counts"] = {"tokens": tokens}
        return Command(goto=Send(node, {**task, **changes}), update=update)

    def _failed(self, task: Task, result: Checked | Produced, stage: str, tokens: int = 0, *,
                tail: str = "") -> Command:
        """A failed check: to the fixer while rounds remain (and the code exists), else to record."""
        failure = {"stage": stage, "category": result.category or "rejected",
                   "message": safe_text(result.message, 2000, keep="head"),
                   "line": getattr(result, "line", None), "tail": safe_text(tail, 1500)}
        can_fix = (task.get("code_ref") and task.get("fix_rounds", 0) < self.settings.max_fix_rounds
                   and (result.category or "") not in jr.NOT_DEBUGGABLE)
        if can_fix:
            return self._next(task, "fix", tokens, failure=failure)
        return self._next(task, "record", tokens, failure=failure, status="failed")

    def _code(self, task: Task) -> str:
        ref = task.get("code_ref")
        return self.store.blob(ref) if ref else ""

    # ------------------------------------------------------------------ outer loop
    def _stop_reason(self, state: RunState, entries: list[jr.Entry]) -> str | None:
        b = self.settings.budget
        counts = state.get("counts") or {}
        if state.get("next_index", 0) >= b.candidates:
            return "candidates"
        if b.max_tokens is not None and counts.get("tokens", 0) >= b.max_tokens:
            return "tokens"
        if b.wall_time_s is not None and self.elapsed_before + time.monotonic() - self.started_at >= b.wall_time_s:
            return "wall-time"
        final = [e.category for e in entries if e.status is not jr.Status.PLANNED]
        if jr.ends_with_run(final, ENDPOINT_CATEGORIES, self.settings.endpoint_down_after):
            return "endpoints-down"
        if jr.ends_with_run(final, JOB_ERROR_CATEGORIES, self.settings.job_error_after):
            return "machine-unusable"
        return None

    async def dispatch(self, state: RunState, config: RunnableConfig) -> Command:
        async with self._step(config, "dispatch", None) as st:
            command = self._dispatch(state, config)
            goto = command.goto if isinstance(command.goto, list) else [command.goto]
            st.detail = {"planned": [g.arg["cid"] for g in goto if isinstance(g, Send)],
                         "inflight": sorted(state.get("inflight") or {}),
                         "stop_reason": (command.update or {}).get("stop_reason") if isinstance(command.update, dict)
                         else None}
            return command

    def _dispatch(self, state: RunState, config: RunnableConfig) -> Command:
        superstep = superstep_of(config)
        entries = self.store.journal(superstep)
        inflight = dict(state.get("inflight") or {})
        reason = state.get("stop_reason") or self._stop_reason(state, entries)
        if reason:
            if not state.get("stop_reason"):
                self.emit({"event": "budget_reached", "reason": reason, "inflight": sorted(inflight)})
            return Command(goto=[] if inflight else END, update={"stop_reason": reason})
        index = state.get("next_index", 0)
        sends: list[Send] = []
        planned: dict[str, str | None] = {}
        free = self.settings.concurrency - len(inflight)
        if inflight and free < self.settings.refill_slots:
            free = 0  # wait for more slots: candidates planned together move through the supersteps together
        known = jr.by_id(entries)
        while free > 0 and index < self.settings.budget.candidates:
            rng = random.Random(f"{self.settings.seed}:plan:{index}")
            plan = choose(entries, self.settings.policy, rng)
            parent = known.get(plan.parent) if plan.parent else None
            decoder = parent.decoder if parent is not None else rng.choice(self.settings.agents.decoders)
            cid = f"c{index + 1:04d}"
            origin = plan.mode.origin
            entry = jr.Entry(cid=cid, index=index, origin=origin, parent=plan.parent,
                             debug_depth=jr.debug_depth_of(origin, parent), decoder=decoder)
            self.store.plan_candidate(entry, mode=plan.mode.value, snippets=[], superstep=superstep)
            entries.append(entry)
            known[cid] = entry
            task: Task = {"cid": cid, "index": index, "mode": plan.mode.value, "origin": origin.value,
                          "parent": plan.parent, "decoder": decoder, "seed": rng.randrange(1_000_000),
                          "debug_depth": entry.debug_depth, "attempt": 0, "fix_rounds": 0, "code_ref": None,
                          "prm": {}, "summary": "", "failure": None, "status": None}
            sends.append(Send("design", task))
            planned[cid] = "design"
            self.emit({"event": "candidate_planned", "candidate": cid, "mode": plan.mode.value,
                       "parent": plan.parent, "decoder": decoder})
            index += 1
            free -= 1
        if not sends and not inflight:  # nothing left to do (budget of candidates used up)
            return Command(goto=END, update={"stop_reason": "candidates"})
        if not sends:
            return Command(goto=[])
        return Command(goto=sends, update={"next_index": index, "inflight": planned})

    # ------------------------------------------------------------------ per candidate
    async def design(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "design", task) as st:
            entries = self.store.journal(superstep_of(config))
            known = jr.by_id(entries)
            parent_id = task.get("parent")
            parent = known.get(parent_id) if parent_id else None
            if task["mode"] == Mode.DEBUG.value and parent is not None and parent.code_ref:
                failure = {"stage": parent.stage, "category": parent.category, "message": parent.message,
                           "tail": parent.traceback_tail}
                made_by = "fix"
                out = await self.pipeline.fix(self.store.blob(parent.code_ref), parent.prm, failure)
            else:
                made_by = "design"
                out = await self.pipeline.design(self._request(task, entries, parent, superstep_of(config)))
            st.exchanges.extend(out.exchanges)
            st.detail = {"mode": task["mode"], "producer": out.producer}
            if not out.ok:
                st.status = "failed"
                if out.transient and self._retry_transient(config, "design", task):
                    raise TransientEndpointError(out.message)
                return self._failed(task, out, "design", st.tokens)
            code_ref = self.store.add_attempt(task["cid"], 1, made_by=made_by, code=out.code, prm=out.prm,
                                              summary=out.summary, step=st.step)
            if out.snippets:
                self.store.update_candidate(task["cid"], snippets_json=json.dumps(out.snippets))
            st.refs["code"] = code_ref
            return self._next(task, "static", st.tokens, attempt=1, code_ref=code_ref, prm=out.prm,
                              summary=safe_text(out.summary, 300, keep="head"))

    def _request(self, task: Task, entries: list[jr.Entry], parent: jr.Entry | None, superstep: int) -> Any:
        """The DesignRequest of this turn: mode, snippets, decoder, the parent and feedback from the journal."""
        from nncaption.agents.protocols import DesignRequest
        from nncaption.prompts.library import ParentCandidate

        parent_view = None
        if task["mode"] == Mode.IMPROVE.value and parent is not None and parent.code_ref:
            parent_view = ParentCandidate(code=self.store.blob(parent.code_ref), summary=parent.summary,
                                          bleu4=parent.bleu4, bleu4_per_epoch=parent.bleu4_per_epoch,
                                          hparams=dict(parent.prm))
        feedback = jr.feedback_from([e for e in entries if e.cid != task["cid"]],
                                    self.store.failed_attempts(superstep))
        return DesignRequest(mode="improve" if parent_view is not None else "compose",
                             k=self.settings.agents.snippets, seed=task["seed"],
                             decoder=task.get("decoder"), parent=parent_view, feedback=feedback)

    async def static(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "static", task) as st:
            st.refs["code"] = task.get("code_ref")
            result = self.pipeline.static(self._code(task))
            self._verdict(task, result, st)
            return self._next(task, "review") if result.ok else self._failed(task, result, "static")

    async def review(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "review", task) as st:
            st.refs["code"] = task.get("code_ref")
            result = await self.pipeline.review(self._code(task), task.get("prm") or {})
            st.exchanges.extend(result.exchanges)
            if result.transient and self._retry_transient(config, "review", task):
                st.status = "failed"
                raise TransientEndpointError(result.message)
            self._verdict(task, result, st)
            if result.ok:
                return self._next(task, "smoke", st.tokens)
            return self._failed(task, result, "review", st.tokens)

    async def smoke(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "smoke", task) as st:
            st.refs["code"] = task.get("code_ref")
            result = await self.pipeline.smoke(self._code(task), task.get("prm") or {})
            self._verdict(task, result, st)
            st.refs["log"] = self.store.put_blob(result.message) if not result.ok and result.message else None
            st.detail.update({"job_id": result.job_id, "reused": result.reused})
            self.store.add_job(task["cid"], task["attempt"], "smoke", job_id=result.job_id,
                               status="ok" if result.ok else "failed", category=result.category,
                               reused=result.reused, job_dir=result.job_dir, seconds=result.seconds, step=st.step)
            return self._next(task, "train") if result.ok else self._failed(task, result, result.stage or "smoke")

    def _verdict(self, task: Task, result: Checked, st: StepLog) -> None:
        st.status = "ok" if result.ok else "failed"
        st.detail = {"stage": result.stage, "category": result.category}
        self.store.add_verdict(task["cid"], task["attempt"], result.stage, ok=result.ok, category=result.category,
                               message=safe_text(result.message, 4000, keep="head"), line=result.line, step=st.step)

    async def train(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "train", task) as st:
            st.refs["code"] = task.get("code_ref")
            code, prm = self._code(task), task.get("prm") or {}
            key = dedup_key(code, prm)
            owner = self.store.claim_dedup(key, task["cid"], task["index"])
            self.store.update_candidate(task["cid"], dedup_key=key)
            if owner != task["cid"]:
                st.detail = {"duplicate_of": owner}
                return self._next(task, "record", status="duplicate", duplicate_of=owner)
            r = await self.pipeline.train(code, prm)
            st.status = "ok" if r.ok else "failed"
            st.detail = {"bleu4": r.bleu4, "category": r.category, "reused": r.reused, "job_id": r.job_id,
                         "placement": r.placement}
            st.refs["log"] = self.store.put_blob(r.tail) if r.tail else None
            self.store.add_job(task["cid"], task["attempt"], "train", job_id=r.job_id,
                               status="ok" if r.ok else "failed", category=r.category, reused=r.reused,
                               job_dir=r.job_dir, seconds=r.seconds, step=st.step)
            owner = self.store.claim_dedup(key, task["cid"], task["index"])
            if owner != task["cid"]:  # a twin with a lower index (or already recorded) claimed it meanwhile
                st.detail["duplicate_of"] = owner
                return self._next(task, "record", status="duplicate", duplicate_of=owner)
            text = r.message if not r.tail or r.tail in r.message else f"{r.message}\n{r.tail}"
            self.store.add_verdict(task["cid"], task["attempt"], r.stage or "train", ok=r.ok, category=r.category,
                                   message=safe_text(text, 4000), line=None, step=st.step)
            if r.epochs:
                self.store.add_epochs(task["cid"], r.epochs)
            if r.ok:
                self.store.update_candidate(task["cid"], lemur_bleu4=r.lemur_bleu4, params=r.params)
                return self._next(task, "record", status="scored", bleu4=r.bleu4, job_id=r.job_id)
            failed = Checked(ok=False, stage=r.stage, category=r.category, message=r.message)
            return self._failed(task, failed, r.stage or "train", tail=r.tail)

    async def fix(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "fix", task) as st:
            failure = dict(task.get("failure") or {})
            out = await self.pipeline.fix(self._code(task), task.get("prm") or {}, failure)
            st.exchanges.extend(out.exchanges)
            st.detail = {"fixing": failure.get("category"), "producer": out.producer}
            if not out.ok:
                st.status = "failed"
                if out.transient and self._retry_transient(config, "fix", task):
                    raise TransientEndpointError(out.message)
                return self._next(task, "record", st.tokens, status="failed",
                                  failure={**failure, "category": out.category, "message": out.message,
                                           "stage": "fix"})
            attempt = task["attempt"] + 1
            code_ref = self.store.add_attempt(task["cid"], attempt, made_by="fix", code=out.code, prm=out.prm,
                                              summary=out.summary, step=st.step)
            st.refs["code"] = code_ref
            return self._next(task, "static", st.tokens, attempt=attempt, code_ref=code_ref, prm=out.prm,
                              fix_rounds=task["fix_rounds"] + 1, failure=None,
                              summary=safe_text(out.summary, 300, keep="head"))

    async def record(self, task: Task, config: RunnableConfig) -> Command:
        superstep = superstep_of(config)
        async with self._step(config, "record", task) as st:
            status = task.get("status") or "failed"
            failure: Mapping[str, Any] = task.get("failure") or {}
            fields: dict[str, Any] = {"status": status, "fix_rounds": task.get("fix_rounds", 0),
                                      "duplicate_of": task.get("duplicate_of"), "job_id": task.get("job_id")}
            counts = {"finished": 1, status: 1}
            if status == "scored":
                fields.update(bleu4=task.get("bleu4"), stage="score", category=None)
                if task.get("fix_rounds", 0) > 0 or task["origin"] == "fix":
                    counts["repaired"] = 1
            elif status == "duplicate":
                fields.update(stage="train", category="duplicate", message=f"same network as {task['duplicate_of']}")
            else:
                fields.update(stage=failure.get("stage"), category=failure.get("category"),
                              message=failure.get("message"), traceback_tail=failure.get("tail") or "")
            self.store.record_candidate(task["cid"], superstep=superstep, **fields)
            st.detail = {"outcome": status, "bleu4": task.get("bleu4"), "category": fields.get("category")}
            event = {"event": "candidate_scored" if status == "scored" else "candidate_failed",
                     "candidate": task["cid"], "origin": task["origin"], "parent": task.get("parent"),
                     "bleu4": task.get("bleu4"), "category": fields.get("category"), "stage": fields.get("stage"),
                     "fix_rounds": task.get("fix_rounds", 0)}
            self.emit(event)
        update: dict[str, Any] = {"inflight": {task["cid"]: None}, "counts": counts}
        if status == "scored" and task.get("bleu4") is not None:
            update["leaderboard"] = [{"cid": task["cid"], "index": task["index"], "bleu4": float(task["bleu4"] or 0),
                                      "origin": task["origin"], "summary": task.get("summary", "")[:120]}]
        return Command(goto="dispatch", update=update)
