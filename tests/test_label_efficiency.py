"""Label-efficiency curves (probe/retrieval with train_fraction/shots): subsets, curve, labels needed, plot."""

from __future__ import annotations

import os
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dermbench import runner  # noqa: E402
from dermbench.api import DermbenchError  # noqa: E402
from dermbench.cli import parse_value  # noqa: E402
from dermbench.results import load_records  # noqa: E402
from dermbench_plugins.tasks.label_efficiency.curves import (  # noqa: E402
    CURVE_KEY, draw_subset, label_efficiency_plot, labels_needed, parse_settings,
)

FRACTIONS = [0.05, 0.25, 1.0]


@pytest.fixture(scope="module")
def curve_runs(tmp_path_factory):
    """Probe and retrieval curves on dermsynth for two different random ViTs (weights seed 0 and 1)."""
    import torch

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("le")
    out = {}
    for wseed in (0, 1):
        tasks = ["probe", "retrieval"] if wseed == 0 else ["probe"]
        opts = runner.RunOptions(
            out=base / f"r{wseed}", cache_dir=base / "c", dataset_opts={"n": 180, "size": 64},
            model_opts={"depth": 1, "seed": wseed}, n_boot=200,
            task_params={t: p for t, p in {
                "probe": {"train_fraction": FRACTIONS, "draws": 4, "epochs": 30, "reach": 0.55},
                "retrieval": {"shots": [1, 4, 20], "draws": 4, "curve_boot": 150}}.items() if t in tasks},
        )
        s = runner.run(["random-vit"], tasks, ["dermsynth"], opts, quiet=True)
        assert not s.failed, s.failed
        out[wseed] = {r.task: r for r in load_records(base / f"r{wseed}")}
    return out


def test_settings_parsing_and_errors():
    assert parse_settings(None, None, "probe") == []
    assert parse_settings([1.0, 0.1, 0.01], None, "probe") == [("fraction", 0.01), ("fraction", 0.1), ("fraction", 1.0)]
    assert parse_settings(None, 5, "retrieval") == [("shots", 5.0)]
    assert parse_value("[0.01,0.1,0.5,1.0]") == [0.01, 0.1, 0.5, 1.0]  # what --task-opt probe.train_fraction=[..] gives
    with pytest.raises(DermbenchError, match="not both"):
        parse_settings(0.1, 5, "probe")
    with pytest.raises(DermbenchError, match=r"train_fraction 1.5 must be in \(0, 1\]"):
        parse_settings([0.1, 1.5], None, "probe")
    with pytest.raises(DermbenchError, match="positive integer"):
        parse_settings(None, [2.5], "probe")


def test_subsets_are_seeded_by_split_nested_and_stratified():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    a = draw_subset(y, "hashA", 0, "fraction", 0.1)
    assert np.array_equal(a, draw_subset(y, "hashA", 0, "fraction", 0.1))  # deterministic
    assert not np.array_equal(a, draw_subset(y, "hashA", 1, "fraction", 0.1))  # draws differ
    assert not np.array_equal(a, draw_subset(y, "hashB", 0, "fraction", 0.1))  # split hash matters
    assert np.bincount(y[a]).tolist() == [5, 3, 2]  # round(0.1 * n_c) per class
    tiny = draw_subset(y, "hashA", 0, "fraction", 0.01)
    assert np.bincount(y[tiny]).tolist() == [1, 1, 1]  # every class keeps one label
    assert set(tiny) <= set(a) <= set(draw_subset(y, "hashA", 0, "fraction", 0.5))  # nested within a draw
    k = draw_subset(y, "hashA", 2, "shots", 25)
    assert np.bincount(y[k]).tolist() == [25, 25, 20]  # K per class, capped by the class size
    assert len(draw_subset(y, "hashA", 3, "fraction", 1.0)) == len(y)


def test_probe_curve_increases_with_labels(curve_runs):
    rec = curve_runs[0]["probe"]
    curve = rec.extra[CURVE_KEY]
    pts = curve["points"]
    assert [p["value"] for p in pts] == FRACTIONS
    assert curve["n_boot"] == 200  # curve_boot unset: the run's n_boot
    n_train = rec.extra["n_train"]
    assert pts[-1]["n_labels"] == [n_train] and pts[-1]["draws"] == 1  # 100%: one fit, no draw spread
    assert [p["draws"] for p in pts[:-1]] == [4, 4]
    auc = [p["metrics"]["auroc_macro"]["mean"] for p in pts]
    acc = [p["metrics"]["balanced_accuracy"]["mean"] for p in pts]
    # monotone in expectation (means over draws), allowing a little noise between neighbours
    assert auc[-1] > auc[0] + 0.03, auc
    assert all(b > a - 0.02 for a, b in zip(auc, auc[1:])), auc
    assert acc[-1] > acc[0], acc
    for p in pts:
        m = p["metrics"]["auroc_macro"]
        assert m["boot_ci_low"] < m["mean"] < m["boot_ci_high"]
        if p["draws"] > 1:
            assert m["draw_ci_low"] < m["mean"] < m["draw_ci_high"]
            assert m["sd"] == pytest.approx(np.std(m["per_draw"], ddof=1))
    # the record's own predictions are the largest setting: its metric equals that curve point
    assert rec.metrics["auroc_macro"]["value"] == pytest.approx(pts[-1]["metrics"]["auroc_macro"]["mean"])
    need = curve["labels_needed"][0]
    assert need["target"] == pytest.approx(0.95 * auc[-1])
    assert pts[0]["n_labels_mean"] <= need["n_labels"] <= n_train
    assert need["draws_reaching"] >= 1
    absolute = curve["labels_needed"][1]  # reach=0.55: an absolute AUROC target
    assert absolute["target"] == 0.55 and absolute["n_labels"] == labels_needed(curve, 0.55)["n_labels"]


def test_retrieval_shots_curve(curve_runs):
    curve = curve_runs[0]["retrieval"].extra[CURVE_KEY]
    assert curve["kind"] == "shots" and curve["n_boot"] == 150
    pts = curve["points"]
    assert pts[0]["n_labels"] == [6] * 4  # 1 shot x 6 dermsynth classes, each draw
    acc = [p["metrics"]["accuracy"]["mean"] for p in pts]
    assert acc[-1] > acc[0], acc


def test_two_models_see_identical_subsets(curve_runs):
    a, b = curve_runs[0]["probe"], curve_runs[1]["probe"]
    assert a.model_info["weights_id"] != b.model_info["weights_id"]  # really two different backbones
    ha = [p["subset_hashes"] for p in a.extra[CURVE_KEY]["points"]]
    hb = [p["subset_hashes"] for p in b.extra[CURVE_KEY]["points"]]
    assert ha == hb and len(set(ha[0])) == 4  # identical subsets per draw, different across draws
    assert a.extra[CURVE_KEY]["points"][0]["metrics"]["auroc_macro"]["per_draw"] != \
        b.extra[CURVE_KEY]["points"][0]["metrics"]["auroc_macro"]["per_draw"]


def test_labels_needed_interpolates_mean_and_draws():
    def m(mean, per):
        return {"auroc_macro": {"mean": mean, "per_draw": per}}

    curve = {"metrics": ["auroc_macro"], "points": [
        {"n_labels_mean": 10, "n_labels": [10, 10], "draws": 2, "metrics": m(0.6, [0.6, 0.6])},
        {"n_labels_mean": 50, "n_labels": [50, 50], "draws": 2, "metrics": m(0.7, [0.8, 0.6])},
        {"n_labels_mean": 100, "n_labels": [100], "draws": 1, "metrics": m(0.9, [0.9])},
    ]}
    r = labels_needed(curve, 0.8)
    assert r["n_labels"] == pytest.approx(75.0)  # halfway between 0.7@50 and 0.9@100
    assert r["per_draw"] == [pytest.approx(50.0), pytest.approx(50 + 50 * 0.2 / 0.3)]
    assert r["draw_min"] == pytest.approx(50.0) and r["draws_reaching"] == 2
    assert labels_needed(curve, 0.95)["n_labels"] is None  # never reached


def test_plot_per_dataset_compares_models(curve_runs, tmp_path):
    from PIL import Image

    recs = [curve_runs[0]["probe"], curve_runs[1]["probe"], curve_runs[0]["retrieval"]]
    files = label_efficiency_plot(recs, tmp_path / "plots")
    names = sorted(p.name for p in files)
    assert names == ["label_efficiency_probe_dermsynth_fraction.png", "label_efficiency_retrieval_dermsynth_shots.png"]
    for f in files:
        with Image.open(f) as im:
            assert im.size[0] > 300
    assert label_efficiency_plot([], tmp_path / "none") == []


def test_without_options_probe_is_unchanged(curve_runs, tmp_path):
    """No train_fraction/shots: no curve, full training split (the lead's original behaviour)."""
    opts = runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "c",
                             dataset_opts={"n": 24, "size": 64}, model_opts={"depth": 1}, n_boot=50)
    s = runner.run(["random-vit"], ["probe"], ["dermsynth"], opts, quiet=True)
    assert not s.failed
    rec = load_records(tmp_path / "r")[0]
    assert CURVE_KEY not in rec.extra and rec.extra["n_train"] == 12


def test_curve_bootstrap_uses_the_records_resamples_not_the_training_seed():
    """Issue 17.5: the curve's bootstrap CI comes from ``api.resamples_for`` (test split hash + the fixed
    bootstrap seed, within classes) -- the resamples the record's own metrics use -- so it is identical
    whatever the training seed, and equals the percentile interval of the metric on those resamples."""
    from dermbench import api
    from dermbench_plugins.tasks.label_efficiency.curves import run_curve

    class _S:  # the parts of a Split run_curve reads
        def __init__(self, h, n):
            self.hash, self.ids = h, [f"{h}-{i}" for i in range(n)]

        def __len__(self):
            return len(self.ids)

    rng = np.random.default_rng(3)
    y_tr = np.repeat([0, 1, 2], [40, 30, 30])
    y_te = np.repeat([0, 1, 2], [45, 30, 15])
    scores = rng.normal(size=(90, 3)) + 1.5 * np.eye(3)[y_te]
    train, test = _S("train-hash", 100), _S("test-hash", 90)
    fp = lambda pos: (scores, scores.argmax(1))  # noqa: E731  (the fit ignores which labels it got)
    curve, _ = run_curve(train, test, y_tr, fp, [("fraction", 1.0)], draws=2, metrics=["accuracy"], n_boot=400,
                         y_test=y_te)
    pred = {"ids": test.ids, "y_true": y_te, "scores": scores, "y_pred": scores.argmax(1)}
    idx, strata = api.resamples_for(pred, split_hash=test.hash, n_boot=400)
    assert strata == "y_true"
    lo, hi = np.quantile(api.replicates(pred, "accuracy", idx), [0.025, 0.975])
    m = curve["points"][0]["metrics"]["accuracy"]
    assert m["mean"] == pytest.approx(np.mean(pred["y_pred"] == y_te))
    assert (m["boot_ci_low"], m["boot_ci_high"]) == pytest.approx((lo, hi))
    assert m["boot_ci_low"] < m["mean"] < m["boot_ci_high"]
