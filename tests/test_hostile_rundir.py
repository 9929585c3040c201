"""A run directory someone else edited is hostile input: every inspection command, --resume and --fork hold.

One real small run is made per session (run_fixture); each test copies it and
plants the attack: a checkpoint that serializes a call, a cid and an epoch that are
paths, a blob reference that walks out, symlinked blobs, report files and
best_model.py, a FIFO blob, control bytes in texts, a slow SQL view. The commands
run as real subprocesses with a timeout (a hang fails the test); afterwards nothing
outside the run directory and the chosen output folder was executed, read or
written.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langgraph.checkpoint.serde import jsonplus as jp

pytestmark = pytest.mark.timeout(900)

SECRET = "TOPSECRET-7f3a"
ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[31mFAKE\x9b"
WALK_OUT = "../" + "./" * 23 + "secret-file.txt"  # 64 characters: RUN/blobs/../<ref> = RUN/../secret-file.txt


def cli(args: list[str], *, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`nncaption ARGS`: a hang beyond `timeout` fails the test (subprocess.TimeoutExpired)."""
    return subprocess.run([sys.executable, "-m", "nncaption.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False,
                          encoding="utf-8", errors="surrogateescape")


def copy_run(real_run: Path, dst: Path) -> Path:
    shutil.copytree(real_run, dst, ignore=shutil.ignore_patterns("run.lock", "report"))
    return dst


def evil_msgpack(marker: Path) -> bytes:
    call = ormsgpack.packb(("os", "system", [f"touch {marker}"]))
    return ormsgpack.packb({"v": 1, "x": ormsgpack.Ext(jp.EXT_CONSTRUCTOR_POS_ARGS, call)})


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return list(con.execute(sql, params).fetchall())
    finally:
        con.close()


def execute(db: Path, *sql: str | tuple[str, tuple[Any, ...]]) -> None:
    con = sqlite3.connect(db)
    try:
        with con:
            for s in sql:
                con.execute(*(s if isinstance(s, tuple) else (s,)))
    finally:
        con.close()


def blob_file(run: Path, ref: str) -> Path:
    return run / "blobs" / ref[:2] / ref


def clean_output(proc: subprocess.CompletedProcess[str]) -> None:
    """No raw control byte from the run reached the terminal, and no secret."""
    for text in (proc.stdout, proc.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, text[-2000:]
        assert SECRET not in text


@pytest.fixture
def hostile(real_run: Path, tmp_path: Path) -> dict[str, Any]:
    """A copy of the real run with every file-system attack planted, and the victims outside it."""
    run = copy_run(real_run, tmp_path / "run")
    (tmp_path / "secret-file.txt").write_text(SECRET + "\n")
    victims = {"best": tmp_path / "victim-best.py", "report": tmp_path / "victim-report.md",
               "png": tmp_path / "victim.png", "dir": tmp_path / "victim-dir", "log": tmp_path / "victim.log"}
    for key in ("best", "report", "png", "log"):
        victims[key].write_text("ORIGINAL\n")
    victims["dir"].mkdir()
    (victims["dir"] / "keep.txt").write_text("keep\n")
    db = run / "results.sqlite"
    design = rows(db, "SELECT step, cid, code_ref FROM steps WHERE node='design' AND code_ref IS NOT NULL "
                      "ORDER BY step")
    assert len(design) >= 2, design
    (s_link, cid_link, ref_link), (s_fifo, cid_fifo, ref_fifo) = design[0], design[1]
    blob_file(run, ref_link).unlink()
    blob_file(run, ref_link).symlink_to(tmp_path / "secret-file.txt")
    blob_file(run, ref_fifo).unlink()
    os.mkfifo(blob_file(run, ref_fifo))
    best = rows(db, "SELECT cid FROM candidates WHERE status='scored' ORDER BY bleu4 DESC LIMIT 1")[0][0]
    (run / "best_model.py").unlink(missing_ok=True)
    (run / "best_model.py").symlink_to(victims["best"])
    (run / "run.log").unlink(missing_ok=True)
    (run / "run.log").symlink_to(victims["log"])
    (run / "report").mkdir()
    (run / "report" / "report.md").symlink_to(victims["report"])
    (run / "report" / "funnel.png").symlink_to(victims["png"])
    execute(db,
            ("UPDATE candidates SET code_ref=? WHERE cid=?", (WALK_OUT, best)),
            ("UPDATE attempts SET code_ref=? WHERE cid=?", (WALK_OUT, best)),
            ("UPDATE steps SET code_ref=?, log_ref=? WHERE cid=?", (WALK_OUT, WALK_OUT, best)),
            ("INSERT OR REPLACE INTO epochs (cid, epoch, bleu4, train_loss, seconds) VALUES (?, ?, 0.5, 1.0, 'x')",
             (best, "../../../../escaped-epoch")),
            ("UPDATE sandbox_jobs SET job_id='../../..' WHERE cid=?", (cid_fifo,)),
            ("UPDATE candidates SET summary=?, message=? WHERE cid=?", (ESC + " summary", ESC + " message", cid_link)),
            ("UPDATE verdicts SET message=? WHERE cid=?", (ESC + " verdict", cid_link)),
            ("UPDATE runs SET run_id=?", ("run" + ESC,)),
            ("INSERT INTO candidates (cid, idx, parent, origin, mode, status, planned_step, summary) VALUES "
             "(?, 900, NULL, 'compose', 'draft', 'failed', 100000, ?)", (f"../../{victims['dir'].name}", ESC)),
            "INSERT INTO candidates (cid, idx, parent, origin, mode, status, planned_step) VALUES "
            "('__proto__', 901, 'constructor', 'compose', 'draft', 'failed', 1)",
            "INSERT INTO candidates (cid, idx, parent, origin, mode, status, planned_step) VALUES "
            "('constructor', 902, '__proto__', 'improve', 'draft', 'failed', 1)")
    return {"run": run, "tmp": tmp_path, "victims": victims, "best": best, "s_link": s_link, "s_fifo": s_fifo}


def assert_victims_intact(h: dict[str, Any]) -> None:
    v = h["victims"]
    for key in ("best", "report", "png", "log"):
        assert v[key].read_text() == "ORIGINAL\n", key
    assert (v["dir"] / "keep.txt").read_text() == "keep\n"
    assert not (h["tmp"] / "escaped-epoch").exists() and not list(h["tmp"].parent.glob("escaped-epoch*"))


@pytest.mark.sandbox  # uses real_run
def test_inspection_commands_refuse_or_ignore_every_planted_attack(hostile: dict[str, Any]) -> None:
    run, tmp = hostile["run"], hostile["tmp"]
    outputs = []
    for args in (["runs", str(tmp)], ["runs", str(tmp), "--json"], ["trace", str(run)], ["trace", str(run), "--json"],
                 ["trace", str(run), "--step", str(hostile["s_link"])],
                 ["trace", str(run), "--step", str(hostile["s_fifo"]), "--json"],
                 ["trace", str(run), "--candidate", hostile["best"]], ["trace", str(run), "--candidate", "__proto__"],
                 ["trace", str(run), "--html", str(tmp / "out" / "viewer.html")],
                 ["report", str(run)], ["report", str(run), "--out", str(tmp / "out" / "rep")],
                 ["export", str(run), "--lemur", str(tmp / "out" / "lemur")]):
        t0 = time.monotonic()
        proc = cli(args)
        assert proc.returncode in (0, 1, 2), (args, proc.stderr[-3000:])
        assert "error [internal]" not in proc.stderr, (args, proc.stderr[-3000:])
        clean_output(proc)
        outputs.append((args, time.monotonic() - t0))
    assert_victims_intact(hostile)
    assert (run / "report" / "report.md").is_file() and not (run / "report" / "report.md").is_symlink()
    report = (run / "report" / "report.md").read_text(encoding="utf-8")
    assert "\x1b" not in report and "\x07" not in report and SECRET not in report
    for f in (tmp / "out").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert SECRET.encode() not in data, f
            if f.suffix in (".md", ".html", ".json"):
                assert b"\x1b" not in data and b"\x07" not in data, f
    lemur = tmp / "out" / "lemur"
    assert all(p.resolve().is_relative_to(lemur.resolve()) for p in lemur.rglob("*"))
    page = (tmp / "out" / "viewer.html").read_text(encoding="utf-8")
    assert "__proto__" in page and "constructor" in page


def test_a_blob_ref_that_walks_out_is_never_read() -> None:
    from nncaption.graph import rundir

    assert rundir.ref(WALK_OUT) is None and rundir.blob_path(WALK_OUT) is None
    assert rundir.cid("../../x") is None and rundir.cid("c0001") == "c0001"
    assert rundir.integer("3") is None and rundir.integer(True) is None and rundir.integer(3) == 3
    assert rundir.job_id("../..") is None and rundir.job_id("ab12_-") == "ab12_-"


@pytest.mark.sandbox  # uses real_run
@pytest.mark.slow
def test_resume_refuses_a_foreign_config_then_writes_nothing_outside(hostile: dict[str, Any]) -> None:
    run = hostile["run"]
    cfg = json.loads((run / "config.json").read_text())
    cfg.setdefault("agents", {})["kind"] = "llm"
    cfg["agents"].setdefault("llm", {}).setdefault("shared", {}).update(
        {"base_url": "http://203.0.113.9:8000/v1", "api_key_env": "NNC_TEST_SECRET_TOKEN", "model": "m"})
    (run / "config.json").write_text(json.dumps(cfg))
    proc = cli(["run", "--resume", str(run), "--no-live"], env={"NNC_TEST_SECRET_TOKEN": SECRET})
    assert proc.returncode == 2 and "untrusted-run" in proc.stderr, proc.stderr[-2000:]
    assert "203.0.113.9" in proc.stderr and "NNC_TEST_SECRET_TOKEN" in proc.stderr
    assert "--trust-run-config" in proc.stderr
    clean_output(proc)
    proc = cli(["trace", str(run), "--fork", str(hostile["s_link"]), "--into", str(hostile["tmp"] / "fork")])
    assert proc.returncode == 2 and "untrusted-run" in proc.stderr and not (hostile["tmp"] / "fork").exists()
    (run / "config.json").write_text(json.dumps({**cfg, "agents": {"kind": "baseline"}}))
    proc = cli(["run", "--resume", str(run), "--no-live", "--trust-run-config"], timeout=600)
    assert "error [internal]" not in proc.stderr, proc.stderr[-3000:]
    clean_output(proc)
    assert_victims_intact(hostile)
    best = run / "best_model.py"
    assert not best.is_symlink() or best.resolve() == hostile["victims"]["best"]  # replaced, or left alone
    assert SECRET not in (best.read_text() if best.exists() and not best.is_symlink() else "")


def _plant_evil_checkpoints(run: Path, marker: Path) -> None:
    execute(run / "checkpoints.sqlite", ("UPDATE checkpoints SET checkpoint=?", (evil_msgpack(marker),)))
    execute(run / "results.sqlite", "UPDATE runs SET status='interrupted'",
            "UPDATE candidates SET status='interrupted', recorded_step=NULL "
            "WHERE idx=(SELECT MAX(idx) FROM candidates)")


@pytest.mark.sandbox  # uses real_run
@pytest.mark.slow
def test_a_checkpoint_that_serializes_a_call_refuses_resume_and_fork(real_run: Path, tmp_path: Path) -> None:
    run = copy_run(real_run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    _plant_evil_checkpoints(run, marker)
    proc = cli(["run", "--resume", str(run), "--no-live", "--trust-run-config"], timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error [checkpoint]" in proc.stderr and "checkpoints.sqlite" in proc.stderr and "os.system" in proc.stderr
    step = rows(run / "results.sqlite", "SELECT MAX(step) FROM steps WHERE node='train'")[0][0]
    proc = cli(["trace", str(run), "--fork", str(step), "--into", str(tmp_path / "fork"), "--trust-run-config"],
               timeout=300)
    assert proc.returncode == 2 and "os.system" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists()


@pytest.mark.sandbox  # uses real_run
def test_every_checkpoint_of_a_real_run_loads_and_edited_ones_are_refused(real_run: Path, tmp_path: Path) -> None:
    import asyncio

    from nncaption.graph.runner import open_checkpointer
    from nncaption.graph.serde import CheckpointRejected, StateSerde

    serde = StateSerde(real_run / "checkpoints.sqlite")
    db = real_run / "checkpoints.sqlite"
    loaded = [serde.loads_typed((t, b)) for t, b in rows(db, "SELECT type, checkpoint FROM checkpoints")]
    loaded += [serde.loads_typed((t, b)) for t, b in rows(db, "SELECT type, value FROM writes")]
    assert loaded and all(t == "nncaption-state-v1" for (t,) in rows(db, "SELECT DISTINCT type FROM checkpoints"))
    marker = tmp_path / "PWNED"
    nested_send = ormsgpack.packb(ormsgpack.Ext(jp.EXT_CONSTRUCTOR_POS_ARGS, ormsgpack.packb(
        ("langgraph.types", "Send", ["n", ormsgpack.Ext(jp.EXT_CONSTRUCTOR_SINGLE_ARG,
                                                        ormsgpack.packb(("os", "system", f"touch {marker}")))]))))
    method = ormsgpack.packb(ormsgpack.Ext(jp.EXT_METHOD_SINGLE_ARG, ormsgpack.packb(
        ("os", "system", f"touch {marker}", "__call__"))))
    for value in (("nncaption-state-v1", evil_msgpack(marker)), ("msgpack", nested_send),
                  ("nncaption-state-v1", method), ("pickle", b"cos\nsystem\n"), ("json", b"{}"),
                  ("nncaption-state-v9", b"\x80")):
        with pytest.raises(CheckpointRejected) as info:
            serde.loads_typed(value)
        assert "checkpoints.sqlite" in info.value.message
    run = copy_run(real_run, tmp_path / "run")
    _plant_evil_checkpoints(run, marker)
    thread = rows(run / "checkpoints.sqlite", "SELECT thread_id FROM checkpoints LIMIT 1")[0][0]

    async def load() -> None:
        async with open_checkpointer(run / "checkpoints.sqlite") as saver:
            await saver.aget_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}})

    with pytest.raises(CheckpointRejected):
        asyncio.run(load())
    assert not marker.exists()


@pytest.mark.sandbox  # uses real_run
@pytest.mark.parametrize("kind", ["view", "trigger"])
def test_a_slow_sql_view_or_a_trigger_is_refused_within_seconds(real_run: Path, tmp_path: Path, kind: str) -> None:
    run = copy_run(real_run, tmp_path / "run")
    slow = ("(WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 100000000000) "
            "SELECT COUNT(*) FROM r)")
    if kind == "view":
        execute(run / "results.sqlite", "ALTER TABLE steps RENAME TO steps_real",
                f"CREATE VIEW steps AS SELECT s.* FROM steps_real s WHERE {slow} > 0")
    else:
        execute(run / "results.sqlite", f"CREATE TRIGGER t AFTER UPDATE ON runs BEGIN SELECT {slow}; END")
    for args in (["runs", str(tmp_path)], ["trace", str(run)], ["trace", str(run), "--step", "1"],
                 ["trace", str(run), "--html", str(tmp_path / "v.html")], ["report", str(run)],
                 ["export", str(run), "--lemur", str(tmp_path / "lemur")],
                 ["trace", str(run), "--fork", "1", "--into", str(tmp_path / "fork"), "--trust-run-config"]):
        proc = cli(args, timeout=60)
        assert "error [internal]" not in proc.stderr, (args, proc.stderr[-2000:])
        if args[0] == "runs":
            assert "unreadable" in proc.stdout, proc.stdout
        else:
            assert proc.returncode == 2 and kind in proc.stderr, (args, proc.stderr[-2000:])


@pytest.mark.sandbox  # uses real_run
def test_sqlite_reads_are_time_bounded(real_run: Path) -> None:
    from nncaption.graph import rundir

    db = rundir.connect_ro(real_run / "results.sqlite", time_limit=0.5)
    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="interrupt"):
        db.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 100000000000) "
                   "SELECT COUNT(*) FROM r").fetchall()
    assert time.monotonic() - t0 < 30
    with pytest.raises(sqlite3.OperationalError):
        db.execute("CREATE TABLE x (a)")  # read-only
    db.close()


def test_reads_never_follow_links_or_block(tmp_path: Path) -> None:
    from nncaption.graph import rundir

    root, outside = tmp_path / "run", tmp_path / "outside"
    (root / "blobs").mkdir(parents=True)
    outside.mkdir()
    (outside / "f").write_text(SECRET)
    (root / "blobs" / "ab").symlink_to(outside, target_is_directory=True)  # a linked folder on the way
    (root / "link").symlink_to(outside / "f")
    os.mkfifo(root / "fifo")
    (root / "big").write_bytes(b"x" * 5000)
    assert rundir.read_bytes(root, ["blobs", "ab", "f"]) is None
    assert rundir.read_bytes(root, "link") is None
    t0 = time.monotonic()
    assert rundir.read_bytes(root, "fifo") is None and time.monotonic() - t0 < 10
    assert rundir.read_bytes(root, "big", 100) == b"x" * 100
    assert rundir.read_bytes(root, "big", 10, offset=-3) == b"xxx"
    for bad in ("../outside/f", "/etc/passwd", "a//b", "."):
        with pytest.raises(rundir.RunDirError):
            rundir.read_bytes(root, bad)


def test_writes_replace_links_and_refuse_linked_folders(tmp_path: Path) -> None:
    from nncaption.graph import rundir

    root, target = tmp_path / "run", tmp_path / "target.txt"
    root.mkdir()
    target.write_text("ORIGINAL")
    (root / "out.md").symlink_to(target)
    rundir.write_file(root, "out.md", "new")
    assert target.read_text() == "ORIGINAL" and (root / "out.md").read_text() == "new"
    assert not (root / "out.md").is_symlink()
    (root / "report").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(rundir.RunDirError, match="link"):
        rundir.write_file(root, ["report", "x.md"], "new")
    assert not (tmp_path / "x.md").exists()
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("config", ["[a]\nb = " + "[" * 100_000 + "]" * 100_000 + "\n", "x = {" * 5000 + "\n",
                                    "bad = 'x'\nseed = \xff\n"])
def test_malformed_config_files_are_configuration_errors(tmp_path: Path, config: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(config.encode("utf-8", "surrogateescape") if "\xff" not in config else
                     config.encode("latin-1"))
    proc = cli(["config", "show", "--config", str(path)])
    assert proc.returncode == 2 and "error [config]" in proc.stderr and "internal" not in proc.stderr, proc.stderr
    assert "c.toml" in proc.stderr


@pytest.mark.sandbox  # uses real_run
def test_viewer_renders_proto_ids_and_a_30_mb_summary_in_a_bounded_page(real_run: Path, tmp_path: Path) -> None:
    run = copy_run(real_run, tmp_path / "run")
    first = rows(run / "results.sqlite", "SELECT cid FROM candidates ORDER BY idx LIMIT 1")[0][0]
    execute(run / "results.sqlite",
            ("UPDATE candidates SET summary=?, parent='__proto__' WHERE cid=?", ("S" * 30_000_000, first)),
            "INSERT INTO candidates (cid, idx, parent, origin, mode, status, planned_step) VALUES "
            "('__proto__', 901, 'constructor', 'compose', 'draft', 'failed', 1)",
            "INSERT INTO candidates (cid, idx, parent, origin, mode, status, planned_step) VALUES "
            "('constructor', 902, NULL, 'compose', 'draft', 'failed', 1)")
    out = tmp_path / "viewer.html"
    proc = cli(["trace", str(run), "--html", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    size = out.stat().st_size
    assert size < 5_000_000, size  # the 30 MB summary is capped, not embedded (twice)
    n_steps = rows(run / "results.sqlite", "SELECT COUNT(*) FROM steps")[0][0]
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out.as_uri())
            page.wait_for_selector("li.step")
            assert page.locator("li.step").count() == n_steps
            cids = page.locator("tr.cand td:first-child").all_inner_texts()
            assert "__proto__" in cids and "constructor" in cids
            assert page.locator("#tree li").count() == len(cids)
            assert errors == []
        finally:
            browser.close()


@pytest.mark.sandbox  # uses real_run
@pytest.mark.slow
def test_fork_of_a_hostile_run_copies_no_link_and_touches_nothing_outside(hostile: dict[str, Any]) -> None:
    run, tmp = hostile["run"], hostile["tmp"]
    step = rows(run / "results.sqlite", "SELECT MIN(step) FROM steps WHERE node='train'")[0][0]
    proc = cli(["trace", str(run), "--fork", str(step), "--into", str(tmp / "fork"), "--trust-run-config"],
               timeout=600)
    assert proc.returncode in (0, 1, 2) and "error [internal]" not in proc.stderr, proc.stderr[-3000:]
    clean_output(proc)
    assert_victims_intact(hostile)
    assert (tmp / "fork").is_dir()
    for f in (tmp / "fork").rglob("*"):
        assert not f.is_symlink(), f
        assert f.is_dir() or f.is_file(), f  # no FIFO copied
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_one_escaping_path_for_logs_and_markdown() -> None:
    import logging

    from nncaption.netapi.safetext import SafeFormatter, safe_markdown

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "server said %s", (ESC,), None)
    line = SafeFormatter("%(message)s").format(record)
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line and "\\x1b" in line
    for hostile in ("![x](http://evil.example/t.png)", "[click](javascript:alert(1))", "<img src=x>",
                    "see https://evil.example/", "a | b\nc `code`"):
        md = safe_markdown(hostile)
        assert "](" not in md and "<img" not in md and "://" not in md and "\n" not in md and "`" not in md
        assert " | " not in md.replace("\\|", "")


@pytest.mark.sandbox  # uses real_run
@pytest.mark.parametrize("plant", ["results", "checkpoints", "blob_folder"])
def test_links_where_a_run_keeps_its_data_refuse_resume(real_run: Path, tmp_path: Path, plant: str) -> None:
    run = copy_run(real_run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if plant == "blob_folder":
        sub = next(p for p in (run / "blobs").iterdir() if p.is_dir())
        shutil.move(str(sub), str(elsewhere / sub.name))
        sub.symlink_to(elsewhere / sub.name, target_is_directory=True)
    else:
        name = f"{plant}.sqlite"
        shutil.move(str(run / name), str(elsewhere / name))
        (run / name).symlink_to(elsewhere / name)
    before = {p.name: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}
    proc = cli(["run", "--resume", str(run), "--no-live", "--trust-run-config"], timeout=120)
    assert proc.returncode == 2 and "error [run-dir]" in proc.stderr, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == before
    if plant == "results":
        proc = cli(["trace", str(run)])
        assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr[-2000:]


def test_trust_follows_the_settings_that_send_keys_and_code(tmp_path: Path) -> None:
    from nncaption.graph import runtrust

    run = tmp_path / "r"
    run.mkdir()
    cfg = {"seed": 1, "agents": {"kind": "llm", "llm": {"shared": {"base_url": "http://a/v1", "api_key_env": "K"}}}}
    assert not runtrust.is_trusted(run, cfg)
    runtrust.remember(run, cfg)
    assert runtrust.is_trusted(run, cfg) and runtrust.is_trusted(run, {**cfg, "seed": 2})  # budget etc. may change
    edited = json.loads(json.dumps(cfg))
    edited["agents"]["llm"]["shared"]["api_key_env"] = "AWS_SECRET_ACCESS_KEY"
    with pytest.raises(runtrust.UntrustedRunConfig) as info:
        runtrust.check(run, edited, trust=False, action="--fork")
    assert "AWS_SECRET_ACCESS_KEY" in info.value.message and "--llm-base-url" in info.value.hint
    assert "llm" not in runtrust.stripped(edited)["agents"] and runtrust.stripped(edited)["seed"] == 1


def test_deep_or_odd_json_in_a_run_reads_as_nothing() -> None:
    from nncaption.graph.trace import loads

    assert loads("[" * 100_000 + "]" * 100_000, "x") == "x"
    assert loads("{bad", {}) == {} and loads(None, 1) == 1 and loads('{"a": 1}') == {"a": 1}
