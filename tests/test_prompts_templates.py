"""Prompt templates: designer/reviewer/fixer rendering, role markers, request hints, bounded feedback."""

from __future__ import annotations

import json

import pytest

from nncaption.netapi.categories import Category
from nncaption.netapi.contract import contract_text as netapi_contract_text
from nncaption.netapi.errors import ConfigError
from nncaption.prompts import library as lib
from nncaption.prompts.library import (
    ROLE_MARKER,
    CandidateFeedback,
    DatasetFacts,
    FailureFeedback,
    ParentCandidate,
    designer_messages,
    detect_role,
    extract_request_code,
    fixer_messages,
    parse_request_hints,
    render,
    reviewer_messages,
    sample_snippets,
    template_names,
)

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
    msgs = designer_messages(FACTS, snippets, decoder="transformer", top=top, failures=fails, seed=11)
    assert [m["role"] for m in msgs] == ["system", "user"]
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert f"<!-- {ROLE_MARKER} designer -->" in system
    assert lib.contract_text().strip() in user
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
    assert "Parent candidate" not in user
    hints = parse_request_hints(user)
    assert hints == {"mode": "compose", "decoder": "transformer", "backbones": [s.name for s in snippets], "seed": 11}
    assert detect_role(msgs) == "designer"


def test_designer_without_feedback_or_decoder() -> None:
    msgs = designer_messages(FACTS, sample_snippets(2, seed=0))
    user = msgs[1]["content"]
    assert "No candidate has been scored yet." in user and "Recent failures" not in user
    assert "Choose the decoder family yourself" in user
    assert "decoder" not in parse_request_hints(user)


def test_designer_improve_mode_shows_parent_code_score_and_curve() -> None:
    parent = ParentCandidate(code=BRACEY, summary="vgg + LSTM", bleu4=0.0812, bleu4_per_epoch=[0.05, 0.0812],
                             hparams={"lr": 0.001})
    msgs = designer_messages(FACTS, sample_snippets(3, seed=2), decoder="lstm", mode="improve", parent=parent)
    user = msgs[1]["content"]
    assert "Improve the parent candidate" in user and "final BLEU-4: 0.0812" in user
    assert "0.0500 -> 0.0812" in user and "lr=0.001" in user
    assert extract_request_code(user) == BRACEY  # braces survive jinja2 rendering verbatim
    assert parse_request_hints(user)["mode"] == "improve"


def test_designer_argument_errors() -> None:
    snips = sample_snippets(2, seed=0)
    with pytest.raises(ConfigError):
        designer_messages(FACTS, snips, mode="improve")
    with pytest.raises(ConfigError):
        designer_messages(FACTS, snips, mode="mutate")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        designer_messages(FACTS, snips, decoder="rnn")  # type: ignore[arg-type]


def test_reviewer_asks_for_json_verdict() -> None:
    msgs = reviewer_messages(BRACEY, static_message="static check passed")
    user = msgs[1]["content"]
    assert detect_role(msgs) == "reviewer"
    assert '{"ok": true or false, "category":' in user and '"line": line number or null}' in user
    for c in Category:
        assert c.value in user
    assert extract_request_code(user) == BRACEY
    assert parse_request_hints(user) == {"role": "reviewer"}


def test_fixer_carries_code_error_and_bounded_traceback() -> None:
    error = "\n".join(f"line {i}" for i in range(100)) + "\nRuntimeError: boom"
    msgs = fixer_messages(BRACEY, error, category="learn-error")
    user = msgs[1]["content"]
    assert detect_role(msgs) == "fixer"
    assert "category `learn-error`" in user and "RuntimeError: boom" in user and "line 10\n" not in user
    assert extract_request_code(user) == BRACEY
    assert "WHOLE corrected file" in user and lib.contract_text().strip() in user
    assert parse_request_hints(user) == {"role": "fixer", "category": "learn-error"}


def test_detect_role_variants() -> None:
    assert detect_role([{"role": "user", "content": "write me a captioning model"}]) is None
    assert detect_role([]) is None
    parts = [{"role": "system", "content": [{"type": "text", "text": f"<!-- {ROLE_MARKER} fixer -->"}]}]
    assert detect_role(parts) == "fixer"
    assert detect_role([{"role": "system", "content": f"{ROLE_MARKER} wizard"}]) is None
    # the system message wins over a marker quoted in a user message
    msgs = [{"role": "user", "content": f"{ROLE_MARKER} designer"}, {"role": "system", "content": f"{ROLE_MARKER} reviewer"}]
    assert detect_role(msgs) == "reviewer"


def test_parse_request_hints_edge_cases() -> None:
    assert parse_request_hints("no hints here") == {}
    text = "blah\n<!-- nncaption-request: decoder=gru backbones=resnet,,vgg seed=-3 junk -->\nmore"
    assert parse_request_hints(text) == {"decoder": "gru", "backbones": ["resnet", "vgg"], "seed": -3}
    assert extract_request_code("nothing") is None


def test_render_is_strict_about_variables_and_names() -> None:
    with pytest.raises(ConfigError) as e:
        render("fixer", code="x = 1")
    assert "contract" in e.value.message
    with pytest.raises(ConfigError):
        render("no-such-template")
    out = render("designer.system.md", role_marker="MARK")
    assert out.startswith("MARK\n")


def test_messages_are_json_serialisable() -> None:
    msgs = designer_messages(FACTS, sample_snippets(10, seed=5), decoder="gru")
    json.dumps(msgs)
    assert len(msgs[1]["content"]) < 80_000  # K=10 compact snippets stay prompt-sized


def test_dataset_facts_from_prepared_meta(tiny_data) -> None:  # noqa: ANN001 - PreparedData from conftest
    facts = DatasetFacts.from_meta(tiny_data.meta)
    assert facts.vocab_size == len(tiny_data.vocab) and facts.image_size == 32
    assert facts.n_caps == tiny_data.meta.n_caps and facts.max_len == tiny_data.meta.max_len
    user = designer_messages(facts, [])[1]["content"]
    assert f"out_shape = ({facts.vocab_size},)" in user and "Backbone snippets" not in user
