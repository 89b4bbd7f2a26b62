"""Calibration in the classification tasks: ECE (15 bins) and Brier in every record, checked independently,
plus the reliability plot artifact."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dermbench import plugins, runner, stats  # noqa: E402
from dermbench.results import load_records  # noqa: E402
from dermbench_plugins.tasks._shared.classification import CLASSIFICATION_METRICS, reliability_plot  # noqa: E402


def ece_by_loop(y_true, probs, n_bins=15):
    """Guo et al. 2017 ECE written out plainly: for each bin (lo, hi] of the max probability,
    |bin share| * |accuracy - mean confidence|; a confidence of exactly 0 falls in the first bin."""
    total = 0.0
    n = len(y_true)
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = []
        for yi, p in zip(y_true, probs):
            c = max(p)
            if (lo < c <= hi) or (k == 0 and c == 0.0):
                members.append((int(np.argmax(p)) == yi, c))
        if members:
            acc = sum(m[0] for m in members) / len(members)
            conf = sum(m[1] for m in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("cal")
    opts = runner.RunOptions(out=base / "r", cache_dir=base / "c", dataset_opts={"n": 48, "size": 64},
                             model_opts={"depth": 1}, n_boot=100)
    s = runner.run(["random-vit"], ["probe", "retrieval"], ["dermsynth"], opts, quiet=True)
    assert not s.failed, s.failed
    return {r.task: r for r in load_records(base / "r")}


def test_every_classification_task_declares_calibration_metrics():
    reg = plugins.registry()
    for task in ("probe", "retrieval", "finetune", "zeroshot"):
        assert {"ece", "brier"} <= set(reg.task(task).info.metrics), task
    assert CLASSIFICATION_METRICS[-2:] == ("ece", "brier")


@pytest.mark.parametrize("task", ["probe", "retrieval"])
def test_record_ece_and_brier_match_independent_computation(records, task):
    rec = records[task]
    y = np.asarray(rec.predictions["y_true"])
    p = np.asarray(rec.predictions["scores"], dtype=float)
    ece = rec.metrics["ece"]
    assert ece["value"] == pytest.approx(ece_by_loop(y.tolist(), p.tolist()), abs=1e-12)
    assert ece["ci_low"] <= ece["value"] <= ece["ci_high"]
    onehot = np.eye(p.shape[1])[y]
    assert rec.metrics["brier"]["value"] == pytest.approx(((p - onehot) ** 2).sum(1).mean(), abs=1e-12)
    from sklearn.metrics import brier_score_loss

    assert rec.metrics["brier"]["value"] == pytest.approx(
        brier_score_loss(y, p, labels=list(range(p.shape[1]))), abs=1e-9)


def test_ece_on_a_hand_computed_example():
    # bins: 0.95 -> (14/15, 1], 0.6 -> (8/15, 9/15], 0.55 -> (8/15, 9/15]... 0.55 > 0.5333: same bin
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.45, 0.55], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    # bin 14: {0.95 correct} -> |1 - 0.95| * 1/4; bin 8: {0.6 wrong, 0.55 right} -> |0.5 - 0.575| * 2/4;
    # bin 11: {0.8 right} (0.7333, 0.8] -> |1 - 0.8| * 1/4
    want = 0.05 / 4 + 0.075 / 2 + 0.2 / 4
    pred = {"ids": list("abcd"), "y_true": y, "scores": probs, "y_pred": probs.argmax(1)}
    assert stats.point(pred, "ece") == pytest.approx(want, abs=1e-12)
    assert ece_by_loop(y.tolist(), probs.tolist()) == pytest.approx(want, abs=1e-12)


def test_reliability_plot_is_written_into_the_cell_folder(records, tmp_path):
    from PIL import Image

    for rec in records.values():
        pngs = [a for a in rec.artifacts if a.endswith("reliability.png")]
        assert len(pngs) == 1 and os.path.exists(pngs[0])
        assert f"/{rec.task}/" in pngs[0]
        with Image.open(pngs[0]) as im:
            assert im.format == "PNG" and min(im.size) > 200
    y = np.array([0, 1, 1, 0])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    out = reliability_plot(y, s, tmp_path / "sub" / "rel.png", "t")
    assert os.path.getsize(out) > 1000
