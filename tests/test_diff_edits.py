"""SEARCH/REPLACE edits for improve and fix: parsing, exact and whitespace-tolerant application, limits, and the
one whole-file request that follows edits that do not apply (scripted loopback servers, the real client)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llm_servers import ScriptedServer, ok

from nncaption.agents import compose
from nncaption.agents.client import LLMClient
from nncaption.agents.designer import design_sync
from nncaption.agents.diffedit import (
    MAX_BLOCKS,
    DiffFormatError,
    EditBlock,
    apply_diff,
    parse_diff,
    wants_diff,
)
from nncaption.agents.extract import ExtractionError
from nncaption.agents.fixer import fix_sync
from nncaption.agents.settings import LLMSettings
from nncaption.prompts.library import DatasetFacts, ParentCandidate

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)
PARENT = compose.compose_model("resnet", "gru", seed=0)
OTHER = compose.compose_model("vgg", "lstm", seed=1)
FULL = f"```python\n{OTHER.code}```\n\n```json\n{{\"lr\": 0.002}}\n```\nSUMMARY: {OTHER.summary}"
OLD = "        widths = [16, 32, 64, 128]"
NEW = "        widths = [16, 32, 64, 96]"
GOOD_EDIT = (f"Widen less.\n```python\n<<<<<<< SEARCH\n{OLD}\n=======\n{NEW}\n>>>>>>> REPLACE\n```\n\n"
             "```json\n{\"lr\": 0.001}\n```\nSUMMARY: narrower last stage\n")
MISSING_EDIT = "<<<<<<< SEARCH\n        widths = [1, 2, 3]\n=======\n        widths = [4, 5, 6]\n>>>>>>> REPLACE\n"


def client(url: str, diff_edits: float = 1.0) -> LLMClient:
    return LLMClient(LLMSettings.single(url, "m", backoff_base_s=0.01, timeout_s=10, max_retries=0,
                                        max_tokens=1000, diff_edits=diff_edits))


def improve(url: str, diff_edits: float = 1.0) -> Any:
    parent = ParentCandidate(code=PARENT.code, summary=PARENT.summary, bleu4=0.05, hparams={"lr": 0.0007})
    return design_sync(client(url, diff_edits), FACTS, k=0, seed=4, mode="improve", parent=parent)


def last_user(body: dict[str, Any]) -> str:
    return str([m for m in body["messages"] if m["role"] == "user"][-1]["content"])


# ------------------------------------------------------------------------------------------- parse and apply
def test_parse_reads_blocks_in_order_and_ignores_fences_and_prose() -> None:
    text = ("Here:\n```python\n<<<<<<< SEARCH\na = 1\n\nb = 2\n=======\na = 3\n>>>>>>> REPLACE\n```\n"
            "and\n<<<<<<< SEARCH\nc = 1\n=======\n>>>>>>> REPLACE\n")
    blocks = parse_diff(text)
    assert [(b.search, b.replace) for b in blocks] == [(["a = 1", "", "b = 2"], ["a = 3"]), (["c = 1"], [])]
    assert blocks[0].line == 3 and parse_diff("no edits here\n```python\nx = 1\n```") == []


def test_exact_application_replaces_whole_lines_in_order() -> None:
    code = "a = 1\nb = 2\nc = 3\n"
    out = apply_diff(code, parse_diff("<<<<<<< SEARCH\nb = 2\n=======\nb = 20\nb2 = 21\n>>>>>>> REPLACE\n"
                                      "<<<<<<< SEARCH\nb2 = 21\nc = 3\n=======\nc = 30\n>>>>>>> REPLACE"))
    assert out.ok and out.code == "a = 1\nb = 20\nc = 30\n"
    assert [(r.match, r.at_line) for r in out.results] == [("exact", 2), ("exact", 3)]
    # whole lines only: "b = 2" is not found inside "bb = 2"
    assert not apply_diff("bb = 2\n", [EditBlock(["b = 2"], ["x"], 1)]).ok


def test_whitespace_tolerant_application_reindents_the_replacement() -> None:
    code = "class A:\n    def f(self):\n        x = 1   \n        return x\n"
    trailing = apply_diff(code, [EditBlock(["        x = 1"], ["        x = 2"], 1)])
    assert trailing.ok and trailing.results[0].match == "trailing-whitespace" and "        x = 2\n" in trailing.code
    # the model dropped the indentation (and added blank lines around the block)
    dedented = apply_diff(code, [EditBlock(["", "x = 1", "return x", ""], ["y = 2", "if y:", "    return y"], 1)])
    assert dedented.ok and dedented.results[0].match == "indentation"
    assert dedented.code == "class A:\n    def f(self):\n        y = 2\n        if y:\n            return y\n"


def test_ambiguous_missing_and_empty_blocks_do_not_apply_and_change_nothing() -> None:
    code = "x = 1\ny = 2\nx = 1\n"
    out = apply_diff(code, [EditBlock(["x = 1"], ["x = 9"], 1), EditBlock(["z = 0"], ["z = 1"], 5),
                            EditBlock(["  "], ["w"], 9), EditBlock(["y = 2"], ["y = 3"], 12)])
    assert not out.ok and [r.applied for r in out.results] == [False, False, False, True]
    assert "ambiguous" in out.results[0].reason and "not in the file" in out.results[1].reason
    assert "empty" in out.results[2].reason and out.code == "x = 1\ny = 3\nx = 1\n"
    # ambiguity ignoring whitespace is ambiguity too (a unique match is required at every level)
    twice = apply_diff("x = 1 \nx = 1  \n", [EditBlock(["x = 1"], ["x = 2"], 1)])
    assert not twice.ok and "trailing-whitespace comparison" in twice.results[0].reason


def test_block_limits_and_malformed_blocks_are_format_errors() -> None:
    one = "<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"
    assert len(parse_diff(one * MAX_BLOCKS)) == MAX_BLOCKS
    with pytest.raises(DiffFormatError, match="more than"):
        parse_diff(one * (MAX_BLOCKS + 1))
    with pytest.raises(DiffFormatError, match="more than"):  # hostile: many openings, stopped early
        parse_diff(one * 200_000)
    with pytest.raises(DiffFormatError, match="not closed"):
        parse_diff("<<<<<<< SEARCH\na\n=======\nb\n")
    with pytest.raises(DiffFormatError, match="inside"):
        parse_diff("<<<<<<< SEARCH\na\n<<<<<<< SEARCH\n")
    with pytest.raises(DiffFormatError, match="no '======='"):
        parse_diff("<<<<<<< SEARCH\na\n>>>>>>> REPLACE\n")
    with pytest.raises(DiffFormatError, match="side over"):
        parse_diff("<<<<<<< SEARCH\n" + "x\n" * 60 + "=======\n>>>>>>> REPLACE\n", max_side_chars=100)
    grown = apply_diff("a\n", [EditBlock(["a"], ["b" * 100], 1)], max_code_chars=50)
    assert not grown.ok and "exceed" in grown.results[0].reason and grown.code == "a\n"


def test_the_share_of_edit_requests_is_a_stable_draw() -> None:
    assert not wants_diff(0.0, "x") and wants_diff(1.0, "x")
    draws = [wants_diff(0.5, "designer", seed, "code") for seed in range(400)]
    assert draws == [wants_diff(0.5, "designer", seed, "code") for seed in range(400)]
    assert 120 < sum(draws) < 280


# ------------------------------------------------------------------------------------------- through the client
def test_an_improve_reply_with_edits_is_applied_to_the_parent() -> None:
    with ScriptedServer([ok(GOOD_EDIT)]) as srv:
        d = improve(srv.base_url)
    assert len(srv.bodies) == 1 and "<<<<<<< SEARCH" in last_user(srv.bodies[0])
    assert d.code == PARENT.code.replace(OLD, NEW) and d.prm == {"lr": 0.001}
    assert d.summary == "narrower last stage"
    assert d.edit is not None and d.edit["used"] == "diff" and not d.edit["fallback"]
    assert d.edit["blocks"][0]["applied"] and d.edit["blocks"][0]["match"] == "exact"
    assert any("diff block 1/1" in n and "applied (exact)" in n for n in d.notes)
    json.dumps(d.edit, allow_nan=False)


AMBIGUOUS_EDIT = "<<<<<<< SEARCH\n        super().__init__()\n=======\n        pass\n>>>>>>> REPLACE\n"


@pytest.mark.parametrize("bad", [MISSING_EDIT, f"<<<<<<< SEARCH\n{OLD}\n=======\n{NEW}\n", AMBIGUOUS_EDIT])
def test_edits_that_do_not_apply_are_followed_by_one_request_for_the_whole_file(bad: str) -> None:
    """Not found, unterminated and ambiguous (`super().__init__()` is in several classes): the second request asks
    for the whole file and says why; its reply's file is used."""
    with ScriptedServer([ok(bad), ok(FULL)]) as srv:
        d = improve(srv.base_url)
    assert len(srv.bodies) == 2 and len(d.exchanges) == 2
    first, second = last_user(srv.bodies[0]), last_user(srv.bodies[1])
    assert "## Answer with edits" in first and "## Answer with edits" not in second
    assert "could not be used" in second and "WHOLE file" in second
    assert d.code == OTHER.code and d.prm == {"lr": 0.002}
    assert d.edit is not None and d.edit["fallback"] and d.edit["used"] == "fallback-full" and d.edit["reason"]
    assert any("asked once more for the whole file" in n for n in d.notes)


def test_a_whole_file_answer_to_an_edit_request_is_used_as_it_is() -> None:
    with ScriptedServer([ok(FULL)]) as srv:
        d = improve(srv.base_url)
    assert len(srv.bodies) == 1 and d.code == OTHER.code
    assert d.edit is not None and d.edit["used"] == "full" and d.edit["blocks"] == []


def test_no_edit_request_when_the_share_is_zero() -> None:
    with ScriptedServer([ok(FULL)]) as srv:
        d = improve(srv.base_url, diff_edits=0.0)
    assert "<<<<<<< SEARCH" not in last_user(srv.bodies[0]) and d.edit is None and d.code == OTHER.code


def test_a_fix_with_whitespace_tolerant_edits_and_bad_hyperparameters() -> None:
    edit = f"<<<<<<< SEARCH\n{OLD.strip()}   \n=======\n{NEW.strip()}\n>>>>>>> REPLACE\nSUMMARY: fixed\n"
    with ScriptedServer([ok(edit)]) as srv:
        f = fix_sync(client(srv.base_url), PARENT.code, "RuntimeError: boom", prm={"lr": 0.01})
    assert len(srv.bodies) == 1 and "candidate code above" in last_user(srv.bodies[0])
    assert f.code == PARENT.code.replace(OLD, NEW) and f.prm == {"lr": 0.01}  # no json block: the given prm kept
    assert f.edit is not None and f.edit["blocks"][0]["match"] == "indentation"
    bad_prm = edit + "```json\n{\"lr\": 7}\n```\n"
    with ScriptedServer([ok(bad_prm)]) as srv, pytest.raises(ExtractionError) as ei:
        fix_sync(client(srv.base_url), PARENT.code, "RuntimeError: boom")
    assert ei.value.category == "bad-hyperparameters" and ei.value.candidate == PARENT.code.replace(OLD, NEW)


def test_hostile_sizes_stay_bounded() -> None:
    """Many identical lines (every position a partial match) and a huge reply of markers: answered, not hung."""
    code = "pass\n" * 50_000
    out = apply_diff(code, [EditBlock(["pass"] * 20_000, ["x = 1"], 1)])
    assert not out.ok and "ambiguous" in out.results[0].reason and out.code == code
    with pytest.raises(DiffFormatError, match="outside"):
        parse_diff("=======\n" * 1_000_000)
    assert parse_diff("x\n" * 1_000_000) == []


def test_too_many_blocks_through_the_client_ask_for_the_whole_file() -> None:
    many = f"<<<<<<< SEARCH\n{OLD}\n=======\n{NEW}\n>>>>>>> REPLACE\n" * (MAX_BLOCKS + 1)
    with ScriptedServer([ok(many), ok(FULL)]) as srv:
        f = fix_sync(client(srv.base_url), PARENT.code, "RuntimeError: boom")
    assert len(srv.bodies) == 2 and f.code == OTHER.code
    assert f.edit is not None and f.edit["fallback"] and "more than 32" in f.edit["reason"]
    assert "more than 32" in last_user(srv.bodies[1])
