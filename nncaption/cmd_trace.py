"""`nncaption runs`, `trace`, `report` and `export`: inspect and publish a search run.

    nncaption runs [DIR]                          the runs under $NNCAPTION_HOME/runs (or DIR)
    nncaption trace RUN_DIR                       one line per step
    nncaption trace RUN_DIR --step N              the whole step: prompt, reply, reasoning, code diff, verdict, logs
    nncaption trace RUN_DIR --candidate c0003     one candidate from design to score, with its parent chain
    nncaption trace RUN_DIR --fork N [--llm-base-url URL --llm-model M]   continue from step N into a new run
    nncaption trace RUN_DIR --html OUT.html       a self-contained HTML trace viewer
    nncaption report RUN_DIR [--out DIR]          Markdown + PNG plots
    nncaption export RUN_DIR --lemur OUT_DIR      LEMUR model files and per-epoch stats
    nncaption export RUN_DIR --sft A.jsonl --pairs B.jsonl   generator fine-tuning data (inspection/finetune.py)

The read-only commands open the run's databases read-only, so they work while the
run is going and after it was killed. `--json` prints exactly one strict JSON
object. Candidate and LLM text is escaped with `safe_text` before it reaches a terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

from nncaption.netapi.errors import UsageError
from nncaption.netapi.safetext import safe_text, strict_dumps

IDLE_HINT_S = 600.0  # a "running" run with no step activity for this long was probably killed


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _num(v: float | None, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _out(obj: Any) -> None:
    print(strict_dumps(obj))


def _say(text: Any, limit: int | None = 20_000, keep: str = "head") -> None:
    """Print hostile text (candidate code, LLM replies, logs) with control characters escaped."""
    print(safe_text(text if text is not None else "", limit, keep=keep))


# ---------------------------------------------------------------------------------------------- runs
def _cmd_runs(args: argparse.Namespace) -> int:
    from nncaption.graph.trace import list_runs
    from nncaption.netapi import paths as config

    root = Path(args.folder).expanduser() if args.folder else config.runs_root()
    runs = list_runs(root)
    if args.json:
        _out({"ok": True, "root": str(root), "runs": runs})
        return 0
    if not runs:
        print(f"no runs under {root}")
        return 0
    print(f"{'started':19}  {'status':11}  {'cands':>5}  {'best BLEU-4':>14}  run  [models: requested -> answered]")
    for r in runs:
        models = ", ".join(r.get("models") or []) or "-"
        status = r["status"]
        if status == "running" and (r.get("idle_s") or 0) > IDLE_HINT_S:  # killed, or one very long step
            status = f"running? idle {r['idle_s'] / 60:.0f} min"
        best = f"{_num(r.get('best_bleu4'))} {r.get('best_cid') or ''}".strip()
        print(f"{_when(r.get('started_at')):19}  {safe_text(status, 40):11}  {r['candidates']:>5}  "
              f"{best:>14}  {safe_text(r['run_dir'], 300)}  [{safe_text(models, 300, keep='head')}]")
    return 0


# ---------------------------------------------------------------------------------------------- trace
def _print_steps(reader: Any, as_json: bool) -> None:
    from nncaption.graph.trace import step_lines

    lines = step_lines(reader)
    if as_json:
        _out({"ok": True, "run_dir": str(reader.run_dir), "steps": lines})
        return
    print(f"{'step':>4} {'super':>5}  {'node':8} {'cand':6} {'att':>3}  {'status':11} {'duration':>9} {'tokens':>7}")
    for s in lines:
        dur = f"{s['duration_s']:.1f}s" if s["duration_s"] is not None else "-"
        print(f"{s['step']:>4} {s['superstep']:>5}  {s['node']:8} {s['candidate'] or '-':6} "
              f"{s['attempt'] if s['attempt'] is not None else '-':>3}  {s['status']:11} {dur:>9} {s['tokens']:>7}")


def _print_step(d: dict[str, Any]) -> None:
    print(f"step {d['step']} (superstep {d['superstep']}): {d['node']}  candidate {d['candidate'] or '-'}  "
          f"attempt {d['attempt'] if d['attempt'] is not None else '-'}  status {d['status']}  "
          f"{_num(d['duration_s'], '.1f')} s  {d['tokens']} tokens")
    if d["detail"]:
        _say(f"detail: {json.dumps(d['detail'], sort_keys=True)}", 2000)
    for i, c in enumerate(d["llm_calls"], 1):
        print(f"\n== LLM call {i}: role {c['role']}; model requested {safe_text(c['model_requested'], 200)}; "
              f"model that answered {safe_text(c['model_returned'] or '-', 200)}; endpoint "
              f"{safe_text(c['endpoint'], 200)}; tokens {c['tokens']['total']}; latency {_num(c['latency_s'], '.2f')} s"
              + (f"; error {safe_text(c['error'], 500)}" if c["error"] else ""))
        for m in c["messages"]:
            role = m.get("role", "?") if isinstance(m, dict) else "?"
            content = m.get("content", "") if isinstance(m, dict) else m
            print(f"-- prompt message [{safe_text(role, 40)}]")
            _say(content)
        if c["reasoning"]:
            print("-- reasoning")
            _say(c["reasoning"])
        print("-- reply")
        _say(c["reply"])
    if d["code"] is not None:
        print(f"\n== code ({d['candidate']} attempt {d['attempt']})")
        _say(d["code"], 60_000)
    if d["diff"]:
        print(f"\n== diff against {d['diff_against']}")
        _say(d["diff"], 60_000)
    for v in d["verdicts"]:
        print(f"\n== verdict [{v['stage']}] {'ok' if v['ok'] else 'FAILED'}"
              + (f" ({v['category']})" if v["category"] else "") + (f" line {v['line']}" if v["line"] else ""))
        _say(v["message"], 4000)
    for j in d["jobs"]:
        print(f"\n== sandbox job {j['kind']} {j['job_id'] or '-'}: {j['status']}"
              + (f" ({j['category']})" if j["category"] else "") + f"{' reused' if j['reused'] else ''} "
              f"{_num(j['seconds'], '.1f')} s")
    if d["log_tail"]:
        print("\n== sandbox log (tail)")
        _say(d["log_tail"], 8000, keep="tail")
    if d["metrics"]:
        m = d["metrics"]
        print(f"\n== metrics: BLEU-4 (COCO protocol) {_num(m.get('bleu4_coco'))}; BLEU-4 (LEMUR-compatible) "
              f"{_num(m.get('bleu4_lemur'))}; params {m.get('params') or '-'}")
        for e in m.get("epochs") or []:
            print(f"   epoch {e['epoch']}: BLEU-4 {_num(e['bleu4'])}  train loss {_num(e['train_loss'], '.3f')}  "
                  f"{_num(e['seconds'], '.1f')} s")


def _print_candidate(life: dict[str, Any]) -> None:
    c = life["candidate"]
    print(f"candidate {c['cid']}: {c['status']}  origin {c['origin']} (mode {c['mode']})  parent {c['parent'] or '-'}"
          f"  BLEU-4 {_num(c['bleu4'])}  attempts {c['attempts']}  fix rounds {c['fix_rounds']}")
    if c.get("summary"):
        _say(f"summary: {c['summary']}", 500)
    if c.get("category"):
        _say(f"failure: [{c['category']}] at {c['stage']}: {c['message'] or ''}", 2000)
    chain = " <- ".join(f"{p['cid']} ({p['origin']}, {p['status']}, BLEU-4 {_num(p['bleu4'])})"
                        for p in life["parent_chain"])
    print(f"parent chain: {chain}")
    if life["children"]:
        print(f"children: {', '.join(life['children'])}")
    print("\nlife:")
    verdicts = {v["step"]: v for v in life["verdicts"]}
    for s in life["steps"]:
        v = verdicts.get(s["step"])
        note = ""
        if v is not None:
            message = " ".join((v["message"] or "").split())
            note = "ok" if v["ok"] else f"FAILED [{v['category']}] {safe_text(message, 100, keep='head')}"
        dur = f"{s['duration_s']:.1f}s" if s["duration_s"] is not None else "-"
        print(f"  step {s['step']:>4}  {s['node']:7} attempt {s['attempt'] if s['attempt'] is not None else '-'}  "
              f"{s['status']:11} {dur:>8}  {s['tokens']:>6} tok  {safe_text(note, 140)}")
    for e in life["epochs"]:
        print(f"  epoch {e['epoch']}: BLEU-4 {_num(e['bleu4'])} (COCO protocol)  loss {_num(e['train_loss'], '.3f')}")


def _cmd_trace(args: argparse.Namespace) -> int:
    from nncaption.graph.trace import RunReader, candidate_life, step_detail

    modes = [m for m in ("step", "candidate", "fork", "html") if getattr(args, m) is not None]
    if len(modes) > 1:
        raise UsageError(f"--{modes[0]} and --{modes[1]} do not go together", "give one of --step, --candidate, "
                         "--fork, --html")
    if (args.llm_base_url or args.llm_model) and args.fork is None:
        raise UsageError("--llm-base-url/--llm-model only apply with --fork N", "add --fork N")
    run_dir = Path(args.run_dir).expanduser()
    if args.fork is not None:
        return _fork(args, run_dir)
    if args.html is not None:
        from nncaption.inspection.html import write_viewer

        out = write_viewer(run_dir, Path(args.html))
        if args.json:
            _out({"ok": True, "html": str(out), "bytes": out.stat().st_size})
        else:
            print(f"wrote {out} ({out.stat().st_size} bytes): open it in a browser")
        return 0
    with RunReader(run_dir) as reader:
        if args.step is not None:
            d = step_detail(reader, args.step)
            if args.json:
                _out({"ok": True, **d})
            else:
                _print_step(d)
        elif args.candidate is not None:
            life = candidate_life(reader, args.candidate)
            if args.json:
                _out({"ok": True, **life})
            else:
                _print_candidate(life)
        else:
            _print_steps(reader, args.json)
    return 0


def _fork(args: argparse.Namespace, run_dir: Path) -> int:
    from nncaption import runconfig
    from nncaption.graph.fork import fork_run
    from nncaption.netapi import paths as config

    into = Path(args.into).expanduser() if args.into else \
        config.runs_root() / f"{run_dir.resolve().name}-fork{args.fork}-{secrets.token_hex(2)}"
    result = fork_run(run_dir, args.fork, new_dir=into, llm_base_url=args.llm_base_url, llm_model=args.llm_model,
                      json_logs=args.json, mask=runconfig.masked,
                      trust_config=bool(getattr(args, "trust_run_config", False)))
    if args.json:
        _out({"ok": result["status"] == "finished", **result})
    else:
        print(f"forked {run_dir} at step {args.fork} (superstep {result['superstep']}, checkpoint "
              f"{result['checkpoint_id']}) into {result['run_dir']}: {result['status']}")
        best = result.get("best")
        if best:
            print(f"best model: {best['cid']}  BLEU-4 {_num(best['bleu4'])}")
        print(f"inspect it with: nncaption trace {result['run_dir']}")
    return 0 if result["status"] == "finished" else 1


# ---------------------------------------------------------------------------------------------- report, export
def _cmd_report(args: argparse.Namespace) -> int:
    from nncaption.inspection.report import write_report

    out = write_report(Path(args.run_dir).expanduser(), Path(args.out).expanduser() if args.out else None)
    if args.json:
        _out({"ok": True, **out})
    else:
        print(f"wrote {out['markdown']}")
        for p in out["plots"]:
            print(f"  {p}")
    return 0


def _cmd_export_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """--sft / --pairs: generator fine-tuning data (inspection/finetune.py); prints unless --json."""
    from nncaption.inspection.finetune import export_finetune

    out = export_finetune(Path(args.run_dir).expanduser(), sft=Path(args.sft).expanduser() if args.sft else None,
                          pair_file=Path(args.pairs).expanduser() if args.pairs else None)
    if not args.json:
        for key, what in (("sft", "SFT example(s)"), ("pairs", "preference pair(s)")):
            if key in out:
                print(f"wrote {out[key]['records']} {what} to {safe_text(out[key]['path'], 500)}")
        for note in out["notes"]:
            print(f"note: {safe_text(note, 500)}")
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    from nncaption.inspection.lemur import export_lemur

    if not (args.lemur or args.sft or args.pairs):
        raise UsageError("export needs at least one of --lemur OUT_DIR, --sft OUT.jsonl, --pairs OUT.jsonl",
                         "e.g. nncaption export RUN_DIR --sft sft.jsonl --pairs pairs.jsonl")
    tuned = _cmd_export_finetune(args) if (args.sft or args.pairs) else {}
    if not args.lemur:
        if args.json:
            _out({"ok": True, **tuned})
        return 0
    out = export_lemur(Path(args.run_dir).expanduser(), Path(args.lemur).expanduser(), prefix=args.prefix)
    if tuned:
        out = {**out, "finetune": tuned}
    if args.json:
        _out({"ok": True, **out})
    else:
        print(f"exported {len(out['models'])} scored candidate(s) to {out['out_dir']}")
        for m in out["models"]:
            print(f"  {m['cid']}: {m['model_file']}  ({len(m['stat_files'])} epoch stat file(s), "
                  f"LEMUR BLEU-4 {_num(m['accuracy'])}, COCO BLEU-4 {_num(m['bleu4_coco'])})")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `runs`, `trace`, `report` and `export`."""
    runs = subparsers.add_parser("runs", help="list search runs with status, candidates and best BLEU-4",
                                 description="The run directories under $NNCAPTION_HOME/runs (or FOLDER): status, "
                                             "candidates, best BLEU-4, endpoint models and start time.")
    runs.add_argument("folder", nargs="?", help="folder holding run directories (default $NNCAPTION_HOME/runs)")
    runs.add_argument("--json", action="store_true", help="one strict JSON object on stdout")
    runs.set_defaults(func=_cmd_runs)

    tr = subparsers.add_parser(
        "trace", help="step through a run: steps, one step, one candidate, fork, HTML viewer",
        description="Inspect a run read-only (it may still be running or have been killed). Without options: one "
                    "line per step. --fork continues from a step's checkpoint into a NEW run directory.")
    tr.add_argument("run_dir", metavar="RUN_DIR")
    tr.add_argument("--step", type=int, metavar="N", help="the whole step N: prompts, reply, reasoning, code diff, "
                    "verdict, sandbox log tail, metrics, models")
    tr.add_argument("--candidate", metavar="ID", help="one candidate's life from design to score (e.g. c0003)")
    tr.add_argument("--fork", type=int, metavar="N", help="continue the run from step N's checkpoint into a new run "
                    "directory (the original is left untouched); the fork point is the start of step N's LangGraph "
                    "superstep, so steps that ran alongside N are made again too")
    tr.add_argument("--into", metavar="DIR", help="with --fork: the new run directory (default: a new folder under "
                    "$NNCAPTION_HOME/runs)")
    tr.add_argument("--llm-base-url", metavar="URL", help="with --fork: the endpoint the continued run uses")
    tr.add_argument("--llm-model", metavar="NAME", help="with --fork: the model name served there")
    tr.add_argument("--trust-run-config", action="store_true", help="with --fork: use the endpoints, key variables "
                    "and sandbox of a run directory not started here (shown when refused)")
    tr.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML trace viewer")
    tr.add_argument("--json", action="store_true", help="one strict JSON object on stdout")
    tr.set_defaults(func=_cmd_trace)

    rp = subparsers.add_parser("report", help="Markdown report with plots of a run",
                               description="Write RUN_DIR/report/report.md with PNG plots: BLEU-4 per candidate with "
                                           "the running best, the funnel with failure categories, BLEU-4 per epoch, "
                                           "tokens and time per stage and role, the best model's captions.")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/report)")
    rp.add_argument("--json", action="store_true", help="one strict JSON object on stdout")
    rp.set_defaults(func=_cmd_report)

    ex = subparsers.add_parser("export", help="export scored candidates in LEMUR's layout, or fine-tuning data",
                               description="--lemur: write the scored candidates as LEMUR model files ab/nn/nn/"
                                           "<prefix>-<md5>.py and per-epoch stats ab/nn/stat/train/"
                                           "img-captioning_coco_bleu_<name>/<epoch>.json (LEMUR's keys; COCO BLEU-4 "
                                           "under its own key). --sft / --pairs: the run's LLM calls as generator "
                                           "fine-tuning data (JSON lines; see README).")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("--lemur", metavar="OUT_DIR", help="root of the LEMUR tree to write (ab/nn/...)")
    ex.add_argument("--sft", metavar="OUT.jsonl", help="one chat example per LLM call that made a candidate's code: "
                    "messages + reply, verdict, category, scores")
    ex.add_argument("--pairs", metavar="OUT.jsonl", help="better/worse children of the same parent as preference "
                    "pairs (prompt, chosen, rejected, scores) for DPO / KTO")
    ex.add_argument("--prefix", default="nncap", help="model file name prefix (default nncap)")
    ex.add_argument("--json", action="store_true", help="one strict JSON object on stdout")
    ex.set_defaults(func=_cmd_export)
