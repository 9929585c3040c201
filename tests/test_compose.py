"""The offline composer: every backbone x decoder is a valid candidate; defects are caught and repaired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from candidate_check import check_code

from nncaption.agents.compose import (
    DECODERS,
    DEFECT_KINDS,
    ComposedModel,
    available_backbones,
    compose_for_request,
    compose_model,
    inject_defect,
    parse_marker,
)
from nncaption.agents.mutate import improve, repair, repair_model
from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.errors import ConfigError
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
def data_dir(tiny_dataset: Any) -> Path:
    torch.set_num_threads(1)
    return tiny_dataset.public_dir


def run_check(code: str, tmp_path: Path, data_dir: Path, name: str = "candidate.py",
              prm: dict | None = None) -> Verdict:
    """Static check, then the real smoke check on the tiny prepared dataset, trained with `prm`."""
    return check_code(code, data_dir, tmp_path, prm=prm, name=name)


def build(model: ComposedModel, prm: dict | None = None) -> Any:
    """The composed Net instantiated with `prm` (default: the model's own), ready to train (train_setup done)."""
    import types

    module = types.ModuleType("composed")
    exec(compile(model.code, "composed.py", "exec"), module.__dict__)  # noqa: S102 - our own output
    prm = {**(prm if prm is not None else model.prm), "epoch": 1}
    net = module.Net((4, 3, 32, 32), (40,), prm, torch.device("cpu"))
    net.train_setup(prm)
    return net


def test_every_snippet_is_composable() -> None:
    assert BACKBONES == [s.name for s in load_snippets()]
    assert len(BACKBONES) >= 12
    assert DEFECT_KINDS == tuple(EXPECTED)


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
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
    assert set(model.prm) <= {"lr", "momentum", "dropout", "embed", "hidden", "layers", "heads", "batch"}
    verdict = run_check(model.code, tmp_path, data_dir, prm=model.prm)
    assert verdict.ok, verdict.message


def test_composition_is_seeded_and_overridable() -> None:
    a = compose_model("resnet", "gru", seed=5)
    assert a == compose_model("resnet", "gru", seed=5)
    others = {tuple(sorted(compose_model("resnet", "gru", seed=s).hparams.items())) for s in range(8)}
    assert len(others) > 4
    b = compose_model("resnet", "gru", seed=5, hparams={"hidden": 160, "fuse": "concat", "lr": 0.004})
    assert b.hparams["hidden"] == 160 and "HIDDEN_DIM = 160" in b.code and "FEED_FEATURES = True" in b.code
    assert b.prm == {"lr": 0.004, "momentum": a.hparams["momentum"], "dropout": a.hparams["dropout"],
                     "embed": a.hparams["embed"], "hidden": 160, "layers": a.hparams["layers"],
                     "batch": a.hparams["batch"]}
    assert a.prm["batch"] in (16, 32, 64) and isinstance(a.prm["batch"], int)
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
        {"backbone": "resnet", "decoder": "lstm", "hparams": {"batch": 0}},
    ],
)
def test_compose_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        compose_model(kwargs.pop("backbone"), kwargs.pop("decoder"), seed=0, **kwargs)


def test_composed_model_learns_on_a_fixed_batch() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = compose_model("squeezenet", "gru", seed=1, hparams={"lr": 0.003, "dropout": 0.0})
    net = build(model)
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


def test_prm_decides_what_trains_not_the_file_constants() -> None:
    """The sizes, dropout and learning rate the Net uses are the prm's, whatever the file's defaults say."""
    model = compose_model("resnet", "lstm", seed=2, hparams={"embed": 64, "hidden": 128, "layers": 1})
    net = build(model, {**model.prm, "embed": 32, "hidden": 48, "layers": 2, "lr": 0.0007, "dropout": 0.25})
    rnn = net.decoder.rnn
    assert (net.decoder.embed.embedding_dim, rnn.hidden_size, rnn.num_layers) == (32, 48, 2)
    assert net.decoder.drop.p == 0.25 and net.optimizer.param_groups[0]["lr"] == 0.0007
    own = build(model)
    assert (own.decoder.rnn.hidden_size, own.optimizer.param_groups[0]["lr"]) == (128, model.prm["lr"])
    tf = compose_model("vit", "transformer", seed=1, hparams={"embed": 64, "heads": 2})
    layer = build(tf, {**tf.prm, "embed": 32, "heads": 4, "layers": 2}).decoder.decoder.layers
    assert len(layer) == 2 and layer[0].self_attn.num_heads == 4 and layer[0].self_attn.embed_dim == 32


CASES = [(kind, decoder, seed) for kind in DEFECT_KINDS for decoder in DECODERS for seed in range(3)]


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
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


def test_repair_adapts_the_sizes_and_learning_rate_that_train() -> None:
    """Checked on what training uses: the repaired prm and the Net it builds (not a comment line)."""
    base = compose_model("resnet", "lstm", seed=4, hparams={"embed": 128, "hidden": 256, "layers": 2, "lr": 0.003})
    small = repair_model(base.code, "rejected: too-large, 60,000,000 parameters", base.prm)
    assert (small.prm["embed"], small.prm["hidden"], small.prm["layers"]) == (64, 128, 1)
    net = build(small)
    assert (net.decoder.embed.embedding_dim, net.decoder.rnn.hidden_size, net.decoder.rnn.num_layers) == (64, 128, 1)
    calm = repair_model(base.code, "category nan: the loss became NaN", base.prm)
    assert calm.prm["lr"] == pytest.approx(0.001)
    assert build(calm).optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    # the prm the candidate trained with wins over the file's marker
    trained = {**base.prm, "lr": 0.009}
    assert repair_model(base.code, "loss is nan", trained).prm["lr"] == pytest.approx(0.003)
    tf = compose_model("vit", "transformer", seed=1, hparams={"embed": 128, "heads": 4})
    shrunk = repair_model(tf.code, "timeout", tf.prm)
    assert shrunk.prm["embed"] == 64 and shrunk.prm["embed"] % shrunk.prm["heads"] == 0
    assert build(shrunk).decoder.decoder.layers[0].self_attn.embed_dim == 64


def test_improve_changes_what_trains_and_stays_valid() -> None:
    parent = compose_model("densenet", "gru", seed=3)
    changed = set()
    for seed in range(10):
        child = improve(parent.code, seed=seed, prm=parent.prm)
        assert static_check(child.code).ok
        structure = (child.backbone, child.decoder) != (parent.backbone, parent.decoder)
        assert structure or child.prm != parent.prm  # every mutation changes what trains
        if child.backbone != parent.backbone:
            changed.add("backbone")
        if child.decoder != parent.decoder:
            changed.add("decoder")
        for key in ("lr", "dropout", "embed"):
            if child.prm.get(key) != parent.prm[key] and not structure:
                changed.add(key)
    assert len(changed) >= 3, changed
    assert static_check(improve("no marker here", seed=1).code).ok


def test_compose_for_request_follows_hints() -> None:
    m = compose_for_request({"decoder": "lstm", "backbones": ["vgg", "not-a-snippet"], "seed": 9}, seed=4)
    assert (m.backbone, m.decoder) == ("vgg", "lstm")
    assert m == compose_for_request({"decoder": "lstm", "backbones": ["vgg", "not-a-snippet"], "seed": 9}, seed=4)
    free = compose_for_request({}, seed=1)
    assert free.backbone in BACKBONES and free.decoder in DECODERS
    picks = {compose_for_request({"backbones": ["vgg", "vit", "resnet"]}, seed=s).backbone for s in range(12)}
    assert picks <= {"vgg", "vit", "resnet"} and len(picks) >= 2
