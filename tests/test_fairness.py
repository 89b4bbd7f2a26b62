"""Fairness task and subgroup statistics: real PAD-UFES-20 / HAM10000 metadata, dermsynth's planted skin-tone
gap, calibration of the gap tests over repeated simulations, leaderboard columns and the per-group plot."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dermbench_plugins.tasks.fairness import stats as fs
from dermbench import hookimpl, plugins, runner, stats
from dermbench.api import DermbenchError, ModelInfo, Preprocess
from dermbench_plugins.tasks.fairness import Fairness, age_bin, parse_age_bins

# --------------------------------------------------------------------------------------------------
# A cheap hand-crafted backbone: colour of a 4x4 grid relative to the image border, in log space. Lesion
# contrast drives it, so dermsynth's tone_contrast_gap (contrast lost on dark skin) shows up as a real gap.

_PRE = Preprocess(crop=64, resize=64, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class _LesionStats:
    def __init__(self, info: ModelInfo, grid: bool):
        self.info, self.grid = info, grid
        self.weights_id = f"handcrafted:grid={grid}"
        self.transform = _PRE.build()

    def embed(self, x):
        import torch

        lx = torch.log(x.clamp_min(1e-3))
        if not self.grid:  # global mean colour only: a weak model
            return lx.mean((2, 3))
        border = torch.cat([lx[:, :, :6].flatten(2), lx[:, :, -6:].flatten(2)], dim=2).mean(2)
        rel = lx - border[:, :, None, None]
        centre = rel[:, :, 16:48, 16:48]
        grid = torch.nn.functional.adaptive_avg_pool2d(rel, 4).flatten(1)
        return torch.cat([grid, centre.mean((2, 3)), centre.std((2, 3))], dim=1)

    def patch_tokens(self, x, layers):  # pragma: no cover - declared capability is cls only
        raise NotImplementedError

    def to(self, device):
        return self


class _Models:
    @hookimpl
    def register_models(self, register):
        for name, grid, dim in (("test-lesion-stats", True, 54), ("test-mean-colour", False, 3)):
            info = ModelInfo(name=name, family="handcrafted", source="custom", embed_dim=dim, preprocess=_PRE,
                             random_init=True)
            register(info, lambda weights=None, device="cpu", _i=info, _g=grid, **_: _LesionStats(_i, _g))


@pytest.fixture
def models():
    plugins.registry()
    plugins.register_plugin(_Models(), name="fairness-test-models")
    yield
    plugins.unregister_plugin("fairness-test-models")


def _run(tmp_path, models_, dataset, task_params, dataset_opts=None, data_root=None, n_boot=200):
    opts = runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "c", data_root=data_root, n_boot=n_boot,
                             dataset_opts=dataset_opts or {}, task_params={"fairness": task_params})
    return runner.run(models_, ["fairness"], [dataset], opts, quiet=True)


def _records(summary):
    return {c.model: json.loads(Path(p).read_text()) for c, p in summary.done}


# --------------------------------------------------------------------------------------------------
# dermsynth: planted gap detected, none where none was planted; leaderboard, plot and paired gap test


def test_dermsynth_planted_skin_tone_gap_detected_and_absent_without_gap(tmp_path, models):
    from dermbench import leaderboard
    from dermbench_plugins.tasks.fairness.plot import fairness_plot
    from dermbench.results import load_records

    params = {"fitzpatrick": "grouped", "attributes": "fitzpatrick,sex", "base_opts": "epochs=100,lr=0.01",
              "n_perm": 200}
    out = {}
    for gap in (1.0, 0.0):
        s = _run(tmp_path / f"g{gap}", ["test-lesion-stats", "test-mean-colour"] if gap else ["test-lesion-stats"],
                 "dermsynth", params, {"n": 400, "size": 64, "tone_contrast_gap": gap})
        assert not s.failed, s.failed
        out[gap] = _records(s)
    planted, null = out[1.0]["test-lesion-stats"], out[0.0]["test-lesion-stats"]
    tp, tn = planted["extra"]["attributes"]["fitzpatrick"], null["extra"]["attributes"]["fitzpatrick"]
    assert tp["scored"] == ["12", "34", "56"] and tp["unknown"] == 0
    auc = {g: tp["groups"][g]["metrics"]["auroc_macro"]["value"] for g in tp["scored"]}
    # contrast vanishes on types V-VI: the darkest group is the worst, by a margin, and the gap is significant
    assert tp["worst"]["auroc_macro"]["group"] == "56" and auc["12"] - auc["56"] > 0.15
    assert tp["gaps"]["auroc_macro"]["p_value"] < 0.01 and tp["gaps"]["auroc_macro"]["ci_low"] > 0.05
    assert tp["gaps"]["auroc_macro"]["p_value"] <= tp["gaps"]["auroc_macro"]["p_holm"] <= 1  # family-wise adjusted
    # no planted gap: small and not significant
    assert tn["gaps"]["auroc_macro"]["p_value"] > 0.2 and tn["gaps"]["auroc_macro"]["value"] < 0.08
    # the record's leaderboard metric is the same number (same resamples) as the per-group table
    for rec, tab in ((planted, tp), (null, tn)):
        m = rec["metrics"]["gap:auroc_macro@fitzpatrick"]
        assert m["value"] == pytest.approx(tab["gaps"]["auroc_macro"]["value"], abs=1e-12)
        assert (m["ci_low"], m["ci_high"]) == pytest.approx(
            (tab["gaps"]["auroc_macro"]["ci_low"], tab["gaps"]["auroc_macro"]["ci_high"]), abs=1e-12)
        assert rec["metrics"]["worst:auroc_macro@fitzpatrick"]["value"] == pytest.approx(min(
            g["metrics"]["auroc_macro"]["value"] for g in tab["groups"].values()))
        assert rec["predictions"]["group:fitzpatrick"][:3] and set(rec["predictions"]["group:fitzpatrick"]) == {
            "12", "34", "56"}
    # sex carries no planted effect
    assert planted["extra"]["attributes"]["sex"]["gaps"]["auroc_macro"]["p_value"] > 0.05

    # paired gap test between two models on identical resamples (record predictions only)
    weak = out[1.0]["test-mean-colour"]
    res = fs.paired_gap_test(planted["predictions"], weak["predictions"], "fitzpatrick", "auroc_macro",
                             split_hash=planted["split"]["hash"], seed=0, n_boot=200)
    gap_name = "gap:auroc_macro@fitzpatrick"
    assert res["diff"] == pytest.approx(planted["metrics"][gap_name]["value"] - weak["metrics"][gap_name]["value"])
    assert res["ci_low"] <= res["diff"] <= res["ci_high"] and 0 < res["p_value"] <= 1
    same = fs.paired_gap_test(planted["predictions"], planted["predictions"], "fitzpatrick", "auroc_macro",
                              split_hash=planted["split"]["hash"], seed=0, n_boot=200)
    assert same["diff"] == 0 and same["p_value"] == 1.0

    # leaderboard: a fairness board (per-group values, gap with its projection interval and permutation p, worst
    # group, EOD) -- never gap columns on the main board, and a gap is never "best"
    lb = leaderboard.build_leaderboard(tmp_path / "g1.0" / "r", out=tmp_path / "lb", formats=("json",), plots=False)
    assert not any(c["metric"].startswith(("gap:", "worst:", "eod@")) for c in lb["data"]["columns"])
    rows = {(r["model"], r["attribute"], r["metric"]): r for r in lb["data"]["fairness"]}
    assert {("test-lesion-stats", "fitzpatrick", "auroc_macro"), ("test-lesion-stats", "fitzpatrick+sex", "auroc_macro"),
            ("test-mean-colour", "fitzpatrick", "ece")} <= set(rows)
    row = rows[("test-lesion-stats", "fitzpatrick", "auroc_macro")]
    assert row["gap"] == pytest.approx(planted["metrics"][gap_name]["value"]) and row["gap_ci_method"] == "projection"
    assert row["gap_ci"] == pytest.approx([planted["metrics"][gap_name]["ci_low"], planted["metrics"][gap_name]["ci_high"]])
    assert row["worst_group"] == "56" and set(row["groups"]) == {"12", "34", "56"} and "best" not in row
    files = fairness_plot(load_records(tmp_path / "g1.0" / "r"), tmp_path / "plots")
    names = sorted(p.name for p in files)
    assert "fairness_dermsynth_fitzpatrick.png" in names and "fairness_dermsynth_fitzpatrick+sex.svg" in names
    svg = (tmp_path / "plots" / "fairness_dermsynth_fitzpatrick.svg").read_text()
    assert "test-lesion-stats" in svg and "test-mean-colour" in svg


# --------------------------------------------------------------------------------------------------
# Calibration over repeated simulations (scores simulated with numpy)


def _sim(rng, n=300, gap=0.0, k=3):
    y = rng.integers(0, 2, n)
    g = np.array(list("abcdef"[:k]))[rng.integers(0, k, n)]
    s = rng.normal(size=n) + 1.2 * y - gap * y * (g == "a")
    p1 = 1 / (1 + np.exp(-s))
    return {"ids": [str(i) for i in range(n)], "y_true": y, "scores": np.stack([1 - p1, p1], 1),
            "y_pred": (p1 > 0.5).astype(int), "group:g": list(g), fs.MIN_SIZE_KEY: 20}


def test_gap_test_false_positive_rate_is_calibrated_and_planted_gaps_are_found():
    rng = np.random.default_rng(2024)
    p_null = np.array([fs.gap_test(_sim(rng), "g", "auroc_macro", n_perm=199, seed=i)["p_value"] for i in range(200)])
    fpr = float((p_null <= 0.05).mean())
    assert 0.02 <= fpr <= 0.09, fpr
    assert abs(float(np.median(p_null)) - 0.5) < 0.1  # roughly uniform under H0
    p_gap = np.array([fs.gap_test(_sim(rng, gap=1.0), "g", "auroc_macro", n_perm=199, seed=i)["p_value"]
                      for i in range(60)])
    assert (p_gap <= 0.05).mean() > 0.8


def test_paired_gap_test_false_positive_rate_when_two_models_share_a_gap():
    """Two models with the same true skin-type gap, independent errors: H0 'equal gaps' holds."""
    ps = []
    for i in range(200):
        a = _sim(np.random.default_rng([i, 1]), gap=0.8)
        y, g = np.asarray(a["y_true"]), np.asarray(a["group:g"])
        s = np.random.default_rng([i, 2]).normal(size=y.size) + 1.2 * y - 0.8 * y * (g == "a")
        p1 = 1 / (1 + np.exp(-s))
        b = dict(a, scores=np.stack([1 - p1, p1], 1), y_pred=(p1 > 0.5).astype(int))
        ps.append(fs.paired_gap_test(a, b, "g", "auroc_macro", split_hash=f"sim{i}", seed=0, n_boot=200)["p_value"])
    fpr = float((np.array(ps) <= 0.05).mean())
    assert 0.02 <= fpr <= 0.09, fpr


# --------------------------------------------------------------------------------------------------
# Exactness against scikit-learn, on the full real HAM10000 metadata (10015 rows) with simulated scores


def _ham_metadata(shared_data):
    with open(shared_data / "ham10000" / "HAM10000_metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_group_statistics_exact_on_real_ham10000_metadata(shared_data):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    rows = _ham_metadata(shared_data)
    assert len(rows) == 10015
    site = np.array([r["dataset"] for r in rows])
    sex = [r["sex"] if r["sex"] in ("male", "female") else None for r in rows]
    age = [age_bin(float(r["age"]) if r["age"] else None, [40, 60]) for r in rows]
    rng = np.random.default_rng(7)
    n = len(rows)
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + 1.5 * y - 1.0 * y * (site == "vienna_dias")  # planted: worse on one clinic
    p1 = 1 / (1 + np.exp(-s))
    pred = {"ids": [r["image_id"] for r in rows], "y_true": y, "scores": np.stack([1 - p1, p1], 1),
            "y_pred": (p1 > 0.5).astype(int), "group:site": list(site), "group:sex": sex, "group:age": age,
            fs.MIN_SIZE_KEY: 20}
    assert Counter(sex)[None] == sum(r["sex"] not in ("male", "female") for r in rows) > 0
    tab = fs.group_table(pred, "site", ["auroc_macro", "accuracy"], split_hash="ham", seed=0, n_boot=200, n_perm=200)
    groups = sorted(set(site))
    assert sorted(tab["scored"]) == groups
    aucs = {g: roc_auc_score(y[site == g], p1[site == g]) for g in groups}
    for g in groups:
        assert tab["groups"][g]["n"] == int((site == g).sum())
        assert tab["groups"][g]["metrics"]["auroc_macro"]["value"] == pytest.approx(aucs[g], abs=1e-12)
    assert tab["gaps"]["auroc_macro"]["value"] == pytest.approx(max(aucs.values()) - min(aucs.values()), abs=1e-12)
    assert tab["worst"]["auroc_macro"]["group"] == "vienna_dias"
    assert tab["gaps"]["auroc_macro"]["p_value"] < 0.01
    # equalized odds: TPR/FPR per group from scikit-learn's confusion matrices
    tprs, fprs = {}, {}
    for g in groups:
        tn, fp, fn, tp = confusion_matrix(y[site == g], pred["y_pred"][site == g], labels=[0, 1]).ravel()
        tprs[g], fprs[g] = tp / (tp + fn), fp / (fp + tn)
        assert tab["groups"][g]["tpr"] == [pytest.approx(tprs[g])]
        assert tab["groups"][g]["fpr"] == [pytest.approx(fprs[g])]
    eod = max(max(tprs.values()) - min(tprs.values()), max(fprs.values()) - min(fprs.values()))
    assert tab["equalized_odds"]["value"] == pytest.approx(eod)
    # sex and age carry no planted effect; unknown sex is counted, not scored
    tsex = fs.group_table(pred, "sex", ["auroc_macro"], split_hash="ham", seed=0, n_boot=200, n_perm=200)
    assert tsex["unknown"] == Counter(sex)[None] and tsex["scored"] == ["female", "male"]
    assert tsex["gaps"]["auroc_macro"]["p_value"] > 0.05
    tage = fs.group_table(pred, "age", ["auroc_macro"], split_hash="ham", seed=0, n_boot=200, n_perm=0)
    assert tage["scored"] == ["<40", "40-<60", ">=60"]
    # the same numbers through the metric registry (what the runner and leaderboard use)
    sc = stats.score(pred, ["gap:auroc_macro@site", "eod@site"], split_hash="ham", seed=0, n_boot=200)
    assert sc["gap:auroc_macro@site"]["ci_low"] == pytest.approx(tab["gaps"]["auroc_macro"]["ci_low"])
    assert sc["eod@site"]["value"] == pytest.approx(eod)


def test_multiclass_equalized_odds_is_macro_over_classes_one_vs_rest():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    yp = np.array([0, 1, 2, 1, 1, 2, 0, 0, 2, 0, 2, 1])
    g = ["a"] * 6 + ["b"] * 6
    sc = np.eye(3)[yp] * 0.8 + 0.2 / 3
    pred = {"ids": list(map(str, range(12))), "y_true": y, "y_pred": yp, "scores": sc, "group:g": g,
            fs.MIN_SIZE_KEY: 1}
    per_class = []
    for c in range(3):
        rates = []
        for grp in ("a", "b"):
            m = np.array(g) == grp
            t, pr = y[m] == c, yp[m] == c
            rates.append(((pr & t).sum() / t.sum(), (pr & ~t).sum() / (~t).sum()))
        per_class.append(max(abs(rates[0][0] - rates[1][0]), abs(rates[0][1] - rates[1][1])))
    assert stats.point(pred, "eod@g") == pytest.approx(np.mean(per_class))
    with pytest.raises(stats.UndefinedMetric, match="0 group"):
        stats.point(dict(pred, **{fs.MIN_SIZE_KEY: 7}), "gap:accuracy@g")


# --------------------------------------------------------------------------------------------------
# Real PAD-UFES-20 and HAM10000 through the runner


def _pad_metadata(shared_data):
    with open(shared_data / "pad-ufes-20" / "metadata.csv", newline="") as f:
        return {r["img_id"].rsplit(".", 1)[0]: r for r in csv.DictReader(f)}


def test_pad_ufes20_groups_from_real_metadata(tmp_path, shared_data, models):
    s = _run(tmp_path, ["test-lesion-stats"], "pad-ufes-20",
             {"min_group_size": 5, "base_opts": "epochs=5", "n_perm": 100},
             data_root=shared_data / "pad-ufes-20")
    assert not s.failed, s.failed
    rec = _records(s)["test-lesion-stats"]
    meta = _pad_metadata(shared_data)
    preds, extra = rec["predictions"], rec["extra"]
    assert extra["base"] == "probe" and set(extra["attributes"]) == {"fitzpatrick", "sex", "age", "fitzpatrick+sex"}
    for i, sid in enumerate(preds["ids"]):
        row = meta[sid]
        fst = str(int(float(row["fitspatrick"]))) if row["fitspatrick"] else None
        sex = row["gender"].lower() or None
        assert preds["group:fitzpatrick"][i] == fst and preds["group:sex"][i] == sex
        assert preds["group:fitzpatrick+sex"][i] == (f"{fst}|{sex}" if fst and sex else None)
        assert preds["group:age"][i] == age_bin(float(row["age"]), [40, 60])
    fit = extra["attributes"]["fitzpatrick"]
    counts = Counter(v for v in preds["group:fitzpatrick"] if v)
    assert {g: d["n"] for g, d in fit["groups"].items()} == dict(counts)
    assert fit["unknown"] == preds["group:fitzpatrick"].count(None)
    for g, c in counts.items():
        assert fit["groups"][g]["status"] == ("scored" if c >= 5 else "too small (< 5)")
        assert ("metrics" in fit["groups"][g]) == (c >= 5)
    assert preds[fs.MIN_SIZE_KEY] == 5
    assert "gap:auroc_macro@sex" in rec["metrics"] and "eod@fitzpatrick" in rec["metrics"]


def test_ham10000_real_subset_sex_age_site_and_grouped_options(tmp_path, shared_data, models):
    s = _run(tmp_path, ["test-lesion-stats"], "ham10000",
             {"min_group_size": 8, "age_bins": "50,70", "base_opts": "epochs=20", "n_perm": 50},
             data_root=shared_data / "ham10000")
    assert not s.failed, s.failed
    rec = _records(s)["test-lesion-stats"]
    attrs = rec["extra"]["attributes"]
    assert set(attrs) == {"sex", "age", "site"}  # no Fitzpatrick in HAM10000: not attempted, no intersection
    rows = {r["image_id"]: r for r in _ham_metadata(shared_data)}
    ids = rec["predictions"]["ids"]
    assert rec["predictions"]["group:site"] == [rows[i]["dataset"] for i in ids]
    assert rec["predictions"]["group:age"] == [age_bin(float(rows[i]["age"]), [50, 70]) for i in ids]
    assert set(rec["predictions"]["group:age"]) <= {"<50", "50-<70", ">=70"}
    small = [g for g, d in attrs["site"]["groups"].items() if d["n"] < 8]
    assert all(attrs["site"]["groups"][g]["status"] == "too small (< 8)" for g in small)


def test_dataset_without_sensitive_attributes_is_skipped_with_the_reason(tmp_path, shared_data, models):
    s = _run(tmp_path, ["test-lesion-stats"], "ph2", {"n_perm": 10}, data_root=shared_data / "ph2")
    assert not s.failed and not s.done and len(s.skipped) == 1
    msg = s.skipped[0][1]
    assert "ph2" in msg and "none of age, fitzpatrick, monk, sex, site" in msg


# --------------------------------------------------------------------------------------------------
# Options and bad input


def test_options_and_bad_input_are_refused_clearly():
    assert parse_age_bins("40,60") == [40.0, 60.0]
    assert [age_bin(a, [40, 60]) for a in (39.9, 40, 59, 60, None)] == ["<40", "40-<60", "40-<60", ">=60", None]
    with pytest.raises(DermbenchError, match="ascending"):
        Fairness(age_bins="60,40")
    with pytest.raises(DermbenchError, match="key=value"):
        Fairness(base_opts="epochs")
    with pytest.raises(DermbenchError, match="types"):
        Fairness(fitzpatrick="roman")
    with pytest.raises(DermbenchError, match="positive"):
        Fairness(min_group_size=0)
    with pytest.raises(DermbenchError, match="bad fairness metric name"):
        stats.get_metric("gap:auroc_macro@")
    with pytest.raises(DermbenchError, match="unknown metric"):
        stats.get_metric("gap:nope@sex")
    pred = _sim(np.random.default_rng(0), n=60)
    with pytest.raises(DermbenchError, match="group:sex"):
        stats.point(pred, "gap:auroc_macro@sex")
    other = dict(pred, **{"group:g": list(reversed(pred["group:g"]))})
    with pytest.raises(DermbenchError, match="groups differ"):
        fs.paired_gap_test(pred, other, "g", split_hash="x", seed=0, n_boot=10)


def test_unknown_base_option_and_attribute_name_the_valid_ones(tmp_path, models):
    s = _run(tmp_path, ["test-lesion-stats"], "dermsynth", {"base_opts": "nope=1"}, {"n": 24, "size": 64})
    assert "has no option(s) ['nope']" in s.failed[0][1] and "epochs" in s.failed[0][1]
    s = _run(tmp_path / "b", ["test-lesion-stats"], "dermsynth", {"attributes": "skin", "base": "retrieval"},
             {"n": 24, "size": 64})
    assert "'skin' is not in the metadata" in s.failed[0][1] and "fitzpatrick" in s.failed[0][1]


def test_segmentation_base_gives_dice_gap_and_worst_group_dice(tmp_path):
    opts = runner.RunOptions(
        out=tmp_path / "r", cache_dir=tmp_path / "c", n_boot=100, dataset_opts={"n": 24, "size": 64},
        model_opts={"depth": 2},
        task_params={"fairness": {"base": "segmentation", "min_group_size": 4, "fitzpatrick": "grouped",
                                  "attributes": "fitzpatrick", "n_perm": 50,
                                  "base_opts": "epochs=1,n_overlays=0,size=64,save_masks=false"}})
    s = runner.run(["random-vit"], ["fairness"], ["dermsynth"], opts, quiet=True)
    assert not s.failed, s.failed
    rec = _records(s)["random-vit"]
    tab = rec["extra"]["attributes"]["fitzpatrick"]
    dice = np.asarray(rec["predictions"]["dice"])
    grp = np.array([g or "" for g in rec["predictions"]["group:fitzpatrick"]])
    means = {g: float(dice[grp == g].mean()) for g in tab["scored"]}
    assert {g: tab["groups"][g]["metrics"]["dice"]["value"] for g in tab["scored"]} == pytest.approx(means)
    assert rec["metrics"]["gap:dice@fitzpatrick"]["value"] == pytest.approx(max(means.values()) - min(means.values()))
    assert rec["metrics"]["worst:dice@fitzpatrick"]["value"] == pytest.approx(min(means.values()))
    assert "eod@fitzpatrick" not in rec["metrics"] and rec["extra"]["base"] == "segmentation"
    from dermbench_plugins.tasks.fairness.plot import fairness_series

    series = fairness_series([rec])[("dermsynth", "fitzpatrick")]
    assert series["metric"] == "dice" and series["groups"] == tab["scored"]


def test_fitzpatrick17k_real_csv_types_grouping_and_atlas_site(shared_data, tmp_path, models):
    """Real fitzpatrick17k.csv metadata; its images are not redistributable, so 8x8 stand-ins carry the names."""
    from PIL import Image

    src = shared_data / "fitzpatrick17k" / "fitzpatrick17k.csv"
    with open(src, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["md5hash"])[:90]
    root = tmp_path / "f17k"
    (root / "images").mkdir(parents=True)
    (root / "fitzpatrick17k.csv").symlink_to(src)
    rng = np.random.default_rng(0)
    for r in rows:
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"{r['md5hash']}.jpg")
    by_id = {r["md5hash"]: r for r in rows}
    for grouping in ("types", "grouped"):
        s = _run(tmp_path / grouping, ["test-lesion-stats"], "fitzpatrick17k-3",
                 {"min_group_size": 5, "fitzpatrick": grouping, "base_opts": "epochs=5", "n_perm": 20},
                 data_root=root, n_boot=50)
        assert not s.failed, s.failed
        rec = _records(s)["test-lesion-stats"]
        assert set(rec["extra"]["attributes"]) == {"fitzpatrick", "site"}
        for sid, fst, site in zip(rec["predictions"]["ids"], rec["predictions"]["group:fitzpatrick"],
                                  rec["predictions"]["group:site"]):
            raw = int(by_id[sid]["fitzpatrick_scale"])
            want = None if raw == -1 else str(raw) if grouping == "types" else {1: "12", 2: "12", 3: "34", 4: "34",
                                                                                 5: "56", 6: "56"}[raw]
            assert fst == want and site in ("dermaamin.com", "atlasdermatologico.com.br")
            assert site.split(".")[0] in by_id[sid]["url"]


def test_attribute_labels_ddi_style_groups_monk_and_intersections():
    from dermbench.api import Sample
    from dermbench_plugins.tasks.fairness import attribute_labels, intersect

    ddi = [Sample(id=str(i), image="x", label=0, meta={"fitzpatrick": None, "fitzpatrick_group": g, "monk": m,
                                                         "sex": sx})
           for i, (g, m, sx) in enumerate([("12", 2, "female"), ("56", 9.0, None), (None, None, "male")])]
    labels, note = attribute_labels(ddi, "fitzpatrick")
    assert labels == ["12", "56", None] and "only Fitzpatrick groups" in note
    assert attribute_labels(ddi, "monk")[0] == ["2", "9", None]
    assert intersect(labels, attribute_labels(ddi, "sex")[0]) == ["12|female", None, None]
    typed = [Sample(id="a", image="x", meta={"fitzpatrick": 4}), Sample(id="b", image="x", meta={"fitzpatrick": 1})]
    assert attribute_labels(typed, "fitzpatrick")[0] == ["4", "1"]
    assert attribute_labels(typed, "fitzpatrick", fitzpatrick="grouped")[0] == ["34", "12"]
