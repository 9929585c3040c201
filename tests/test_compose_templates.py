"""The composer's model templates (agents/templates/*.py): valid modules, filled in strictly, nothing left over."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from nncaption.agents import compose_source as src
from nncaption.agents import templates
from nncaption.agents.compose import DECODERS, available_backbones, compose_model

PIECES = ("constants", "pick_random", "pick_first", "teacher", "rnn_decoder", "transformer_decoder", "net")


def test_every_piece_is_an_importable_module_with_a_start_line() -> None:
    names = {m.name for m in pkgutil.iter_modules(templates.__path__)}
    assert set(PIECES) <= names
    for name in PIECES:
        importlib.import_module(f"{src.TEMPLATE_PACKAGE}.{name}")  # valid Python, its header's names resolve
        assert src.template_text(name).strip()


def test_render_drops_unflagged_lines_strips_the_condition_and_fills_slots() -> None:
    text = "a = SLOT_X\nb = 1  # only if on\nc = 2  # only if off\n\"\"\"docSLOT_Y.\"\"\"\n"
    assert src.render(text, {"X": "3", "Y": "!"}, flags={"on"}) == "a = 3\nb = 1\n\"\"\"doc!.\"\"\"\n"


def test_render_rejects_a_slot_without_value_and_a_value_without_slot() -> None:
    with pytest.raises(ValueError, match="SLOT_X has no value"):
        src.render("a = SLOT_X\n", {})
    with pytest.raises(ValueError, match="for no template slot: Z"):
        src.render("a = SLOT_X\n", {"X": "1", "Z": "2"})


def test_missing_start_line_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(src, "START_LINE", "# no such line\n")
    with pytest.raises(ValueError, match="no start line"):
        src.template_text("teacher")


@pytest.mark.parametrize("decoder", DECODERS)
def test_composed_files_hold_no_template_syntax_and_compile(decoder: str) -> None:
    variants = [{}] if decoder == "transformer" else [
        {"fuse": f, "teacher": t} for f in ("init", "concat") for t in ("random", "first")]
    for backbone in available_backbones():
        for hp in variants:
            code = compose_model(backbone, decoder, seed=1, hparams=hp).code  # type: ignore[arg-type]
            assert "SLOT_" not in code and "# only if" not in code and "nncaption-template" not in code
            compile(code, f"<{backbone}/{decoder}>", "exec")
            if decoder == "lstm":
                assert "nn.LSTM(" in code and "return (h, c)" in code and "self.cell_proj" in code
            elif decoder == "gru":
                assert "nn.GRU(" in code and "return h\n" in code and "cell_proj" not in code
