"""Code extraction from every reply shape a reasoning model produces."""

from __future__ import annotations

import ast
import json

import pytest

from nncaption.agents.extract import (
    EXTRACTION_CATEGORIES,
    ExtractionError,
    extract_candidate,
    extract_code,
    extract_summary,
    fenced_blocks,
    module_docstring_line,
)
from nncaption.agents.hparams import PrmError, supported_keys, validate_prm
from nncaption.netapi.categories import Category

pytestmark = pytest.mark.timeout(30)

NET = '''"""GRU captioner over a tiny CNN."""
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {"lr", "momentum", "dropout"}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.fc = nn.Linear(in_shape[1], out_shape[0])

    def train_setup(self, prm):
        pass

    def learn(self, train_data):
        pass

    def forward(self, images, captions=None, hidden_state=None):
        return self.fc(images.mean((2, 3))).argmax(-1, keepdim=True)
'''

HELPER = "import torch\n\nx = torch.zeros(2, 3)\nprint(x.shape)\n"


def defines_net(code: str) -> bool:
    tree = ast.parse(code)
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    return {"Net", "supported_hyperparameters"} <= names


def fence(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}```"


def test_single_python_block_with_prose_around() -> None:
    reply = f"Here is my design.\n\n{fence(NET)}\n\nIt should train quickly.\nSUMMARY: tiny CNN + GRU"
    assert extract_code(reply) == NET
    assert extract_summary(reply) == "tiny CNN + GRU"


@pytest.mark.parametrize("lang", ["python", "py", "", "Python3", "python title=model.py"])
def test_fence_labels(lang: str) -> None:
    assert extract_code(f"Intro\n```{lang}\n{NET}```\nOutro") == NET


def test_tilde_fence_and_indented_fence() -> None:
    assert extract_code(f"~~~python\n{NET}~~~") == NET
    body = "".join("   " + ln + "\n" if ln else "\n" for ln in NET.splitlines())
    indented = "1. The file:\n   ```python\n" + body + "   ```\n"
    assert defines_net(extract_code(indented))


def test_several_blocks_prefers_the_net_api_block() -> None:
    reply = (f"First a quick check:\n{fence(HELPER)}\nNow the model:\n{fence(NET)}\n"
             f"And run it with:\n{fence('python -m nncaption check model.py', 'bash')}\n")
    assert extract_code(reply) == NET


def test_later_complete_version_wins_a_tie() -> None:
    revised = NET.replace("GRU captioner", "Revised GRU captioner")
    reply = f"Draft:\n{fence(NET)}\nOn reflection, better:\n{fence(revised)}"
    assert extract_code(reply) == revised


def test_file_split_over_two_blocks_is_joined() -> None:
    head, tail = NET.split("class Net", 1)
    reply = f"Imports and hyperparameters:\n{fence(head)}\nThe model:\n{fence('class Net' + tail)}"
    code = extract_code(reply)
    assert defines_net(code)


def test_unclosed_final_fence_that_parses_is_used() -> None:
    reply = f"Here it is:\n```python\n{NET}"
    assert defines_net(extract_code(reply))


def test_unclosed_final_fence_cut_mid_code_is_truncated() -> None:
    cut = NET[: NET.index("def learn") + 20]
    with pytest.raises(ExtractionError) as ei:
        extract_code(f"Here it is:\n```python\n{cut}")
    assert ei.value.category == "truncated" and ei.value.candidate and "class Net" in ei.value.candidate
    assert ei.value.hint


def test_code_inside_think_block_when_answer_is_empty() -> None:
    reply = f"<think>\nLet me write it.\n{fence(NET)}\nDone.\n</think>\n\n"
    assert extract_code(reply) == NET


def test_code_in_server_reasoning_field_when_content_is_empty() -> None:
    assert extract_code("", reasoning=f"thinking...\n{fence(NET)}") == NET


def test_answer_code_preferred_over_draft_in_reasoning() -> None:
    draft = NET.replace("GRU captioner", "DRAFT")
    reply = f"<think>draft:\n{fence(draft)}\n</think>\nFinal:\n{fence(NET)}"
    assert extract_code(reply) == NET


def test_template_opened_think_block() -> None:
    reply = f"I should use a GRU.\n</think>\n\n{fence(NET)}\nSUMMARY: gru"
    assert extract_code(reply) == NET and extract_summary(reply) == "gru"


def test_cut_off_while_thinking_is_truncated() -> None:
    with pytest.raises(ExtractionError) as ei:
        extract_code("<think>\nFirst I will consider the encoder. Then the decoder and")
    assert ei.value.category == "truncated"


def test_bare_code_reply() -> None:
    assert extract_code(NET) == NET


def test_bare_code_after_prose_without_fences() -> None:
    reply = "Sure, here is the model:\n" + NET + "\nThis model uses a GRU."
    code = extract_code(reply)
    assert defines_net(code) and "Sure" not in code and "This model" not in code


def test_no_code_is_a_typed_error() -> None:
    with pytest.raises(ExtractionError) as ei:
        extract_code("I am sorry, I cannot help with designing networks today.")
    assert ei.value.category == "no-code" and ei.value.category in EXTRACTION_CATEGORIES


def test_only_non_python_blocks_is_no_code() -> None:
    with pytest.raises(ExtractionError) as ei:
        extract_code("Run this:\n```bash\npip install torch\n```\n")
    assert ei.value.category == "no-code"


@pytest.mark.parametrize("text", ["", "   \n\t", "<think>\n\n</think>\n"])
def test_empty_reply(text: str) -> None:
    with pytest.raises(ExtractionError) as ei:
        extract_code(text)
    assert ei.value.category == "empty-reply"


def test_multiple_blocks_none_valid() -> None:
    broken1 = NET.replace("def learn(self, train_data):", "def learn(self, train_data)")
    broken2 = NET.replace("return {", "return {{")
    with pytest.raises(ExtractionError) as ei:
        extract_code(f"v1:\n{fence(broken1)}\nv2:\n{fence(broken2)}")
    assert ei.value.category == "multiple-candidates-none-valid"
    assert ei.value.candidate is not None and "class Net" in ei.value.candidate


def test_single_block_with_syntax_error_is_returned_for_the_validator() -> None:
    broken = NET.replace("def learn(self, train_data):", "def learn(self, train_data)")
    assert extract_code(fence(broken)) == broken


def test_extraction_error_is_an_nncaption_error() -> None:
    from nncaption.netapi.errors import NNCaptionError

    try:
        extract_code("no code")
    except NNCaptionError as e:
        assert e.category == "no-code" and e.message and e.hint
    else:  # pragma: no cover
        pytest.fail("no error")


def test_summary_variants_and_docstring_fallback() -> None:
    assert extract_summary(f"{fence(NET)}\n**SUMMARY:** ResNet + LSTM, 256 hidden") == "ResNet + LSTM, 256 hidden"
    assert extract_summary(fence(NET)) is None
    # a 'summary:' inside the code is not the reply's summary
    assert extract_summary(fence("# summary: inside code\nx = 1\n")) is None
    assert module_docstring_line(NET) == "GRU captioner over a tiny CNN."


def test_fenced_blocks_reports_closed_state() -> None:
    blocks = fenced_blocks(f"{fence(HELPER)}\n```python\nx = 1\n")
    assert [b.closed for b in blocks] == [True, False]


# ------------------------------------------------------------------ JSON mode and the hyperparameter channel


@pytest.mark.parametrize("fenced", [False, True])
def test_json_mode_reply_with_code_and_prm(fenced: bool) -> None:
    """A reply that is one JSON object (bare or in a ```json fence) holding the file: formerly `no-code`."""
    obj = {"code": NET, "prm": {"lr": 0.002, "momentum": 0.9, "batch": 16}, "summary": "GRU over a tiny CNN"}
    text = json.dumps(obj)
    if fenced:
        text = f"Here is my answer.\n```json\n{json.dumps(obj, indent=2)}\n```\n"
    assert extract_code(text) == NET
    cand = extract_candidate(text)
    assert cand.code == NET and cand.prm == {"lr": 0.002, "momentum": 0.9, "batch": 16}
    assert cand.summary == "GRU over a tiny CNN"


def test_json_mode_reply_whose_code_field_holds_a_fence() -> None:
    text = json.dumps({"python": f"```python\n{NET}```", "hyperparameters": {"dropout": 0.1}})
    cand = extract_candidate(text)
    assert cand.code == NET and cand.prm == {"dropout": 0.1}


def test_prm_from_a_json_block_beside_the_python_block() -> None:
    text = f"```python\n{NET}```\n\n```json\n{{\"lr\": 0.01, \"dropout\": 0.25}}\n```\nSUMMARY: gru\n"
    cand = extract_candidate(text)
    assert cand.code == NET and cand.prm == {"lr": 0.01, "dropout": 0.25} and cand.summary == "gru"


def test_prm_from_a_literal_in_the_file_never_executed() -> None:
    code = NET.replace("class Net", "PRM = {'lr': 0.004, 'momentum': 0.8}\n\n\nclass Net")
    assert extract_candidate(f"```python\n{code}```").prm == {"lr": 0.004, "momentum": 0.8}
    computed = NET.replace("class Net", "PRM = {'lr': __import__('os').getpid()}\n\n\nclass Net")
    with pytest.raises(ExtractionError) as ei:
        extract_candidate(f"```python\n{computed}```")
    assert ei.value.category == "bad-hyperparameters" and ei.value.candidate == computed


def test_no_prm_given_is_none() -> None:
    assert extract_candidate(f"```python\n{NET}```").prm is None


@pytest.mark.parametrize("prm,needle", [
    ({"lr": 0.0}, "'lr' = 0.0 is outside (0, 1]"),
    ({"lr": 1.5}, "outside (0, 1]"),
    ({"momentum": 1.0}, "outside [0, 1)"),
    ({"dropout": -0.1}, "outside [0, 1)"),
    ({"batch": 0}, "outside 1..512"),
    ({"batch": 1024}, "outside 1..512"),
    ({"batch": 2.5}, "must be an integer"),
    ({"lr": "fast"}, "must be a number"),
    ({"lr": True}, "must be a number"),
])
def test_invalid_prm_is_a_clear_category(prm: dict, needle: str) -> None:
    # (an unknown key is dropped with a note, not an error: tests/test_llm_agents_hparams.py)
    text = f"```python\n{NET}```\n```json\n{json.dumps(prm)}\n```"
    with pytest.raises(ExtractionError) as ei:
        extract_candidate(text)
    err = ei.value
    assert err.category == "bad-hyperparameters" == Category.BAD_HYPERPARAMETERS.value
    assert needle in err.message and err.candidate == NET and "supported_hyperparameters" in err.hint


def test_validate_prm_ranges_and_keys() -> None:
    assert validate_prm({"lr": 1, "momentum": 0, "dropout": 0.5, "batch": 32.0}, NET) == \
        {"lr": 1.0, "momentum": 0.0, "dropout": 0.5, "batch": 32}
    assert validate_prm({"embed": 64}) == {"embed": 64}  # without code only ranges are checked
    assert supported_keys(NET) == frozenset({"lr", "momentum", "dropout"})
    assert supported_keys("def supported_hyperparameters():\n    return set(['lr'])\n") == frozenset({"lr"})
    assert supported_keys("def supported_hyperparameters():\n    return KEYS\n") is None
    with pytest.raises(PrmError, match="must be finite"):
        validate_prm({"lr": float("nan")})


def test_summaries_are_escaped() -> None:
    assert extract_summary("SUMMARY: resnet\x1b[2J + GRU") == "resnet\\x1b[2J + GRU"
    assert module_docstring_line('"""evil\x07 docstring"""\nx = 1\n') == "evil\\x07 docstring"
    obj = json.dumps({"code": NET, "summary": "json\x1b summary"})
    assert extract_candidate(obj).summary == "json\\x1b summary"
