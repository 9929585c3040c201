"""One search run: build the parts from the settings, run the graph with its checkpointer, summarise.

    outcome = asyncio.run(SearchRun(settings, run_dir, emit=print).run())

Every candidate is its own LangGraph thread, started by the scheduler
(graph/scheduler.py) with no barrier between candidates. `resume=True` continues
the run directory (the settings are read back from RUN_DIR/config.json): finished
candidates are final in the store and never redone, in-flight ones continue their
threads from their last checkpoint, and training jobs are content-addressed, so
nothing trains twice. A resumed run announces itself with one `resumed` event that
carries the whole-run counts and funnel. Cancelling the task that awaits `run()`
(SIGINT in the CLI) cancels the running nodes, which kills their sandbox jobs; the
steps left running are recorded as interrupted and each thread's last checkpoint
stays for `--resume`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncaption.graph import journal as jr
from nncaption.graph.build import build_graph
from nncaption.graph.nodes import ENDPOINT_CATEGORIES, JOB_ERROR_CATEGORIES, EventSink, Nodes, Slots
from nncaption.graph.pipeline import Pipeline
from nncaption.graph.preflight import check_concurrency
from nncaption.graph.runlock import RunLock
from nncaption.graph.scheduler import RunClock, Scheduler
from nncaption.graph.settings import RunSettings
from nncaption.graph.store import RunStore
from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

BEST_MODEL_FILE = "best_model.py"
RECORD_FILE = "llm-record.jsonl"


class EndpointsDown(NNCaptionError):
    """Every LLM endpoint of the run is unreachable."""

    category = "endpoint-unavailable"


class MachineUnusable(NNCaptionError):
    """Candidate after candidate could not run on this machine (job-error): the search stopped."""

    category = "job-error"


@dataclass
class RunOutcome:
    """How a run ended, for the summary and the exit code."""

    run_dir: Path
    status: str  # finished | interrupted | failed
    stop_reason: str | None
    best: dict[str, Any] | None
    best_file: Path | None
    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


PipelineFactory = Callable[[RunSettings, RunStore], "contextlib.AbstractAsyncContextManager[tuple[Pipeline, Any]]"]


@contextlib.asynccontextmanager
async def default_pipeline(settings: RunSettings, store: RunStore) -> AsyncIterator[tuple[Pipeline, Any]]:
    """Dataset, sandbox, candidate service and agents from the settings; closes what it opened."""
    from nncaption.netapi.data.resolve import resolve_dataset
    from nncaption.sandbox import get_sandbox
    from nncaption.sandbox.service import CandidateService, EvalSettings

    d, t, s = settings.data, settings.train, settings.sandbox
    data = await asyncio.to_thread(
        resolve_dataset, d.dataset, coco_root=Path(d.coco_root) if d.coco_root else None,
        prepared=Path(d.prepared) if d.prepared else None, size=d.size, seed=d.data_seed, val_limit=d.val_limit)
    options: dict[str, Any] = {}
    if s.gpus and s.kind in ("local", "docker"):
        from nncaption.sandbox import GpuAllocator

        options["gpu_allocator"] = GpuAllocator(list(s.gpus), jobs_per_gpu=s.jobs_per_gpu)
    if s.kind == "ray" and s.ray_address:
        options["address"] = s.ray_address
    if s.kind == "docker" and s.docker_runtime:
        options["runtime"] = s.docker_runtime
    sandbox = get_sandbox(s.kind, **options)
    evals = EvalSettings(epochs=t.epochs, batch_size=t.batch_size, seed=settings.seed, device=t.device,
                         epoch_time_limit_s=t.epoch_time_limit_s, max_params=t.max_params,
                         max_train_batches=t.max_train_batches, max_val_images=t.max_val_images, threads=t.threads,
                         smoke_time_limit_s=t.smoke_time_limit_s)
    jobs_root = Path(t.jobs_root).expanduser() if t.jobs_root else store.jobs_root
    service = CandidateService(data, sandbox, jobs_root=jobs_root, settings=evals)
    await asyncio.to_thread(service.preflight)
    client: Any = None
    try:
        designer, reviewer, fixer, client, servers = await _agents(settings, store, data)
        try:
            yield Pipeline(designer, reviewer, fixer, service), client
        finally:
            for server in servers:
                server.stop()
    finally:
        if client is not None:
            await client.aclose()
        close = getattr(sandbox, "close", None) or getattr(sandbox, "shutdown", None)
        if close is not None:
            await asyncio.to_thread(close)


async def _agents(settings: RunSettings, store: RunStore, data: Any) -> tuple[Any, Any, Any, Any, list[Any]]:
    a = settings.agents
    if a.kind == "baseline":
        from nncaption.agents.baseline import BaselineDesigner, BaselineFixer, BaselineReviewer

        return BaselineDesigner(seed=settings.seed, fault_rate=a.fault_rate), BaselineReviewer(), BaselineFixer(), \
            None, []
    from nncaption.agents.client import LLMClient
    from nncaption.agents.llm_agents import LLMDesigner, LLMFixer, LLMReviewer
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.prompts.library import DatasetFacts

    llm = a.llm
    servers: list[Any] = []
    if a.replay:
        from nncaption.agents.replay_server import ReplayServer

        record = Path(a.replay) / RECORD_FILE
        if not record.is_file():
            raise ConfigError(f"--replay {a.replay}: no recorded LLM exchanges ({record.name} is missing)",
                              "pass the directory of a run made with LLM endpoints (not the baseline)")
        server = ReplayServer(record).start()
        servers.append(server)
        roles = {r: getattr(llm, r) for r in ("designer", "reviewer", "fixer") if getattr(llm, r) is not None}
        llm = llm.model_copy(update={"shared": llm.shared.model_copy(update={"base_url": server.base_url}),
                                     **{r: ep.model_copy(update={"base_url": server.base_url})
                                        for r, ep in roles.items()}})
    await _probe_endpoints(llm)
    client = LLMClient(llm, record_path=store.run_dir / RECORD_FILE, seed=settings.seed)
    facts = DatasetFacts.from_meta(PreparedData.open(data.public_dir).meta)
    return (LLMDesigner(client, facts, from_lemur=a.from_lemur), LLMReviewer(client, facts, use_llm=a.llm_review),
            LLMFixer(client, facts), client, servers)


async def _probe_endpoints(llm: Any) -> None:
    """Stop before the first candidate when an endpoint of the run does not answer (exit 1) or is misconfigured:
    a refused key, a base_url without /v1, a model the server does not serve (exit 2; see agents/probe.py)."""
    from nncaption.agents.probe import probe_endpoints

    report = await probe_endpoints(llm)
    report.raise_problems()
    if report.down:
        every = all(info.listing_status is None for info in report.infos.values())
        raise EndpointsDown(f"{'no LLM endpoint answers' if every else 'an LLM endpoint does not answer'} "
                            f"({'; '.join(report.down)})",
                            "start the server (e.g. `nncaption llm offline` or vLLM) or fix --llm-base-url; "
                            "or run the random-search baseline without --llm-base-url")


@contextlib.asynccontextmanager
async def open_checkpointer(path: Path) -> AsyncIterator[Any]:
    """AsyncSqliteSaver on RUN_DIR/checkpoints.sqlite in WAL mode: a commit survives `kill -9` of this process
    (synchronous=NORMAL skips the fsync per superstep, which only a power loss could need)."""
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        from nncaption.graph.serde import StateSerde  # restricted: a shared checkpoint is hostile input

        yield AsyncSqliteSaver(conn, serde=StateSerde(path))


class SearchRun:
    """A run directory plus the graph that fills it."""

    def __init__(self, settings: RunSettings, run_dir: Path, *, emit: EventSink | None = None, resume: bool = False,
                 pipeline_factory: PipelineFactory | None = None, masked_config: dict[str, Any] | None = None
                 ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.emit: EventSink = emit or (lambda event: None)
        self.resume = resume
        self.pipeline_factory = pipeline_factory or default_pipeline
        self.masked_config = masked_config or settings.masked_dump()
        self.state: dict[str, Any] = {}  # stop_reason, whole-run counts and leaderboard once the run ends

    def _agent_names(self) -> dict[str, str]:
        a = self.settings.agents
        if a.kind == "baseline":
            return {r: "baseline:random-search" for r in ("designer", "reviewer", "fixer")}
        return {r: f"llm:{a.llm.for_role(r).model}" for r in ("designer", "reviewer", "fixer")}

    async def run(self) -> RunOutcome:
        """Run (or resume) the search to its end; one process per run directory (graph/runlock.py)."""
        with RunLock(self.run_dir):
            return await self._run()

    async def _run(self) -> RunOutcome:
        store = RunStore(self.run_dir)
        if not self.resume:
            store.write_config(self.masked_config)
            from nncaption.graph import runtrust  # this user's own run: --resume may use its config.json

            runtrust.remember(self.run_dir, self.masked_config)
        store.start_run(self.run_dir.name, seed=self.settings.seed, config=self.masked_config,
                        agents=self._agent_names(), dataset=self.settings.data.dataset)
        elapsed_before = store.elapsed_before()
        previous = (store.run_row() or {}).get("stop_reason") if self.resume else None
        t0 = time.monotonic()
        status, reason = "failed", None
        self._check_concurrency()
        try:
            async with self.pipeline_factory(self.settings, store) as (pipeline, _client):
                slots = Slots.for_settings(self.settings, os.cpu_count() or 1)
                nodes = Nodes(self.settings, store, pipeline, self.emit, slots)
                async with open_checkpointer(store.checkpoint_path) as saver:
                    app = build_graph(nodes, retries=self.settings.node_retries).compile(checkpointer=saver)
                    if self.resume:
                        self._announce_resume(store)
                    scheduler = Scheduler(self.settings, store, app, self.emit, RunClock(t0, elapsed_before),
                                          retry=self._retry_categories(previous))
                    reason = await scheduler.run()
            self.state = {"stop_reason": reason, "counts": store.run_counts(), "leaderboard": store.best(10)}
            status = "failed" if reason in ("endpoints-down", "machine-unusable") else "finished"
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            store.mark_interrupted()
            elapsed = time.monotonic() - t0
            store.finish_run(self.run_dir.name, status=status, stop_reason=reason, elapsed_s=elapsed)
            outcome = self._outcome(store, status, reason, elapsed_before + elapsed)
            store.close()
            self.emit({"event": "run_finished", "status": status, "stop_reason": reason,
                       "run_dir": str(self.run_dir), "best": outcome.best,
                       "best_file": str(outcome.best_file) if outcome.best_file else None,
                       "elapsed_s": round(outcome.elapsed_s, 3), "counts": outcome.counts})
            self.outcome = outcome
        if reason == "endpoints-down":
            down = min(self.settings.endpoint_down_after, self.settings.budget.candidates)
            raise EndpointsDown(f"stopped after {down} candidates in a row lost their LLM endpoint: "
                                f"{self._last_failure(ENDPOINT_CATEGORIES)}", "check the endpoints, then continue "
                                f"with `nncaption run --resume {self.run_dir}`")
        if reason == "machine-unusable":
            raise MachineUnusable(
                f"stopped after {min(self.settings.job_error_after, self.settings.budget.candidates)} candidates in a "
                "row could not run on this machine: "
                f"{self._last_failure(JOB_ERROR_CATEGORIES)}",
                "nothing to fix in the candidates: repair the machine (for CUDA: python -m "
                f"nncaption.evals.gpu_doctor), then continue with `nncaption run --resume {self.run_dir}`")
        return outcome

    def _check_concurrency(self) -> None:
        """Use no more concurrency than this machine can train at once (a warning and an event when lowered)."""
        check = check_concurrency(self.settings)
        if check.adjusted:
            log.warning("concurrency %d is more than this machine can train at once (%s): using %d",
                        check.requested, check.why, check.using)
            self.emit(check.event())
            self.settings = self.settings.model_copy(update={"concurrency": check.using})

    @staticmethod
    def _retry_categories(previous: str | None) -> frozenset[str]:
        """After a stop for endpoints-down (machine-unusable), a resume runs the candidates that lost their endpoint
        (could not run on the machine) again: the user fixed what was down."""
        if previous == "endpoints-down":
            return frozenset(ENDPOINT_CATEGORIES)
        if previous == "machine-unusable":
            return frozenset(JOB_ERROR_CATEGORIES)
        return frozenset()

    def _announce_resume(self, store: RunStore) -> None:
        """One `resumed` event with the whole-run counts and funnel (candidates scored before the kill are not
        announced again)."""
        entries = store.journal()
        self.emit({"event": "resumed", "counts": store.run_counts(), "funnel": jr.funnel(entries),
                   "inflight": [e.cid for e in entries if e.status in (jr.Status.PLANNED, jr.Status.INTERRUPTED)],
                   "elapsed_before_s": round(store.elapsed_before(), 3)})

    def _last_failure(self, categories: frozenset[str]) -> str:
        """`category: message` of the last candidate that failed with one of `categories` (why the run stopped)."""
        store = RunStore(self.run_dir)
        try:
            rows = [r for r in store.candidate_rows() if r.get("category") in categories]
        finally:
            store.close()
        if not rows:
            return "(no message recorded)"
        return f"{rows[-1].get('category')}: {safe_text(str(rows[-1].get('message') or ''), 500)}"

    def _outcome(self, store: RunStore, status: str, reason: str | None, elapsed: float) -> RunOutcome:
        best = store.best(1)
        best_file = None
        if best and best[0].get("code_ref"):
            best_file = self.run_dir / BEST_MODEL_FILE
            try:
                from nncaption.graph import rundir  # a new file renamed over it: never through a planted link

                rundir.write_path(best_file, store.blob(best[0]["code_ref"]).encode("utf-8", "surrogatepass"))
            except (KeyError, OSError, NNCaptionError) as e:
                log.warning("cannot write %s: %s", best_file, e)
                best_file = None
        rows = store.candidate_rows()
        counts = {"candidates": len(rows)}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return RunOutcome(self.run_dir, status, reason, best[0] if best else None, best_file, counts, elapsed,
                          store.failures_by_category())
