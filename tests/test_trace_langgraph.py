"""langgraph.json: `langgraph dev` finds the search graph and the run's checkpointer where it says.

Without the LangGraph server installed, this loads what langgraph.json names the way
the server does (a module from a file path, an attribute), enters the checkpointer
and the graph factory over a copy of a real run, and reads a candidate's thread of the CLI's run back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(ref: str) -> Any:
    path, attr = ref.split(":")
    spec = importlib.util.spec_from_file_location("studio_under_test", ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr)


def test_langgraph_json_names_graph_and_checkpointer() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["dependencies"] == ["."]
    for ref in (config["graphs"]["search"], config["checkpointer"]["path"]):
        assert (ROOT / ref.split(":")[0]).is_file()
        assert callable(load(ref))


@pytest.mark.sandbox  # uses real_run
def test_studio_graph_reads_a_candidate_thread(real_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_read_cli_thread(real_run, tmp_path, monkeypatch))


async def _read_cli_thread(real_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "run"
    shutil.copytree(real_run, copy, ignore=shutil.ignore_patterns("jobs", "report"))
    monkeypatch.setenv("NNCAPTION_STUDIO_RUN_DIR", str(copy))
    config = json.loads((ROOT / "langgraph.json").read_text())
    checkpointer = load(config["checkpointer"]["path"])
    factory = load(config["graphs"]["search"])
    async with contextlib.AsyncExitStack() as stack:
        saver = await stack.enter_async_context(checkpointer())
        assert type(saver).__name__ == "AsyncSqliteSaver"
        app = await stack.enter_async_context(factory({}))
        assert set(app.get_graph().nodes) >= {"design", "static", "review", "smoke", "train", "fix", "record"}
        app = app.copy(update={"checkpointer": saver})  # what the server does with the configured checkpointer
        thread = {"configurable": {"thread_id": "c0001"}}  # every candidate of the CLI's run is a thread
        state = await app.aget_state(thread)
        assert state.values["cid"] == "c0001" and state.values["status"] in ("scored", "failed", "duplicate")
        assert not state.next  # the finished candidate, read back
        history = [s async for s in app.aget_state_history(thread)]
        assert len(history) >= 7 and all("step" in s.metadata for s in history)
