"""Scale-out on CPU: torchrun/gloo data-parallel extraction and concurrent shards over one results dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermbench.results import read_record

BIN = Path(sys.executable).parent


def _env(cache: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DERMBENCH_CACHE": str(cache)}


def _run_args(ph2: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "random-vit", "--task", "retrieval,probe", "--dataset", "ph2", "--data-root", str(ph2),
            "--out", str(out), "--n-boot", "100", "--batch-size", "8", "--quiet", *extra]


def _cache_arrays(cache: Path) -> dict[str, list[np.ndarray]]:
    """Every feature entry (a directory of .npy files beside index.json) as its arrays, ids included."""
    out = {}
    for idx in sorted((cache / "features").rglob("index.json")):
        out[idx.parent.name] = [np.load(f) for f in sorted(idx.parent.glob("*.npy"))]
    return out


def test_two_rank_extraction_equals_single_process_bit_for_bit(tmp_path, shared_data):
    ph2 = shared_data / "ph2"
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    r1 = subprocess.run([str(BIN / "dermbench"), *_run_args(ph2, tmp_path / "o1")], env=_env(c1),
                        capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "dermbench",
                         *_run_args(ph2, tmp_path / "o2")], env=_env(c2), capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _cache_arrays(c1), _cache_arrays(c2)
    assert a and set(a) == set(b)  # same content-addressed keys: train and test splits
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert x.dtype == y.dtype and np.array_equal(x, y), k
    # rank 0 alone wrote the records, once, with the same numbers
    recs1 = sorted((tmp_path / "o1").rglob("seed*.json"))
    recs2 = sorted((tmp_path / "o2").rglob("seed*.json"))
    assert len(recs1) == len(recs2) == 2
    for p1, p2 in zip(recs1, recs2):
        assert read_record(p1).metrics == read_record(p2).metrics
    assert not list((tmp_path / "o2").rglob("*.claim")) and not list(c2.rglob("*.tmp"))


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover
        return 0


@pytest.mark.skipif(_cuda_devices() < 2, reason="NCCL data-parallel extraction needs >= 2 GPUs (one per rank)")
def test_two_rank_nccl_extraction_matches_single_gpu(tmp_path):
    """The GPU twin of the gloo test, for a multi-GPU machine:
    pytest -q tests/test_distributed.py -k nccl  (runs torchrun --nproc-per-node 2 ... --device cuda)."""
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    args = ["run", "--model", "random-vit", "--task", "retrieval", "--dataset", "dermsynth", "--dataset-opt", "n=64",
            "--batch-size", "8", "--device", "cuda", "--n-boot", "50", "--quiet"]
    r1 = subprocess.run([str(BIN / "dermbench"), *args, "--out", str(tmp_path / "o1")], env=_env(c1),
                        capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "dermbench", *args,
                         "--out", str(tmp_path / "o2")], env=_env(c2), capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _cache_arrays(c1), _cache_arrays(c2)
    assert a and set(a) == set(b)
    for k in a:  # same batches on the same GPU model: equal up to cuBLAS kernel choice
        for x, y in zip(a[k], b[k]):
            assert x.dtype == y.dtype and (x.dtype.kind == "U" and (x == y).all() or np.allclose(x, y, atol=1e-5))


def test_concurrent_runs_share_one_results_dir_each_cell_once(tmp_path, shared_data):
    ph2 = shared_data / "ph2"
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [str(BIN / "dermbench"), *_run_args(ph2, out, "--seed", "0,1,2")]
    cmd.remove("--quiet")
    procs = [subprocess.Popen(cmd + (["--shard", f"{i}/2"] if i else []), env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (1, 2, 0)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    runs = [line for o, _ in outs for line in o.splitlines() if line.startswith("run ")]
    cells = {line.split(" (seed")[0] + line.split(" (seed")[1][:3] for line in runs}
    assert len(cells) == 6 == len(runs), runs  # 2 tasks x 3 seeds, each run exactly once across 3 processes
    recs = sorted(out.rglob("seed*.json"))
    assert len(recs) == 6 and all(read_record(p).model == "random-vit" for p in recs)
    assert not list(out.rglob("*.claim"))


@pytest.mark.slow  # five CLI processes (three concurrent)
def test_slurm_recipe_three_array_tasks_fill_one_store_then_tasks_forward_nothing(tmp_path):
    """examples/slurm/extract_1m.sbatch in miniature: 3 array tasks run `--extract-only --shard i/3` at once
    into one cache, then one `run` computes the tasks from that store and `leaderboard` reads the records."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["run", "--model", "random-vit", "--task", "retrieval", "--dataset", "dermsynth",
            "--dataset-opt", "n=36", "--dataset-opt", "size=32", "--batch-size", "4", "--cache-dir", str(cache),
            "--out", str(out), "--n-boot", "50"]
    procs = [subprocess.Popen([str(BIN / "dermbench"), *args, "--extract-only", "--shard", f"{i}/3"], env=_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2, 3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    logs = "".join(o for o, _ in outs)
    assert logs.count(": merged") == 2  # train and test each assembled once, by whichever shard finished last
    assert not list(out.rglob("seed*.json"))  # extraction only: no task ran
    entries = _cache_arrays(cache)
    assert len(entries) == 2 and not list(cache.rglob("*.parts"))
    assert sorted(len(a[-1]) for a in entries.values()) == [18, 18]  # ids.npy: all rows of each split
    r = subprocess.run([str(BIN / "dermbench"), *args, "--quiet"], env=_env(cache), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [read_record(p) for p in sorted(out.rglob("seed*.json"))]
    assert len(recs) == 1
    for rec in recs:
        fc = rec.provenance["feature_cache"]
        assert fc["images_forwarded"] == 0 and fc["misses"] == 0 and fc["hits"] >= 1, fc
    lb = subprocess.run([str(BIN / "dermbench"), "leaderboard", "--results", str(out), "--out", str(tmp_path / "lb")],
                        env=_env(cache), capture_output=True, text=True, timeout=600)
    assert lb.returncode == 0, lb.stderr[-2000:]
