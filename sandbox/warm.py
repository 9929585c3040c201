"""`python -m nncaption.sandbox.warm ENTRY STAGE_DIR`: a pre-started job process (local backend, prewarm).

Started inside the same sandbox a cold job gets (namespaces, uid, cgroup,
limits), it imports the heavy *trusted* modules (torch, the runner) and then
blocks until the parent writes "go" on stdin — by then the parent has moved
the job's files into STAGE_DIR. It then runs ENTRY exactly as
`python -m ENTRY STAGE_DIR` would. The candidate's code is loaded only after
"go", so nothing of one job is ever visible to another: each warm process
serves exactly one job and exits.
"""

from __future__ import annotations

import importlib
import runpy
import sys

PRELOAD: tuple[str, ...] = (
    "numpy",
    "torch",
    "torch.nn",
    "torchvision",
    "nncaption.netapi.loading",
    "nncaption.netapi.data.loader",
    "nncaption.netapi.train",
)
GO = "go"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m nncaption.sandbox.warm ENTRY STAGE_DIR", file=sys.stderr)
        return 2
    entry, stage = argv
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a missing optional module only costs speed
            print(f"nncaption.sandbox.warm: preloading {name} failed: {e!r}", file=sys.stderr)
    line = sys.stdin.readline()
    if line.strip() != GO:
        return 3  # the parent went away or cancelled this slot
    sys.stdin.close()
    sys.argv = [entry, stage]
    runpy.run_module(entry, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
