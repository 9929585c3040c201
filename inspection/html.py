"""`nncaption trace RUN_DIR --html OUT.html`: one self-contained HTML trace viewer (no server, no network).

The page embeds the run as JSON in a `<script type="application/json">` element
(every `<`, `>` and `&` escaped as `\\u003c`..., so no candidate text can close the
element) and renders it with inline JavaScript that only ever uses `textContent`
(candidate, LLM and log text is hostile: it is never parsed as HTML). A
Content-Security-Policy forbids every network access. The BLEU-4 chart is an
inline SVG drawn here, with every label HTML-escaped. Texts are deduplicated
(code shared by several steps is stored once), capped per text (`MAX_TEXT`) and
in total (`MAX_TOTAL`), and every other value from the run is made small (strings
cut, lists shortened, nesting bounded), so a run with a 30 MB summary still gives a
page of bounded size; the script shows the first `PREVIEW` characters of a text and
renders the rest only when "show all" is clicked. Every id and key is data to the
script (a `Map`, `Object.hasOwn`), so ids like `__proto__` or `constructor` render.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from nncaption.graph import rundir
from nncaption.graph.trace import RunReader, run_summary, step_detail, step_lines
from nncaption.inspection.html_page import PAGE
from nncaption.netapi.safetext import safe_text, strict_dumps

log = logging.getLogger(__name__)

MAX_TEXT = 60_000  # characters of one text in the page
MAX_TOTAL = 12_000_000  # characters of all texts together: the page stays well under ~50 MB
SMALL_STR, SMALL_ITEMS, SMALL_DEPTH = 2_000, 200, 8  # any other value from the run
MAX_STEPS, MAX_CANDIDATES = 20_000, 20_000  # rows shown; a (hostile) database with more is cut, and says so


class _Texts:
    """Deduplicated texts referenced by short ids, capped per text and in total."""

    def __init__(self, total: int = MAX_TOTAL) -> None:
        self.texts: dict[str, str] = {}
        self.left = total

    def add(self, text: object) -> str | None:
        if text is None or text == "":
            return None
        text = text if isinstance(text, str) else str(text)
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT] + f"\n[... {len(text) - MAX_TEXT} more characters not shown]"
        if len(text) > self.left:
            text = f"[{len(text)} characters not embedded: the page reached its size limit]"
        key = hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]
        if key not in self.texts:
            self.texts[key] = text
            self.left -= len(text)
        return key


def small(value: Any, depth: int = 0) -> Any:
    """A run value made small enough for the page: strings cut, lists and dicts shortened, nesting bounded."""
    if isinstance(value, str):
        return value if len(value) <= SMALL_STR else value[:SMALL_STR] + f"[... {len(value) - SMALL_STR} more]"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= SMALL_DEPTH:
        return "[nested too deeply]"
    if isinstance(value, dict):
        return {str(k)[:200]: small(v, depth + 1) for k, v in list(value.items())[:SMALL_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [small(v, depth + 1) for v in list(value)[:SMALL_ITEMS]]
    return small(str(value), depth)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _step_view(d: dict[str, Any], texts: _Texts) -> dict[str, Any]:
    calls = [{"role": small(c["role"]), "model_requested": small(c["model_requested"]),
              "model_returned": small(c["model_returned"]), "endpoint": small(c["endpoint"]),
              "tokens": _num(c["tokens"]["total"]), "latency_s": _num(c["latency_s"]), "error": small(c["error"]),
              "messages": [{"role": str(m.get("role", "?")) if isinstance(m, dict) else "?",
                            "text": texts.add(str(m.get("content", "")) if isinstance(m, dict) else str(m))}
                           for m in c["messages"][:SMALL_ITEMS]],
              "reply": texts.add(c["reply"]), "reasoning": texts.add(c["reasoning"])} for c in d["llm_calls"]]
    verdicts = [{**small(v), "message": texts.add(v.get("message"))} for v in d["verdicts"][:SMALL_ITEMS]]
    return {"step": small(d["step"]), "superstep": small(d["superstep"]), "node": small(d["node"]),
            "candidate": small(d["candidate"]), "attempt": small(d["attempt"]), "status": small(d["status"]),
            "duration_s": _num(d["duration_s"]), "tokens": _num(d["tokens"]),
            "detail": texts.add(strict_dumps(small(d["detail"]), sort_keys=True)) if d["detail"] else None,
            "calls": calls, "code": texts.add(d["code"]),
            "diff": texts.add(d["diff"]) if d["node"] in ("design", "fix") else None,
            "diff_against": small(d["diff_against"]), "verdicts": verdicts, "jobs": small(d["jobs"]),
            "log": texts.add(d["log_tail"]), "metrics": small(d["metrics"])}


def viewer_data(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, as strict-JSON-able data."""
    texts = _Texts()
    summary = small(run_summary(run_dir))
    with RunReader(run_dir) as r:
        cands = [{"cid": str(small(c["cid"])),
                  "idx": c["idx"] if rundir.integer(c["idx"], 0, 1 << 31) is not None else i,
                  "parent": small(c["parent"]), "origin": small(c["origin"]), "mode": small(c["mode"]),
                  "status": str(small(c["status"])), "category": small(c["category"]), "stage": small(c["stage"]),
                  "bleu4": _num(c["bleu4"]), "lemur_bleu4": _num(c["lemur_bleu4"]),
                  "summary": safe_text(str(c["summary"] or ""), 300, keep="head"),
                  "summary_text": texts.add(c["summary"]), "attempts": small(c["attempts"]),
                  "message": texts.add(c["message"])} for i, c in enumerate(r.candidates()[:MAX_CANDIDATES])]
        lines = [s for s in step_lines(r) if rundir.integer(s["step"]) is not None]
        steps = [_step_view(step_detail(r, s["step"]), texts) for s in lines[:MAX_STEPS]]
    if len(lines) > MAX_STEPS:
        log.warning("the viewer shows the first %d of %d steps", MAX_STEPS, len(lines))
        summary["steps_left_out"] = len(lines) - MAX_STEPS
    return {"run": summary, "candidates": cands, "steps": steps, "texts": texts.texts}


def _nice_ticks(top: float, n: int = 4) -> list[float]:
    """About `n` round tick values from 0 to at least `top` (1, 2 or 5 times a power of ten apart)."""
    top = max(top, 0.01)  # BLEU-4 of untrained models is ~0: a 0..0.01 axis, not 0..1e-9
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [step * k for k in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _fmt_tick(v: float, step: float) -> str:
    decimals = max(0, -int(f"{step:e}".split("e")[1]))
    return f"{v:.{decimals}f}"


def bleu_svg(cands: list[dict[str, Any]], width: int = 640, height: int = 320, max_bands: int = 4) -> str:
    """BLEU-4 (COCO protocol) per candidate in creation order as inline SVG: y ticks and one y label, integer x
    ticks, the running best, and the failed candidates as x markers in a band per failure category below the axis."""
    ordered = sorted(cands, key=lambda c: c["idx"])
    scored = [c for c in ordered if c["status"] == "scored" and c["bleu4"] is not None]
    failed = [c for c in ordered if c["status"] in ("failed", "duplicate")]
    esc = html.escape
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="BLEU-4 per candidate" font-family="sans-serif" font-size="11">')
    if not ordered:
        return f'{head}<text x="{width // 2}" y="{height // 2}" text-anchor="middle">no candidate yet</text></svg>'
    cats: list[str] = []
    for c in failed:
        cat = safe_text(str(c.get("category") or c["status"]), 60)
        if cat not in cats:
            cats.append(cat)
    if len(cats) > max_bands:
        cats = cats[:max_bands - 1] + ["other"]
    left, right, top_pad, band_h = 104, 16, 26, 16
    bands_at = 22  # below the axis: tick numbers, then one band per failure category, then the axis label
    bottom = bands_at + band_h * len(cats) + 20
    plot_h = height - top_pad - bottom
    x0, x1, y0 = left, width - right, top_pad + plot_h  # y0: the x axis
    n = max(c["idx"] for c in ordered) + 1
    ticks = _nice_ticks(max((float(c["bleu4"]) for c in scored), default=0.0))
    ymax = ticks[-1]

    def px(idx: int) -> float:
        return x0 + (x1 - x0) * (idx + 0.5) / n

    def py(v: float) -> float:
        return y0 - plot_h * v / ymax

    parts = [head, f'<rect x="{x0}" y="{top_pad}" width="{x1 - x0}" height="{plot_h}" fill="#fff" stroke="#ccc"/>']
    step = ticks[1] - ticks[0] if len(ticks) > 1 else ymax
    for t in ticks:
        y = py(t)
        parts.append(f'<line class="ytick" x1="{x0 - 4}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt_tick(t, step)}</text>')
    every = max(1, -(-n // 16))
    for idx in range(0, n, every):
        x = px(idx)
        parts.append(f'<line class="xtick" x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#888"/>'
                     f'<text x="{x:.1f}" y="{y0 + 15}" text-anchor="middle">{idx + 1}</text>')
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#888"/>')
    parts.append(f'<text class="ylabel" transform="translate(14 {top_pad + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">BLEU-4 (COCO protocol)</text>')
    parts.append(f'<text class="xlabel" x="{(x0 + x1) / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                 f'candidate (creation order)</text>')
    best, line = -1.0, []
    for c in scored:
        best = max(best, float(c["bleu4"]))
        line.append(f"{px(c['idx']):.1f},{py(best):.1f}")
    if line:
        parts.append(f'<polyline class="best" fill="none" stroke="#2a7" stroke-width="2" points="{" ".join(line)}"/>')
    for c in scored:
        parts.append(f'<circle class="pt" cx="{px(c["idx"]):.1f}" cy="{py(float(c["bleu4"])):.1f}" r="4">'
                     f'<title>{esc(c["cid"])}: BLEU-4 {float(c["bleu4"]):.4f}</title></circle>')
    for row, cat in enumerate(cats):
        y = y0 + bands_at + band_h * row + band_h / 2
        parts.append(f'<text class="band" x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#b22">'
                     f'{esc(cat[:18])}</text>'
                     f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#f3dada"/>')
    for c in failed:
        cat = safe_text(str(c.get("category") or c["status"]), 60)
        row = cats.index(cat) if cat in cats else len(cats) - 1
        x, y = px(c["idx"]), y0 + bands_at + band_h * row + band_h / 2
        parts.append(f'<path class="fail" d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}'
                     f'L{x + 4:.1f},{y - 4:.1f}" stroke="#b22" stroke-width="2"><title>{esc(c["cid"])}: '
                     f'{esc(c["status"])} ({esc(cat)})</title></path>')
    lx = x1 - 250
    parts.append(f'<g class="legend"><circle cx="{lx}" cy="12" r="4" fill="#36c"/><text x="{lx + 8}" y="16">scored'
                 f'</text><line x1="{lx + 62}" y1="12" x2="{lx + 80}" y2="12" stroke="#2a7" stroke-width="2"/>'
                 f'<text x="{lx + 84}" y="16">running best</text><path d="M{lx + 172},8L{lx + 180},16M{lx + 172},16'
                 f'L{lx + 180},8" stroke="#b22" stroke-width="2"/><text x="{lx + 186}" y="16">failed</text></g>')
    if not scored:
        parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{top_pad + plot_h / 2:.1f}" text-anchor="middle" '
                     f'fill="#888">no candidate scored yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def embed_json(data: Any) -> str:
    """Strict JSON safe inside a <script> element: <, > and & escaped (no `</script>` can appear)."""
    text = strict_dumps(data, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(data: dict[str, Any]) -> str:
    run = data["run"]
    title = f"nn-caption trace: {safe_text(str(run.get('run_id') or ''), 200, keep='head')}"
    parts = {"%%TITLE%%": html.escape(title), "%%SVG%%": bleu_svg(data["candidates"]), "%%DATA%%": embed_json(data)}
    # one pass over the template: a marker inside inserted text (an escaped cid in the SVG) is never replaced
    return re.sub("%%(TITLE|SVG|DATA)%%", lambda m: parts[m.group(0)], PAGE)


def write_viewer(run_dir: Path, out: Path) -> Path:
    """Write the viewer of `run_dir` to `out` (atomically) and return its path."""
    page = render(viewer_data(Path(run_dir)))
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_path(out, page)  # a new file renamed over `out`: a link there is replaced, never followed
    log.info("wrote %s (%d bytes)", out, len(page))
    return out


def _selfcheck(page: str) -> bool:
    """True when the page has exactly one data element and it parses (used by tests)."""
    start = page.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    end = page.index("</script>", start)
    return isinstance(json.loads(page[start:end]), dict)
