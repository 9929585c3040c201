"""Issue 7: data commands started together on a fresh NNCAPTION_HOME, and an unusable NNCAPTION_HOME.

The concurrency tests use real processes that start their data work at the same moment (a file barrier):
each must succeed, build exactly once, and find the same dataset the other built; nothing is deleted under
a process that is reading it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nncaption.cli import main
from nncaption.netapi import paths as config
from nncaption.netapi.data.synthetic import generate_synthetic

BARRIER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    barrier, me = Path(sys.argv[1]), sys.argv[2]
    (barrier / me).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    import nncaption.netapi.data.synthetic as synthetic  # count generations (the data layer imports it lazily)
    generations = []
    _generate = synthetic.generate_synthetic
    def counting(*a, **k):
        generations.append(1)
        return _generate(*a, **k)
    synthetic.generate_synthetic = counting
""")

RESOLVE = BARRIER + textwrap.dedent("""
    from nncaption import cmd_data
    from nncaption.netapi import paths as config
    config.DEFAULT_SYNTH_TRAIN, config.DEFAULT_SYNTH_VAL = 80, 20
    paths = cmd_data.resolve_dataset("synthetic", coco_root=None, size=16, seed=5, progress=False)
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.data.prepare import load_references
    data = PreparedData.open(paths.public_dir)
    refs = load_references(paths.private_dir)
    assert len(refs) == data.meta.n_val == 20
    raw = config.default_synthetic_dir(5)
    secret = raw / "generator-secret"
    print(json.dumps({"key": paths.key, "secret": secret.read_text() if secret.is_file() else None,
                      "mtime": (raw / "annotations" / "captions_val.json").stat().st_mtime_ns,
                      "generated": len(generations)}))
""")

PREPARE = BARRIER + textwrap.dedent("""
    from nncaption.netapi.data.prepare import prepare_dataset
    built = []
    paths = prepare_dataset("synthetic", Path(sys.argv[3]), Path(sys.argv[4]), size=16, seed=0, workers=1,
                            progress=lambda stage, done, total: built.append(stage))
    print(json.dumps({"key": paths.key, "built": bool(built)}))
""")


def _run_pair(script: str, tmp_path: Path, *extra: str, home: Path | None = None) -> list[dict]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "NNCAPTION_HOME": str(home or tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(barrier), name, *extra], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


@pytest.mark.slow  # two real processes, each importing torch
def test_two_processes_resolving_on_a_fresh_home_generate_once_and_both_succeed(tmp_path: Path) -> None:
    a, b = _run_pair(RESOLVE, tmp_path)
    assert a["generated"] + b["generated"] == 1, (a, b)  # the second found the first's set; nothing replaced
    assert a["key"] == b["key"]
    assert a["mtime"] == b["mtime"]  # the raw set was written once, not replaced under the other process
    assert a["secret"] is not None and a["secret"] == b["secret"]
    home = tmp_path / "home"
    assert not [p for p in (home / "data").iterdir() if p.name.startswith((".tmp", ".old"))]
    assert len([p for p in (home / "prepared").iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.slow  # two real processes, each importing torch
def test_two_processes_preparing_the_same_data_build_once(tmp_path: Path) -> None:
    raw = generate_synthetic(tmp_path / "raw", n_train=120, n_val=20, size=32, seed=0)
    a, b = _run_pair(PREPARE, tmp_path, str(raw), str(tmp_path / "cache"))
    assert a["key"] == b["key"]
    assert [a["built"], b["built"]].count(True) == 1, (a, b)  # the second waited and reused the first's cache


@pytest.mark.slow  # two real processes, each importing torch
def test_two_synth_then_prepare_commands_together_both_succeed(tmp_path: Path) -> None:
    script = BARRIER + textwrap.dedent("""
        from nncaption.cli import main
        from nncaption.netapi import paths as config
        rc = main(["data", "synth", "--n-train", "80", "--n-val", "10", "--size", "32", "--seed", "3", "--quiet"])
        assert rc == 0, rc
        rc = main(["data", "prepare", "--synthetic", str(config.default_synthetic_dir(3)), "--size", "16",
                   "--quiet"])
        assert rc == 0, rc
        print(json.dumps({"generated": len(generations)}))
    """)
    a, b = _run_pair(script, tmp_path)
    assert a["generated"] + b["generated"] == 1, (a, b)  # the second `data synth` kept the set the first finished


def test_synth_force_rewrites_with_the_same_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    args = ["data", "synth", "--out", str(out), "--n-train", "4", "--n-val", "2", "--size", "32", "--quiet"]
    assert main(args) == 0
    before = (out / "annotations" / "captions_val.json").read_bytes()
    assert main(args) == 0 and "already" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0
    assert (out / "annotations" / "captions_val.json").read_bytes() == before  # same secret, same captions
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp", ".old"))]


def test_synth_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["data", "synth", "--out", str(tmp_path), "--n-train", "2", "--n-val", "1", "--quiet"]) == 2
    assert "not a synthetic dataset" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- an unusable NNCAPTION_HOME


@pytest.mark.parametrize("kind", ["file", "under-a-file", "not-writable"])
def test_unusable_home_is_an_environment_error_with_exit_2(kind: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    home = {"file": blocker, "under-a-file": blocker / "home", "not-writable": Path("/proc/self")}[kind]
    monkeypatch.setenv("NNCAPTION_HOME", str(home))
    with pytest.raises(config.HomeError) as e:
        config.ensure_home()
    assert e.value.category == "environment" and e.value.exit_code == 2 and e.value.hint
    for argv in (["data", "synth", "--n-train", "2", "--n-val", "1", "--size", "32", "--quiet"],
                 ["data", "prepare", "--synthetic", str(tmp_path), "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error [environment]" in err and "NNCAPTION_HOME" in err and "next:" in err, err
        assert "internal" not in err


def test_unwritable_out_and_cache_dir_are_environment_errors(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["data", "synth", "--out", str(blocker / "s"), "--n-train", "2", "--n-val", "1", "--quiet"]) == 2
    assert "error [environment]" in capsys.readouterr().err
    assert main(["data", "prepare", "--synthetic", str(tmp_path), "--cache-dir", str(blocker), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error [environment]" in err and "--cache-dir" in err
