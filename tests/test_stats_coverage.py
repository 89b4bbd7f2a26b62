"""Coverage evidence behind the leaderboard's intervals, at reduced size (full runs: benchmarks/coverage.py).

Fixed simulation seeds, so the numbers are deterministic; bands are wide enough for the reduced repetition
counts (binomial SD ~0.03 at 100 repetitions) and still separate a valid method from the invalid one.
Full-size figures (300 repetitions, B=1000) are in docs/statistics.md.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from dermbench import stats

_spec = importlib.util.spec_from_file_location("dermbench_coverage_bench",
                                               Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py")
cov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cov)  # type: ignore[union-attr]


def test_gap_projection_covers_a_true_gap_of_zero_and_percentile_does_not() -> None:
    r = cov.gap_coverage(60, 400, (1.2, 1.2, 1.2))
    assert r["projection"] >= 0.93  # conservative by construction (0.97 observed at 300 reps)
    assert r["percentile"] <= 0.05  # the published method: biased upward, never covers 0
    assert r["worst_projection"] >= 0.93


def test_gap_projection_covers_a_real_gap() -> None:
    r = cov.gap_coverage(60, 400, (1.66, 1.2, 0.8), seed=1)
    assert r["projection"] >= 0.93


def test_two_level_seed_interval_and_test_are_calibrated_when_seed_sd_equals_test_se() -> None:
    r = cov.seed_simulation(150, 600)
    assert 0.90 <= r["two_level_coverage"] <= 0.99
    assert r["two_level_fpr"] <= 0.08  # 0.04 observed at 300 reps, B=1000
    assert r["single_seed_coverage"] < r["two_level_coverage"]  # one seed ignores the seed variation
    assert r["single_seed_fpr"] > 0.3  # and declares equally good models different


def test_pool_seeds_formula_and_single_seed_passthrough() -> None:
    rng = np.random.default_rng(0)
    R = 0.7 + rng.normal(0, 0.02, (4, 500))
    vals = [0.69, 0.72, 0.70, 0.73]
    p = stats.pool_seeds(vals, R, key="k")
    v_test = np.var(R.mean(axis=0), ddof=1)
    v_seed = np.var(vals, ddof=1) / 4
    from scipy.stats import t

    df = (v_test + v_seed) ** 2 / (v_seed**2 / 3)
    half = t.ppf(0.975, df) * math.sqrt(v_test + v_seed)
    assert (p["ci_low"], p["ci_high"]) == pytest.approx((np.mean(vals) - half, np.mean(vals) + half))
    assert p["sd"] == pytest.approx(np.std(vals, ddof=1)) and p["k"] == 4
    one = stats.pool_seeds([0.7], R[:1], key="k")
    assert (one["ci_low"], one["ci_high"]) == pytest.approx(tuple(np.quantile(R[0], [0.025, 0.975])))
    same = stats.paired_seed_test(p, p)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_bootstrap_models_equals_score_and_is_block_size_invariant() -> None:
    rng = np.random.default_rng(3)
    n, C = 1500, 4
    y = rng.integers(0, C, n)
    preds = []
    for j in range(3):
        logit = rng.normal(size=(n, C))
        logit[np.arange(n), y] += 1 + 0.2 * j
        s = np.exp(logit)
        s /= s.sum(1, keepdims=True)
        preds.append({"ids": [str(i) for i in range(n)], "y_true": y, "scores": s, "y_pred": s.argmax(1)})
    small = stats.bootstrap_models(preds, ["auroc_macro", "f1_macro"], split_hash="bm", n_boot=150, max_bytes=17 * n * 7)
    big = stats.bootstrap_models(preds, ["auroc_macro", "f1_macro"], split_hash="bm", n_boot=150)
    np.testing.assert_array_equal(small["replicates"]["auroc_macro"], big["replicates"]["auroc_macro"])
    rs, _ = stats.resamples_for(preds[2], split_hash="bm", n_boot=150)
    np.testing.assert_allclose(big["replicates"]["f1_macro"][2], stats.replicates(preds[2], "f1_macro", rs), atol=1e-12)
    t = big["tests"]["auroc_macro"]
    assert [(x["a"], x["b"]) for x in t] == [(0, 1), (0, 2), (1, 2)]
    direct = stats.paired_test(preds[0], preds[2], "auroc_macro", split_hash="bm", n_boot=150)
    assert t[1]["p_value"] == pytest.approx(direct["p_value"]) and t[1]["diff"] == pytest.approx(direct["diff"])
    assert [x["p_adj"] for x in t] == pytest.approx(stats.correct([x["p_value"] for x in t], "holm"))
