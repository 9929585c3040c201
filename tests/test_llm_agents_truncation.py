"""A design or fix cut off at its token budget is asked again once; unknown hyperparameters are dropped with a note.

Against scripted loopback servers (tests/llm_servers.py), through the real client.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from llm_servers import ScriptedServer, ok

from nncaption.agents import compose
from nncaption.agents.client import LLMClient
from nncaption.agents.designer import design_sync
from nncaption.agents.extract import ExtractionError, extract_candidate
from nncaption.agents.fixer import fix_sync
from nncaption.agents.hparams import PrmError, validate_llm_prm
from nncaption.agents.settings import LLMSettings
from nncaption.agents.truncation import BREVITY_NOTE, retry_budget, sent_budget, with_brevity_note
from nncaption.prompts.library import DatasetFacts

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
GOOD = compose.compose_model("resnet", "gru", seed=0)
FULL = f"Here it is:\n```python\n{GOOD.code}```\nSUMMARY: {GOOD.summary}"
CUT = f"Here it is:\n```python\n{GOOD.code[: len(GOOD.code) // 2]}"  # the answer stops inside the code block
DRAFT_IN_REASONING = f"Plan: a ResNet.\n```python\n{GOOD.code}```\nHmm, no, that decoder is wrong; let me redo"
BUDGET = 1000


def client(url: str, **kw: Any) -> LLMClient:
    opts: dict[str, Any] = {"backoff_base_s": 0.01, "timeout_s": 10, "max_retries": 0, "max_tokens": BUDGET}
    opts.update(kw)
    return LLMClient(LLMSettings.single(url, "m", **opts))


def _budget(body: dict[str, Any]) -> Any:
    return body.get("max_tokens") or body.get("max_completion_tokens")


def _last_user(body: dict[str, Any]) -> str:
    return str([m for m in body["messages"] if m["role"] == "user"][-1]["content"])


@pytest.mark.parametrize("first", [
    ok(CUT, finish_reason="length"),
    ok("", DRAFT_IN_REASONING, split=True, finish_reason="length"),  # R1: a draft while thinking, then cut off
])
def test_a_truncated_design_is_asked_again_once_with_a_larger_budget(first: Any) -> None:
    with ScriptedServer([first, ok(FULL)]) as srv:
        d = design_sync(client(srv.base_url), FACTS, k=2, seed=0)
    assert d.code == GOOD.code and len(srv.bodies) == 2 and len(d.exchanges) == 2
    assert d.exchanges[0].finish_reason == "length" and d.exchange.finish_reason == "stop"
    assert _budget(srv.bodies[0]) == BUDGET and _budget(srv.bodies[1]) == 2 * BUDGET
    assert "used up its budget" in _last_user(srv.bodies[1]) and "used up" not in _last_user(srv.bodies[0])


def test_a_second_truncation_is_the_truncated_category() -> None:
    with ScriptedServer([ok(CUT, finish_reason="length")]) as srv:
        with pytest.raises(Exception) as ei:
            design_sync(client(srv.base_url), FACTS, k=2, seed=0)
    assert getattr(ei.value, "category", None) == "truncated" and len(srv.bodies) == 2
    assert "again" in str(getattr(ei.value, "message", ""))


def test_a_truncated_fix_is_asked_again_once() -> None:
    with ScriptedServer([ok(CUT, finish_reason="length"), ok(FULL)]) as srv:
        f = fix_sync(client(srv.base_url), GOOD.code, "learn raised: RuntimeError", prm={"lr": 0.01})
    assert f.code == GOOD.code and len(srv.bodies) == 2 and len(f.exchanges) == 2
    assert _budget(srv.bodies[1]) == 2 * BUDGET


def test_other_extraction_errors_are_not_asked_again() -> None:
    with ScriptedServer([ok("I would use a ResNet.")]) as srv:
        with pytest.raises(ExtractionError) as ei:
            design_sync(client(srv.base_url), FACTS, k=2, seed=0)
    assert ei.value.category == "no-code" and len(srv.bodies) == 1


def test_the_budget_grows_only_when_the_first_request_had_the_full_budget() -> None:
    assert retry_budget(BUDGET, BUDGET) == 2 * BUDGET
    assert retry_budget(700, BUDGET) is None  # the client clamped it to the context: only brevity helps
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    noted = with_brevity_note(msgs, 700)
    assert noted[1]["content"] == "u" + BREVITY_NOTE.format(n=700) and msgs[1]["content"] == "u"


def test_sent_budget_reads_what_the_request_carried() -> None:
    from nncaption.agents.records import LLMExchange

    ex = LLMExchange(role="designer", endpoint="e", model="m", messages=[], params={"max_completion_tokens": 512})
    assert sent_budget(ex, BUDGET) == 512 and sent_budget(None, BUDGET) == BUDGET


def _cut_that_parses(code: str) -> str:
    """`code` cut at the last top-level definition: still valid Python, but not the whole file."""
    lines = code.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(("def ", "class "))]
    cut = "\n".join(lines[: starts[-1]]) + "\n"
    compile(cut, "cut", "exec")
    return cut


@pytest.mark.parametrize("reply", [
    f"Here it is:\n```python\n{_cut_that_parses(GOOD.code)}",  # an unclosed block that happens to parse
    _cut_that_parses(GOOD.code),  # unfenced code: nothing marks where the file ends
])
def test_cut_off_code_that_happens_to_parse_is_truncated_not_code(reply: str) -> None:
    with pytest.raises(ExtractionError) as ei:
        extract_candidate(reply, None, truncated=True)
    assert ei.value.category == "truncated" and ei.value.candidate
    extract_candidate(reply, None, truncated=False)  # not cut off: the same text is a candidate
    # a closed block whose summary was cut off is complete: the file is used
    assert extract_candidate(f"```python\n{GOOD.code}```\nSUMMARY: a ResNet enc", None, truncated=True).code \
        == GOOD.code


# ------------------------------------------------------------------ unknown hyperparameters


def test_unknown_hyperparameters_are_dropped_with_a_note() -> None:
    prm, notes = validate_llm_prm({"lr": 0.01, "weight_decay": 1e-4, "batch": 32}, GOOD.code)
    assert prm == {"lr": 0.01, "batch": 32}
    assert len(notes) == 1 and "weight_decay" in notes[0] and "supported_hyperparameters()" in notes[0]
    with pytest.raises(PrmError, match="outside"):  # a known key out of range is still an error
        validate_llm_prm({"lr": 5.0, "weight_decay": 1e-4}, GOOD.code)
    many, notes = validate_llm_prm({f"k{i}": 1 for i in range(20)}, GOOD.code)
    assert many == {} and len(notes) == 9


def test_a_reply_with_weight_decay_keeps_its_candidate_and_says_so() -> None:
    reply = f"```python\n{GOOD.code}```\n```json\n{json.dumps({'lr': 0.02, 'weight_decay': 0.01})}\n```"
    assert extract_candidate(reply).prm == {"lr": 0.02}
    with ScriptedServer([ok(reply)]) as srv:
        d = design_sync(client(srv.base_url), FACTS, k=2, seed=0)
        f = fix_sync(client(srv.base_url), GOOD.code, "nan loss", prm={"lr": 0.5})
    assert d.prm == {"lr": 0.02} and any("weight_decay" in n for n in d.notes)
    assert f.prm == {"lr": 0.02} and any("weight_decay" in n for n in f.notes)
