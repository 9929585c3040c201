"""One place for the tests' real smoke check of a candidate (static, then the runner's smoke stage).

`check_code(code, data_dir, tmp_path, prm=...)` writes the file and runs the one lifecycle in this
process (the candidate in a forked child), with the candidate's hyperparameters as the job's prm.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Verdict


def check_code(code: str, data_dir: Path, tmp_path: Path, *, prm: Mapping[str, Any] | None = None,
               name: str = "candidate.py", time_limit_s: float = 120.0) -> Verdict:
    """Static check, then the smoke stage on the prepared dataset `data_dir` (batch size 4)."""
    from nncaption.netapi.lifecycle import check_here

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    return check_here(path, data_dir, batch_size=4, time_limit_s=time_limit_s, prm=dict(prm or {}))
