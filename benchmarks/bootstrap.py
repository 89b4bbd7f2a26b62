"""Bootstrap scoring speed: dermbench.stats vs a loop over scikit-learn, in one process (issue 3, item 8).

Workload: n=10,000 samples, 9 classes, 10 models, 1000 replicates of macro AUROC and macro F1 per model,
and all 45 pairwise paired bootstrap tests per metric.

dermbench: indices from (split hash, seed) -> shared multiplicity matrix -> vectorised replicates per
model and metric -> point estimates -> paired tests (everything timed, including index generation).
Baseline: for each model and replicate, ``roc_auc_score(y[i], s[i], multi_class='ovr')`` and
``f1_score(y[i], p[i], average='macro')`` on the same indices. A full baseline takes ~6 min, so it runs
on the first ``--baseline-reps`` replicates of every model and is extrapolated linearly to 1000 (each
replicate costs the same); the paired tests are then done on those replicate arrays as for dermbench.
Wall-clock time gives the ``speedup:`` line; process CPU time is printed too because the 2-core CI
machines are often shared. Every baseline replicate is checked against dermbench's (|diff| <= 1e-9), as are the point estimates.

Usage: python benchmarks/bootstrap.py [--baseline-reps 20] [--n 10000] [--models 10] [--boot 1000]
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np


def make_models(n: int, C: int, k: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    ids = [f"s{i:05d}" for i in range(n)]
    models = []
    for j in range(k):
        logits = rng.normal(size=(n, C))
        logits[np.arange(n), y] += 1.0 + 0.02 * j  # close models: some pairs not significant
        s = np.exp(logits)
        s /= s.sum(axis=1, keepdims=True)
        models.append({"ids": ids, "y_true": y, "scores": s, "y_pred": s.argmax(axis=1)})
    return y, models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--baseline-reps", type=int, default=20)
    a = ap.parse_args()

    from sklearn.metrics import f1_score, roc_auc_score

    from dermbench import stats

    metrics = ("auroc_macro", "f1_macro")
    y, models = make_models(a.n, a.classes, a.models)
    pairs = list(itertools.combinations(range(a.models), 2))
    split_hash, seed = "bench-split", 0

    # ---- dermbench
    t0, c0 = time.perf_counter(), time.process_time()
    rs = stats.Resamples(stats.bootstrap_indices(split_hash, seed, a.n, a.boot))
    reps = {m: [] for m in metrics}
    points = {m: [] for m in metrics}
    for raw in models:
        pred = stats.prepare(raw)
        for m in metrics:
            reps[m].append(stats.replicates(pred, m, rs))
            points[m].append(stats.point(pred, m))
    tests = {m: [stats.paired_from_replicates(reps[m][i], reps[m][j], points[m][i], points[m][j]) for i, j in pairs]
             for m in metrics}
    adjusted = {m: stats.correct([t["p_value"] for t in tests[m]], "holm") for m in metrics}
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0

    # ---- baseline: scikit-learn in a Python loop over replicates
    R = min(a.baseline_reps, a.boot)
    idx = rs.idx
    sk_reps = {m: np.empty((a.models, R)) for m in metrics}
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, pred in enumerate(models):
            s, yp = pred["scores"], pred["y_pred"]
            for b in range(R):
                ii = idx[b]
                sk_reps["auroc_macro"][k, b] = roc_auc_score(y[ii], s[ii], multi_class="ovr", average="macro")
                sk_reps["f1_macro"][k, b] = f1_score(y[ii], yp[ii], average="macro")
        for m in metrics:
            for i, j in pairs:
                stats.paired_from_replicates(sk_reps[m][i], sk_reps[m][j], points[m][i], points[m][j])
    t_sk_measured, c_sk_measured = time.perf_counter() - t0, time.process_time() - c0
    t_sk, c_sk = t_sk_measured * a.boot / R, c_sk_measured * a.boot / R

    # ---- identical numbers
    worst = 0.0
    for m in metrics:
        ours = np.stack(reps[m])[:, :R]
        worst = max(worst, float(np.abs(ours - sk_reps[m]).max()))
    for k, pred in enumerate(models):
        worst = max(worst, abs(points["auroc_macro"][k] - roc_auc_score(y, pred["scores"], multi_class="ovr")))
        worst = max(worst, abs(points["f1_macro"][k] - f1_score(y, pred["y_pred"], average="macro")))
    assert worst <= 1e-9, f"dermbench and scikit-learn differ by {worst}"

    n_sig = sum(p is not None and p < 0.05 for m in metrics for p in adjusted[m])
    print(f"workload: n={a.n}, {a.classes} classes, {a.models} models, {a.boot} replicates x (macro AUROC, macro F1), "
          f"{len(pairs)} pairwise paired tests per metric ({n_sig} of {2 * len(pairs)} significant after Holm)")
    print(f"dermbench.stats: {t_ours:.2f} s (indices, replicates, points, paired tests, Holm)")
    print(f"scikit-learn loop: {t_sk_measured:.2f} s for {R} replicates per model, extrapolated linearly to "
          f"{a.boot}: {t_sk:.1f} s ({t_sk / a.models:.1f} s per model)")
    print(f"max |dermbench - sklearn| over {R} replicates x {a.models} models x 2 metrics and points: {worst:.2e}")
    print(f"cpu time (all threads of this process; less sensitive to other load on the machine): dermbench "
          f"{c_ours:.2f} s, scikit-learn extrapolated {c_sk:.1f} s, ratio {c_sk / c_ours:.0f}x")
    print(f"speedup: {t_sk / t_ours:.0f}x")


if __name__ == "__main__":
    main()
