"""A server that lists its models and never answers a chat request ends `nncaption run` with exit 1 and one clear
error, in minutes.

With the defaults (idle_timeout_s 120, timeout_retries 1, node_retries 3, endpoint_down_after 3) a call costs at
most two silent tries (240 s); after three silent requests in a row the endpoint fails fast for 300 s, so the
further node tries end at once: two candidates stop the run after about 4 minutes (in parallel) to 6 minutes (one
at a time), under 10. This test runs the same path with a 1-second idle timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from llm_emulator import Emulator

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300), pytest.mark.slow]


def test_a_hung_server_ends_the_run_with_exit_1_and_one_clear_error(tiny_dataset: Any, tmp_path: Path) -> None:
    with Emulator("hung", models=("m",)) as emu:
        cfg = tmp_path / "run.toml"
        cfg.write_text(f'[agents]\nkind = "llm"\n[agents.llm.shared]\nbase_url = "{emu.base_url}"\nmodel = "m"\n'
                       'idle_timeout_s = 1.0\nbackoff_base_s = 0.05\nbackoff_max_s = 0.1\n')
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "nncaption.cli", "run", "--prepared", str(tiny_dataset.root),
                              "--run-dir", str(tmp_path / "run"), "--config", str(cfg), "--candidates", "2",
                              "--no-live"], capture_output=True, text=True, timeout=240, env=dict(os.environ))
        elapsed = time.monotonic() - t0
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error [")]
    assert len(errors) == 1 and "endpoint" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert 0 < len(emu.bodies) <= 6, "silent requests are bounded: the endpoint fails fast after three"
    assert elapsed < 200
