"""Real dataset sizes on one machine (issue 21): kNN, feature-store reads and the bootstrap at 10^4-10^5 rows.

Every figure is a ratio against a baseline measured in the same run, or a time/memory with its workload:

1. kNN (``dermbench_plugins.tasks.retrieval.knn_predict``: normalise, exact top-k with the stable tie rule,
   votes) against the plain baseline "chunked matmul + ``np.argpartition``" on the same unit-norm 384-d
   data, n queries x n bank rows, at 5k and 20k; prints ``knn/argpartition: <R>`` for 20k (target <= 1.5).
   At the smaller size the old full-sort implementation is timed too and the neighbours are checked equal.
2. Feature store read (``FeatureStore.read``: ids check + memory-mapped arrays) + one full pass over the
   array, against ``np.load(mmap_mode='r')`` + the same pass, on a synthetic 100k x 384 float32 entry.
3. Bootstrap: 10 models, B=1000, macro AUROC with stratified resamples + all 45 paired tests, at n=10k and
   100k, each in a fresh process so its peak RSS (``VmHWM``) is its own.
4. A linear extrapolation to 1M images from the measured rates, with the assumptions printed.

Times are medians of ``--repeats`` (3) runs. ``--quick`` uses small sizes (a smoke run, ~1 min).
Usage: python benchmarks/scale.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _data(n: int, d: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, rng.integers(0, 7, n)


def baseline_knn(tr, te, k: int, chunk: int = 1024) -> None:
    """The reference cost: matmul + argpartition per chunk of queries, nothing else (inputs already unit-norm)."""
    import numpy as np

    n = len(tr)
    for lo in range(0, len(te), chunk):
        np.argpartition(te[lo : lo + chunk] @ tr.T, n - k, axis=1)[:, n - k :]


def old_knn_idx(tr, te, k: int, chunk: int = 1024):
    """The pre-issue-21 neighbour search: a full stable sort of every row."""
    import numpy as np

    return np.concatenate([np.argsort(-(te[lo : lo + chunk] @ tr.T), axis=1, kind="stable")[:, :k]
                           for lo in range(0, len(te), chunk)])


def bench_knn(n: int, repeats: int, with_old: bool) -> dict:
    import numpy as np

    from dermbench_plugins.tasks.retrieval import _unit, knn_predict, knn_search

    x, y = _data(n, 384, 0)
    q, _ = _data(n, 384, 1)
    tr, te = _unit(x), _unit(q)
    k = 5
    base, ours = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        t0 = time.perf_counter()
        baseline_knn(tr, te, k)
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        knn_predict(x, y, q, k, 7)
        ours.append(time.perf_counter() - t0)
    out = {"n": n, "baseline_s": statistics.median(base), "knn_s": statistics.median(ours)}
    out["ratio"] = out["knn_s"] / out["baseline_s"]
    if with_old:
        t0 = time.perf_counter()
        old = old_knn_idx(tr, te, k)
        out["old_s"] = time.perf_counter() - t0
        idx, _ = knn_search(tr, te, k)
        out["same_neighbours"] = bool(np.array_equal(old, idx))
    return out


def bench_store(n: int, repeats: int) -> dict:
    import numpy as np

    from dermbench.features import FeatureStore

    x, _ = _data(n, 384, 2)
    ids = [f"img{i:07d}" for i in range(n)]
    key = {"model": "synthetic", "weights_id": "-", "transform": "-", "dataset": "synthetic", "split": "train",
           "split_hash": "-", "kind": "embed", "layers": [], "dtype": "float32"}
    with tempfile.TemporaryDirectory() as d:
        st = FeatureStore(Path(d))
        t0 = time.perf_counter()
        entry = st.put(key, ids, [x])
        t_write = time.perf_counter() - t0
        raw, store = [], []
        for _ in range(repeats + 1):  # the first round warms the page cache for both
            t0 = time.perf_counter()
            a = np.load(entry / "a0.npy", mmap_mode="r")
            float(a.sum(dtype=np.float64))
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            a = st.read(key, ids)[0]
            float(a.sum(dtype=np.float64))
            store.append(time.perf_counter() - t0)
        mb = x.nbytes / 1e6
    r, s = statistics.median(raw[1:]), statistics.median(store[1:])
    return {"n": n, "MB": mb, "write_s": t_write, "raw_s": r, "store_s": s, "ratio": s / r}


BOOT_CHILD = r"""
import json, resource, sys, time
import numpy as np
from dermbench import stats

def peak_mb():  # VmHWM: this process image's own high-water mark (ru_maxrss survives fork+exec from the parent)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

n, M, B = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
y = rng.integers(0, 7, n)
ids = [f"s{i}" for i in range(n)]
models = []
for j in range(M):
    lg = rng.normal(size=(n, 7)).astype(np.float32)
    lg[np.arange(n), y] += 1.0 + 0.02 * j
    s = np.exp(lg)
    s /= s.sum(1, keepdims=True)
    models.append({"ids": ids, "y_true": y, "scores": s, "y_pred": s.argmax(1)})
rss0 = peak_mb()
t0 = time.perf_counter()
rs, _ = stats.resamples_for(models[0], split_hash="scale-bench", n_boot=B)
sc = [stats.evaluate(m, "auroc_macro", rs) for m in models]
tests = [stats.paired_from_replicates(sc[i].replicates, sc[j].replicates, sc[i].value, sc[j].value)
         for i in range(M) for j in range(i + 1, M)]
t = time.perf_counter() - t0
print(json.dumps({"n": n, "models": M, "B": B, "tests": len(tests), "s": t, "peak_rss_MB": peak_mb(),
                  "inputs_rss_MB": rss0}))
"""


def bench_boot(n: int, models: int, B: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", BOOT_CHILD, str(n), str(models), str(B)], capture_output=True,
                           text=True, check=True)
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    out = dict(runs[0])
    out["s"] = statistics.median(r["s"] for r in runs)
    out["peak_rss_MB"] = max(r["peak_rss_MB"] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not the reported figures")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="knn,store,boot", help="comma-separated subset of knn,store,boot")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    R = a.repeats
    knn_sizes = (1000, 3000) if a.quick else (5000, 20000)
    store_n = 20_000 if a.quick else 100_000
    boot_sizes, boot_models = ((2000, 10_000), 3) if a.quick else ((10_000, 100_000), 10)
    import os

    quick = " (QUICK MODE: not the reported figures)" if a.quick else ""
    print(f"machine: {os.cpu_count()} cores; medians of {R} runs{quick}")

    knn, s, boots = [], None, []
    if "knn" in parts:
        knn = [bench_knn(n, R, with_old=(i == 0)) for i, n in enumerate(knn_sizes)]
        for r in knn:
            line = (f"kNN {r['n']} x {r['n']} (384-d, k=5): knn_predict {r['knn_s']:.2f} s, matmul+argpartition "
                    f"{r['baseline_s']:.2f} s, ratio {r['ratio']:.2f}")
            if "old_s" in r:
                line += (f"; old full-sort search alone {r['old_s']:.2f} s, same neighbours as the old search: "
                         f"{r['same_neighbours']}")
            print(line)
        print(f"knn/argpartition: {knn[-1]['ratio']:.2f}  ({knn[-1]['n']} x {knn[-1]['n']}, target <= 1.5)")
        h = bench_hnsw(knn_sizes[-1])
        if h:
            print(f"faiss-hnsw (approximate, M=32, efSearch=128) {h['n']} x {h['n']}: build+search {h['s']:.2f} s "
                  f"vs exact {knn[-1]['knn_s']:.2f} s; recall@5 {h['recall']:.3f}")

    if "store" in parts:
        s = bench_store(store_n, R)
        print(f"store read {s['n']} x 384 float32 ({s['MB']:.0f} MB) + one pass: FeatureStore.read "
              f"{s['store_s']:.3f} s, np.load(mmap_mode='r') {s['raw_s']:.3f} s, ratio {s['ratio']:.2f} "
              f"(write via put: {s['write_s']:.2f} s)")

    if "boot" in parts:
        boots = [bench_boot(n, boot_models, 1000, R) for n in boot_sizes]
        for b in boots:
            print(f"bootstrap n={b['n']}: {b['models']} models x B={b['B']} macro AUROC + {b['tests']} paired tests: "
                  f"{b['s']:.2f} s, peak RSS {b['peak_rss_MB']:.0f} MB ({b['inputs_rss_MB']:.0f} MB before the "
                  "bootstrap: imports + inputs)")
        lo, hi = boots
        scale = hi["n"] / lo["n"]
        print(f"bootstrap time {hi['n']} vs {lo['n']} x {scale:.0f}: {hi['s'] / (lo['s'] * scale):.2f} "
              "(target <= 2; below 1 means fixed costs dominate at the smaller n)")

    print("extrapolation to 1M images (linear in the work: kNN cost ~ queries x bank x d, store and bootstrap ~ n; "
          "same cores, data in RAM/page cache, no I/O stalls):")
    if knn:
        big = knn[-1]
        per_pair = big["knn_s"] / (big["n"] * big["n"])
        print(f"  exact kNN, 10k queries vs a 1M bank, 384-d: {per_pair * 1e10 / 60:.1f} min; 1M vs 1M: "
              f"{per_pair * 1e12 / 3600:.1f} h on this machine -> use retrieval.index=faiss-hnsw (approximate) or "
              "index=torch on a GPU")
    if s:
        print(f"  store read of 1M x 1024 float32 (4.1 GB) from page cache: "
              f"{s['store_s'] * 1e6 / s['n'] * 1024 / 384:.1f} s; it needs 4.1 GB of page cache, not process memory")
    if boots:
        hi = boots[-1]
        print(f"  bootstrap at n=1M, 10 models, B=1000: {hi['s'] * 1e6 / hi['n'] / 60:.1f} min; peak memory ~ "
              f"{hi['peak_rss_MB'] / 1024 * 1e6 / hi['n']:.1f} GB if it grows linearly with n from "
              f"{hi['peak_rss_MB']:.0f} MB at n={hi['n']} (an upper bound: imports are a fixed part)")


def bench_hnsw(n: int) -> dict | None:
    try:
        import faiss  # noqa: F401
    except ImportError:
        print("faiss not installed (pip install 'dermbench[index]'): faiss-hnsw timing skipped")
        return None
    import numpy as np

    from dermbench_plugins.tasks.retrieval import _unit, knn_search

    tr, te = _unit(_data(n, 384, 0)[0]), _unit(_data(n, 384, 1)[0])
    exact, _ = knn_search(tr, te, 5)
    t0 = time.perf_counter()
    approx, _ = knn_search(tr, te, 5, index="faiss-hnsw")
    t = time.perf_counter() - t0
    recall = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, approx)]))
    return {"n": n, "s": t, "recall": recall}

if __name__ == "__main__":
    main()
