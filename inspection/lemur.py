"""`nncaption export RUN_DIR --lemur OUT_DIR`: scored candidates in the LEMUR dataset's layout (ABrain-One/nn-dataset).

    OUT_DIR/ab/nn/nn/<prefix>-<md5>.py                                     the model file (the candidate's code)
    OUT_DIR/ab/nn/stat/train/img-captioning_coco_bleu_<name>/<epoch>.json   one file per epoch: a JSON list of
                                                                            trial records with LEMUR's keys

`<md5>` is LEMUR's `uid`: md5 of the code with every whitespace character removed
(`ab.nn.util.Util.uuid4`), so the same network exported twice has the same name.
`<name>` is the model file's stem. In each record `accuracy` is LEMUR's metric
(the LEMUR-compatible mean sentence BLEU-4 on token ids, as recorded per epoch);
the COCO-protocol corpus BLEU-4 sits beside it under `bleu4_coco`, never in
`accuracy`. `duration` is the epoch's training time in nanoseconds, as LEMUR writes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from nncaption.graph import rundir
from nncaption.graph.trace import RunReader, job_record_dir, loads
from nncaption.netapi.safetext import safe_text, strict_dumps

log = logging.getLogger(__name__)

TASK, DATASET, METRIC = "img-captioning", "coco", "bleu"
MAX_REPORT_BYTES = 4 << 20
MAX_EPOCH = 100_000


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return default


def _float(v: Any) -> float:
    try:
        f = float(v or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return f if abs(f) < 1e9 else 0.0
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,40}$")


def lemur_uid(code: str) -> str:
    """LEMUR's uid: md5 of the code with all whitespace removed."""
    return hashlib.md5(re.sub(r"\s", "", code).encode("utf-8")).hexdigest()


def stat_dir_name(model_name: str) -> str:
    return f"{TASK}_{DATASET}_{METRIC}_{model_name}"


def _epoch_scores(reader: RunReader, job_id: str | None) -> dict[int, dict[str, Any]]:
    """Per-epoch scores from the training job's report.json (parent-written, bounded read); {} when absent."""
    record = job_record_dir(reader, job_id)
    if record is None:
        return {}
    raw = rundir.read_bytes(record, "report.json", MAX_REPORT_BYTES)
    try:
        data = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        log.warning("report.json of job %s is unreadable", job_id)
        return {}
    out: dict[int, dict[str, Any]] = {}
    for e in data.get("epochs") or [] if isinstance(data, dict) else []:
        if isinstance(e, dict) and rundir.integer(e.get("epoch"), 0, MAX_EPOCH) is not None:
            out[e["epoch"]] = e
    return out


def _transform(reader: RunReader) -> str:
    """The image transform as LEMUR names it: nn-caption resizes to the prepared size and normalises."""
    from nncaption.inspection.report_data import split_info

    size = split_info(reader)["split"].get("image_size") or 64
    return f"nncaption_resize{size}_norm"


def export_lemur(run_dir: Path, out_dir: Path, *, prefix: str = "nncap") -> dict[str, Any]:
    """Write every scored candidate of `run_dir` in LEMUR's layout under `out_dir`; returns what was written."""
    from nncaption.netapi.errors import UsageError

    if not _PREFIX.match(prefix):
        raise UsageError(f"--prefix {prefix!r} is not a valid model name prefix", "use letters, digits and _")
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)  # the user's choice; everything below it is made without links
    nn_rel, stat_rel = ["ab", "nn", "nn"], ["ab", "nn", "stat", "train"]
    models = []
    with RunReader(run_dir) as r:
        cfg = r.config()
        train = cfg.get("train") or {}
        transform = _transform(r)
        rows = r.rows("SELECT * FROM candidates WHERE status='scored' AND code_ref IS NOT NULL ORDER BY idx")
        for c in rows:
            code = r.blob(c["code_ref"], limit=10_000_000)
            if code is None:
                log.warning("candidate %s: code blob missing, not exported", c["cid"])
                continue
            uid = lemur_uid(code)
            name = f"{prefix}-{uid}"
            model_file = rundir.write_file(out_dir, [*nn_rel, f"{name}.py"], code.encode("utf-8", "surrogatepass"))
            prm = loads(c["prm_json"], {})
            prm = prm if isinstance(prm, dict) else {}
            scores = _epoch_scores(r, c["job_id"])
            epochs = [e for e in r.epochs(c["cid"]) if rundir.integer(e["epoch"], 0, MAX_EPOCH) is not None]
            if len(epochs) < len(r.epochs(c["cid"])):
                log.warning("candidate %s: epochs that are not integers were left out", safe_text(c["cid"], 40))
            stat_rel_dir = [*stat_rel, stat_dir_name(name)]
            stat_dir = rundir.make_dirs(out_dir, stat_rel_dir)
            stat_files = []
            n_epochs = max((e["epoch"] for e in epochs), default=0)
            for e in epochs:
                s = scores.get(e["epoch"], {})
                lemur = s.get("lemur_bleu4", c["lemur_bleu4"] if e["epoch"] == n_epochs else None)
                record = {
                    "accuracy": lemur, "batch": _int(prm.get("batch", train.get("batch_size", 32)), 32),
                    "duration": int(round(_float(e["seconds"]) * 1e9)), "lr": prm.get("lr"),
                    "momentum": prm.get("momentum"), "dropout": prm.get("dropout"), "transform": transform,
                    "uid": uid, "epoch": e["epoch"], "epoch_max": n_epochs, "train_loss": e["train_loss"],
                    "metric_bleu": lemur, "bleu4_coco": e["bleu4"], "bleu1_coco": e["bleu1"],
                    "bleu2_coco": e["bleu2"], "bleu3_coco": e["bleu3"],
                    "accuracy_protocol": "LEMUR-compatible mean sentence BLEU-4 on token ids (smoothing 1)",
                    "bleu4_coco_protocol": "COCO-protocol corpus BLEU-4 on words",
                    "nncaption": {"run": r.run_dir.name, "candidate": c["cid"], "seed": cfg.get("seed"),
                                  "dataset": (cfg.get("data") or {}).get("dataset"), "params": c["params"]},
                }
                path = rundir.write_file(out_dir, [*stat_rel_dir, f"{int(e['epoch'])}.json"],
                                         strict_dumps([record], indent=4, sort_keys=True) + "\n")
                stat_files.append(str(path))
            models.append({"cid": c["cid"], "name": name, "uid": uid, "model_file": str(model_file),
                           "stat_dir": str(stat_dir), "stat_files": stat_files, "accuracy": c["lemur_bleu4"],
                           "bleu4_coco": c["bleu4"]})
    return {"out_dir": str(out_dir), "models": models}
