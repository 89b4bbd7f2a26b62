"""dermbench.stats: exactness against scikit-learn (point and every replicate), pairing, CIs, bad input."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from dermbench import stats
from dermbench.api import DermbenchError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_preds(n: int, C: int, seed: int, *, ties: bool = False, sep: float = 1.0, y=None) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n) if y is None else np.asarray(y)
    logits = rng.normal(size=(n, C))
    logits[np.arange(n), y] += sep
    s = _softmax(logits)
    if ties:  # coarse scores: many exact ties within and across classes
        s = np.round(s * 10) / 10
        s = s / s.sum(axis=1, keepdims=True)
    return {"ids": [f"img{i:04d}" for i in range(n)], "y_true": y, "scores": s, "y_pred": s.argmax(axis=1)}


def sk_auroc_present(y: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn one-vs-rest AUROC, macro over classes with both positives and negatives."""
    C = s.shape[1]
    if C == 2:
        return skm.roc_auc_score(y, s[:, 1])
    per = [skm.roc_auc_score(y == c, s[:, c]) for c in range(C) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(per))


# ---------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("C", [2, 5])
def test_point_and_each_replicate_equal_sklearn(C: int, ties: bool) -> None:
    pr = make_preds(240, C, seed=C + 10 * ties, ties=ties)
    y, s, yp = pr["y_true"], pr["scores"], pr["y_pred"]
    if ties:
        assert len(np.unique(s)) < 100  # the tie path is really exercised
    sk_auc = (lambda yy, ss: skm.roc_auc_score(yy, ss[:, 1])) if C == 2 else (
        lambda yy, ss: skm.roc_auc_score(yy, ss, multi_class="ovr", average="macro")
    )
    refs = {
        "auroc_macro": lambda ii: sk_auc(y[ii], s[ii]),
        "f1_macro": lambda ii: skm.f1_score(y[ii], yp[ii], average="macro"),
        "accuracy": lambda ii: skm.accuracy_score(y[ii], yp[ii]),
        "balanced_accuracy": lambda ii: skm.balanced_accuracy_score(y[ii], yp[ii]),
        "brier": lambda ii: skm.brier_score_loss(y[ii], s[ii], labels=list(range(C))),
    }
    idx = stats.bootstrap_indices("split-x", 3, len(y), n_boot=60)
    full = np.arange(len(y))
    for name, ref in refs.items():
        assert stats.point(pr, name) == pytest.approx(ref(full), abs=1e-9), name
        reps = stats.replicates(pr, name, idx)
        want = np.array([ref(ii) for ii in idx])
        np.testing.assert_allclose(reps, want, rtol=0, atol=1e-9, err_msg=name)


def test_binary_one_dimensional_scores_match_two_column() -> None:
    pr = make_preds(150, 2, seed=4)
    one_d = dict(pr, scores=pr["scores"][:, 1])
    assert stats.point(one_d, "auroc_macro") == pytest.approx(skm.roc_auc_score(pr["y_true"], pr["scores"][:, 1]), abs=1e-12)
    idx = stats.bootstrap_indices("h", 0, 150, 20)
    np.testing.assert_allclose(stats.replicates(one_d, "auroc_macro", idx), stats.replicates(pr, "auroc_macro", idx))


def test_replicate_missing_a_class_uses_present_classes_and_counts_invalid() -> None:
    # class 3 has two samples in 60: many replicates miss it entirely
    y = np.array([0, 1, 2] * 19 + [0, 3, 3])
    pr = make_preds(60, 4, seed=5, y=y)
    idx = stats.bootstrap_indices("rare", 1, 60, 200)
    reps = stats.replicates(pr, "auroc_macro", idx)
    missing = np.array([not (y[ii] == 3).any() for ii in idx])
    assert 10 < missing.sum() < 190
    want = np.array([sk_auroc_present(y[ii], pr["scores"][ii]) for ii in idx])
    np.testing.assert_allclose(reps, want, atol=1e-9)
    # F1: sklearn's default labels (union of y_true and y_pred in the replicate) -- identical per replicate
    yp = pr["y_pred"]
    np.testing.assert_allclose(
        stats.replicates(pr, "f1_macro", idx), [skm.f1_score(y[ii], yp[ii], average="macro") for ii in idx], atol=1e-9
    )
    out = stats.score(pr, ["auroc_macro"], split_hash="rare", boot_seed=1, n_boot=200, strata=None)["auroc_macro"]
    assert out["n_invalid"] == out["n_lost_class"] == int(missing.sum())
    assert "lacked a class, excluded from the CI and from paired tests" in out["note"]
    assert out["strata"] == "none"
    # the CI uses only the replicates with the full class set
    assert out["ci_low"] == pytest.approx(np.quantile(reps[~missing], 0.025))
    # default: classification resamples within classes, so no replicate loses a class
    strat = stats.score(pr, ["auroc_macro"], split_hash="rare", n_boot=200)["auroc_macro"]
    assert strat["strata"] == "y_true" and strat["n_invalid"] == 0 and strat["boot_seed"] == 0


def test_vectorised_speed_smoke_large_n() -> None:
    """n=4000, 9 classes, 200 replicates: still exact on a sample of replicates (speed lives in benchmarks/)."""
    pr = make_preds(4000, 9, seed=6)
    idx = stats.bootstrap_indices("big", 0, 4000, 200)
    rs = stats.Resamples(idx)
    reps = stats.replicates(pr, "auroc_macro", rs)
    for b in (0, 99, 199):
        ii = idx[b]
        ref = skm.roc_auc_score(pr["y_true"][ii], pr["scores"][ii], multi_class="ovr", average="macro")
        assert reps[b] == pytest.approx(ref, abs=1e-9)


def test_ece_matches_a_direct_loop() -> None:
    pr = make_preds(300, 3, seed=7, sep=2.0)
    s, y = pr["scores"], pr["y_true"]

    def ece_loop(ii: np.ndarray) -> float:
        conf, pred = s[ii].max(1), s[ii].argmax(1)
        total = 0.0
        for k in range(15):
            lo, hi = k / 15, (k + 1) / 15
            inb = (conf > lo) & (conf <= hi)
            if inb.any():
                total += inb.mean() * abs((pred[inb] == y[ii][inb]).mean() - conf[inb].mean())
        return total

    assert stats.point(pr, "ece") == pytest.approx(ece_loop(np.arange(300)), abs=1e-12)
    idx = stats.bootstrap_indices("e", 0, 300, 30)
    np.testing.assert_allclose(stats.replicates(pr, "ece", idx), [ece_loop(ii) for ii in idx], atol=1e-12)
    assert stats.get_metric("ece").higher_is_better is False


def test_per_sample_means_dice_jaccard_and_generic_key() -> None:
    rng = np.random.default_rng(8)
    pr = {"ids": [str(i) for i in range(50)], "dice": rng.random(50), "jaccard": rng.random(50), "bleu4": rng.random(50)}
    idx = stats.bootstrap_indices("seg", 2, 50, 40)
    for name, key in (("dice", "dice"), ("jaccard", "jaccard"), ("mean:bleu4", "bleu4")):
        assert stats.point(pr, name) == pytest.approx(pr[key].mean(), abs=1e-12)
        np.testing.assert_allclose(stats.replicates(pr, name, idx), pr[key][idx].mean(axis=1), atol=1e-12)


# ---------------------------------------------------------------------------------------------- indices


def test_indices_depend_only_on_split_and_seed() -> None:
    a = stats.bootstrap_indices("abc", 0, 100, 50)
    assert a.shape == (50, 100) and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, stats.bootstrap_indices("abc", 0, 100, 50))
    assert not np.array_equal(a, stats.bootstrap_indices("abc", 1, 100, 50))
    assert not np.array_equal(a, stats.bootstrap_indices("abd", 0, 100, 50))
    # a fixed fingerprint: the derivation must never change silently (results stay paired across versions)
    assert a[0, :5].tolist() == [59, 13, 27, 41, 66]
    strat = stats.bootstrap_indices("abc", 0, 100, 50, strata=np.arange(100) % 3)
    assert strat[0, :5].tolist() == [48, 99, 48, 3, 39]  # v2: one stream per stratum (row-blockable)


def test_stratified_indices_keep_class_counts() -> None:
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    idx = stats.bootstrap_indices("s", 0, 100, 100, strata=y)
    for row in idx:
        assert np.bincount(y[row], minlength=3).tolist() == [70, 20, 10]
    plain = stats.bootstrap_indices("s", 0, 100, 100)
    assert np.bincount(y[plain[0]], minlength=3).tolist() != [70, 20, 10] or not np.array_equal(plain, idx)
    pr = make_preds(100, 3, seed=9, y=y)
    out = stats.score(pr, ["auroc_macro"], split_hash="s", boot_seed=0, n_boot=100, strata="y_true")["auroc_macro"]
    reps = stats.replicates(pr, "auroc_macro", idx)
    assert out["ci_low"] == pytest.approx(np.quantile(reps, 0.025))
    assert out["n_invalid"] == 0  # stratification guarantees every class in every replicate


def test_two_models_scored_separately_are_paired() -> None:
    a, b = make_preds(200, 3, seed=10), make_preds(200, 3, seed=11)
    b["y_true"] = a["y_true"]
    idx = stats.bootstrap_indices("split", 0, 200, 300)
    ra, rb = stats.replicates(a, "accuracy", idx), stats.replicates(b, "accuracy", idx)
    res = stats.paired_test(a, b, "accuracy", split_hash="split", boot_seed=0, strata=None, n_boot=300)
    d = stats.point(a, "accuracy") - stats.point(b, "accuracy")
    assert res["diff"] == pytest.approx(d)
    expected_p = (1 + np.sum(np.abs((ra - rb) - d) >= abs(d))) / 301
    assert res["p_value"] == pytest.approx(expected_p)
    assert res["ci_low"] == pytest.approx(np.quantile(ra - rb, 0.025))


# ---------------------------------------------------------------------------------------------- score / CIs


def test_score_output_is_json_and_percentile_ci() -> None:
    pr = make_preds(200, 4, seed=12)
    out = stats.score(pr, ["auroc_macro", "f1_macro", "accuracy"], split_hash="h", boot_seed=5, strata=None, n_boot=250)
    json.dumps(out)  # plain floats/ints/strings only
    idx = stats.bootstrap_indices("h", 5, 200, 250)
    for name, r in out.items():
        reps = stats.replicates(pr, name, idx)
        assert set(r) >= {"value", "ci_low", "ci_high", "ci_method", "n_boot", "n", "n_invalid", "note"}
        assert r["value"] == pytest.approx(stats.point(pr, name))
        assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
        assert r["ci_low"] < r["value"] < r["ci_high"]
        assert (r["n"], r["n_boot"], r["ci_method"]) == (200, 250, "percentile")
        assert type(r["value"]) is float and type(r["n_invalid"]) is int


def test_paper_ci_is_bootstrap_mean_plus_minus_1_sd_ddof0() -> None:
    """The DermINO authors' code reports mean ± np.std of the bootstrap values (1 SD, ddof 0) and their mean."""
    pr = make_preds(200, 3, seed=13)
    out = stats.score(pr, ["accuracy"], split_hash="h", boot_seed=0, strata=None, n_boot=300, ci="paper")["accuracy"]
    reps = stats.replicates(pr, "accuracy", stats.bootstrap_indices("h", 0, 200, 300))
    mu, sd = reps.mean(), reps.std(ddof=0)
    assert out["ci_low"] == pytest.approx(mu - sd, abs=1e-9)
    assert out["ci_high"] == pytest.approx(mu + sd, abs=1e-9)
    assert out["boot_mean"] == pytest.approx(mu, abs=1e-12)
    assert out["ci_method"] == "paper" and "DermINO" in out["note"]


@pytest.mark.parametrize("C", [2, 3])
@pytest.mark.parametrize("name", ["auroc_macro", "f1_macro", "balanced_accuracy", "ece", "brier"])
def test_closed_form_jackknife_equals_leave_one_out(name: str, C: int) -> None:
    pr = make_preds(45, C, seed=14, ties=True)
    jk = stats.jackknife(pr, name)
    keep = np.ones(45, bool)
    for i in range(45):
        keep[:] = True
        keep[i] = False
        sub = {k: (np.asarray(v)[keep] if k != "ids" else [x for x, kk in zip(v, keep) if kk]) for k, v in pr.items()}
        assert jk[i] == pytest.approx(stats.point(sub, name), abs=1e-12), (name, i)


def test_bca_matches_textbook_formula() -> None:
    from scipy.stats import norm

    pr = make_preds(120, 3, seed=15)
    out = stats.score(pr, ["auroc_macro"], split_hash="b", boot_seed=0, strata=None, n_boot=2000, ci="bca")["auroc_macro"]
    reps = stats.replicates(pr, "auroc_macro", stats.bootstrap_indices("b", 0, 120, 2000))
    theta = stats.point(pr, "auroc_macro")
    z0 = norm.ppf((np.sum(reps < theta) + 0.5 * np.sum(reps == theta)) / 2000)
    jk = stats.jackknife(pr, "auroc_macro")
    d = jk.mean() - jk
    a = (d**3).sum() / (6 * (d**2).sum() ** 1.5)
    q = [norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in norm.ppf([0.025, 0.975])]
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(tuple(np.quantile(reps, q)), abs=1e-12)
    assert out["ci_method"] == "bca" and out["ci_low"] < theta < out["ci_high"]


# ---------------------------------------------------------------------------------------------- paired tests


def test_paired_test_identical_models_and_clear_winner() -> None:
    a = make_preds(300, 3, seed=16, sep=2.5)
    same = stats.paired_test(a, a, "auroc_macro", split_hash="p", boot_seed=0, strata=None, n_boot=200)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0
    weak = make_preds(300, 3, seed=17, sep=0.2, y=a["y_true"])
    res = stats.paired_test(a, weak, "auroc_macro", split_hash="p", boot_seed=0, strata=None, n_boot=200)
    assert res["diff"] > 0.2 and res["p_value"] == pytest.approx(1 / 201) and res["ci_low"] > 0
    assert res["test"] == "bootstrap"
    assert "p=(1+#{" in res["label"] and res["label"].endswith("/(1+B))")  # the label states the +1 correction
    tt = stats.paired_test(a, weak, "auroc_macro", split_hash="p", boot_seed=0, strata=None, n_boot=200, test="paper-ttest")
    assert "ANTI-CONSERVATIVE" in tt["label"] and tt["p_value"] < 1e-10


def test_paired_test_aligns_reordered_ids_and_refuses_mismatched() -> None:
    a = make_preds(80, 3, seed=18)
    b = make_preds(80, 3, seed=19, y=a["y_true"])
    perm = np.random.default_rng(0).permutation(80)
    b_perm = {k: (np.asarray(v)[perm] if k != "ids" else [v[i] for i in perm]) for k, v in b.items()}
    r1 = stats.paired_test(a, b, "f1_macro", split_hash="q", boot_seed=0, strata=None, n_boot=100)
    r2 = stats.paired_test(a, b_perm, "f1_macro", split_hash="q", boot_seed=0, strata=None, n_boot=100)
    assert r1 == r2
    c = dict(b, ids=[f"other{i}" for i in range(3)] + b["ids"][3:])
    with pytest.raises(DermbenchError, match=r"different samples .*img0000.*other0"):
        stats.paired_test(a, c, "f1_macro", split_hash="q", boot_seed=0, strata=None, n_boot=100)


def test_correct_holm_bh_none() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.correct(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.correct(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert stats.correct(p, "none") == p
    assert stats.correct([0.5, None, 0.9], "holm") == [1.0, None, 1.0]
    with pytest.raises(DermbenchError, match="holm, bh or none"):
        stats.correct(p, "bonferroni")


# ---------------------------------------------------------------------------------------------- bad input


def test_single_class_split_gives_none_with_note() -> None:
    pr = make_preds(30, 3, seed=20, y=np.zeros(30, int))
    with pytest.raises(stats.UndefinedMetric, match="single class"):
        stats.point(pr, "auroc_macro")
    out = stats.score(pr, ["auroc_macro", "accuracy"], split_hash="one", boot_seed=0, strata=None, n_boot=50)
    assert out["auroc_macro"]["value"] is None and "single class ([0])" in out["auroc_macro"]["note"]
    assert math.isfinite(out["accuracy"]["value"])  # the other metrics are kept


def test_class_absent_from_test_split_is_noted() -> None:
    y = np.array([0, 1] * 40)  # class 2 never occurs among 3 columns
    pr = make_preds(80, 3, seed=21, y=y)
    out = stats.score(pr, ["auroc_macro"], split_hash="abs", boot_seed=0, strata=None, n_boot=50)["auroc_macro"]
    assert out["value"] == pytest.approx(sk_auroc_present(y, pr["scores"]))
    assert "2 of 3 classes" in out["note"]


def test_nan_scores_name_count_and_ids() -> None:
    pr = make_preds(40, 3, seed=22)
    pr["scores"][[3, 17], 1] = np.nan
    with pytest.raises(DermbenchError, match=r"NaN/inf for 2 of 40 samples \(ids: img0003, img0017\)"):
        stats.score(pr, ["auroc_macro"], split_hash="n", boot_seed=0, strata=None, n_boot=10)


def test_other_bad_inputs_have_clear_messages() -> None:
    pr = make_preds(20, 3, seed=23)
    with pytest.raises(DermbenchError, match="unknown metric 'auc'"):
        stats.point(pr, "auc")
    with pytest.raises(DermbenchError, match=r"needs predictions\['dice'\]"):
        stats.point(pr, "dice")
    with pytest.raises(DermbenchError, match="unknown CI method"):
        stats.score(pr, ["accuracy"], split_hash="x", boot_seed=0, strata=None, ci="normal")
    with pytest.raises(DermbenchError, match="class 5 but scores have only 3 columns"):
        stats.point(dict(pr, y_true=np.r_[pr["y_true"][:-1], 5]), "auroc_macro")
    with pytest.raises(DermbenchError, match=r"1 of 20 are missing or not integers \(ids: img0002"):
        stats.point(dict(pr, y_true=[*pr["y_true"][:2].tolist(), None, *pr["y_true"][3:].tolist()]), "accuracy")
    with pytest.raises(DermbenchError, match="drawn for n=30"):
        stats.replicates(pr, "accuracy", stats.bootstrap_indices("x", 0, 30, 5))


# ---------------------------------------------------------------------------------------------- 17.5 / 17.6 / 21.3


@pytest.mark.parametrize("strata", [None, np.arange(1000) % 7])
def test_row_block_drawing_equals_the_full_index_matrix(strata) -> None:
    """Resamples.draw never holds the (B, n) index matrix, yet gives exactly bootstrap_indices' replicates."""
    idx = stats.bootstrap_indices("blk", 3, 1000, 37, strata=strata)
    full = stats.Resamples(idx).counts
    for block in (8 * 1000, 8 * 1000 * 5, 1 << 26):  # 1, 5, all rows per block
        drawn = stats.Resamples.draw("blk", 3, 1000, 37, strata, block_bytes=block)
        assert drawn.idx is None and drawn.counts.dtype == np.uint8
        np.testing.assert_array_equal(drawn.counts, full)


def test_training_seed_never_selects_the_resamples() -> None:
    pr = make_preds(150, 3, seed=30)
    base = stats.score(pr, ["auroc_macro"], split_hash="t", n_boot=100)
    with pytest.warns(DeprecationWarning, match="never from a training seed"):
        legacy = stats.score(pr, ["auroc_macro"], split_hash="t", n_boot=100, seed=7)
    assert legacy == base  # the training seed 7 changed nothing
    other = stats.score(pr, ["auroc_macro"], split_hash="t", n_boot=100, boot_seed=7)
    assert other["auroc_macro"]["ci_low"] != base["auroc_macro"]["ci_low"]


def test_bca_guard_refuses_extreme_adjusted_levels() -> None:
    # a max-type statistic whose replicates all sit above the estimate but one: z0 very negative
    reps = np.r_[np.full(999, 0.3) + np.linspace(0, 0.1, 999), 0.001]
    lo, hi, note = stats.confidence_interval(reps, 0.002, method="bca", jack=np.linspace(0, 1, 50))
    assert "BCa refused" in note and "10/B" in note
    assert (lo, hi) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    assert hi > lo  # never the zero-width interval of an unguarded BCa
    ok_lo, ok_hi, ok_note = stats.confidence_interval(np.random.default_rng(0).normal(0.5, 0.05, 1000), 0.5,
                                                      method="bca")
    assert ok_note.startswith("BCa z0=")
    assert stats.bca_edge(1000) == 0.01


def test_paired_test_excludes_replicates_that_lost_a_class() -> None:
    y = np.array([0, 1, 2] * 19 + [0, 3, 3])
    a = make_preds(60, 4, seed=31, y=y)
    b = make_preds(60, 4, seed=32, y=y)
    res = stats.paired_test(a, b, "auroc_macro", split_hash="rare", boot_seed=1, strata=None, n_boot=200)
    idx = stats.bootstrap_indices("rare", 1, 60, 200)
    missing = np.array([not (y[ii] == 3).any() for ii in idx])
    assert res["n_excluded"] == int(missing.sum()) > 0 and "lost a class" in res["note"]
    ra, rb = stats.replicates(a, "auroc_macro", idx), stats.replicates(b, "auroc_macro", idx)
    d = res["diff"]
    keep = ~missing
    assert res["p_value"] == pytest.approx((1 + np.sum(np.abs((ra - rb)[keep] - d) >= abs(d))) / (1 + keep.sum()))
    strat = stats.paired_test(a, b, "auroc_macro", split_hash="rare", n_boot=200)
    assert strat["n_excluded"] == 0  # default: stratified within classes
