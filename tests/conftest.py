"""Shared fixtures: an isolated NNCAPTION_HOME and a tiny prepared synthetic dataset.

Every test session gets its own NNCAPTION_HOME in a temporary directory, so no
test ever writes to ~/.cache/nncaption. `tiny_dataset` is built once per
session (96 train / 24 val images, 32 px, seed 0) and is read-only for tests.
`real_run` is one real search run (tests/run_fixture.py) that the inspection tests share.

The `sandbox` marker guard: a test that starts a sandbox job in this process (BaseSandbox._run returning a
result, RaySandbox.run_many) without `@pytest.mark.sandbox` fails, so that `make test-fast` (which deselects
the marker) never runs a job by accident. Jobs that a test starts in a subprocess (`nncaption run` and friends)
are not seen by the guard; those tests carry the marker by review.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.data.prepare import PreparedPaths

log = logging.getLogger(__name__)

TINY_N_TRAIN = 96
TINY_N_VAL = 24
TINY_SIZE = 32
TINY_SEED = 0


@pytest.fixture(scope="session", autouse=True)
def nncaption_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point NNCAPTION_HOME at a fresh temporary directory for the whole session."""
    home = tmp_path_factory.mktemp("nncaption-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("NNCAPTION_HOME", str(home))
    try:
        yield home
    finally:
        mp.undo()
        _unmount_stages_below(tmp_path_factory.getbasetemp())


def _unmount_stages_below(root: Path) -> None:
    """Unmount job stages a test left mounted under this session's temp dir (they would block its removal)."""
    from nncaption.sandbox.quota import STAGE_PREFIX, Stage

    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        mnt = Path(parts[4].replace("\\040", " ")) if len(parts) > 4 else None
        if mnt is None or not mnt.name.startswith(STAGE_PREFIX) or root not in mnt.parents:
            continue
        log.warning("a test left the job stage %s mounted; unmounting it", mnt)
        try:
            Stage(mnt, 1).remove()
        except OSError as e:
            log.warning("could not unmount %s: %s", mnt, e)


@pytest.fixture(scope="session")
def tiny_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic COCO-format dataset on disk (images + annotations)."""
    from nncaption.netapi.data.synthetic import generate_synthetic

    out = tmp_path_factory.mktemp("tiny-synthetic")
    return generate_synthetic(out, n_train=TINY_N_TRAIN, n_val=TINY_N_VAL, size=TINY_SIZE, seed=TINY_SEED,
                              secret=b"nncaption-tests: tiny synthetic")  # fixed: the same data every session


@pytest.fixture(scope="session")
def tiny_dataset(tiny_synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedPaths:
    """PreparedPaths of the tiny synthetic dataset (prepared cache in a tmp dir)."""
    from nncaption.netapi.data.prepare import prepare_dataset

    cache = tmp_path_factory.mktemp("tiny-prepared")
    return prepare_dataset("synthetic", tiny_synthetic_root, cache, size=TINY_SIZE, seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_data(tiny_dataset: PreparedPaths) -> PreparedData:
    """The tiny dataset opened for batching."""
    from nncaption.netapi.data.loader import PreparedData

    return PreparedData.open(tiny_dataset.public_dir)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `nncaption run` (3 candidates, local sandbox) for the inspection tests; see tests/run_fixture.py."""
    from run_fixture import make_run

    return make_run(tmp_path_factory.getbasetemp() / "inspect-run")


# --------------------------------------------------------------------------- the `sandbox` marker guard

_JOBS_STARTED = pytest.StashKey[list[int]]()
_GUARD_PATCH = pytest.StashKey[pytest.MonkeyPatch]()


def _counting(counter: list[int], method: Callable[..., Any]) -> Callable[..., Any]:
    """`method`, counting every call that returns (a job that ran to an outcome, whatever its status)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        counter[0] += 1
        return result

    return wrapper


def pytest_sessionstart(session: pytest.Session) -> None:
    """Count the sandbox jobs this process runs (the real methods run; the wrapper only counts)."""
    from nncaption.sandbox.skeleton import BaseSandbox

    counter = [0]
    mp = pytest.MonkeyPatch()
    if hasattr(BaseSandbox, "_run"):  # else test_sandbox_marker_guard.py fails and names the method to wrap
        mp.setattr(BaseSandbox, "_run", _counting(counter, BaseSandbox._run))
    try:
        from nncaption.sandbox.ray_backend import RaySandbox  # imports ray lazily, on first use
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    else:
        mp.setattr(RaySandbox, "run_many", _counting(counter, RaySandbox.run_many))
    session.config.stash[_JOBS_STARTED] = counter
    session.config.stash[_GUARD_PATCH] = mp


def pytest_sessionfinish(session: pytest.Session) -> None:
    mp = session.config.stash.get(_GUARD_PATCH, None)
    if mp is not None:
        mp.undo()


# Fixtures that run sandbox jobs in a subprocess (the counter cannot see them): a test using one needs the marker.
JOB_FIXTURES = frozenset({"real_run"})


def _fail_unmarked(item: pytest.Item, jobs: int) -> None:
    pytest.fail(f"{item.nodeid} ran {jobs} sandbox job(s) without the `sandbox` marker: add `@pytest.mark.sandbox` "
                "(or `pytestmark = [pytest.mark.sandbox, ...]`) so that `make test-fast` leaves it out", pytrace=False)


def _guard(item: pytest.Item) -> Generator[None, object, object]:
    counter = item.config.stash.get(_JOBS_STARTED, [0])
    before = counter[0]
    result = yield
    started = counter[0] - before
    if started and item.get_closest_marker("sandbox") is None:
        _fail_unmarked(item, started)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    """Jobs a fixture runs count against the first test that sets it up; a job fixture fails an unmarked test first."""
    if JOB_FIXTURES.intersection(getattr(item, "fixturenames", ())) and item.get_closest_marker("sandbox") is None:
        _fail_unmarked(item, 1)
    return (yield from _guard(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guard(item))
