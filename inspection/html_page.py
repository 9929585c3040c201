"""The HTML/CSS/JS of the trace viewer (inspection/html.py fills %%TITLE%%, %%SVG%% and %%DATA%%).

Inline only; the Content-Security-Policy allows no network access at all. The
script builds every element with createElement/textContent: no text from the run
is ever parsed as HTML. Ids and keys from the run are data: lookups go through a
`Map` or `Object.hasOwn`, so a candidate called `__proto__` or `constructor` is just
a row. Long texts show their first PREVIEW characters; "show all" renders the rest
only when clicked.
"""

from __future__ import annotations

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>%%TITLE%%</title>
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 8px 14px; background: #234; color: #fff; }
header h1 { font-size: 16px; margin: 0 0 4px 0; }
#layout { display: grid; grid-template-columns: 340px 300px 1fr; gap: 10px; padding: 10px; }
#overview { grid-column: 1 / -1; display: flex; gap: 16px; align-items: flex-start; }
#chart svg { display: block; }
section { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 8px; overflow: auto; }
#left, #mid { max-height: calc(100vh - 60px); }
#detail { max-height: calc(100vh - 60px); }
h2 { font-size: 14px; margin: 4px 0 6px 0; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 2px 4px; border-bottom: 1px solid #eee; text-align: left; }
tr.cand { cursor: pointer; } tr.cand:hover, li.step:hover { background: #eef; }
tr.sel, li.sel { background: #dde8ff !important; }
.scored { color: #185; } .failed { color: #b22; } .duplicate { color: #888; } .planned, .running { color: #a70; }
ul.tree, ul.tree ul { list-style: none; padding-left: 14px; margin: 0; }
ul.tree li::before { content: "\2514 "; color: #999; }
ol#steps { list-style: none; padding: 0; margin: 0; }
li.step { cursor: pointer; padding: 2px 4px; border-bottom: 1px solid #f0f0f0; font-family: monospace; }
pre { background: #f6f6f6; border: 1px solid #e4e4e4; padding: 6px; white-space: pre-wrap; word-break: break-word;
      max-height: 420px; overflow: auto; font-size: 12px; }
pre.diff .add { color: #185; } pre.diff .del { color: #b22; }
.meta { color: #555; } .tag { display: inline-block; background: #eee; border-radius: 3px; padding: 0 4px; }
svg .pt { fill: #36c; }
</style>
</head>
<body>
<header><h1 id="title"></h1><div id="runmeta"></div></header>
<div id="layout">
  <section id="overview">
    <div><h2>BLEU-4 per candidate (COCO protocol; line: running best; x: failed, by category)</h2>
    <div id="chart">%%SVG%%</div></div>
  </section>
  <section id="left">
    <h2>Candidates</h2>
    <table id="cands"><thead><tr><th>id</th><th>status</th><th>BLEU-4</th><th>origin</th><th>parent</th></tr></thead>
    <tbody></tbody></table>
    <h2>Candidate tree</h2>
    <ul class="tree" id="tree"></ul>
  </section>
  <section id="mid">
    <h2>Steps <span id="filter" class="meta"></span></h2>
    <ol id="steps"></ol>
  </section>
  <section id="detail"><h2>Step</h2><p class="meta">Click a step to see its prompt, reply, reasoning, code, diff
    and logs.</p></section>
</div>
<script id="data" type="application/json">%%DATA%%</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const PREVIEW = 30000;
const T = (ref) => (typeof ref === "string" && Object.hasOwn(DATA.texts, ref)) ? String(DATA.texts[ref]) : "";
const S = (v) => (v === undefined || v === null) ? "" : String(v);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmt(v, d) { return (typeof v === "number") ? v.toFixed(d === undefined ? 4 : d) : "-"; }
const run = DATA.run;
document.getElementById("title").textContent = "nn-caption run " + run.run_id;
document.getElementById("runmeta").textContent = "status " + run.status + " \u00b7 " + run.candidates +
  " candidates \u00b7 best BLEU-4 " + fmt(run.best_bleu4) + (run.best_cid ? " (" + run.best_cid + ")" : "") +
  " \u00b7 models: " + ((Array.isArray(run.models) ? run.models : []).join(", ") || "-") + " \u00b7 dataset " +
  (run.dataset || "-") +
  " \u00b7 seed " + run.seed;
let selected = null;
function selectCandidate(cid) {
  selected = (selected === cid) ? null : cid;
  for (const tr of document.querySelectorAll("tr.cand")) tr.classList.toggle("sel", tr.dataset.cid === selected);
  renderSteps();
}
const tbody = document.querySelector("#cands tbody");
for (const c of DATA.candidates) {
  const tr = el("tr", null, "cand"); tr.dataset.cid = c.cid;
  tr.appendChild(el("td", c.cid));
  const st = el("td", c.status + (c.category ? " (" + c.category + ")" : ""), c.status); tr.appendChild(st);
  tr.appendChild(el("td", fmt(c.bleu4)));
  tr.appendChild(el("td", c.origin)); tr.appendChild(el("td", c.parent || "-"));
  tr.title = c.summary;
  tr.addEventListener("click", () => selectCandidate(c.cid));
  tbody.appendChild(tr);
}
const kids = new Map([["", []]]);  // parent id -> children: a Map, so any id (even __proto__) is only a key
for (const c of DATA.candidates) {
  const p = S(c.parent);
  if (!kids.has(p)) kids.set(p, []);
  kids.get(p).push(c);
}
function tree(parent, ul, depth) {
  for (const c of (kids.get(parent) || [])) {
    const li = el("li");
    li.appendChild(el("span", c.cid, c.status));
    const score = c.bleu4 !== null ? " \u00b7 " + fmt(c.bleu4) : "";
    li.appendChild(el("span", " " + c.origin + " \u00b7 " + c.status + score, "meta"));
    if (kids.has(S(c.cid)) && S(c.cid) !== "" && depth < 50) {
      const sub = el("ul"); tree(S(c.cid), sub, depth + 1); li.appendChild(sub);
    }
    ul.appendChild(li);
  }
}
const known = new Set(DATA.candidates.map((c) => c.cid));
for (const c of DATA.candidates) {  // a parent that is not in the run (should not happen): show the child as a root
  if (c.parent && !known.has(c.parent)) kids.get("").push(c);
}
tree("", document.getElementById("tree"), 0);
function renderSteps() {
  const ol = document.getElementById("steps"); ol.textContent = "";
  document.getElementById("filter").textContent =
    selected ? "(candidate " + selected + "; click it again for all)" : "";
  for (const s of DATA.steps) {
    if (selected && s.candidate !== selected) continue;
    const li = el("li", S(s.step).padStart(4) + " " + S(s.node).padEnd(7) + " " + S(s.candidate || "-").padEnd(6) +
                  " " + S(s.status) + " " + fmt(s.duration_s, 1) + "s " + S(s.tokens) + "tok", "step " + S(s.status));
    li.dataset.step = s.step;
    li.addEventListener("click", () => showStep(s, li));
    ol.appendChild(li);
  }
}
function pre(text, cls) {  // the first PREVIEW characters; the rest is rendered only on "show all"
  const p = el("pre", text.length > PREVIEW ? text.slice(0, PREVIEW) : text, cls);
  if (text.length <= PREVIEW) return p;
  const box = el("div");
  const more = el("button", "show all (" + text.length + " characters)", "more");
  more.addEventListener("click", () => { p.textContent = text; more.remove(); });
  box.appendChild(p); box.appendChild(more);
  return box;
}
function diffPre(text) {
  const p = el("pre", null, "diff");
  for (const line of text.split("\n")) {
    const cls = line.startsWith("+") && !line.startsWith("+++") ? "add" :
                line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    p.appendChild(el("span", line + "\n", cls));
  }
  return p;
}
function showStep(s, li) {
  for (const x of document.querySelectorAll("li.step")) x.classList.remove("sel");
  if (li) li.classList.add("sel");
  const d = document.getElementById("detail"); d.textContent = "";
  d.appendChild(el("h2", "Step " + s.step + ": " + s.node + (s.candidate ? " \u00b7 " + s.candidate : "") +
                   (s.attempt !== null ? " \u00b7 attempt " + s.attempt : "")));
  d.appendChild(el("div", "superstep " + s.superstep + " \u00b7 status " + s.status + " \u00b7 " +
                   fmt(s.duration_s, 2) + " s \u00b7 " + S(s.tokens) + " tokens", "meta"));
  if (s.detail) d.appendChild(pre(T(s.detail), "detail"));
  s.calls.forEach((c, i) => {
    d.appendChild(el("h3", "LLM call " + (i + 1) + " (" + c.role + "): requested " + c.model_requested +
                     ", answered by " + (c.model_returned || "-")));
    d.appendChild(el("div", "endpoint " + c.endpoint + " \u00b7 " + c.tokens + " tokens \u00b7 " + fmt(c.latency_s, 2) +
                     " s" + (c.error ? " \u00b7 error " + c.error : ""), "meta"));
    for (const m of c.messages) {
      d.appendChild(el("h4", "prompt: " + m.role)); d.appendChild(pre(T(m.text), "prompt"));
    }
    if (c.reasoning) { d.appendChild(el("h4", "reasoning")); d.appendChild(pre(T(c.reasoning), "reasoning")); }
    d.appendChild(el("h4", "reply")); d.appendChild(pre(T(c.reply), "reply"));
  });
  for (const v of s.verdicts) {
    const cat = v.category ? " (" + v.category + ")" : "";
    d.appendChild(el("h3", "verdict [" + v.stage + "] " + (v.ok ? "ok" : "FAILED") + cat));
    d.appendChild(pre(T(v.message), "verdict"));
  }
  if (s.diff) { d.appendChild(el("h3", "diff against " + (s.diff_against || "-"))); d.appendChild(diffPre(T(s.diff))); }
  if (s.code) { d.appendChild(el("h3", "code")); d.appendChild(pre(T(s.code), "code")); }
  for (const j of s.jobs) {
    d.appendChild(el("div", "sandbox job " + j.kind + " " + (j.job_id || "-") + ": " + j.status +
                     (j.category ? " (" + j.category + ")" : "") + (j.reused ? " reused" : "") + " " +
                     fmt(j.seconds, 1) + " s", "meta"));
  }
  if (s.log) { d.appendChild(el("h3", "sandbox log (tail)")); d.appendChild(pre(T(s.log), "log")); }
  const m = s.metrics || {};
  if (m.epochs || m.bleu4_coco !== undefined) {
    d.appendChild(el("h3", "metrics"));
    d.appendChild(el("div", "BLEU-4 (COCO protocol) " + fmt(m.bleu4_coco) + " \u00b7 BLEU-4 (LEMUR-compatible) " +
                     fmt(m.bleu4_lemur) + " \u00b7 params " + (m.params || "-")));
    for (const e of (m.epochs || [])) {
      d.appendChild(el("div", "epoch " + e.epoch + ": BLEU-4 " + fmt(e.bleu4) + ", train loss " +
                       fmt(e.train_loss, 3)));
    }
  }
}
renderSteps();
</script>
</body>
</html>
"""
