"""Prompt templates: designer/reviewer/fixer rendering, no control markers, constant parts first, bounded feedback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nncaption.netapi.categories import Category
from nncaption.netapi.contract import contract_text as netapi_contract_text
from nncaption.netapi.errors import ConfigError
from nncaption.prompts import library as lib
from nncaption.prompts.library import (
    CandidateFeedback,
    DatasetFacts,
    FailureFeedback,
    ParentCandidate,
    designer_messages,
    detect_role,
    fixer_messages,
    render,
    reviewer_messages,
    sample_snippets,
    system_text,
    template_names,
)
from nncaption.prompts.parse import parse_candidate, parse_designer, sections

FACTS = DatasetFacts(vocab_size=317, image_size=32, max_len=20, n_caps=5, n_train=96, name="synthetic")
BRACEY = "x = {'a': 1}\ny = f'{x}'\ns = '{{ not_a_var }} {% if %} {# c #}'\n"


def test_contract_text_is_the_validators_source() -> None:
    assert lib.contract_text is netapi_contract_text
    assert "class Net(nn.Module)" in lib.contract_text()


def test_template_files_exist() -> None:
    assert {"designer", "designer.system", "reviewer", "reviewer.system", "fixer", "fixer.system"} <= set(
        template_names()
    )


def test_designer_compose_carries_every_section() -> None:
    snippets = sample_snippets(5, seed=7)
    top = [CandidateFeedback("resnet + GRU, hidden 256", {"lr": 0.002, "dropout": 0.1}, [0.051, 0.0934])]
    fails = [FailureFeedback("shape-error", "Traceback\n" + "  frame\n" * 50 + "RuntimeError: mat1 and mat2", "vgg")]
    msgs = designer_messages(FACTS, snippets, decoder="transformer", top=top, failures=fails)
    assert [m["role"] for m in msgs] == ["system", "user"]
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert system == system_text("designer")
    assert user.startswith("## The Net API contract") and lib.contract_text().strip() in user
    for fact in ("317", "(B, 3, 32, 32)", "[B, 5, 20]", "96 training images"):
        assert fact in user
    for s in snippets:
        assert f"{s.name} ({s.family}): {s.summary}" in user
        assert s.prompt_source().strip() in user
    assert "Transformer decoder" in user
    assert "resnet + GRU, hidden 256 | hyperparameters: dropout=0.1, lr=0.002" in user
    assert "0.0510 -> 0.0934" in user
    assert "[shape-error] vgg" in user and "RuntimeError: mat1 and mat2" in user
    assert user.count("  frame") <= 8  # traceback tail bounded
    assert "Diversity" in user and "ONE fenced ```python block" in user and "SUMMARY:" in user
    assert "ONE fenced ```json block" in user and "batch" in user  # the hyperparameter channel
    assert "Parent candidate" not in user
    req = parse_designer(user)  # what the offline composer reads back from the ordinary sections
    assert (req.mode, req.decoder, req.snippets) == ("compose", "transformer", [s.name for s in snippets])
    assert detect_role(msgs) == "designer"


def test_no_control_markers_in_any_prompt() -> None:
    """Real-LLM prompts carry nothing for the offline composer: no nncaption- markers, no HTML comments."""
    parent = ParentCandidate(code=BRACEY, summary="vgg + LSTM", bleu4=0.08, hparams={"lr": 0.001})
    prompts = [
        designer_messages(FACTS, sample_snippets(10, seed=1), decoder="gru"),
        designer_messages(FACTS, sample_snippets(3, seed=2), mode="improve", parent=parent),
        reviewer_messages(BRACEY, prm={"lr": 0.01}),
        fixer_messages(BRACEY, "RuntimeError: boom", category="learn-error", prm={"lr": 0.01}),
    ]
    for msgs in prompts:
        for m in msgs:
            assert "nncaption-" not in m["content"] and "<!--" not in m["content"], m["content"][:200]


def test_constant_parts_come_first_for_prefix_caching() -> None:
    """Two designer prompts of one run (different seeds, snippets, feedback) share the system text, the contract,
    the dataset facts and the answer format as a prefix."""
    a = designer_messages(FACTS, sample_snippets(5, seed=0), decoder="lstm")
    b = designer_messages(FACTS, sample_snippets(5, seed=1), decoder=None,
                          failures=[FailureFeedback("nan", "loss is nan")])
    assert a[0] == b[0]
    ua, ub = a[1]["content"], b[1]["content"]
    shared = next((i for i, (x, y) in enumerate(zip(ua, ub, strict=False)) if x != y), min(len(ua), len(ub)))
    assert shared >= ua.index("# Task") > ua.index("## Answer format") > ua.index("## Dataset facts")
    assert len(lib.contract_text().strip()) < shared


def test_designer_without_feedback_or_decoder() -> None:
    msgs = designer_messages(FACTS, sample_snippets(2, seed=0))
    user = msgs[1]["content"]
    assert "No candidate has been scored yet." in user and "Recent failures" not in user
    assert "Choose the decoder family yourself" in user
    assert parse_designer(user).decoder is None


def test_designer_improve_mode_shows_parent_code_score_curve_and_prm() -> None:
    parent = ParentCandidate(code=BRACEY, summary="vgg + LSTM", bleu4=0.0812, bleu4_per_epoch=[0.05, 0.0812],
                             hparams={"lr": 0.001, "batch": 16})
    msgs = designer_messages(FACTS, sample_snippets(3, seed=2), decoder="lstm", mode="improve", parent=parent)
    user = msgs[1]["content"]
    assert "Improve the parent candidate" in user and "final BLEU-4: 0.0812" in user
    assert "0.0500 -> 0.0812" in user and '{"batch": 16, "lr": 0.001}' in user
    req = parse_designer(user)
    assert req.mode == "improve" and req.parent_code == BRACEY  # braces survive jinja2 rendering verbatim
    assert req.parent_prm == {"batch": 16, "lr": 0.001} and req.decoder == "lstm"


def test_designer_argument_errors() -> None:
    snips = sample_snippets(2, seed=0)
    with pytest.raises(ConfigError):
        designer_messages(FACTS, snips, mode="improve")
    with pytest.raises(ConfigError):
        designer_messages(FACTS, snips, mode="mutate")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        designer_messages(FACTS, snips, decoder="rnn")  # type: ignore[arg-type]


def test_reviewer_asks_for_json_verdict_and_shows_prm() -> None:
    msgs = reviewer_messages(BRACEY, static_message="static check passed", prm={"lr": 0.5, "dropout": 0.2})
    user = msgs[1]["content"]
    assert detect_role(msgs) == "reviewer"
    assert '{"ok": true or false, "category":' in user and '"line": line number or null}' in user
    for c in Category:
        assert c.value in user
    cand = parse_candidate(user)
    assert cand.code == BRACEY and cand.prm == {"dropout": 0.2, "lr": 0.5}


def test_fixer_carries_code_prm_error_and_bounded_traceback() -> None:
    error = "\n".join(f"line {i}" for i in range(100)) + "\nRuntimeError: boom"
    msgs = fixer_messages(BRACEY, error, category="learn-error", prm={"lr": 0.003})
    user = msgs[1]["content"]
    assert detect_role(msgs) == "fixer"
    assert "category `learn-error`" in user and "RuntimeError: boom" in user and "line 10\n" not in user
    assert "WHOLE corrected file" in user and lib.contract_text().strip() in user
    cand = parse_candidate(user)
    assert cand.code == BRACEY and cand.prm == {"lr": 0.003} and cand.category == "learn-error"
    assert cand.error.endswith("RuntimeError: boom")


def test_candidate_derived_text_is_made_safe_in_prompts() -> None:
    """Control characters from a traceback or verdict message are escaped before they reach an LLM."""
    hostile = "RuntimeError: \x1b[31mred\x1b[0m\r\x00 overwritten\u2028next"
    fixer_user = fixer_messages(BRACEY, hostile, category="learn\x1b-error")[1]["content"]
    parent = ParentCandidate(code=BRACEY, summary="docstring\x1b[2J", hparams={})
    designer_user = designer_messages(FACTS, [], failures=[FailureFeedback("nan", hostile, "s\x07")],
                                      top=[CandidateFeedback("top\x1b]0;x\x07", {}, [0.1])])[1]["content"]
    improve_user = designer_messages(FACTS, [], mode="improve", parent=parent)[1]["content"]
    assert "\x1b" not in improve_user and "\\x1b[2J" in improve_user and "\x07" not in designer_user
    reviewer_user = reviewer_messages(BRACEY, static_message=hostile)[1]["content"]
    for text in (fixer_user, designer_user, reviewer_user):
        assert "\x1b" not in text and "\r" not in text and "\x00" not in text and "\u2028" not in text
        assert "\\x1b[31mred" in text


def test_detect_role_from_the_system_text() -> None:
    assert detect_role([{"role": "user", "content": "write me a captioning model"}]) is None
    assert detect_role([]) is None
    parts = [{"role": "system", "content": [{"type": "text", "text": system_text("fixer")}]}]
    assert detect_role(parts) == "fixer"
    assert detect_role([{"role": "system", "content": "You are a helpful assistant."}]) is None
    with pytest.raises(ConfigError):
        system_text("wizard")


def test_sections_ignore_headings_inside_code() -> None:
    text = "## Candidate\n```python\n## Error\nx = 1\n```\n## Error\n```text\nboom\n```\n"
    titles = [s.title for s in sections(text)]
    assert titles == ["", "Candidate", "Error"]
    cand = parse_candidate(text)
    assert cand.code == "## Error\nx = 1\n" and cand.error == "boom"


def test_render_is_strict_about_variables_and_names() -> None:
    with pytest.raises(ConfigError) as e:
        render("fixer", code="x = 1")
    assert "contract" in e.value.message
    with pytest.raises(ConfigError):
        render("no-such-template")
    out = render("designer.system.md")
    assert out.startswith("You are an expert")


def test_messages_are_json_serialisable() -> None:
    msgs = designer_messages(FACTS, sample_snippets(10, seed=5), decoder="gru")
    json.dumps(msgs)
    assert len(msgs[1]["content"]) < 80_000  # K=10 compact snippets stay prompt-sized


def test_dataset_facts_from_prepared_meta(tiny_data: Any) -> None:
    facts = DatasetFacts.from_meta(tiny_data.meta)
    assert facts.vocab_size == len(tiny_data.vocab) and facts.image_size == 32
    assert facts.n_caps == tiny_data.meta.n_caps and facts.max_len == tiny_data.meta.max_len
    user = designer_messages(facts, [])[1]["content"]
    assert f"out_shape = ({facts.vocab_size},)" in user and "Backbone snippets" not in user


def test_bench_prompts_prints_the_shared_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.evals import bench_prompts

    assert bench_prompts.main(["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["shared_prefix_chars"] >= r["constant_part_chars"] > r["system_plus_contract_chars"] > r["system_chars"]
    assert r["target_met"] is True
