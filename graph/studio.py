"""The search graph and its checkpointer for `langgraph dev` / LangGraph Studio (see langgraph.json at the repo root).

    NNCAPTION_STUDIO_RUN_DIR=~/.cache/nncaption/runs/run-...  langgraph dev

`graph` is an async context manager factory (the server enters it once and closes
it at shutdown): it opens the run directory's store, builds the same parts as
`nncaption run` (dataset, sandbox, candidate service, agents, from the run's
config.json, or the defaults for a new folder) and yields the compiled
per-candidate graph. `checkpointer` yields the `AsyncSqliteSaver` on
RUN_DIR/checkpoints.sqlite, as the CLI configures it; each candidate of the CLI's
run is a thread named by its id ("c0001", "c0002", ...), which Studio lists and
replays. Without the environment variable a new run directory is made under
$NNCAPTION_HOME/runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nncaption.graph.build import build_graph
from nncaption.graph.store import CHECKPOINT_DB, CONFIG_FILE, RunStore

log = logging.getLogger(__name__)

RUN_DIR_ENV = "NNCAPTION_STUDIO_RUN_DIR"
__all__ = ["checkpointer", "graph", "studio_run_dir"]


def studio_run_dir() -> Path:
    """The run directory Studio works on: $NNCAPTION_STUDIO_RUN_DIR, else a new one under $NNCAPTION_HOME/runs."""
    given = os.environ.get(RUN_DIR_ENV)
    if given:
        return Path(given).expanduser().resolve()
    home = Path(os.environ.get("NNCAPTION_HOME") or Path.home() / ".cache" / "nncaption").expanduser()
    path = home / "runs" / f"studio-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    os.environ[RUN_DIR_ENV] = str(path)  # graph and checkpointer must agree on the folder
    return path


def settings_for(run_dir: Path) -> Any:
    """The run's recorded settings (config.json), or the defaults of `nncaption run` for a new folder."""
    from nncaption.graph.settings import RunSettings

    path = run_dir / CONFIG_FILE
    if path.is_file():
        return RunSettings.model_validate(json.loads(path.read_text(encoding="utf-8")))
    return RunSettings()


@contextlib.asynccontextmanager
async def checkpointer() -> AsyncIterator[Any]:
    """The run directory's AsyncSqliteSaver, opened by the same function `nncaption run` uses (WAL mode)."""
    from nncaption.graph.runner import open_checkpointer

    run_dir = studio_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    async with open_checkpointer(run_dir / CHECKPOINT_DB) as saver:
        yield saver


@contextlib.asynccontextmanager
async def graph(config: Any = None) -> AsyncIterator[Any]:
    """The compiled per-candidate graph over the run directory's store and the CLI's parts (no checkpointer attached:
    the server attaches the one from `checkpointer`; pass `checkpointer=` to `compile_graph` to use it directly)."""
    async with compile_graph(studio_run_dir()) as app:
        yield app


@contextlib.asynccontextmanager
async def compile_graph(run_dir: Path, *, saver: Any = None, pipeline_factory: Any = None) -> AsyncIterator[Any]:
    """Store + pipeline + nodes for `run_dir`, compiled (with `saver` when given)."""
    from nncaption.graph.nodes import Nodes
    from nncaption.graph.runner import default_pipeline

    settings = settings_for(run_dir)
    store = RunStore(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        store.write_config(settings.masked_dump())
    try:
        async with (pipeline_factory or default_pipeline)(settings, store) as (pipeline, _client):
            nodes = Nodes(settings, store, pipeline, lambda event: log.info("event %s", event.get("event")))
            yield build_graph(nodes, retries=settings.node_retries).compile(checkpointer=saver)
    finally:
        store.close()
