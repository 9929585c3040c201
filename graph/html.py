"""`nncaption trace RUN_DIR --html OUT.html`: one self-contained HTML trace viewer (no server, no network).

The page embeds the run as JSON in a `<script type="application/json">` element
(every `<`, `>` and `&` escaped as `\\u003c`..., so no candidate text can close the
element) and renders it with inline JavaScript that only ever uses `textContent`
(candidate, LLM and log text is hostile: it is never parsed as HTML). A
Content-Security-Policy forbids every network access. The BLEU-4 chart is an
inline SVG drawn here, with every label HTML-escaped. Texts are deduplicated
(code shared by several steps is stored once) and capped per text.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from nncaption.graph.html_page import PAGE
from nncaption.graph.trace import RunReader, run_summary, step_detail, step_lines
from nncaption.netapi.safetext import safe_text, strict_dumps

log = logging.getLogger(__name__)

MAX_TEXT = 60_000  # characters of one text in the page


class _Texts:
    """Deduplicated texts referenced by short ids."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, text: str | None) -> str | None:
        if not text:
            return None
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT] + f"\n[... {len(text) - MAX_TEXT} more characters not shown]"
        key = hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]
        self.texts.setdefault(key, text)
        return key


def _step_view(d: dict[str, Any], texts: _Texts) -> dict[str, Any]:
    calls = [{"role": c["role"], "model_requested": c["model_requested"], "model_returned": c["model_returned"],
              "endpoint": c["endpoint"], "tokens": c["tokens"]["total"], "latency_s": c["latency_s"],
              "error": c["error"],
              "messages": [{"role": str(m.get("role", "?")) if isinstance(m, dict) else "?",
                            "text": texts.add(str(m.get("content", "")) if isinstance(m, dict) else str(m))}
                           for m in c["messages"]],
              "reply": texts.add(c["reply"]), "reasoning": texts.add(c["reasoning"])} for c in d["llm_calls"]]
    return {"step": d["step"], "superstep": d["superstep"], "node": d["node"], "candidate": d["candidate"],
            "attempt": d["attempt"], "status": d["status"], "duration_s": d["duration_s"], "tokens": d["tokens"],
            "detail": d["detail"], "calls": calls, "code": texts.add(d["code"]),
            "diff": texts.add(d["diff"]) if d["node"] in ("design", "fix") else None,
            "diff_against": d["diff_against"], "verdicts": d["verdicts"], "jobs": d["jobs"],
            "log": texts.add(d["log_tail"]), "metrics": d["metrics"]}


def viewer_data(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, as strict-JSON-able data."""
    texts = _Texts()
    summary = run_summary(run_dir)
    with RunReader(run_dir) as r:
        cands = [{"cid": c["cid"], "idx": c["idx"], "parent": c["parent"], "origin": c["origin"], "mode": c["mode"],
                  "status": c["status"], "category": c["category"], "stage": c["stage"], "bleu4": c["bleu4"],
                  "lemur_bleu4": c["lemur_bleu4"], "summary": c["summary"] or "", "attempts": c["attempts"],
                  "message": c["message"] or ""} for c in r.candidates()]
        steps = [_step_view(step_detail(r, s["step"]), texts) for s in step_lines(r)]
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
    title = f"nn-caption trace: {run.get('run_id') or ''}"
    return (PAGE.replace("%%TITLE%%", html.escape(title))
            .replace("%%SVG%%", bleu_svg(data["candidates"]))
            .replace("%%DATA%%", embed_json(data)))


def write_viewer(run_dir: Path, out: Path) -> Path:
    """Write the viewer of `run_dir` to `out` (atomically) and return its path."""
    page = render(viewer_data(Path(run_dir)))
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    log.info("wrote %s (%d bytes)", out, len(page))
    return out


def _selfcheck(page: str) -> bool:
    """True when the page has exactly one data element and it parses (used by tests)."""
    start = page.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    end = page.index("</script>", start)
    return isinstance(json.loads(page[start:end]), dict)
