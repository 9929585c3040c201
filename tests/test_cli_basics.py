"""The CLI's common layer: global logging options, error reporting (text and --json), setup problems as exit 2,
internal-error logs under $NNCAPTION_HOME created without following symlinks, and command discovery."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nncaption import cli
from nncaption.cli import environment_problem, main, write_crash_log

ROOT = Path(__file__).resolve().parent.parent


def _one_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    obj = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert isinstance(obj, dict)
    return obj


def test_every_cmd_module_is_a_command() -> None:
    """New command groups are found by their file name (no edit of cli.py, no silent skip of a broken module)."""
    modules = cli.command_modules()
    files = sorted(p.stem for p in (ROOT / "nncaption").glob("cmd_*.py"))
    assert modules == [f"nncaption.{stem}" for stem in files]
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(actions[0].choices)
    assert {"data", "check", "eval-model", "llm", "sandbox"} <= commands


def test_file_valued_home_is_an_environment_error_under_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A file where $NNCAPTION_HOME should be a folder: exit 2, category, next step, one JSON object on stdout."""
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")
    monkeypatch.setenv("NNCAPTION_HOME", str(home))
    rc = main(["llm", "design", "--json", "--out", str(tmp_path / "m.py")])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    obj = _one_json(captured.out)
    assert obj["category"] == "environment" and obj["ok"] is False
    assert str(home) in obj["message"] and "NNCAPTION_HOME" in obj["hint"]
    assert "error [environment]" in captured.err and "internal" not in captured.err


def test_file_valued_home_is_an_environment_error_in_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")
    monkeypatch.setenv("NNCAPTION_HOME", str(home))
    rc = main(["data", "synth", "--n-train", "2", "--n-val", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error [environment]" in err and "next:" in err and "bug" not in err


def test_categorised_error_under_json_is_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An NNCaptionError that reaches the top level still prints exactly one JSON object under --json."""
    rc = main(["llm", "design", "--json", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "m.py")])
    captured = capsys.readouterr()
    assert rc in (1, 2)
    obj = _one_json(captured.out)
    assert obj["ok"] is False and obj["category"] == "dataset" and obj["hint"]


def test_internal_error_under_json_logs_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.netapi.data import loader

    home = tmp_path / "home"
    monkeypatch.setenv("NNCAPTION_HOME", str(home))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted bug \x1b[31m")

    monkeypatch.setattr(loader.PreparedData, "open", broken)
    argv = ["llm", "design", "--json", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m.py")]
    assert main(argv) == 1
    obj = _one_json(capsys.readouterr().out)
    assert obj["category"] == "internal" and "planted bug" in obj["message"] and "\x1b" not in obj["message"]
    log = Path(obj["log"])
    assert log.parent == home / "logs" and log.name.startswith("crash-")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "RuntimeError: planted bug" in log.read_text()
    assert main(argv) == 1
    second = Path(_one_json(capsys.readouterr().out)["log"])
    assert second != log and second.exists() and log.exists()  # unique names, nothing overwritten


def test_crash_log_never_follows_a_planted_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    monkeypatch.setenv("NNCAPTION_HOME", str(home))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    now = time.time()
    for dt in range(-1, 4):  # every name the next call could pick in the coming seconds
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + dt))
        (home / "logs" / f"crash-{stamp}-{os.getpid()}.log").symlink_to(victim)
    path = write_crash_log("traceback text")
    assert victim.read_text() == "keep me"
    assert not path.is_symlink() and path.read_text() == "traceback text"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_environment_problems_from_real_os_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError) as isdir:
        open(tmp_path, "w")  # the error is the point
    problem = environment_problem(isdir.value)
    assert problem is not None and problem.exit_code == 2 and str(tmp_path) in problem.message
    with socket.socket() as taken, socket.socket() as second:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as inuse:
            second.bind(taken.getsockname())
    assert inuse.value.errno == errno.EADDRINUSE
    problem = environment_problem(inuse.value)
    assert problem is not None and "--port" in problem.hint
    assert environment_problem(OSError(errno.EBADF, "Bad file descriptor")) is None  # looks like a bug: internal


def test_log_options_before_and_after_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("x")
    monkeypatch.setenv("NNCAPTION_HOME", str(home))
    before, after = tmp_path / "before.log", tmp_path / "after.log"
    argv = ["data", "synth", "--n-train", "2", "--n-val", "1", "--quiet"]
    assert main(["--log-level", "DEBUG", "--log-file", str(before), *argv]) == 2
    assert main([*argv, "--log-level", "debug", "--log-file", str(after)]) == 2
    for log in (before, after):
        text = log.read_text()
        assert "DEBUG nncaption.cli: command failed: [environment]" in text and "Traceback" in text
    capsys.readouterr()
    assert main(["--log-file", str(tmp_path), *argv]) == 2  # a folder as --log-file: a setup problem, not a bug
    assert "error [environment]" in capsys.readouterr().err


def test_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--log-level", "loud", "sandbox", "probe"])
    assert e.value.code == 2


def test_console_script_runs_from_the_venv() -> None:
    """The README tells a new user to run .venv/bin/nncaption (or activate the venv): that file must work."""
    script = Path(sys.executable).parent / "nncaption"
    assert script.is_file(), f"{script} missing: make install creates it"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("nncaption ")


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "nncaption", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("nncaption "), proc.stderr


def test_readme_says_how_to_run_the_cli_after_the_quick_start() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/nncaption" in quick and "source .venv/bin/activate" in quick


def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{"data synth": ["--out", ...], ...}: each runnable command with its long options (global ones left out)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: dict[str, list[str]] = {}
    if path and not subs:
        flags = []
        for action in parser._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs and longs[0] not in ("--help", "--log-level", "--log-file", "--version"):
                flags.append(longs[0])
        found[" ".join(path)] = flags
    for sub in subs:
        for name, child in sub.choices.items():
            found.update(_leaf_commands(child, (*path, name)))
    return found


def _synopses(readme: str) -> dict[str, str]:
    """The README's synopsis per command: a `nncaption CMD ...` line in a code block and its indented follow-ups."""
    out: dict[str, str] = {}
    current: str | None = None
    for line in readme.splitlines():
        stripped = line.strip()
        if stripped.startswith("nncaption "):
            words: list[str] = []
            for word in stripped.split()[1:3]:
                if not (word.replace("-", "").isalpha() and word.islower() and not word.startswith("-")):
                    break
                words.append(word)
            current = " ".join(words)
            out[current] = out.get(current, "") + " " + stripped
        elif current is not None and line.startswith(" ") and stripped and not stripped.startswith("#"):
            out[current] += " " + stripped
        else:
            current = None
    return out


def test_readme_synopses_list_every_flag() -> None:
    """Every command and every flag its --help shows appears in the README's synopsis of that command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    synopses = _synopses(readme)
    missing: list[str] = []
    for command, flags in _leaf_commands(cli.build_parser()).items():
        text = synopses.get(command)
        if text is None:
            missing.append(f"{command}: no synopsis")
            continue
        same = re.search(r"\[the same options as ([a-z -]+?)\]", text)  # e.g. config show: [the same options as run]
        if same:
            text += synopses.get(same.group(1).strip(), "")
        missing += [f"{command}: {flag}" for flag in flags
                    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
    assert not missing, "README.md synopses lack:\n" + "\n".join(missing)
