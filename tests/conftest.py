"""Shared fixtures: an isolated NNCAPTION_HOME and a tiny prepared synthetic dataset.

Every test session gets its own NNCAPTION_HOME in a temporary directory, so no
test ever writes to ~/.cache/nncaption. `tiny_dataset` is built once per
session (96 train / 24 val images, 32 px, seed 0) and is read-only for tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

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
