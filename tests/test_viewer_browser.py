"""The HTML trace viewer in headless Chromium (Debian's `chromium`, driven by Playwright with executable_path).

The page of a real run loads with no console errors and no network request, lists
the run's candidates, and clicking a step shows its code. A screenshot is kept
under the test's tmp dir and copied to build/artifacts/viewer.png. A copy of the
run with hostile text (a summary that tries to close the script element and run
its own) renders that text as text: no dialog, no extra script.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from run_fixture import run_cli

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "artifacts"
HOSTILE = "</script><script>alert('pwned')</script><img src=x onerror=alert(1)>\x1b[31m"


pytestmark = pytest.mark.sandbox  # every test here uses real_run (a real search run, tests/conftest.py)


@pytest.fixture(scope="module")
def browser() -> Any:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/services.sh does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Any, html: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def on_dialog(dialog: Any) -> None:
        errors.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.goto(html.as_uri())
    page.wait_for_selector("li.step")
    return page, errors, requests


def test_viewer_shows_candidates_and_step_code(browser: Any, real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "viewer.html"
    run_cli(["trace", str(real_run), "--html", str(out)])
    db = sqlite3.connect(f"file:{real_run / 'results.sqlite'}?mode=ro", uri=True)
    cids = [r[0] for r in db.execute("SELECT cid FROM candidates ORDER BY idx")]
    n_steps = db.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    train_step = db.execute("SELECT step FROM steps WHERE node='train' ORDER BY step LIMIT 1").fetchone()[0]
    db.close()
    page, errors, requests = open_page(browser, out)
    assert page.locator("tr.cand td:first-child").all_inner_texts() == cids
    assert page.locator("li.step").count() == n_steps
    assert page.locator("#tree li").count() == len(cids)
    assert page.locator("#chart svg").count() == 1
    box = page.locator("#chart svg").bounding_box()
    assert box is not None and box["width"] >= 600 and box["height"] >= 300  # readable, not a 250x130 thumbnail
    assert page.locator("#chart svg text.ylabel").count() == 1
    assert page.locator("#chart svg line.xtick").count() == len(cids)
    failed = sum(1 for c in page.locator("tr.cand td:nth-child(2)").all_inner_texts() if "failed" in c)
    assert page.locator("#chart svg path.fail").count() == failed
    page.click(f"li.step[data-step='{train_step}']")
    code = page.locator("#detail pre.code").inner_text()
    assert "class Net" in code and "def forward" in code
    assert "BLEU-4 (COCO protocol)" in page.locator("#detail").inner_text()
    page.click("tr.cand >> nth=0")  # filter the timeline to one candidate
    assert 0 < page.locator("li.step").count() < n_steps
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "viewer.png")
    assert shot.stat().st_size > 10_000
    assert errors == [] and requests == []


def test_viewer_renders_hostile_text_as_text(browser: Any, real_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(real_run, copy, ignore=shutil.ignore_patterns("jobs"))
    db = sqlite3.connect(copy / "results.sqlite")
    with db:
        db.execute("UPDATE candidates SET summary=?, category=? WHERE idx=0", (HOSTILE, HOSTILE))
    db.close()
    out = tmp_path / "hostile.html"
    run_cli(["trace", str(copy), "--html", str(out)])
    text = out.read_text(encoding="utf-8")
    assert "alert('pwned')</script>" not in text and "<img src=x" not in text
    page, errors, _ = open_page(browser, out)
    assert page.locator("script").count() == 2  # the data element and the viewer's own script, nothing injected
    assert page.locator("img").count() == 0
    assert HOSTILE.split("\x1b")[0] in page.locator("tr.cand >> nth=0").inner_text()
    assert errors == []
