"""The `sandbox` marker guard of tests/conftest.py: a test that runs a sandbox job without the marker fails.

The inner sessions run the real conftest; their "job" is a test using a fixture named `real_run` (the guard's rule
for jobs run in a subprocess), overridden with a trivial one so that no search runs here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nncaption.sandbox.skeleton import BaseSandbox

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
INNER = '''
import pytest


@pytest.fixture
def real_run():
    return "a run"


{mark}
def test_reads_a_run(real_run):
    assert real_run == "a run"


def test_runs_nothing():
    pass
'''


def test_in_process_jobs_are_counted_through_the_real_method() -> None:
    run = getattr(BaseSandbox, "_run", None)
    assert run is not None and hasattr(run, "__wrapped__"), (
        "tests/conftest.py counts jobs by wrapping BaseSandbox._run (every backend's job passes through it): "
        "point it at the method that now runs one job")


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
@pytest.mark.parametrize("mark, passed, failed", [("", 1, 1), ("@pytest.mark.sandbox", 2, 0)])
def test_a_job_test_without_the_marker_fails(pytester: pytest.Pytester, mark: str, passed: int, failed: int) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    sandbox: runs a sandbox job\n")
    pytester.makepyfile(test_inner=INNER.format(mark=mark))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=passed, errors=failed)
    if failed:
        result.stdout.fnmatch_lines(["*test_reads_a_run ran 1 sandbox job(s) without the `sandbox` marker*"])
    deselected = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "not sandbox")
    deselected.assert_outcomes(passed=1, errors=0 if mark else 1)
