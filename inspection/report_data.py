"""The numbers behind `nncaption report`: funnel, costs, split and seeds, the best model's captions.

All reads are read-only and bounded: predictions come through the netapi's
schema-checked reader, references and the vocabulary from the prepared dataset
the run used (its private part is the parent's to read, never a job's).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncaption.graph.trace import RunReader, job_record_dir

log = logging.getLogger(__name__)

FUNNEL = ("designed", "statically valid", "smoke-passed", "trained", "scored")
MAX_CAPTION_ROWS = 8
MAX_REFS_BYTES = 64 << 20


def funnel(r: RunReader) -> dict[str, Any]:
    """Candidates reaching each stage, and the failed ones by category (with the stages they failed at)."""
    def count(sql: str) -> int:
        row = r.one(sql)
        return int(row["n"]) if row else 0

    stages = {
        "designed": count("SELECT COUNT(DISTINCT cid) AS n FROM attempts"),
        "statically valid": count("SELECT COUNT(DISTINCT cid) AS n FROM verdicts WHERE stage='static' AND ok=1"),
        "smoke-passed": count("SELECT COUNT(DISTINCT cid) AS n FROM verdicts WHERE stage='smoke' AND ok=1"),
        # trained = a training job that finished (as the live view and the run's journal count it), not one tried
        "trained": count("SELECT COUNT(DISTINCT cid) AS n FROM sandbox_jobs WHERE kind='train' AND status='ok'"),
        "scored": count("SELECT COUNT(*) AS n FROM candidates WHERE status='scored'"),
    }
    failures: dict[str, int] = {}
    where: dict[str, list[str]] = {}
    for row in r.rows("SELECT category, stage, COUNT(*) AS n FROM candidates WHERE status IN ('failed', 'duplicate') "
                      "GROUP BY category, stage"):
        cat = row["category"] or "unknown"
        failures[cat] = failures.get(cat, 0) + int(row["n"])
        where.setdefault(cat, []).append(row["stage"] or "?")
    rejected = {(row["stage"], row["category"] or "unknown"): int(row["n"]) for row in r.rows(
        "SELECT stage, category, COUNT(*) AS n FROM verdicts WHERE ok=0 GROUP BY stage, category")}
    return {"stages": stages, "failures": failures, "failure_stages": where,
            "rejections": [{"stage": s, "category": c, "verdicts": n} for (s, c), n in sorted(rejected.items())]}


def cost_tables(r: RunReader) -> dict[str, Any]:
    """Seconds and tokens per stage (node) and tokens, calls, latency and models per LLM role."""
    per_stage = {row["node"]: {"steps": int(row["n"]), "seconds": float(row["secs"] or 0.0),
                               "tokens": int(row["tok"] or 0)}
                 for row in r.rows("SELECT node, COUNT(*) AS n, SUM(finished_at - started_at) AS secs, "
                                   "SUM(tokens) AS tok FROM steps GROUP BY node ORDER BY MIN(step)")}
    per_role: dict[str, dict[str, Any]] = {}
    for row in r.rows("SELECT role, COUNT(*) AS n, SUM(total_tokens) AS tok, SUM(latency_s) AS lat FROM llm_calls "
                      "GROUP BY role ORDER BY role"):
        models = [f"{m['model']} -> {m['model_returned'] or '?'}" for m in r.rows(
            "SELECT DISTINCT model, model_returned FROM llm_calls WHERE role=?", (row["role"],))]
        per_role[row["role"] or "?"] = {"calls": int(row["n"]), "tokens": int(row["tok"] or 0),
                                        "latency_s": float(row["lat"] or 0.0), "models": models}
    return {"per_stage": per_stage, "per_role": per_role}


def _prepared_root(r: RunReader) -> Path | None:
    """The prepared dataset folder the run trained on (from its config; None when it cannot be found)."""
    if not r.trusted():  # a run directory from elsewhere: the folders its config names are not read
        return None
    data = r.config().get("data") or {}
    if data.get("prepared"):
        return _root_of(Path(str(data["prepared"])))
    job = r.one("SELECT job_id FROM sandbox_jobs WHERE job_id IS NOT NULL LIMIT 1")
    if job is None:
        return None
    from nncaption.netapi.jobfiles import read_regular

    record = job_record_dir(r, job["job_id"])
    raw = read_regular(record / "job" / "job.json", 0, 1 << 16) if record else None
    try:
        data_dir = json.loads(raw) if raw else {}
    except ValueError:
        return None
    d = data_dir.get("data_dir") if isinstance(data_dir, dict) else None
    return _root_of(Path(d)) if isinstance(d, str) else None


def _root_of(p: Path) -> Path | None:
    p = p.expanduser()
    for cand in (p, p.parent):
        if (cand / "public" / "meta.json").is_file() and (cand / "private").is_dir():
            return cand
    return None


def split_info(r: RunReader) -> dict[str, Any]:
    """Seeds and the recorded split (dataset, sizes, key, validation limit) of the run."""
    cfg = r.config()
    data = cfg.get("data") or {}
    run = r.run_row()
    split: dict[str, Any] = {"dataset": data.get("dataset") or run.get("dataset"), "val_limit": data.get("val_limit"),
                             "image_size": data.get("size")}
    root = _prepared_root(r)
    if root is not None:
        try:
            meta = json.loads((root / "public" / "meta.json").read_text(encoding="utf-8"))
            split.update({"n_train": meta.get("n_train"), "n_val": meta.get("n_val"),
                          "image_size": meta.get("image_size"), "dataset_key": meta.get("key"),
                          "karpathy": (meta.get("extra") or {}).get("karpathy")})
        except (OSError, ValueError):
            log.debug("meta.json of %s unreadable", root, exc_info=True)
    train = cfg.get("train") or {}
    split["max_val_images"] = train.get("max_val_images")
    split["epochs"] = train.get("epochs")
    return {"seeds": {"run seed": run.get("seed", cfg.get("seed")), "data seed": data.get("data_seed")},
            "split": split}


@dataclass
class Captions:
    cid: str = ""
    epoch: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def best_captions(r: RunReader, cid: str | None, limit: int = MAX_CAPTION_ROWS) -> Captions:
    """The best candidate's last-epoch captions on the first validation images, next to their references."""
    if not cid:
        return Captions(note="no candidate was scored")
    job = r.one("SELECT job_id FROM sandbox_jobs WHERE cid=? AND kind='train' AND status='ok' ORDER BY step DESC "
                "LIMIT 1", (cid,))
    root = _prepared_root(r)
    if job is None or root is None:
        return Captions(cid=cid, note="the training job or the prepared dataset is not available")
    from nncaption.netapi.data.vocab import Vocab
    from nncaption.netapi.job import read_predictions

    record = job_record_dir(r, job["job_id"])
    preds = read_predictions(record / "job") if record else []
    if not preds:
        return Captions(cid=cid, note="the training job left no readable predictions")
    last = preds[-1]
    try:
        vocab = Vocab.load(root / "public" / "vocab.json")
        refs_path = root / "private" / "val_refs.json"
        if refs_path.stat().st_size > MAX_REFS_BYTES:
            return Captions(cid=cid, note="the references file is too large")
        refs = json.loads(refs_path.read_text(encoding="utf-8"))
        val_ids = json.loads((root / "public" / "val_ids.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return Captions(cid=cid, note=f"the prepared dataset is unreadable ({type(e).__name__})")
    images = _val_images(root)
    rows = []
    for pos, image_id in enumerate(val_ids):
        key = str(image_id)
        if key not in last.ids:
            continue
        rows.append({"image_id": key, "prediction": " ".join(vocab.decode(last.ids[key])),
                     "references": [str(x) for x in refs.get(key, [])][:5] or ["(no reference)"],
                     "image": images[pos] if images is not None and pos < len(images) else None})
        if len(rows) >= limit:
            break
    return Captions(cid=cid, epoch=last.epoch, rows=rows)


def _val_images(root: Path) -> Any:
    try:
        import numpy as np

        return np.load(root / "public" / "val_images.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        log.debug("no validation images in %s", root, exc_info=True)
        return None
