"""The backbone snippet library: metadata, safety, the LEMUR Net API and the features convention."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest
import torch

from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.prompts.library import (
    Snippet,
    backbone_source,
    get_snippet,
    load_snippets,
    parse_snippet_metadata,
    sample_snippets,
)

REQUIRED = {
    "alexnet", "vgg", "resnet", "densenet", "mobilenetv2", "efficientnet_b0", "convnext_t", "squeezenet",
    "inception", "shufflenet", "regnet", "vit",
}
ALLOWED_IMPORTS = {"torch", "torch.nn", "torch.nn.functional", "math", "typing", "functools", "collections"}
SNIPPETS = load_snippets()


def _exec(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(f"snippet_{name}")
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)  # noqa: S102 - our own data files
    return module


def test_library_has_the_required_backbones() -> None:
    names = [s.name for s in SNIPPETS]
    assert len(names) == len(set(names)) >= 12
    assert REQUIRED <= set(names)
    assert all(s.composable and s.origin == "nncaption" for s in SNIPPETS)
    assert len({s.family for s in SNIPPETS}) >= 10


def test_snippets_are_data_not_imported_modules() -> None:
    load_snippets()
    imported = [m for m in sys.modules if m.startswith("nncaption.prompts.snippets.")]
    assert imported == []


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.name)
def test_snippet_metadata_and_safety(snippet: Snippet) -> None:
    meta = parse_snippet_metadata(snippet.source)
    assert meta["name"] == snippet.name and meta["family"] == snippet.family
    assert len(snippet.summary) > 20 and "self.features" in meta["convention"]
    tree = ast.parse(snippet.source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= ALLOWED_IMPORTS, ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module in ALLOWED_IMPORTS, node.module
    for word in ("pretrained", "torchvision", "torch.hub", "load_state_dict", "weights="):
        assert word not in snippet.source
    top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert {"supported_hyperparameters", "Net"} <= top
    assert "Backbone" not in top and "CaptionDecoder" not in top  # names the composer adds


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.name)
def test_snippet_follows_lemur_api_and_learns(snippet: Snippet) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = _exec(snippet.source, snippet.name)
    hps = module.supported_hyperparameters()
    assert {"lr", "momentum"} <= hps
    if "prm.get('dropout'" in snippet.source:
        assert "dropout" in hps
    prm = {"lr": 0.01, "momentum": 0.9, "dropout": 0.1}
    net = module.Net((2, 3, 32, 32), (10,), prm, torch.device("cpu"))
    net.train_setup(prm)
    assert isinstance(net.optimizer, torch.optim.SGD)
    assert net.optimizer.defaults["lr"] == 0.01 and net.optimizer.defaults["momentum"] == 0.9
    assert isinstance(net.criteria[0], torch.nn.CrossEntropyLoss)
    before = [p.detach().clone() for p in net.parameters()]
    net.learn([(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))])
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True)), "learn changed nothing"
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
        fmap = net.features(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # the convention the composer relies on
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, net.feature_dim) and fmap.shape[2] >= 4


def test_backbone_source_drops_head_training_and_hparams() -> None:
    imports, body = backbone_source(get_snippet("resnet"))
    assert "import torch.nn as nn" in imports
    assert "class Backbone(nn.Module)" in body and "class Net" not in body
    assert "def learn" not in body and "def train_setup" not in body
    assert "supported_hyperparameters" not in body and "nncaption-snippet" not in body
    module = _exec(imports + "\n" + body, "resnet_backbone")
    bb = module.Backbone((2, 3, 32, 32), (1,), {}, torch.device("cpu"))
    assert bb.features(torch.randn(2, 3, 32, 32)).shape == (2, bb.feature_dim, 4, 4)


def test_compact_prompt_source_is_shorter_and_still_parses() -> None:
    s = get_snippet("densenet")
    compact = s.prompt_source()
    assert "def learn" not in compact and "def train_setup" not in compact and "def forward" in compact
    assert len(compact) < len(s.source)
    ast.parse(compact)
    full = s.prompt_source(compact=False)
    assert "nncaption-" not in full and "nncaption-" not in compact  # metadata lines are not for the LLM
    assert full == "".join(ln for ln in s.source.splitlines(keepends=True) if not ln.startswith("# nncaption-"))


def test_get_snippet_unknown_name() -> None:
    with pytest.raises(ConfigError) as e:
        get_snippet("lenet-9000")
    assert "resnet" in e.value.hint


def test_sample_snippets_is_seeded_and_distinct() -> None:
    a = sample_snippets(5, seed=1)
    assert [s.name for s in a] == [s.name for s in sample_snippets(5, seed=1)]
    assert len({s.name for s in a}) == 5
    draws = {tuple(s.name for s in sample_snippets(5, seed=k)) for k in range(6)}
    assert len(draws) > 1
    assert len(sample_snippets(10, seed=3)) == 10
    assert sorted(s.name for s in sample_snippets(100, seed=0)) == sorted(s.name for s in SNIPPETS)
    with pytest.raises(ConfigError):
        sample_snippets(0, seed=0)


def test_from_lemur_without_nn_dataset_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ab" else real(name, *a))
    with pytest.raises(NNCaptionError) as e:
        load_snippets(from_lemur=True)
    assert e.value.category == "config"
    assert "pip install nn-dataset" in e.value.hint


def _fake_nn_dataset(root: Path, files: dict[str, str]) -> None:
    pkg = root / "ab"
    (pkg / "nn" / "nn").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nn" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    for name, text in files.items():
        (pkg / "nn" / "nn" / name).write_text(text)


def test_from_lemur_reads_classic_backbones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lemur = (
        "import torch\nimport torch.nn as nn\n\ndef supported_hyperparameters():\n    return {'lr', 'momentum'}\n\n"
        "class Net(nn.Module):\n    def __init__(self, in_shape, out_shape, prm, device):\n        super().__init__()\n"
        "    def train_setup(self, prm):\n        pass\n    def learn(self, train_data):\n        pass\n"
        "    def forward(self, x):\n        return x\n"
    )
    _fake_nn_dataset(tmp_path, {"AlexNet.py": lemur, "ResNet.py": lemur, "C5C-RESNETLSTM-1.py": lemur})
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in sys.modules if m == "ab" or m.startswith("ab.")]:
        monkeypatch.delitem(sys.modules, mod)
    snippets = load_snippets(from_lemur=True)
    lemur_ones = [s for s in snippets if s.origin == "lemur"]
    assert sorted(s.name for s in lemur_ones) == ["lemur-alexnet", "lemur-resnet"]
    assert all(not s.composable and s.source == lemur for s in lemur_ones)
    assert len(snippets) == len(SNIPPETS) + 2
    with pytest.raises(ConfigError):
        backbone_source(lemur_ones[0])


def test_from_lemur_with_no_classic_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nn_dataset(tmp_path, {"C5C-RESNETLSTM-1.py": "x = 1\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in sys.modules if m == "ab" or m.startswith("ab.")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(NNCaptionError) as e:
        load_snippets(from_lemur=True)
    assert e.value.category == "config" and "nn-dataset" in e.value.hint
