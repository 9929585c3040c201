"""Run settings are masked wherever the engine stores them (config.json, the runs table, Studio, a fork)."""

from __future__ import annotations

import json
from pathlib import Path

from nncaption import runconfig
from nncaption.agents.settings import LLMSettings
from nncaption.graph.runner import SearchRun
from nncaption.graph.settings import AgentSettings, RunSettings

SECRET_URL = "https://alice:hunter2@llm.example.org/v1"


def _settings() -> RunSettings:
    llm = LLMSettings.single(SECRET_URL, "m", extra_body={"api_key": "sk-live-123", "team": "vision"})
    return RunSettings(agents=AgentSettings(kind="llm", llm=llm))


def test_masked_dump_hides_url_credentials_and_secret_fields() -> None:
    dumped = json.dumps(_settings().masked_dump())
    assert "hunter2" not in dumped and "sk-live-123" not in dumped
    assert "vision" in dumped and "llm.example.org" in dumped  # only the secrets go
    assert runconfig.masked(_settings()) == _settings().masked_dump()  # the CLI stores the same thing


def test_search_run_without_a_mask_from_its_caller_stores_masked_settings(tmp_path: Path) -> None:
    run = SearchRun(_settings(), tmp_path / "run")  # Studio, fork and tests build runs this way
    assert "hunter2" not in json.dumps(run.masked_config) and "sk-live-123" not in json.dumps(run.masked_config)
