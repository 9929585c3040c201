"""Tokeniser cases and the vocabulary (build order, encode/decode, save/load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nncaption.netapi.contract import EOS, PAD, SOS, SPECIALS, UNK
from nncaption.netapi.data.tokenizer import tokenize
from nncaption.netapi.data.vocab import Vocab
from nncaption.netapi.errors import DatasetError


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Two RED circles, on the left!", ["two", "red", "circles", "on", "the", "left"]),
        ("A man riding a wave on top of a surfboard.", ["a", "man", "riding", "a", "wave", "on", "top", "of", "a",
                                                        "surfboard"]),
        ("  spaces\tand\nnewlines  ", ["spaces", "and", "newlines"]),
        ("The dog's ball", ["the", "dog", "'s", "ball"]),
        ("It don't matter", ["it", "do", "n't", "matter"]),
        ("a t-shirt (red) - nice...", ["a", "t-shirt", "red", "nice"]),
        ("3.5 inches; 10 cats?", ["3.5", "inches", "10", "cats"]),
        ('He said "hi": ok', ["he", "said", "hi", "ok"]),
        ("The dog\u2019s bone", ["the", "dog", "'s", "bone"]),
        ("", []),
        ("...!?", []),
    ],
)
def test_tokenize_cases(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_tokenize_is_idempotent_on_its_output() -> None:
    text = "Two people's T-shirts, a DOG and 3.5 cats!"
    once = tokenize(text)
    assert tokenize(" ".join(once)) == once


def _corpus() -> list[list[str]]:
    return [tokenize(c) for c in ["a red circle", "a blue square", "two red circles", "a red box", "zebra"]]


def test_vocab_build_specials_first_and_frequency_order() -> None:
    vocab = Vocab.build(_corpus(), min_freq=2)
    assert tuple(vocab.itos[:4]) == SPECIALS
    assert (vocab.stoi["<pad>"], vocab.stoi["<sos>"], vocab.stoi["<eos>"], vocab.stoi["<unk>"]) == (PAD, SOS, EOS, UNK)
    # 'a' x3, 'red' x3 (ties alphabetical), then nothing else reaches 2
    assert vocab.itos[4:] == ["a", "red"]
    assert "zebra" not in vocab.stoi and len(vocab) == 6
    assert Vocab.build(_corpus(), min_freq=1).itos[4:6] == ["a", "red"]
    assert Vocab.build(list(reversed(_corpus())), min_freq=1) == Vocab.build(_corpus(), min_freq=1)


def test_vocab_encode_wraps_truncates_and_maps_unknown() -> None:
    vocab = Vocab.build(_corpus(), min_freq=1)
    ids = vocab.encode(["a", "red", "giraffe"], max_len=20)
    assert ids[0] == SOS and ids[-1] == EOS and ids[3] == UNK and len(ids) == 5
    short = vocab.encode(["a", "red", "circle", "a", "red"], max_len=4)
    assert len(short) == 4 and short[0] == SOS and short[-1] == EOS
    assert vocab.decode(short) == ["a", "red"]
    with pytest.raises(ValueError):
        vocab.encode(["a"], max_len=1)


def test_vocab_decode_cuts_at_eos_and_drops_specials() -> None:
    vocab = Vocab.build(_corpus(), min_freq=1)
    a, red = vocab.stoi["a"], vocab.stoi["red"]
    assert vocab.decode([SOS, a, UNK, red, EOS, a, PAD]) == ["a", "red"]
    assert vocab.decode([a, PAD, red, 10_000, -1]) == ["a", "red"]
    assert vocab.decode([]) == []


def test_vocab_save_load_round_trip(tmp_path: Path) -> None:
    vocab = Vocab.build(_corpus(), min_freq=1)
    vocab.save(tmp_path / "vocab.json")
    again = Vocab.load(tmp_path / "vocab.json")
    assert again == vocab and again.stoi == vocab.stoi
    tokens = ["two", "red", "circles"]
    assert again.decode(again.encode(tokens, 20)) == tokens


def test_vocab_load_errors_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing"):
        Vocab.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text(json.dumps({"itos": ["a", "b"]}))
    with pytest.raises(DatasetError, match="malformed"):
        Vocab.load(tmp_path / "bad.json")
