"""The results database of a run (`RUN_DIR/results.sqlite`): schema and the questions it answers.

One run per database. Large texts (code, prompts, replies, reasoning, logs) are
stored once, content-addressed, under `RUN_DIR/blobs/<sha[:2]>/<sha>` and
referenced by their SHA-256 (`*_ref` columns); `RunStore.blob(ref)` reads one.
Times are Unix seconds (REAL). Stable: the trace, report and export commands read
these tables; add columns, never rename them.

runs         one row: run_id, status (running|finished|stopped|interrupted|failed), seed, config_json (resolved,
             secrets masked), designer/reviewer/fixer (kind:model), dataset, best_cid, best_bleu4, stop_reason,
             created_at, updated_at, elapsed_s (all sessions), sessions (1 + resumes)
candidates   one row per candidate (the journal): cid ("c0001"), idx, parent, origin (compose|improve|fix), mode
             (draft|improve|debug), status (planned|scored|failed|duplicate|interrupted), category, stage (design|
             static|review|smoke|train|score), message, traceback_tail, bleu4 (COCO-protocol, last epoch),
             lemur_bleu4, params, summary, prm_json, decoder, snippets_json, attempts, fix_rounds, debug_depth,
             code_ref (last attempt), dedup_key, duplicate_of, job_id, planned_step/recorded_step (the run-wide
             `steps.step` of its dispatch and record steps), created_at, finished_at
attempts     (cid, attempt): every version of a candidate's code: made_by (design|fix), code_ref, prm_json, summary,
             step; the file is also at RUN_DIR/candidates/<cid>/attempt-<n>.py
verdicts     (cid, attempt, stage): ok, category, message, line, step (stage: static|review|smoke|train)
epochs       (cid, epoch): bleu1..bleu4, train_loss, seconds
llm_calls    one row per chat call: step, cid, role, endpoint, model (requested), model_returned, ok, error,
             prompt/completion/reasoning/total tokens, latency_s, queued_s, http_attempts, finish_reason,
             messages_ref (JSON list of messages), reply_ref, reasoning_ref, started_at, finished_at
sandbox_jobs (cid, attempt, kind): job_id (content address), kind (smoke|train), status, category, reused,
             job_dir (holds the sandbox logs and predictions), seconds, step, placement (e.g. ray-node:<id>)
steps        one row per node execution: step (run-wide number, in order of start), superstep (the node's step
             in its candidate's LangGraph thread, thread_id = cid: the checkpoint to fork from; 0 for dispatch,
             the scheduler's planning step), node, cid (the candidate; '' in runs made before the per-candidate
             scheduler, whose superstep was run-wide), attempt (see graph/nodes.py; none for dispatch), status
             (running|ok|failed|interrupted), started_at, finished_at, tokens, prompt_ref, reply_ref,
             reasoning_ref, code_ref, log_ref, detail (short JSON; train: queued_s, the wait for a training slot)
dedup        (key, cid): normalised-AST + hyperparameter keys claimed before training

Examples (plain SQL):
    best candidates      SELECT cid, bleu4, summary FROM candidates WHERE status='scored' ORDER BY bleu4 DESC LIMIT 5
    failures by category SELECT category, COUNT(*) FROM candidates WHERE status='failed' GROUP BY category
    tokens per role      SELECT role, SUM(total_tokens), COUNT(*) FROM llm_calls GROUP BY role
"""

from __future__ import annotations

SCHEMA_VERSION = 1

DDL = """
PRAGMA user_version = 1;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, seed INTEGER, config_json TEXT, designer TEXT, reviewer TEXT,
    fixer TEXT, dataset TEXT, best_cid TEXT, best_bleu4 REAL, stop_reason TEXT, created_at REAL, updated_at REAL,
    elapsed_s REAL DEFAULT 0, sessions INTEGER DEFAULT 1
);
CREATE TABLE IF NOT EXISTS candidates (
    cid TEXT PRIMARY KEY, idx INTEGER NOT NULL UNIQUE, parent TEXT, origin TEXT NOT NULL, mode TEXT NOT NULL,
    status TEXT NOT NULL, category TEXT, stage TEXT, message TEXT, traceback_tail TEXT, bleu4 REAL,
    lemur_bleu4 REAL, params INTEGER, summary TEXT, prm_json TEXT, decoder TEXT, snippets_json TEXT,
    attempts INTEGER DEFAULT 0, fix_rounds INTEGER DEFAULT 0, debug_depth INTEGER DEFAULT 0, code_ref TEXT,
    dedup_key TEXT, duplicate_of TEXT, job_id TEXT, planned_step INTEGER, recorded_step INTEGER,
    created_at REAL, finished_at REAL
);
CREATE TABLE IF NOT EXISTS attempts (
    cid TEXT NOT NULL, attempt INTEGER NOT NULL, made_by TEXT NOT NULL, code_ref TEXT NOT NULL, prm_json TEXT,
    summary TEXT, step INTEGER, created_at REAL, PRIMARY KEY (cid, attempt)
);
CREATE TABLE IF NOT EXISTS verdicts (
    cid TEXT NOT NULL, attempt INTEGER NOT NULL, stage TEXT NOT NULL, ok INTEGER NOT NULL, category TEXT,
    message TEXT, line INTEGER, step INTEGER, PRIMARY KEY (cid, attempt, stage)
);
CREATE TABLE IF NOT EXISTS epochs (
    cid TEXT NOT NULL, epoch INTEGER NOT NULL, bleu1 REAL, bleu2 REAL, bleu3 REAL, bleu4 REAL, train_loss REAL,
    seconds REAL, PRIMARY KEY (cid, epoch)
);
CREATE TABLE IF NOT EXISTS llm_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER, cid TEXT, role TEXT, endpoint TEXT, model TEXT,
    model_returned TEXT, ok INTEGER, error TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    reasoning_tokens INTEGER, total_tokens INTEGER, latency_s REAL, queued_s REAL, http_attempts INTEGER,
    finish_reason TEXT, messages_ref TEXT, reply_ref TEXT, reasoning_ref TEXT, started_at REAL, finished_at REAL
);
CREATE INDEX IF NOT EXISTS llm_calls_step ON llm_calls (step);
CREATE TABLE IF NOT EXISTS sandbox_jobs (
    cid TEXT NOT NULL, attempt INTEGER NOT NULL, kind TEXT NOT NULL, job_id TEXT, status TEXT, category TEXT,
    reused INTEGER, job_dir TEXT, seconds REAL, step INTEGER, placement TEXT, PRIMARY KEY (cid, attempt, kind)
);
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY AUTOINCREMENT, superstep INTEGER NOT NULL, node TEXT NOT NULL, cid TEXT NOT NULL,
    attempt INTEGER, status TEXT NOT NULL, started_at REAL, finished_at REAL, tokens INTEGER DEFAULT 0,
    prompt_ref TEXT, reply_ref TEXT, reasoning_ref TEXT, code_ref TEXT, log_ref TEXT, detail TEXT,
    UNIQUE (superstep, node, cid)
);
CREATE TABLE IF NOT EXISTS dedup (
    key TEXT NOT NULL, cid TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (key, cid)
);
"""
