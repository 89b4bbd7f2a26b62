"""Coverage and false-positive simulations behind every interval the leaderboard shows (issue 17, item 4/5).

Prints, for nominal 95% intervals (B bootstrap replicates each, stratified by class as records are):

1. fairness gaps (max - min of per-group AUROC over 3 groups): the projection of simultaneous max-t intervals
   (dermbench's method) vs the percentile interval, at a true gap of 0 and of 0.17;
2. worst-group AUROC (projection) at a true gap of 0;
3. several training seeds: the two-level (test sample x seed) interval of the seed mean vs a single seed's
   interval, coverage of the seed-averaged value, and the paired test's false-positive rate between two
   equally good models, when the seed SD equals the test-sample SE;
4. calibration: percentile coverage of the Brier score and of 15-bin ECE at n=200.

Truths are analytic (binormal AUROC = Phi(d / sqrt 2)) or from a 10^6-sample population. The functions are
importable (tests/test_stats_coverage.py runs them with fewer repetitions).

Usage: python benchmarks/coverage.py [--reps 300] [--boot 1000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from dermbench import stats


def _binormal(rng: np.random.Generator, n: int, d: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    s = rng.normal(size=n) + d * y
    return y, 1 / (1 + np.exp(-s))


def gap_coverage(reps: int, boot: int, d: tuple[float, ...], group_n: int = 67, seed: int = 0) -> dict[str, float]:
    """Coverage of the true gap (and worst group) of per-group binormal AUROCs with separations ``d``."""
    from scipy.stats import norm

    truth_auc = np.array([norm.cdf(x / math.sqrt(2)) for x in d])
    true_gap, true_worst = float(truth_auc.max() - truth_auc.min()), float(truth_auc.min())
    rng = np.random.default_rng(seed)
    m = stats.get_metric("auroc_macro")
    hits = {"projection": 0, "percentile": 0, "worst_projection": 0}
    k = len(d)
    for r in range(reps):
        ys, ss, g = [], [], []
        for gi, x in enumerate(d):
            y, s = _binormal(rng, group_n, x)
            ys.append(y), ss.append(s), g.append(np.full(group_n, gi))
        y, s, g = np.concatenate(ys), np.concatenate(ss), np.concatenate(g)
        p = stats.prepare({"ids": [str(i) for i in range(y.size)], "y_true": y, "scores": s})
        W = stats.Resamples.draw(f"gap-{seed}-{r}", 0, y.size, boot, y).counts
        pt = np.array([m.weighted(p, (g == j).astype(np.uint8)[None, :])[0][0] for j in range(k)])
        R = np.stack([m.weighted(p, W * (g == j).astype(W.dtype)[None, :])[0] for j in range(k)])
        lo, hi, _ = stats.projection_gap_interval(pt, R)
        hits["projection"] += lo - 1e-12 <= true_gap <= hi + 1e-12
        gr = R.max(axis=0) - R.min(axis=0)
        plo, phi = np.quantile(gr[np.isfinite(gr)], [0.025, 0.975])
        hits["percentile"] += plo <= true_gap <= phi
        wlo, whi, _ = stats.projection_worst_interval(pt, R, higher_is_better=True)
        hits["worst_projection"] += wlo <= true_worst <= whi
    return {k_: v / reps for k_, v in hits.items()}


def seed_simulation(reps: int, boot: int, n: int = 200, k: int = 5, sd_e: float = 0.3, seed: int = 0) -> dict[str, float]:
    """Per-sample values v_is = a_s + e_i (+ small noise): test SE = sd_e/sqrt(n) = seed SD. Coverage of the
    seed-averaged population value 0 by the two-level interval and by one seed's interval; FPR of the paired
    test between two models with the same expected value (shared test samples, independent seeds)."""
    rng = np.random.default_rng(seed)
    se = sd_e / math.sqrt(n)
    m = stats.get_metric("mean:v")
    cov2 = cov1 = rej = rej1 = 0
    for r in range(reps):
        e = rng.normal(0, sd_e, n)
        W = stats.Resamples.draw(f"seed-{seed}-{r}", 0, n, boot).counts
        vals, R = {}, {}
        for model in ("a", "b"):
            a_s = rng.normal(0, se, k)  # seed SD = test SE
            preds = [{"ids": [str(i) for i in range(n)], "v": e + a + rng.normal(0, 0.05, n)} for a in a_s]
            vals[model] = [stats.point(p, "mean:v") for p in preds]
            R[model] = np.stack([m.weighted(stats.prepare(p), W)[0] for p in preds])
        pa = stats.pool_seeds(vals["a"], R["a"], key=f"a{r}")
        pb = stats.pool_seeds(vals["b"], R["b"], key=f"b{r}")
        cov2 += pa["ci_low"] <= 0 <= pa["ci_high"]
        lo1, hi1 = np.quantile(R["a"][0], [0.025, 0.975])
        cov1 += lo1 <= 0 <= hi1
        rej += stats.paired_seed_test(pa, pb)["p_value"] < 0.05
        t1 = stats.paired_from_replicates(R["a"][0], R["b"][0], vals["a"][0], vals["b"][0])
        rej1 += t1["p_value"] < 0.05
    return {"two_level_coverage": cov2 / reps, "single_seed_coverage": cov1 / reps, "two_level_fpr": rej / reps,
            "single_seed_fpr": rej1 / reps}


def calibration_coverage(reps: int, boot: int, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Percentile coverage of Brier and 15-bin ECE for a slightly over-confident 3-class model."""
    rng = np.random.default_rng(seed)

    def draw(size: int) -> dict:
        y = rng.integers(0, 3, size)
        logits = rng.normal(size=(size, 3))
        logits[np.arange(size), y] += 1.2
        s = np.exp(1.3 * logits)
        s /= s.sum(1, keepdims=True)
        return {"ids": [str(i) for i in range(size)], "y_true": y, "scores": s}

    pop = draw(1_000_000)
    truth = {m: stats.point(pop, m) for m in ("brier", "ece")}
    hits = dict.fromkeys(truth, 0)
    for r in range(reps):
        p = draw(n)
        out = stats.score(p, list(truth), split_hash=f"cal-{seed}-{r}", n_boot=boot)
        for m in truth:
            hits[m] += out[m]["ci_low"] <= truth[m] <= out[m]["ci_high"]
    return {m: v / reps for m, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--boot", type=int, default=1000)
    a = ap.parse_args()
    t0 = time.perf_counter()
    z = gap_coverage(a.reps, a.boot, (1.2, 1.2, 1.2))
    print(f"gap, true gap 0 (3 groups of 67): projection {z['projection']:.3f}, percentile {z['percentile']:.3f}; "
          f"worst group (projection) {z['worst_projection']:.3f}")
    g = gap_coverage(a.reps, a.boot, (1.66, 1.2, 0.8), seed=1)
    print(f"gap, true gap 0.17 (AUROC .88/.80/.71): projection {g['projection']:.3f}, "
          f"percentile {g['percentile']:.3f}; worst group {g['worst_projection']:.3f}")
    s = seed_simulation(a.reps, a.boot)
    print(f"seeds (k=5, seed SD = test SE): two-level coverage {s['two_level_coverage']:.3f} (single seed "
          f"{s['single_seed_coverage']:.3f}); paired-test FPR two-level {s['two_level_fpr']:.3f} (single seed "
          f"{s['single_seed_fpr']:.3f})")
    c = calibration_coverage(a.reps, a.boot)
    print(f"calibration (n=200, percentile): Brier {c['brier']:.3f}, ECE(15 bins) {c['ece']:.3f} -> Brier is the "
          "headline calibration figure; ECE is shown, not ranked")
    print(f"({a.reps} repetitions, B={a.boot}, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
