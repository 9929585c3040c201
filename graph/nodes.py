"""The per-candidate graph's nodes: design -> static -> review -> smoke -> train -> record, with `fix` loops.

Every candidate is its own LangGraph thread (graph/build.py); a node receives the
candidate's `Task` as its thread state and routes with `Command(goto=next,
update=changes)`. After any failed check or failed training, `fix` runs while
fix rounds remain (the fixed code goes back through the checks, starting at the
static one); `record` writes the candidate's final row and ends the thread. The
scheduler (graph/scheduler.py) plans candidates and starts their threads. Nodes
write what they did to the run store (a `steps` row, LLM calls, verdicts,
attempts, jobs) and keep only ids and short texts in the state.

Attempt numbering (the same in the store, the trace and the events): attempt n is
the n-th version of a candidate's code, 1-based; `design` makes attempt 1 and
every fixer reply makes the next one. A step works on one attempt: design and fix
steps carry the attempt they produce, the checks, train and record the attempt
they judge; the planning step (`dispatch`) carries none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from langgraph.types import Command

from nncaption.graph import journal as jr
from nncaption.graph import novelty
from nncaption.graph.dedup import dedup_key
from nncaption.graph.pipeline import Checked, Pipeline, Produced, TransientEndpointError
from nncaption.graph.policy import Mode
from nncaption.graph.progress import ProgressForwarder
from nncaption.graph.settings import RunSettings
from nncaption.graph.state import Task
from nncaption.graph.store import RunStore
from nncaption.netapi import categories as _categories
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
ENDPOINT_CATEGORIES = _categories.ENDPOINT_CATEGORIES  # the endpoint is down: a run of these stops the search
JOB_ERROR_CATEGORIES = _categories.JOB_ERROR_CATEGORIES  # the machine could not run the job: no candidate can fix that
UNCHANGED_NOTE = ("Your previous fix changed nothing: after normalisation it was the same code and hyperparameters "
                  "as the failed attempt, so it was not run again and the failure below still stands. Make a real "
                  "change.")


@dataclass
class Slots:
    """What candidates share, by kind: CPU-light checks (static), sandbox check jobs (smoke) and training jobs.
    LLM calls are bounded by the client's per-endpoint concurrency."""

    checks: asyncio.Semaphore
    smoke: asyncio.Semaphore
    train: asyncio.Semaphore

    @classmethod
    def for_settings(cls, settings: RunSettings, cpus: int) -> Slots:
        jobs = settings.concurrency
        return cls(asyncio.Semaphore(max(1, cpus)), asyncio.Semaphore(jobs), asyncio.Semaphore(jobs))


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


def thread_step_of(config: RunnableConfig) -> int:
    """The node's step in its candidate's thread (LangGraph's step: the checkpoint before it has step - 1)."""
    return int((config.get("metadata") or {}).get("langgraph_step", 0))


class Nodes:
    """The node functions, closed over the run's settings, store, pipeline, slots and event sink."""

    def __init__(self, settings: RunSettings, store: RunStore, pipeline: Pipeline, emit: EventSink,
                 slots: Slots | None = None) -> None:
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.emit = emit
        self.slots = slots or Slots.for_settings(settings, 1)
        self._tries: dict[tuple[str, int, str], int] = {}
        self._shingles = novelty.ShingleCache()  # the near-duplicate check's shingles of trained candidates

    # ------------------------------------------------------------------ helpers
    @contextlib.asynccontextmanager
    async def _step(self, config: RunnableConfig, node: str, task: Task, attempt: int | None = None, *,
                    announce: bool = True) -> AsyncIterator[StepLog]:
        """The step's row and events; with `announce=False` the node emits `node_started` itself (`_started`),
        once its work really starts (train: when it has a training slot)."""
        cid = task["cid"]
        attempt = task.get("attempt") if attempt is None else attempt
        step = self.store.step_begin(thread_step_of(config), node, cid, attempt)
        st = StepLog(step=step)
        if announce:
            self._started(st, node, task, attempt)
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
            self.emit({"event": "node_finished", "node": node, "candidate": cid, "step": step, "attempt": attempt,
                       "status": st.status, "tokens": st.tokens, **st.detail})

    def _started(self, st: StepLog, node: str, task: Task, attempt: int | None, **extra: Any) -> None:
        self.emit({"event": "node_started", "node": node, "candidate": task["cid"], "step": st.step,
                   "attempt": attempt, **extra})

    def _retry_transient(self, config: RunnableConfig, node: str, task: Task) -> bool:
        """True when a transient endpoint failure should be raised for RetryPolicy (tries remain)."""
        key = (task["cid"], thread_step_of(config), node)
        self._tries[key] = self._tries.get(key, 0) + 1
        return self._tries[key] < self.settings.node_retries

    @staticmethod
    def _next(node: str, **changes: Any) -> Command:
        return Command(goto=node, update=changes)

    def _failed(self, task: Task, result: Checked | Produced, stage: str, *, tail: str = "",
                **changes: Any) -> Command:
        """A failed check: to the fixer while rounds remain (and the code exists), else to record."""
        failure = {"stage": stage, "category": result.category or "rejected",
                   "message": safe_text(result.message, 2000, keep="head"),
                   "line": getattr(result, "line", None), "tail": safe_text(tail, 1500)}
        rounds = changes.get("fix_rounds", task.get("fix_rounds", 0))
        can_fix = (task.get("code_ref") and rounds < self.settings.max_fix_rounds
                   and (result.category or "") not in jr.NOT_DEBUGGABLE)
        if can_fix:
            return self._next("fix", failure=failure, **changes)
        return self._next("record", failure=failure, status="failed", **changes)

    def _code(self, task: Task) -> str:
        ref = task.get("code_ref")
        return self.store.blob(ref) if ref else ""

    # ------------------------------------------------------------------ nodes
    async def design(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "design", task, attempt=1) as st:
            entries = self.store.journal(st.step)
            known = jr.by_id(entries)
            parent_id = task.get("parent")
            parent = known.get(parent_id) if parent_id else None
            near: novelty.Near | None = None
            asked_again: dict[str, Any] = {}
            if task["mode"] == Mode.DEBUG.value and parent is not None and parent.code_ref:
                failure = {"stage": parent.stage, "category": parent.category, "message": parent.message,
                           "tail": parent.traceback_tail}
                made_by = "fix"
                out = await self.pipeline.fix(self.store.blob(parent.code_ref), parent.prm, failure)
            else:
                made_by = "design"
                request = self._request(task, entries, parent, st.step)
                out = await self.pipeline.design(request)
                near = await self._near(task, out, entries)
                if near is not None:  # a near-duplicate: asked again once, told which candidate it is close to
                    st.exchanges.extend(out.exchanges)
                    asked_again = {"too_close_to": near.cid, "similarity": round(near.similarity, 4)}
                    out = await self.pipeline.design(novelty.with_note(request, novelty.too_close_note(near)))
                    near = await self._near(task, out, entries)
            st.exchanges.extend(out.exchanges)
            st.detail = {"mode": task["mode"], "producer": out.producer, **out.detail()}
            if asked_again:
                st.detail["asked_again"] = asked_again
            if not out.ok:
                st.status = "failed"
                if out.transient and self._retry_transient(config, "design", task):
                    raise TransientEndpointError(out.message)
                return self._failed(task, out, "design")
            code_ref = self.store.add_attempt(task["cid"], 1, made_by=made_by, code=out.code, prm=out.prm,
                                              summary=out.summary, step=st.step)
            if out.snippets:
                self.store.update_candidate(task["cid"], snippets_json=json.dumps(out.snippets))
            st.refs["code"] = code_ref
            if near is not None:  # still too close after the second request: a duplicate of that candidate
                st.detail["duplicate_of"] = near.cid
                message = f"near-duplicate of {near.cid} (similarity {near.similarity:.2f}), not trained"
                return self._next("record", attempt=1, code_ref=code_ref, prm=out.prm, status="duplicate",
                                  duplicate_of=near.cid, summary=safe_text(out.summary, 300, keep="head"),
                                  failure={"stage": "design", "category": "duplicate", "message": message})
            return self._next("static", attempt=1, code_ref=code_ref, prm=out.prm,
                              summary=safe_text(out.summary, 300, keep="head"))

    async def _near(self, task: Task, out: Produced, entries: list[jr.Entry]) -> novelty.Near | None:
        """The trained candidate a new design is too close to (graph/novelty.py), or None (also when the check is
        off or the design failed)."""
        cfg = self.settings.novelty
        if not out.ok or cfg.threshold <= 0:
            return None
        others = [(e.cid, self.store.blob(e.code_ref)) for e in novelty.pool(entries, cfg, task["cid"], out.prm)
                  if e.code_ref]
        if not others:
            return None
        return await asyncio.to_thread(novelty.nearest, out.code, others, cfg.threshold, cache=self._shingles)

    def _request(self, task: Task, entries: list[jr.Entry], parent: jr.Entry | None, step: int) -> Any:
        """The DesignRequest of this turn: mode, snippets, decoder, the parent and feedback from the journal."""
        from nncaption.agents.protocols import DesignRequest
        from nncaption.prompts.library import ParentCandidate

        parent_view = None
        if task["mode"] == Mode.IMPROVE.value and parent is not None and parent.code_ref:
            parent_view = ParentCandidate(code=self.store.blob(parent.code_ref), summary=parent.summary,
                                          bleu4=parent.bleu4, bleu4_per_epoch=parent.bleu4_per_epoch,
                                          hparams=dict(parent.prm))
        feedback = jr.feedback_from([e for e in entries if e.cid != task["cid"]], self.store.failed_attempts(step)) \
            if task.get("feedback", True) else None  # a policy of independent drafts plans without feedback
        return DesignRequest(mode="improve" if parent_view is not None else "compose",
                             k=self.settings.agents.snippets, seed=task["seed"],
                             decoder=task.get("decoder"), parent=parent_view, feedback=feedback)

    async def static(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "static", task) as st:
            st.refs["code"] = task.get("code_ref")
            code = self._code(task)
            async with self.slots.checks:
                result = await asyncio.to_thread(self.pipeline.static, code)
            self._verdict(task, result, st)
            return self._next("review") if result.ok else self._failed(task, result, "static")

    async def review(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "review", task) as st:
            st.refs["code"] = task.get("code_ref")
            result = await self.pipeline.review(self._code(task), task.get("prm") or {})
            st.exchanges.extend(result.exchanges)
            if result.transient and self._retry_transient(config, "review", task):
                st.status = "failed"
                raise TransientEndpointError(result.message)
            self._verdict(task, result, st)
            return self._next("smoke") if result.ok else self._failed(task, result, "review")

    async def smoke(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "smoke", task) as st:
            st.refs["code"] = task.get("code_ref")
            async with self.slots.smoke:
                result = await self.pipeline.smoke(self._code(task), task.get("prm") or {})
            self._verdict(task, result, st)
            st.refs["log"] = self.store.put_blob(result.message) if not result.ok and result.message else None
            st.detail.update({"job_id": result.job_id, "reused": result.reused})
            self.store.add_job(task["cid"], task["attempt"], "smoke", job_id=result.job_id,
                               status="ok" if result.ok else "failed", category=result.category,
                               reused=result.reused, job_dir=result.job_dir, seconds=result.seconds, step=st.step)
            return self._next("train") if result.ok else self._failed(task, result, result.stage or "smoke")

    def _verdict(self, task: Task, result: Checked, st: StepLog) -> None:
        st.status = "ok" if result.ok else "failed"
        st.detail = {"stage": result.stage, "category": result.category}
        self.store.add_verdict(task["cid"], task["attempt"], result.stage, ok=result.ok, category=result.category,
                               message=safe_text(result.message, 4000, keep="head"), line=result.line, step=st.step)

    async def _train_slot(self, cid: str) -> float:
        """Wait for a training slot (the caller releases it); returns the seconds waited."""
        t0 = time.monotonic()
        if self.slots.train.locked():
            self.emit({"event": "node_waiting", "node": "train", "candidate": cid, "for": "a training slot"})
        await self.slots.train.acquire()
        return time.monotonic() - t0

    async def train(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "train", task, announce=False) as st:
            st.refs["code"] = task.get("code_ref")
            code, prm = self._code(task), task.get("prm") or {}
            key = dedup_key(code, prm)
            owner = self.store.claim_dedup(key, task["cid"], task["index"])
            self.store.update_candidate(task["cid"], dedup_key=key)
            if owner != task["cid"]:
                self._started(st, "train", task, task.get("attempt"))
                st.detail = {"duplicate_of": owner}
                return self._next("record", status="duplicate", duplicate_of=owner)
            queued = await self._train_slot(task["cid"])
            self._started(st, "train", task, task.get("attempt"), queued_s=round(queued, 3))
            try:
                progress = ProgressForwarder(task["cid"], self.emit)
                r = await self.pipeline.train(code, prm, on_event=progress)
            finally:
                self.slots.train.release()
            st.status = "ok" if r.ok else "failed"
            st.detail = {"bleu4": r.bleu4, "category": r.category, "reused": r.reused, "job_id": r.job_id,
                         "placement": r.placement, "queued_s": round(queued, 3)}
            st.refs["log"] = self.store.put_blob(r.tail) if r.tail else None
            self.store.add_job(task["cid"], task["attempt"], "train", job_id=r.job_id,
                               status="ok" if r.ok else "failed", category=r.category, reused=r.reused,
                               job_dir=r.job_dir, seconds=r.seconds, step=st.step)
            owner = self.store.claim_dedup(key, task["cid"], task["index"])
            if owner != task["cid"]:  # a twin with a lower index (or already recorded) claimed it meanwhile
                st.detail["duplicate_of"] = owner
                return self._next("record", status="duplicate", duplicate_of=owner)
            text = r.message if not r.tail or r.tail in r.message else f"{r.message}\n{r.tail}"
            self.store.add_verdict(task["cid"], task["attempt"], r.stage or "train", ok=r.ok, category=r.category,
                                   message=safe_text(text, 4000), line=None, step=st.step)
            if r.epochs:
                self.store.add_epochs(task["cid"], r.epochs)
            if r.ok:
                self.store.update_candidate(task["cid"], lemur_bleu4=r.lemur_bleu4, params=r.params)
                return self._next("record", status="scored", bleu4=r.bleu4, job_id=r.job_id)
            failed = Checked(ok=False, stage=r.stage, category=r.category, message=r.message)
            return self._failed(task, failed, r.stage or "train", tail=r.tail)

    async def fix(self, task: Task, config: RunnableConfig) -> Command:
        attempt = task["attempt"] + 1
        async with self._step(config, "fix", task, attempt=attempt) as st:
            failure = dict(task.get("failure") or {})
            asked = dict(failure)
            if task.get("unchanged"):
                asked["message"] = f"{UNCHANGED_NOTE}\n{failure.get('message') or ''}"
            old_code, old_prm = self._code(task), task.get("prm") or {}
            out = await self.pipeline.fix(old_code, old_prm, asked)
            st.exchanges.extend(out.exchanges)
            st.detail = {"fixing": failure.get("category"), "producer": out.producer, **out.detail()}
            if not out.ok:
                st.status = "failed"
                if out.transient and self._retry_transient(config, "fix", task):
                    raise TransientEndpointError(out.message)
                return self._next("record", status="failed",
                                  failure={**failure, "category": out.category, "message": out.message,
                                           "stage": "fix"})
            code_ref = self.store.add_attempt(task["cid"], attempt, made_by="fix", code=out.code, prm=out.prm,
                                              summary=out.summary, step=st.step)
            st.refs["code"] = code_ref
            changes: dict[str, Any] = {"attempt": attempt, "code_ref": code_ref, "prm": out.prm,
                                       "fix_rounds": task.get("fix_rounds", 0) + 1,
                                       "summary": safe_text(out.summary, 300, keep="head")}
            if dedup_key(out.code, out.prm) == dedup_key(old_code, old_prm):
                return self._unchanged(task, failure, attempt, st, changes)
            return self._next("static", failure=None, unchanged=False, **changes)

    def _unchanged(self, task: Task, failure: Mapping[str, Any], attempt: int, st: StepLog,
                   changes: dict[str, Any]) -> Command:
        """The fixer returned the failed attempt again: not run again; its verdict stands for the new attempt."""
        stage = str(failure.get("stage") or "train")
        message = (f"unchanged: attempt {attempt} is attempt {attempt - 1} again (same normalised code and "
                   f"hyperparameters); its verdict stands: {failure.get('message') or ''}")
        self.store.add_verdict(task["cid"], attempt, stage, ok=False, category=failure.get("category"),
                               message=safe_text(message, 4000, keep="head"), line=failure.get("line"),
                               step=st.step)
        st.detail["unchanged"] = True
        kept = Checked(ok=False, stage=stage, category=failure.get("category"), message=str(failure.get("message")
                       or ""), line=failure.get("line"))
        return self._failed(task, kept, stage, tail=str(failure.get("tail") or ""), unchanged=True, **changes)

    async def record(self, task: Task, config: RunnableConfig) -> Command:
        async with self._step(config, "record", task) as st:
            status = task.get("status") or "failed"
            failure: Mapping[str, Any] = task.get("failure") or {}
            fields: dict[str, Any] = {"status": status, "fix_rounds": task.get("fix_rounds", 0),
                                      "duplicate_of": task.get("duplicate_of"), "job_id": task.get("job_id")}
            if status == "scored":
                fields.update(bleu4=task.get("bleu4"), stage="score", category=None)
            elif status == "duplicate":  # the exact check before training (stage train) or the near one (design)
                fields.update(stage=failure.get("stage") or "train", category="duplicate",
                              message=failure.get("message") or f"same network as {task['duplicate_of']}")
            else:
                fields.update(stage=failure.get("stage"), category=failure.get("category"),
                              message=failure.get("message"), traceback_tail=failure.get("tail") or "")
            self.store.record_candidate(task["cid"], step=st.step, **fields)
            st.detail = {"outcome": status, "bleu4": task.get("bleu4"), "category": fields.get("category")}
            self.emit({"event": "candidate_scored" if status == "scored" else "candidate_failed",
                       "candidate": task["cid"], "origin": task["origin"], "parent": task.get("parent"),
                       "bleu4": task.get("bleu4"), "category": fields.get("category"), "stage": fields.get("stage"),
                       "fix_rounds": task.get("fix_rounds", 0), "attempt": task.get("attempt")})
        return Command(goto=END)
