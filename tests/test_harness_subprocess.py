"""Smoke check in a child process: hard timeout, native crashes, early exits, memory, secrets.

Each test starts `python -m nncaption.netapi.smoke JOB_DIR` (a fresh interpreter
importing torch: a few seconds each on a loaded machine).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nncaption.netapi.categories import Category
from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.smoke import check_in_subprocess, smoke_in_subprocess

CANDIDATES = Path(__file__).parent / "candidates"
GENEROUS_S = 180.0  # a hard limit that a good candidate never reaches, even on a loaded machine


@pytest.fixture(scope="module")
def data_dir(tiny_dataset: "PreparedPaths") -> Path:  # noqa: F821
    return tiny_dataset.public_dir


def test_good_candidate_is_accepted_in_a_child(data_dir: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    v = smoke_in_subprocess(CANDIDATES / "good_tiny.py", data_dir, GENEROUS_S, threads=1, job_dir=job)
    assert v.ok and v.stage == "smoke", v.message
    assert (job / "verdict.json").is_file() and (job / "candidate.py").is_file()


def test_blocking_call_is_killed_at_the_hard_timeout(data_dir: Path) -> None:
    # time.sleep sits in C: the in-process watchdog cannot interrupt it, the parent kills the group.
    started = time.monotonic()
    v = smoke_in_subprocess(CANDIDATES / "bad_sleep.py", data_dir, 8.0, threads=1)
    elapsed = time.monotonic() - started
    assert v.category is Category.TIMEOUT and not v.ok, v.message
    assert "hard limit of 8 s" in v.message and "killed" in v.message
    assert elapsed < 20


def test_native_abort_is_crashed(data_dir: Path) -> None:
    # os.abort() is rejected statically; run the smoke stage alone to see the process die.
    v = smoke_in_subprocess(CANDIDATES / "bad_abort.py", data_dir, GENEROUS_S, threads=1)
    assert v.category is Category.CRASHED, v.message
    assert "SIGABRT" in v.message and "Net.learn" in v.message  # forward is first called inside learn


def test_exit_before_verdict_is_crashed(data_dir: Path) -> None:
    v = smoke_in_subprocess(CANDIDATES / "bad_hard_exit.py", data_dir, GENEROUS_S, threads=1)
    assert v.category is Category.CRASHED, v.message
    assert "exited with status 0 in Net.learn before writing a verdict" in v.message and "os._exit" in v.message


def test_out_of_memory_in_a_child(data_dir: Path) -> None:
    v = smoke_in_subprocess(CANDIDATES / "bad_oom.py", data_dir, GENEROUS_S, threads=1)
    assert v.category is Category.OUT_OF_MEMORY, v.message
    assert "torch.empty(1 << 40)" in v.message and "line" in v.message


def test_static_rejection_never_starts_a_child(data_dir: Path) -> None:
    started = time.monotonic()
    v = check_in_subprocess(CANDIDATES / "bad_abort.py", data_dir, GENEROUS_S)
    assert v.stage == "static" and v.category is Category.FORBIDDEN_CALL
    assert time.monotonic() - started < 2


def test_caller_error_is_raised_not_a_verdict(tmp_path: Path) -> None:
    with pytest.raises(NNCaptionError) as info:
        smoke_in_subprocess(CANDIDATES / "good_tiny.py", tmp_path / "not-prepared", GENEROUS_S, threads=1)
    assert info.value.category == "dataset"


def test_child_does_not_see_secrets(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("NNCAPTION_TEST_TOKEN", "tok-very-secret")
    src = (CANDIDATES / "good_tiny.py").read_text().replace(
        "        self.device = device\n",
        "        import os\n        raise KeyError(os.environ.get('OPENAI_API_KEY', 'absent') + '/' +"
        " os.environ.get('NNCAPTION_TEST_TOKEN', 'absent'))\n",
    )
    cand = tmp_path / "leaky.py"
    cand.write_text(src)
    v = smoke_in_subprocess(cand, data_dir, GENEROUS_S, threads=1)
    assert v.category is Category.INIT_ERROR, v.message
    assert "absent/absent" in v.message and "very-secret" not in v.message
