"""The three reference captioners: valid candidates, contract-shaped outputs, and (slow) learnability."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from nncaption.netapi import reference
from nncaption.netapi.contract import EOS, SOS, output_to_ids
from nncaption.netapi.lifecycle import smoke_here
from nncaption.netapi.loading import load_candidate
from nncaption.netapi.validate import static_check

PRM = {"lr": 1e-3, "momentum": 0.9, "dropout": 0.1, "batch": 4, "epoch": 1}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_names_and_paths() -> None:
    assert reference.NAMES == ("lstm", "gru", "transformer")
    for name in reference.NAMES:
        assert reference.path(name).is_file()
        assert reference.path(f"ref-{name}") == reference.path(name)
        assert reference.source(name).startswith('"""Reference captioner')
    with pytest.raises(KeyError, match="choose one of"):
        reference.path("ref-resnet")


@pytest.mark.parametrize("name", reference.NAMES)
def test_standalone_files_pass_the_static_check(name: str) -> None:
    source = reference.source(name)
    imports = {a.name.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    imports |= {n.module.split(".")[0] for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ImportFrom) and n.module}
    assert imports <= {"torch", "math"}  # one standalone file: nothing of nncaption
    verdict = static_check(source, filename=f"{name}.py")
    assert verdict.ok, verdict.message


@pytest.mark.parametrize("name", reference.NAMES)
def test_smoke_check_accepts_them(name: str, tiny_dataset: Any) -> None:
    verdict = smoke_here(reference.path(name), tiny_dataset.public_dir)
    assert verdict.ok, verdict.message


@pytest.mark.parametrize("name", reference.NAMES)
def test_contract_shapes(name: str) -> None:
    torch.manual_seed(0)
    vocab = 30
    net = load_candidate(reference.path(name)).Net((4, 3, 32, 32), (vocab,), dict(PRM), torch.device("cpu"))
    net.train_setup(dict(PRM))
    images = torch.randn(4, 3, 32, 32)
    caps = torch.randint(4, vocab, (4, 5, 12))
    caps[:, :, 0], caps[:, :, 8], caps[:, :, 9:] = SOS, EOS, 0
    loss = net.learn([(images, caps), (images, caps)])
    assert isinstance(loss, float) and loss > 0 and net.last_loss is not None
    net.eval()
    with torch.no_grad():
        teacher = net(images, caps)  # LEMUR style: teacher forcing with captions, (logits, state)
        free = net(images)
    assert teacher[0].shape == (4, 11, vocab)
    ids = output_to_ids(free, 4, vocab)
    assert ids.shape[0] == 4 and 1 <= ids.shape[1] <= 20


@pytest.mark.slow
def test_a_reference_model_learns_to_beat_the_constant_caption(tmp_path: Path) -> None:
    """Honest learnability: 3 CPU epochs on a 32 px synthetic set beat the best constant caption clearly."""
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.data.prepare import load_references, prepare_dataset
    from nncaption.netapi.data.synthetic import generate_synthetic
    from nncaption.netapi.evaluate import constant_caption_baseline, make_job_dir, score
    from nncaption.netapi.job import JobSpec, read_predictions, read_result
    from nncaption.netapi.train import run_job

    root = generate_synthetic(tmp_path / "raw", n_train=2000, n_val=100, size=32, seed=3)
    paths = prepare_dataset("synthetic", root, tmp_path / "prep", size=32, seed=3)
    data = PreparedData.open(paths.public_dir)
    refs = load_references(paths.private_dir)
    spec = JobSpec(data_dir=str(paths.public_dir), epochs=3, threads=2, seed=0,
                   prm={"lr": 1e-3, "momentum": 0.9, "dropout": 0.1, "batch": 32, "epoch": 3})
    job = make_job_dir(tmp_path / "job", reference.source("transformer"), spec)
    assert run_job(job) == 0, read_result(job)
    report = score(read_predictions(job), refs, data.vocab)
    captions = cast("Sequence[Sequence[Sequence[int]]]", data.train_captions)  # [N, Ncap, T] int array
    baseline = constant_caption_baseline(captions, data.vocab, refs).val["bleu4"]
    assert report.bleu4 is not None
    assert report.bleu4 > 1.5 * baseline, (report.epochs, baseline)
    assert report.epochs[-1].bleu4 > report.epochs[0].bleu4
