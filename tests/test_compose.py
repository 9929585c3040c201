"""The offline composer: every backbone x decoder is a valid candidate; defects are caught and repaired."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nncaption.agents.compose import (
    DECODERS,
    DEFECT_KINDS,
    ComposedModel,
    available_backbones,
    compose_for_request,
    compose_model,
    improve,
    inject_defect,
    parse_marker,
    repair,
)
from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.harness import check
from nncaption.netapi.validate import static_check
from nncaption.prompts.library import load_snippets

BACKBONES = available_backbones()
EXPECTED: dict[str, Category] = {
    "syntax": Category.SYNTAX,
    "shape": Category.SHAPE_ERROR,
    "missing-method": Category.MISSING_SYMBOL,
    "forbidden-import": Category.FORBIDDEN_CALL,
    "output-contract": Category.EVAL_CONTRACT,
}


@pytest.fixture(scope="module")
def data_dir(tiny_dataset) -> Path:  # noqa: ANN001 - PreparedPaths from conftest
    torch.set_num_threads(1)
    return tiny_dataset.public_dir


def run_check(code: str, tmp_path: Path, data_dir: Path, name: str = "candidate.py") -> Verdict:
    """Static check, then the real smoke check on the tiny prepared dataset."""
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    return check(path, data_dir, batch_size=4, time_limit_s=120.0)


def test_every_snippet_is_composable() -> None:
    assert BACKBONES == [s.name for s in load_snippets()]
    assert len(BACKBONES) >= 12
    assert DEFECT_KINDS == tuple(EXPECTED)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_composition_passes_static_and_smoke(backbone: str, decoder: str, tmp_path: Path, data_dir: Path) -> None:
    seed = BACKBONES.index(backbone) * 3 + DECODERS.index(decoder)
    model = compose_model(backbone, decoder, seed=seed)  # type: ignore[arg-type]
    assert isinstance(model, ComposedModel) and model.backbone == backbone and model.decoder == decoder
    assert model.code.startswith(f"# nncaption-composed: backbone={backbone} decoder={decoder} seed={seed} ")
    assert backbone in model.summary and "\n" not in model.summary
    static = static_check(model.code)
    assert static.ok, static.message
    verdict = run_check(model.code, tmp_path, data_dir)
    assert verdict.ok, verdict.message


def test_composition_is_seeded_and_overridable() -> None:
    a = compose_model("resnet", "gru", seed=5)
    assert a == compose_model("resnet", "gru", seed=5)
    others = {tuple(sorted(compose_model("resnet", "gru", seed=s).hparams.items())) for s in range(8)}
    assert len(others) > 4
    b = compose_model("resnet", "gru", seed=5, hparams={"hidden": 160, "fuse": "concat", "lr": 0.004})
    assert b.hparams["hidden"] == 160 and "HIDDEN_DIM = 160" in b.code and "FEED_FEATURES = True" in b.code
    assert b.prm == {"lr": 0.004, "momentum": a.hparams["momentum"], "dropout": a.hparams["dropout"]}
    info = parse_marker(b.code)
    assert info is not None and info["hparams"] == b.hparams and info["seed"] == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backbone": "lenet", "decoder": "gru"},
        {"backbone": "resnet", "decoder": "rnn"},
        {"backbone": "resnet", "decoder": "gru", "hparams": {"colour": "red"}},
        {"backbone": "resnet", "decoder": "gru", "hparams": {"lr": 3.0}},
        {"backbone": "resnet", "decoder": "transformer", "hparams": {"embed": 66, "heads": 4}},
        {"backbone": "resnet", "decoder": "lstm", "hparams": {"fuse": "sideways"}},
    ],
)
def test_compose_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        compose_model(kwargs.pop("backbone"), kwargs.pop("decoder"), seed=0, **kwargs)


def test_composed_model_learns_on_a_fixed_batch() -> None:
    import types

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = compose_model("squeezenet", "gru", seed=1, hparams={"lr": 0.003, "dropout": 0.0})
    module = types.ModuleType("composed")
    exec(compile(model.code, "composed.py", "exec"), module.__dict__)  # noqa: S102 - our own output
    prm = {**model.prm, "batch": 4, "epoch": 1}
    net = module.Net((4, 3, 32, 32), (40,), prm, torch.device("cpu"))
    net.train_setup(prm)
    images = torch.randn(4, 3, 32, 32)
    caps = torch.zeros(4, 5, 10, dtype=torch.long)
    caps[:, :, 0], caps[:, :, 1:8], caps[:, :, 8] = 1, torch.randint(4, 40, (4, 1, 7)), 2
    first = net.learn([(images, caps)])
    for _ in range(25):
        last = net.learn([(images, caps)])
    assert last < 0.5 * first
    net.eval()
    with torch.no_grad():
        ids, _ = net(images)
    assert ids.dtype == torch.long and ids.shape[0] == 4 and 1 <= ids.shape[1] <= 20


CASES = [(kind, decoder, seed) for kind in DEFECT_KINDS for decoder in DECODERS for seed in range(3)]


@pytest.mark.parametrize("kind,decoder,seed", CASES, ids=[f"{k}-{d}-{s}" for k, d, s in CASES])
def test_defect_is_rejected_with_its_category_and_repaired(
    kind: str, decoder: str, seed: int, tmp_path: Path, data_dir: Path
) -> None:
    backbone = ("squeezenet", "regnet", "vgg")[seed]
    good = compose_model(backbone, decoder, seed=seed).code  # type: ignore[arg-type]
    bad = inject_defect(good, kind, seed)
    assert bad != good and bad.splitlines()[0] == good.splitlines()[0]
    verdict = run_check(bad, tmp_path, data_dir, "bad.py")
    assert not verdict.ok and verdict.category is EXPECTED[kind], (verdict.category, verdict.message)
    fixed = repair(bad, verdict.message)
    assert fixed == good
    again = run_check(fixed, tmp_path, data_dir, "fixed.py")
    assert again.ok, again.message


def test_inject_defect_variants_differ_by_seed() -> None:
    good = compose_model("vgg", "lstm", seed=0).code
    for kind in DEFECT_KINDS:
        assert len({inject_defect(good, kind, s) for s in range(3)}) >= 2, kind
    with pytest.raises(ConfigError):
        inject_defect(good, "gremlins", 0)
    with pytest.raises(ConfigError):
        inject_defect("x = 1\n", "shape", 0)


def test_repair_without_marker_falls_back_to_a_default_composition(tmp_path: Path, data_dir: Path) -> None:
    lstm_code = compose_model("vgg", "lstm", seed=2).code.split("\n", 1)[1]  # marker line removed
    fixed = repair(inject_defect("# nncaption-composed: broken\n" + lstm_code, "syntax", 0), "syntax error")
    info = parse_marker(fixed)
    assert info is not None and info["decoder"] == "lstm" and info["backbone"] == "vgg"
    assert run_check(fixed, tmp_path, data_dir).ok
    plain = repair("I could not write the model, sorry.", "no-code")
    info = parse_marker(plain)
    assert info is not None and (info["backbone"], info["decoder"]) == ("resnet", "gru")
    assert plain == repair("I could not write the model, sorry.", "no-code")  # deterministic
    assert static_check(plain).ok


def test_repair_adapts_sizes_and_learning_rate() -> None:
    base = compose_model("resnet", "lstm", seed=4, hparams={"embed": 128, "hidden": 256, "layers": 2, "lr": 0.003})
    small = parse_marker(repair(base.code, "rejected: too-large, 60,000,000 parameters"))
    assert small is not None and small["hparams"]["embed"] == 64 and small["hparams"]["hidden"] == 128
    assert small["hparams"]["layers"] == 1
    calm = parse_marker(repair(base.code, "category nan: the loss became NaN"))
    assert calm is not None and calm["hparams"]["lr"] == pytest.approx(0.001)
    tf = compose_model("vit", "transformer", seed=1, hparams={"embed": 128, "heads": 4})
    shrunk = parse_marker(repair(tf.code, "timeout"))
    assert shrunk is not None and shrunk["hparams"]["embed"] == 64 and shrunk["hparams"]["embed"] % 4 == 0


def test_improve_mutates_one_aspect_and_stays_valid() -> None:
    parent = compose_model("densenet", "gru", seed=3)
    changed = set()
    for seed in range(10):
        child = improve(parent.code, seed=seed)
        assert child.code != parent.code and static_check(child.code).ok
        if child.backbone != parent.backbone:
            changed.add("backbone")
        if child.decoder != parent.decoder:
            changed.add("decoder")
        if child.hparams.get("lr") != parent.hparams["lr"]:
            changed.add("lr")
    assert len(changed) >= 2
    assert static_check(improve("no marker here", seed=1).code).ok


def test_compose_for_request_follows_hints() -> None:
    m = compose_for_request({"decoder": "lstm", "backbones": ["vgg", "not-a-snippet"], "seed": 9}, seed=4)
    assert (m.backbone, m.decoder) == ("vgg", "lstm")
    assert m == compose_for_request({"decoder": "lstm", "backbones": ["vgg", "not-a-snippet"], "seed": 9}, seed=4)
    free = compose_for_request({}, seed=1)
    assert free.backbone in BACKBONES and free.decoder in DECODERS
    picks = {compose_for_request({"backbones": ["vgg", "vit", "resnet"]}, seed=s).backbone for s in range(12)}
    assert picks <= {"vgg", "vit", "resnet"} and len(picks) >= 2
