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

Second baseline (the fair one): a vectorised numpy/scipy implementation -- replicates gathered as (rows, n)
arrays, ``scipy.stats.rankdata(axis=1)`` Mann-Whitney AUROC per class and a bincount confusion matrix per
replicate for macro F1 -- timed on ``--vector-reps`` replicates and extrapolated.

Scale (issue 21.3): ``--scale`` times :func:`dermbench.stats.bootstrap_models` (row-blocked replicate matrix)
at n=10k and at ``--n`` (default 100k) with tracemalloc's peak of numpy allocations, and prints the ratio of
the large run's time to the small one's scaled linearly in n. :func:`measure` is importable by other scripts.

Usage: python benchmarks/bootstrap.py [--baseline-reps 20] [--vector-reps 100] [--n 10000] [--models 10] [--boot 1000]
       python benchmarks/bootstrap.py --scale [--n 100000]
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


def measure(n: int, classes: int = 9, models: int = 10, boot: int = 1000,
            metrics: tuple[str, ...] = ("auroc_macro", "f1_macro")) -> dict:
    """Seconds and peak traced memory (numpy allocations, bytes) of scoring ``models`` models on one split with
    ``boot`` replicates and all pairwise paired tests (dermbench.stats.bootstrap_models). Data generation is
    outside the timed/traced part."""
    import tracemalloc

    from dermbench import stats

    _, preds = make_models(n, classes, models)
    preps = [stats.prepare(p) for p in preds]
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    res = stats.bootstrap_models(preps, list(metrics), split_hash=f"scale-{n}", n_boot=boot)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {"n": n, "models": models, "boot": boot, "seconds": dt, "peak_bytes": int(peak),
            "n_tests": sum(len(v) for v in res["tests"].values())}


def vectorised_reference(y: np.ndarray, s: np.ndarray, yp: np.ndarray, idx: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Macro AUROC (OvR, rank based) and macro F1 on each row of ``idx`` with numpy/scipy vectorised over rows."""
    from scipy.stats import rankdata

    Y, P = y[idx], yp[idx]
    auc = np.zeros(len(idx))
    used = np.zeros(len(idx))
    for c in range(C):
        pos = Y == c
        npos = pos.sum(axis=1)
        nneg = idx.shape[1] - npos
        ranks = rankdata(s[idx, c], axis=1)
        u = (ranks * pos).sum(axis=1) - npos * (npos + 1) / 2.0
        ok = (npos > 0) & (nneg > 0)
        auc += np.where(ok, u / np.maximum(npos * nneg, 1), 0.0)
        used += ok
    auc = auc / used
    rows = np.arange(len(idx))[:, None]
    cm = np.bincount((rows * C * C + Y * C + P).ravel(), minlength=len(idx) * C * C).reshape(len(idx), C, C)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = cm.sum(axis=2) + cm.sum(axis=1)
    ok = denom > 0
    f1 = np.where(ok, 2 * tp / np.maximum(denom, 1), 0.0).sum(axis=1) / ok.sum(axis=1)
    return auc, f1


def scale_main(n_big: int, models: int, boot: int, classes: int) -> None:
    small = measure(10_000, classes, models, boot)
    big = measure(n_big, classes, models, boot)
    ratio = big["seconds"] / (small["seconds"] * n_big / 10_000)
    for r in (small, big):
        print(f"n={r['n']}: {r['models']} models, B={r['boot']}, {r['n_tests']} paired tests: {r['seconds']:.2f} s, "
              f"peak numpy memory {r['peak_bytes'] / 2**20:.0f} MiB")
    print(f"time at n={n_big} / (time at n=10000 x {n_big / 10_000:g}): {ratio:.2f} (target <= 2)")
    print(f"peak memory at n={n_big}: {big['peak_bytes'] / 2**30:.2f} GiB (target <= 2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--baseline-reps", type=int, default=20)
    ap.add_argument("--vector-reps", type=int, default=100)
    ap.add_argument("--scale", action="store_true", help="time and memory at n=10k and at --n (default 100k)")
    a = ap.parse_args()
    if a.scale:
        scale_main(a.n if a.n != 10_000 else 100_000, a.models, a.boot, a.classes)
        return

    from sklearn.metrics import f1_score, roc_auc_score

    from dermbench import stats

    metrics = ("auroc_macro", "f1_macro")
    y, models = make_models(a.n, a.classes, a.models)
    pairs = list(itertools.combinations(range(a.models), 2))
    split_hash, seed = "bench-split", 0

    # ---- dermbench (row-blocked replicate matrix, all models, all pairwise tests, Holm)
    t0, c0 = time.perf_counter(), time.process_time()
    res = stats.bootstrap_models(models, list(metrics), split_hash=split_hash, n_boot=a.boot, strata=None,
                                 boot_seed=seed)
    reps = {m: list(res["replicates"][m]) for m in metrics}
    points = {m: list(res["points"][m]) for m in metrics}
    adjusted = {m: [t["p_adj"] for t in res["tests"][m]] for m in metrics}
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    rs = stats.Resamples(stats.bootstrap_indices(split_hash, seed, a.n, a.boot))

    # ---- baseline 1: numpy/scipy vectorised over replicates (rankdata AUROC, bincount F1)
    V = min(a.vector_reps, a.boot)
    t0 = time.perf_counter()
    vec = {m: np.empty((a.models, V)) for m in metrics}
    for k, pred in enumerate(models):
        for lo in range(0, V, 25):
            hi = min(V, lo + 25)
            au, f1 = vectorised_reference(y, pred["scores"], pred["y_pred"], rs.idx[lo:hi], a.classes)
            vec["auroc_macro"][k, lo:hi], vec["f1_macro"][k, lo:hi] = au, f1
    t_vec = (time.perf_counter() - t0) * a.boot / V
    vec_err = max(float(np.abs(np.stack(reps[m])[:, :V] - vec[m]).max()) for m in metrics)

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
    print(f"numpy/scipy vectorised reference: {t_vec:.1f} s extrapolated from {V} replicates per model "
          f"(max |diff| {vec_err:.1e}); ratio vs dermbench {t_vec / t_ours:.1f}x")
    print(f"speedup: {t_sk / t_ours:.0f}x (vs scikit-learn loop); {t_vec / t_ours:.1f}x (vs vectorised numpy/scipy)")


if __name__ == "__main__":
    main()
