"""The report's plots and the viewer's BLEU-4 chart are readable at a glance (checked on the figures and the SVG).

matplotlib figures: failed candidates as x markers in a band per category, BLEU axes from 0 with labels, whole-epoch
ticks, no empty token panels for a run without LLM calls, titles and captions inside the figure. The SVG: 640x320,
y ticks and one y label, an x tick per candidate, a marker per failed candidate in its category's band, hostile
category text escaped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nncaption.inspection.html import bleu_svg
from nncaption.inspection.report import figures
from nncaption.inspection.report_data import Captions

SVG = "{http://www.w3.org/2000/svg}"


def _cand(idx: int, status: str, bleu: float | None = None, category: str | None = None) -> dict[str, Any]:
    return {"cid": f"c{idx + 1:04d}", "idx": idx, "status": status, "bleu4": bleu, "lemur_bleu4": None,
            "category": category, "origin": "draft", "parent": None, "params": 1, "summary": ""}


CANDS = [_cand(0, "failed", category="missing-symbol"), _cand(1, "scored", 0.12),
         _cand(2, "failed", category="timeout"),
         _cand(3, "scored", 0.2), _cand(4, "failed", category="missing-symbol")]
EPOCHS = {"c0002": [{"epoch": 1, "bleu4": 0.05}, {"epoch": 2, "bleu4": 0.12}],
          "c0004": [{"epoch": 1, "bleu4": 0.1}, {"epoch": 2, "bleu4": 0.2}]}
FUNNEL = {"stages": {"designed": 5, "statically valid": 3, "smoke-passed": 3, "trained": 3, "scored": 2},
          "rejections": [{"stage": "static", "category": "missing-symbol", "verdicts": 2},
                         {"stage": "train", "category": "timeout", "verdicts": 1}]}
BASELINE_COST = {"per_stage": {n: {"steps": 3, "seconds": s, "tokens": 0} for n, s in
                               (("design", 0.1), ("smoke", 5.0), ("train", 30.0))}, "per_role": {}}
LONG = "two purple boxes in the upper part with two orange squares at the bottom and one more shape there"
CAPS = Captions(cid="c0004", epoch=2, rows=[{"image_id": str(i), "image": np.zeros((32, 32, 3), np.uint8),
                                              "prediction": "a a a $x$", "references": [LONG]} for i in range(6)])


@pytest.fixture(scope="module")
def figs() -> Any:
    import matplotlib.pyplot as plt

    made = figures(CANDS, EPOCHS, FUNNEL, BASELINE_COST, CAPS)
    for fig in made.values():
        fig.canvas.draw()
    yield made
    for fig in made.values():
        plt.close(fig)


def _inside(fig: Any, artist: Any) -> bool:
    box = artist.get_window_extent()
    return bool(fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and fig.bbox.y0 - 1 <= box.y0
                and box.y1 <= fig.bbox.y1 + 1)


def test_failed_candidates_are_markers_at_their_category(figs: Any) -> None:
    ax, band = figs["bleu_per_candidate.png"].axes
    assert [t.get_text() for t in band.get_yticklabels()] == ["missing-symbol", "timeout"]
    offsets = band.collections[0].get_offsets().tolist()
    assert sorted(map(tuple, offsets)) == [(1.0, 0.0), (3.0, 1.0), (5.0, 0.0)]
    assert ax.get_ylim()[0] == 0 and ax.get_ylabel() == "BLEU-4" and band.get_xlabel()
    labels = [t.get_text() for t in band.get_xticklabels() if t.get_text()]
    assert labels and all(label.isdigit() for label in labels)


def test_epoch_ticks_are_whole_epochs_and_bleu_starts_at_zero(figs: Any) -> None:
    (ax,) = figs["bleu_per_epoch.png"].axes
    assert list(ax.get_xticks()) == [1, 2]
    assert ax.get_ylim()[0] == 0 and ax.get_xlabel() == "epoch" and ax.get_ylabel()


def test_a_run_without_llm_calls_has_no_empty_token_panels(figs: Any) -> None:
    fig = figs["cost.png"]
    assert [a.get_title() for a in fig.axes] == ["time per stage"]
    assert any("token panels left out" in t.get_text() for t in fig.texts)
    with_tokens = dict(BASELINE_COST, per_role={"designer": {"tokens": 900, "calls": 3, "latency_s": 1.0,
                                                             "models": []}})
    with_tokens["per_stage"] = {"design": {"steps": 1, "seconds": 1.0, "tokens": 900}}
    assert [a.get_title() for a in figures([], {}, FUNNEL, with_tokens, None)["cost.png"].axes] == \
        ["time per stage", "tokens per stage", "tokens per role"]


def test_titles_and_captions_are_not_clipped(figs: Any) -> None:
    funnel = figs["funnel.png"]
    assert all(_inside(funnel, a.title) for a in funnel.axes)
    assert all(t.get_text() == str(t.get_text()) for a in funnel.axes for t in a.get_xticklabels())
    xs = [t for a in funnel.axes for t in a.get_xticks()]
    assert all(float(x).is_integer() for x in xs)  # counts: no 0.5 ticks
    caps = figs["captions.png"]
    texts = [t for a in caps.axes for t in a.texts]
    assert texts and "$" in texts[0].get_text()  # shown literally, not as math


def test_saved_pngs_have_a_blank_margin(tmp_path: Path) -> None:
    """Nothing touches the edge of a saved PNG: the last caption line is inside the picture, not cut off."""
    from matplotlib.image import imread

    from nncaption.inspection.report import _plots

    for path in _plots(tmp_path, CANDS, EPOCHS, FUNNEL, BASELINE_COST, CAPS):
        img = imread(path)[..., :3]
        for edge in (img[:3], img[-3:], img[:, :3], img[:, -3:]):
            assert edge.min() > 0.9, path.name


def test_svg_chart_is_large_with_ticks_labels_and_failure_bands() -> None:
    cands = [*CANDS, _cand(5, "failed", category="<b>evil</b>&")]
    root = ET.fromstring(bleu_svg(cands))
    assert (root.get("width"), root.get("height")) == ("640", "320")
    texts = [t for t in root.iter(f"{SVG}text")]
    assert len([t for t in texts if t.get("class") == "ylabel"]) == 1
    assert len(root.findall(f".//{SVG}line[@class='xtick']")) == 6
    assert len(root.findall(f".//{SVG}line[@class='ytick']")) >= 3
    assert len(root.findall(f".//{SVG}path[@class='fail']")) == 4
    assert len(root.findall(f".//{SVG}circle[@class='pt']")) == 2
    bands = [t.text for t in texts if t.get("class") == "band"]
    assert bands == ["missing-symbol", "timeout", "<b>evil</b>&"]  # escaped in the SVG, parsed back as text
    xticks = [t.text for t in texts if t.text and t.text.isdigit()]
    assert {"1", "6"} <= set(xticks)


def test_svg_chart_thins_ticks_and_groups_many_categories() -> None:
    cands = [_cand(i, "failed", category=f"cat{i}") for i in range(40)] + [_cand(40, "scored", 0.3)]
    root = ET.fromstring(bleu_svg(cands))
    assert 10 <= len(root.findall(f".//{SVG}line[@class='xtick']")) <= 16
    bands = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "band"]
    assert len(bands) == 4 and bands[-1] == "other"
    assert len(root.findall(f".//{SVG}path[@class='fail']")) == 40
