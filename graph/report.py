"""`nncaption report RUN_DIR`: a Markdown report with PNG plots (matplotlib, Agg), written to RUN_DIR/report/.

Sections: BLEU-4 of every scored candidate in creation order with the running best;
the funnel (designed -> statically valid -> smoke-passed -> trained -> scored) with
failure categories; BLEU-4 per epoch for the top candidates; tokens and time per
stage and per role; the best model's captions on validation images next to the
references (token ids decoded with the prepared vocabulary; references from the
dataset's private part, which the parent may read). Every number names its protocol
(COCO-protocol corpus BLEU-4, or LEMUR-compatible mean sentence BLEU-4), and the
header gives the seeds and the recorded split. The run is read read-only.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from nncaption.graph.report_data import Captions, best_captions, cost_tables, funnel, split_info
from nncaption.graph.trace import RunReader, run_summary
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

COCO = "BLEU-4 (COCO protocol: corpus BLEU-4 on words, last epoch)"
LEMUR = "BLEU-4 (LEMUR-compatible: mean sentence BLEU-4 on token ids, smoothing 1)"
TOP_K = 5


def md(text: Any, limit: int = 300) -> str:
    """Hostile text as one safe Markdown table cell / line: control characters escaped, HTML and pipes neutralised."""
    return html.escape(safe_text(str(text if text is not None else ""), limit, keep="head")).replace("|", "\\|") \
        .replace("\n", " ").replace("`", "'")


def _f(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _plots(out: Path, cands: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]], fun: dict[str, Any],
           cost: dict[str, Any], caps: Captions | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    scored = [c for c in cands if c["status"] == "scored" and c["bleu4"] is not None]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if scored:
        xs = [c["idx"] + 1 for c in scored]
        ax.scatter(xs, [c["bleu4"] for c in scored], label="COCO-protocol BLEU-4", zorder=3)
        if any(c["lemur_bleu4"] is not None for c in scored):
            ax.scatter(xs, [c["lemur_bleu4"] if c["lemur_bleu4"] is not None else float("nan") for c in scored],
                       marker="x", label="LEMUR-compatible BLEU-4", zorder=3)
        best, run_best = -1.0, []
        for c in scored:
            best = max(best, float(c["bleu4"]))
            run_best.append(best)
        ax.step(xs, run_best, where="post", color="tab:green", label="running best (COCO protocol)")
        for c in scored:
            ax.annotate(c["cid"], (c["idx"] + 1, c["bleu4"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    else:
        ax.text(0.5, 0.5, "no candidate scored", ha="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("candidate (creation order)")
    ax.set_ylabel("BLEU-4")
    ax.set_title("BLEU-4 of every scored candidate")
    ax.legend(fontsize=7, loc="best")
    save(fig, "bleu_per_candidate.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    stages = list(fun["stages"].items())
    a1.barh([s for s, _ in stages][::-1], [n for _, n in stages][::-1], color="tab:blue")
    for i, (_, n) in enumerate(stages[::-1]):
        a1.text(n, i, f" {n}", va="center", fontsize=8)
    a1.set_title("funnel (candidates)")
    rej = sorted(fun["rejections"], key=lambda x: -x["verdicts"])
    if rej:
        a2.barh([f"{x['stage']}: {x['category']}" for x in rej][::-1], [x["verdicts"] for x in rej][::-1],
                color="tab:red")
    else:
        a2.text(0.5, 0.5, "no rejections", ha="center", transform=a2.transAxes)
    a2.set_title("rejections (failed verdicts, fixed or not) by stage: category", fontsize=9)
    save(fig, "funnel.png")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    top = sorted(scored, key=lambda c: -float(c["bleu4"]))[:TOP_K]
    for c in top:
        curve = [e for e in epochs.get(c["cid"], []) if e["bleu4"] is not None]
        if curve:
            ax.plot([e["epoch"] for e in curve], [e["bleu4"] for e in curve], marker="o", label=c["cid"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("COCO-protocol BLEU-4")
    ax.set_title(f"BLEU-4 per epoch, top {len(top)} candidates")
    if top:
        ax.legend(fontsize=7)
    save(fig, "bleu_per_epoch.png")

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    nodes = cost["per_stage"]
    axes[0].bar(list(nodes), [v["seconds"] for v in nodes.values()], color="tab:purple")
    axes[0].set_title("time per stage (s)")
    axes[1].bar(list(nodes), [v["tokens"] for v in nodes.values()], color="tab:orange")
    axes[1].set_title("tokens per stage")
    roles = cost["per_role"]
    axes[2].bar(list(roles) or ["(no LLM calls)"], [v["tokens"] for v in roles.values()] or [0], color="tab:cyan")
    axes[2].set_title("tokens per role")
    for a in axes:
        a.tick_params(axis="x", labelrotation=45, labelsize=8)
    save(fig, "cost.png")

    if caps is not None and caps.rows:
        n = min(len(caps.rows), 6)
        fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.4), squeeze=False)
        for a, row in zip(axes[0], caps.rows[:n], strict=False):
            if row.get("image") is not None:
                a.imshow(row["image"])
            a.set_axis_off()
            a.set_title(f"{row['image_id']}", fontsize=8)
            a.text(0, -0.08, "model: " + _wrap(row["prediction"]) + "\nref: " + _wrap(row["references"][0]),
                   transform=a.transAxes, fontsize=7, va="top")
        save(fig, "captions.png")
    return paths


def _wrap(text: str, width: int = 34) -> str:
    words, lines, cur = safe_text(text, 200).split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    lines.append(cur)
    return "\n".join(lines[:3])


def write_report(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Write report.md and the PNGs; returns their paths and the key numbers."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = run_summary(run_dir)
    with RunReader(run_dir) as r:
        cands = r.candidates()
        epochs = {c["cid"]: r.epochs(c["cid"]) for c in cands}
        fun = funnel(r)
        cost = cost_tables(r)
        split = split_info(r)
        caps = best_captions(r, summary.get("best_cid"))
    plots = _plots(out, cands, epochs, fun, cost, caps)
    text = _markdown(summary, cands, epochs, fun, cost, split, caps)
    md_path = out / "report.md"
    md_path.write_text(text, encoding="utf-8")
    return {"markdown": str(md_path), "plots": [str(p) for p in plots], "funnel": fun["stages"],
            "failures": fun["failures"], "best_cid": summary.get("best_cid"), "best_bleu4": summary.get("best_bleu4"),
            "protocol": COCO, "seeds": split["seeds"], "split": split["split"]}


def _markdown(summary: dict[str, Any], cands: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]],
              fun: dict[str, Any], cost: dict[str, Any], split: dict[str, Any], caps: Captions | None) -> str:
    seeds = ", ".join(f"{k} {v}" for k, v in split["seeds"].items())
    sp = split["split"]
    split_line = ", ".join(f"{k} {md(v if v is not None else 'none', 80)}" for k, v in sp.items())
    lines = [f"# Search report: {md(summary['run_id'])}", "",
             f"- status: {md(summary['status'])} ({md(summary.get('stop_reason') or '-')}); "
             f"{summary['candidates']} candidates; models: {md(', '.join(summary['models']) or '-')}",
             f"- seeds: {seeds}", f"- recorded split: {split_line}",
             f"- protocols: **{COCO}** is the main figure; **{LEMUR}** is shown beside it where recorded.",
             "- every BLEU-4 below was measured on the validation split above with the seeds above.", ""]
    best = summary.get("best_cid")
    lines += [f"Best candidate: **{md(best or 'none')}**, {COCO} = {_f(summary.get('best_bleu4'))}", "",
              "## BLEU-4 of every scored candidate", "", "![BLEU-4 per candidate](bleu_per_candidate.png)", "",
              "| candidate | origin | parent | status | BLEU-4 (COCO protocol) | BLEU-4 (LEMUR-compatible) | params |"
              " summary |", "|---|---|---|---|---|---|---|---|"]
    for c in cands:
        lines.append(f"| {md(c['cid'])} | {md(c['origin'])} | {md(c['parent'] or '-')} | {md(c['status'])} | "
                     f"{_f(c['bleu4'])} | {_f(c['lemur_bleu4'])} | {c['params'] or '-'} | {md(c['summary'], 120)} |")
    lines += ["", "## Funnel", "", "![funnel](funnel.png)", "", "| stage | candidates |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in fun["stages"].items()]
    lines += ["", "| failure category | candidates | stage(s) |", "|---|---|---|"]
    lines += [f"| {md(k)} | {v} | {md(', '.join(fun['failure_stages'].get(k, [])))} |"
              for k, v in sorted(fun["failures"].items(), key=lambda kv: -kv[1])] or ["| (none) | 0 | |"]
    lines += ["", "| rejected verdicts (including ones the fixer repaired) | stage | verdicts |", "|---|---|---|"]
    lines += [f"| {md(x['category'])} | {md(x['stage'])} | {x['verdicts']} |" for x in fun["rejections"]] \
        or ["| (none) | | 0 |"]
    lines += ["", f"## {COCO} per epoch (top {TOP_K})", "", "![BLEU-4 per epoch](bleu_per_epoch.png)", "",
              "| candidate | epoch | BLEU-4 (COCO protocol) | train loss | seconds |", "|---|---|---|---|---|"]
    top = sorted((c for c in cands if c["status"] == "scored" and c["bleu4"] is not None),
                 key=lambda c: -float(c["bleu4"]))[:TOP_K]
    for c in top:
        for e in epochs.get(c["cid"], []):
            lines.append(f"| {md(c['cid'])} | {e['epoch']} | {_f(e['bleu4'])} | {_f(e['train_loss'], '.3f')} | "
                         f"{_f(e['seconds'], '.1f')} |")
    lines += ["", "## Tokens and time", "", "![cost](cost.png)", "", "| stage | steps | seconds | tokens |",
              "|---|---|---|---|"]
    lines += [f"| {md(k)} | {v['steps']} | {v['seconds']:.1f} | {v['tokens']} |" for k, v in cost["per_stage"].items()]
    lines += ["", "| role | LLM calls | tokens | latency (s) | models (requested -> answered) |",
              "|---|---|---|---|---|"]
    lines += [f"| {md(k)} | {v['calls']} | {v['tokens']} | {v['latency_s']:.1f} | {md(', '.join(v['models']))} |"
              for k, v in cost["per_role"].items()] or ["| (no LLM calls: random-search baseline) | 0 | 0 | 0 | |"]
    lines += ["", "## Captions of the best model", ""]
    if caps is None or not caps.rows:
        lines.append(f"(none: {md(caps.note if caps else 'no candidate was scored')})")
    else:
        lines += [f"{md(caps.cid)}, epoch {caps.epoch}, decoded with the prepared vocabulary; references from the "
                  "dataset's private part.", "", "![captions](captions.png)", "",
                  "| image | model caption | references |", "|---|---|---|"]
        for row in caps.rows:
            refs = "<br>".join(md(x, 200) for x in row["references"][:3])
            lines.append(f"| {md(row['image_id'])} | {md(row['prediction'], 200)} | {refs} |")
    lines.append("")
    return "\n".join(lines)

