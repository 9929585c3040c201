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
import os
from pathlib import Path
from typing import Any

from nncaption.graph.html_page import PAGE
from nncaption.graph.trace import RunReader, run_summary, step_detail, step_lines
from nncaption.netapi.safetext import strict_dumps

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


def bleu_svg(cands: list[dict[str, Any]], width: int = 310, height: int = 190) -> str:
    """BLEU-4 (COCO protocol) of each scored candidate in creation order, with the running best, as inline SVG."""
    scored = [c for c in sorted(cands, key=lambda c: c["idx"]) if c["status"] == "scored" and c["bleu4"] is not None]
    pad = 34
    if not scored:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
                f'<text x="{pad}" y="{height // 2}">no candidate scored yet</text></svg>')
    n = max(c["idx"] for c in cands) + 1
    top = max(max(c["bleu4"] for c in scored), 1e-6)

    def xy(idx: int, v: float) -> tuple[float, float]:
        return (pad + (width - 2 * pad) * (idx + 0.5) / n, height - pad - (height - 2 * pad) * v / top)

    best, line = -1.0, []
    dots = []
    for c in scored:
        best = max(best, float(c["bleu4"]))
        x, y = xy(c["idx"], float(c["bleu4"]))
        bx, by = xy(c["idx"], best)
        line.append(f"{bx:.1f},{by:.1f}")
        dots.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="4"><title>{html.escape(c["cid"])}: BLEU-4 '
                    f'{float(c["bleu4"]):.4f}</title></circle>')
    axis = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>'
            f'<text x="{pad}" y="{pad - 8}" font-size="11">{top:.4f}</text>'
            f'<text x="{pad - 4}" y="{height - pad + 14}" font-size="11">0</text>'
            f'<text x="{pad}" y="{height - 6}" font-size="11">candidates in creation order</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="BLEU-4 over time">{axis}<polyline fill="none" stroke="#2a7" stroke-width="2" '
            f'points="{" ".join(line)}"/>{"".join(dots)}</svg>')


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
