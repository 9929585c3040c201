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

import io
import logging
from pathlib import Path
from typing import Any

from nncaption.graph import rundir
from nncaption.graph.trace import RunReader, run_summary
from nncaption.inspection.report_data import Captions, best_captions, cost_tables, funnel, split_info
from nncaption.netapi.safetext import safe_markdown, safe_text

log = logging.getLogger(__name__)

COCO = "BLEU-4 (COCO protocol: corpus BLEU-4 on words, last epoch)"
LEMUR = "BLEU-4 (LEMUR-compatible: mean sentence BLEU-4 on token ids, smoothing 1)"
TOP_K = 5


def md(text: Any, limit: int = 300) -> str:
    """Hostile text as one safe Markdown table cell / line: control characters escaped, HTML, links, images and
    pipes neutralised (the one escaping path, netapi/safetext.py)."""
    return safe_markdown(str(text if text is not None else ""), limit)


def _f(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _plots(out: Path, cands: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]], fun: dict[str, Any],
           cost: dict[str, Any], caps: Captions | None) -> list[Path]:
    """Write the report's PNGs (bounding box fitted to every title and caption, so nothing is clipped)."""
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for name, fig in figures(cands, epochs, fun, cost, caps).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", pad_inches=0.15)
        plt.close(fig)
        paths.append(rundir.write_file(out, name, buf.getvalue()))  # replaces a planted link, never follows it
    return paths


def figures(cands: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]], fun: dict[str, Any],
            cost: dict[str, Any], caps: Captions | None) -> dict[str, Any]:
    """The report's matplotlib figures by file name (tests check their axes)."""
    import matplotlib

    matplotlib.use("Agg")
    figs = {"bleu_per_candidate.png": _fig_candidates(cands), "funnel.png": _fig_funnel(fun),
            "bleu_per_epoch.png": _fig_epochs(cands, epochs), "cost.png": _fig_cost(cost)}
    if caps is not None and caps.rows:
        figs["captions.png"] = _fig_captions(caps)
    for fig in figs.values():
        fig.tight_layout()
    return figs


def _label(text: Any, limit: int) -> str:
    """Hostile text as a plot label: safe, capped, and no `$` (matplotlib would parse it as math)."""
    return safe_text(str(text), limit).replace("$", r"\$")


def _bleu_axis(ax: Any, values: list[float], label: str) -> None:
    """A BLEU-4 y axis from 0 (BLEU is never negative; an all-zero run gets 0..0.01, not -0.04..0.04)."""
    ax.set_ylim(0, max([0.01, *(1.15 * v for v in values)]))
    ax.set_ylabel(label)


def _fig_candidates(cands: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    scored = [c for c in cands if c["status"] == "scored" and c["bleu4"] is not None]
    failed = [c for c in cands if c["status"] in ("failed", "duplicate")]
    cats = sorted({str(c["category"] or c["status"]) for c in failed})
    if cats:
        fig, (ax, band) = plt.subplots(2, 1, figsize=(7, 3.8 + 0.25 * len(cats)), sharex=True,
                                       gridspec_kw={"height_ratios": [4, 0.6 + 0.35 * len(cats)]})
    else:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        band = None
    if scored:
        xs = [c["idx"] + 1 for c in scored]
        ax.scatter(xs, [c["bleu4"] for c in scored], label="COCO-protocol BLEU-4", zorder=3)
        if any(c["lemur_bleu4"] is not None for c in scored):
            ax.scatter(xs, [c["lemur_bleu4"] if c["lemur_bleu4"] is not None else float("nan") for c in scored],
                       marker="+", label="LEMUR-compatible BLEU-4", zorder=3)
        best, run_best = -1.0, []
        for c in scored:
            best = max(best, float(c["bleu4"]))
            run_best.append(best)
        ax.step(xs, run_best, where="post", color="tab:green", label="running best (COCO protocol)")
        for c in scored:
            ax.annotate(c["cid"], (c["idx"] + 1, c["bleu4"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no candidate scored", ha="center", transform=ax.transAxes)
    _bleu_axis(ax, [float(c["bleu4"]) for c in scored] +
               [float(c["lemur_bleu4"]) for c in scored if c["lemur_bleu4"] is not None], "BLEU-4")
    ax.set_title("BLEU-4 of every candidate" + (" (x: failed, by category)" if cats else ""))
    ax.set_xlim(0.5, max([c["idx"] + 1 for c in cands] or [1]) + 0.5)
    bottom = ax
    if band is not None:
        band.scatter([c["idx"] + 1 for c in failed], [cats.index(str(c["category"] or c["status"])) for c in failed],
                     marker="x", color="tab:red", zorder=3)
        band.set_yticks(range(len(cats)), [_label(c, 30) for c in cats], fontsize=8)
        band.set_ylim(-0.6, len(cats) - 0.4)
        band.set_ylabel("failed", fontsize=8)
        band.grid(axis="y", color="#eee")
        bottom = band
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("candidate (creation order)")
    return fig


def _fig_funnel(fun: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    stages = list(fun["stages"].items())
    a1.barh([s for s, _ in stages][::-1], [n for _, n in stages][::-1], color="tab:blue")
    for i, (_, n) in enumerate(stages[::-1]):
        a1.text(n, i, f" {n}", va="center", fontsize=8)
    a1.set_title("funnel")
    a1.set_xlabel("candidates")
    rej = sorted(fun["rejections"], key=lambda x: -x["verdicts"])
    if rej:
        a2.barh([_label(f"{x['stage']}: {x['category']}", 40) for x in rej][::-1], [x["verdicts"] for x in rej][::-1],
                color="tab:red")
        a2.set_xlabel("failed verdicts")
    else:
        a2.text(0.5, 0.5, "no rejections", ha="center", transform=a2.transAxes)
        a2.set_axis_off()
    a2.set_title("rejections by stage: category\n(failed verdicts, fixed or not)", fontsize=10)
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _fig_epochs(cands: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]]) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.6))
    scored = [c for c in cands if c["status"] == "scored" and c["bleu4"] is not None]
    top = sorted(scored, key=lambda c: -float(c["bleu4"]))[:TOP_K]
    seen: set[int] = set()
    values: list[float] = []
    for c in top:
        curve = [e for e in epochs.get(c["cid"], []) if e["bleu4"] is not None]
        if curve:
            ax.plot([e["epoch"] for e in curve], [e["bleu4"] for e in curve], marker="o", label=c["cid"])
            seen.update(int(e["epoch"]) for e in curve)
            values += [float(e["bleu4"]) for e in curve]
    ax.set_title(f"BLEU-4 per epoch, top {len(top)} candidates")
    if not seen:
        ax.text(0.5, 0.5, "no per-epoch BLEU-4 recorded", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    if len(seen) <= 20:
        ax.set_xticks(sorted(seen))  # whole epochs only: no 1.2, 1.4 ... between epoch 1 and 2
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    _bleu_axis(ax, values, "COCO-protocol BLEU-4")
    ax.legend(fontsize=7)
    return fig


def _fig_cost(cost: dict[str, Any]) -> Any:
    """Time per stage, and tokens per stage and per role when there were any (a baseline run makes no LLM calls:
    its token panels are left out with a note instead of drawing empty axes)."""
    import matplotlib.pyplot as plt

    nodes, roles = cost["per_stage"], cost["per_role"]
    panels: list[tuple[str, str, dict[str, float]]] = [
        ("time per stage", "seconds", {k: float(v["seconds"]) for k, v in nodes.items()})]
    tokens = {k: float(v["tokens"]) for k, v in nodes.items()}
    if any(tokens.values()):
        panels.append(("tokens per stage", "tokens", tokens))
    role_tokens = {k: float(v["tokens"]) for k, v in roles.items()}
    if any(role_tokens.values()):
        panels.append(("tokens per role", "tokens", role_tokens))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.7 * len(panels) + 0.5, 3.4), squeeze=False)
    colors = ("tab:purple", "tab:orange", "tab:cyan")
    for a, (title, unit, data), color in zip(axes[0], panels, colors, strict=False):
        a.bar([_label(k, 30) for k in data], list(data.values()), color=color)
        a.set_title(title)
        a.set_ylabel(unit)
        a.tick_params(axis="x", labelrotation=45, labelsize=8)
    if len(panels) < 3:
        fig.text(0.5, -0.02, "no LLM tokens were used (e.g. the random-search baseline): token panels left out",
                 ha="center", va="top", fontsize=8, color="#555")
    return fig


def _fig_captions(caps: Captions) -> Any:
    import matplotlib.pyplot as plt

    n = min(len(caps.rows), 6)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.4), squeeze=False)
    for a, row in zip(axes[0], caps.rows[:n], strict=False):
        if row.get("image") is not None:
            a.imshow(row["image"])
        a.set_axis_off()
        a.set_title(f"{row['image_id']}", fontsize=8)
        a.text(0, -0.05, "model: " + _wrap(row["prediction"]) + "\nref: " + _wrap(row["references"][0]),
               transform=a.transAxes, fontsize=7, va="top")
    return fig


def _wrap(text: str, width: int = 34) -> str:
    words, lines, cur = _label(text, 200).split(), [], ""
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
    if out is None:
        out = rundir.make_dirs(run_dir, "report")  # inside the run: never through a planted link
    else:
        out = Path(out).expanduser()
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
    md_path = rundir.write_file(out, "report.md", text)
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
                     f"{_f(c['bleu4'])} | {_f(c['lemur_bleu4'])} | {md(c['params'] or '-')} | "
                     f"{md(c['summary'], 120)} |")
    lines += ["", "## Funnel", "", "![funnel](funnel.png)", "", "| stage | candidates |", "|---|---|"]
    lines += [f"| {md(k)} | {md(v)} |" for k, v in fun["stages"].items()]
    lines += ["", "| failure category | candidates | stage(s) |", "|---|---|---|"]
    lines += [f"| {md(k)} | {md(v)} | {md(', '.join(map(str, fun['failure_stages'].get(k, []))))} |"
              for k, v in sorted(fun["failures"].items(), key=lambda kv: -kv[1])] or ["| (none) | 0 | |"]
    lines += ["", "| rejected verdicts (including ones the fixer repaired) | stage | verdicts |", "|---|---|---|"]
    lines += [f"| {md(x['category'])} | {md(x['stage'])} | {md(x['verdicts'])} |" for x in fun["rejections"]] \
        or ["| (none) | | 0 |"]
    lines += ["", f"## {COCO} per epoch (top {TOP_K})", "", "![BLEU-4 per epoch](bleu_per_epoch.png)", "",
              "| candidate | epoch | BLEU-4 (COCO protocol) | train loss | seconds |", "|---|---|---|---|---|"]
    top = sorted((c for c in cands if c["status"] == "scored" and c["bleu4"] is not None),
                 key=lambda c: -float(c["bleu4"]))[:TOP_K]
    for c in top:
        for e in epochs.get(c["cid"], []):
            lines.append(f"| {md(c['cid'])} | {md(e['epoch'])} | {_f(e['bleu4'])} | {_f(e['train_loss'], '.3f')} | "
                         f"{_f(e['seconds'], '.1f')} |")
    lines += ["", "## Tokens and time", "", "![cost](cost.png)", "", "| stage | steps | seconds | tokens |",
              "|---|---|---|---|"]
    lines += [f"| {md(k)} | {md(v['steps'])} | {_f(v['seconds'], '.1f')} | {md(v['tokens'])} |"
              for k, v in cost["per_stage"].items()]
    lines += ["", "| role | LLM calls | tokens | latency (s) | models (requested -> answered) |",
              "|---|---|---|---|---|"]
    lines += [f"| {md(k)} | {md(v['calls'])} | {md(v['tokens'])} | {_f(v['latency_s'], '.1f')} | "
              f"{md(', '.join(map(str, v['models'])))} |"
              for k, v in cost["per_role"].items()] or ["| (no LLM calls: random-search baseline) | 0 | 0 | 0 | |"]
    lines += ["", "## Captions of the best model", ""]
    if caps is None or not caps.rows:
        lines.append(f"(none: {md(caps.note if caps else 'no candidate was scored')})")
    else:
        lines += [f"{md(caps.cid)}, epoch {md(caps.epoch)}, decoded with the prepared vocabulary; references from the "
                  "dataset's private part.", "", "![captions](captions.png)", "",
                  "| image | model caption | references |", "|---|---|---|"]
        for row in caps.rows:
            refs = "<br>".join(md(x, 200) for x in row["references"][:3])
            lines.append(f"| {md(row['image_id'])} | {md(row['prediction'], 200)} | {refs} |")
    lines.append("")
    return "\n".join(lines)

