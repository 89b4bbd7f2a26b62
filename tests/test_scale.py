"""Real dataset sizes (issue 21): exact kNN by partial selection, memory-mapped feature store, extraction lock.

Performance figures live in benchmarks/scale.py; these tests pin down behaviour (same neighbours, same bits,
one forward pass) on small data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dermbench.api import DermbenchError
from dermbench.features import FeatureStore, extract
from dermbench_plugins.tasks.retrieval import knn_predict, knn_search


def reference_knn(train_x, train_y, test_x, k, n_cls, chunk=1024):
    """The kNN as it was before issue 21 (full stable sort per row): the tie rule the new one must keep."""

    def norm(a):
        a = np.asarray(a, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    tr, te = norm(train_x), norm(test_x)
    k = min(k, len(tr))
    votes = np.zeros((len(te), n_cls), dtype=np.float64)
    simsum = np.zeros((len(te), n_cls), dtype=np.float64)
    idxs = []
    for lo in range(0, len(te), chunk):
        sims = te[lo : lo + chunk] @ tr.T
        idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        idxs.append(idx)
        top = np.take_along_axis(sims, idx, axis=1)
        lab = train_y[idx]
        rows = np.arange(len(idx))[:, None]
        np.add.at(votes[lo : lo + chunk], (rows, lab), 1.0)
        np.add.at(simsum[lo : lo + chunk], (rows, lab), top)
    key = votes * 1e6 + simsum
    return votes / k, key.argmax(axis=1), np.concatenate(idxs)


def _tied_data(seed: int, quantise: bool, n=600, m=250, d=16, C=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if quantise:  # few distinct values: many exactly equal similarities
        x = np.round(x).astype(np.float32)
    x[::3] = x[0]  # a third of the bank is one duplicated row
    x[1::7] = x[1]
    q = np.round(rng.normal(size=(m, d))).astype(np.float32)
    q[:40] = x[:40]  # queries identical to bank rows: ties at the top
    q[7, 2] = np.nan  # a NaN query row keeps the reference's ordering too
    return x, rng.integers(0, C, n), q, C


@pytest.mark.parametrize("k", [1, 5, 7, 40, 599, 600, 900])
@pytest.mark.parametrize("quantise", [False, True])
def test_knn_equals_full_stable_sort_reference_including_ties(k, quantise):
    x, y, q, C = _tied_data(k, quantise)
    s0, p0, i0 = reference_knn(x, y, q, k, C, chunk=96)
    s1, p1 = knn_predict(x, y, q, k, C, chunk=96)
    assert np.array_equal(s0, s1, equal_nan=True) and np.array_equal(p0, p1)
    tr = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    te = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    idx, top = knn_search(tr, te, min(k, len(x)), chunk=96)
    assert np.array_equal(idx, i0)  # the same neighbours in the same order, ties by training index


def test_knn_tie_at_the_kth_place_takes_the_lowest_training_indices():
    bank = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [1, 1]], dtype=np.float32)
    idx, top = knn_search(bank / np.linalg.norm(bank, axis=1, keepdims=True), np.array([[0, 1]], np.float32), 3)
    assert idx.tolist() == [[1, 2, 3]]
    idx, _ = knn_search(bank / np.linalg.norm(bank, axis=1, keepdims=True), np.array([[1, 0]], np.float32), 3)
    assert idx.tolist() == [[0, 4, 1]]  # 1.0, 0.707, then the first of three exact 0.0 ties


def test_knn_torch_backend_same_neighbours_where_arithmetic_is_exact():
    rng = np.random.default_rng(3)
    # +-1 entries in 64-d: unit vectors are +-1/8, every dot product is exact, so backends must agree bit for bit
    x = rng.choice([-1.0, 1.0], size=(500, 64)).astype(np.float32)
    x[::4] = x[0]
    q = rng.choice([-1.0, 1.0], size=(120, 64)).astype(np.float32)
    y = rng.integers(0, 3, 500)
    for k in (1, 5, 50):
        a = knn_predict(x, y, q, k, 3)
        b = knn_predict(x, y, q, k, 3, index="torch", device="cpu", chunk=50)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_knn_faiss_exact_equals_numpy_and_hnsw_recalls_most_neighbours():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(5, 32))
    y = rng.integers(0, 5, 3000)
    x = (centers[y] + rng.normal(size=(3000, 32))).astype(np.float32)
    tr = x / np.linalg.norm(x, axis=1, keepdims=True)
    te, bank = tr[:300], tr[300:]
    i_np, s_np = knn_search(bank, te, 10)
    i_fx, s_fx = knn_search(bank, te, 10, index="faiss-exact")
    assert np.array_equal(i_np, i_fx) and np.allclose(s_np, s_fx, atol=1e-5)
    i_hn, _ = knn_search(bank, te, 10, index="faiss-hnsw")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_np, i_hn)])
    assert recall > 0.9, recall


def test_unknown_index_is_a_clear_error():
    from dermbench_plugins.tasks.retrieval import Retrieval

    with pytest.raises(DermbenchError, match="faiss-hnsw"):
        Retrieval(index="annoy")


# ------------------------------------------------------------------ feature store
def _key(i=0):
    return {"model": "m", "weights_id": "w", "transform": "t", "dataset": "d", "split": f"s{i}", "split_hash": "h",
            "kind": "embed", "layers": [], "dtype": "float32"}


def test_store_entries_are_memory_mapped_read_only_and_listed(tmp_path):
    st = FeatureStore(tmp_path)
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.ones((4, 2, 2, 2), np.float16)
    d = st.put(_key(), ["a", "b", "c", "d"], [a, b])
    assert sorted(p.name for p in d.iterdir()) == ["a0.npy", "a1.npy", "ids.npy", "index.json"]
    got = st.read(_key(), ["a", "b", "c", "d"])
    assert np.array_equal(got[0], a) and got[1].dtype == np.float16
    assert isinstance(got[0].base, np.memmap) and not got[0].flags.writeable  # no copy, never mutated in place
    assert st.read(_key(), ["a", "b", "c", "x"]) is None  # ids must match exactly
    assert not list(d.parent.glob(".*tmp"))  # temp dir renamed into place
    [e] = st.entries()
    assert e["n"] == 4 and e["shapes"] == [[4, 3], [4, 2, 2, 2]] and e["path"] == str(d)
    assert st.clear(model="m") == 1 and st.read(_key(), ["a", "b", "c", "d"]) is None


def test_store_still_reads_first_format_npz_entries(tmp_path):
    st = FeatureStore(tmp_path)
    legacy = st._legacy_path(_key())
    legacy.parent.mkdir(parents=True)
    a = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.savez(legacy, ids=np.array(["x", "y", "z"]), a0=a)
    legacy.with_suffix(".json").write_text(json.dumps({**_key(), "n": 3}))
    assert np.array_equal(st.read(_key(), ["x", "y", "z"])[0], a)
    assert [e["path"] for e in st.entries()] == [str(legacy)]


class Tiny:
    """A real, small conv backbone (embed + patch maps): the store's behaviour without a ViT's start-up cost."""

    def __init__(self):
        import torch

        from dermbench.api import ModelInfo, Preprocess

        self.info = ModelInfo(name="tiny-conv", family="cnn", source="custom", embed_dim=8, patch_size=4,
                              capabilities=frozenset({"cls", "dense"}), preprocess=Preprocess(crop=32))
        self.weights_id = "seed0"
        torch.manual_seed(0)
        self.net = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.transform = self.info.preprocess.build()

    def embed(self, x):
        return self.net(x).mean(dim=(2, 3))

    def patch_tokens(self, x, layers):
        return [self.net(x) for _ in layers]


def _synth(n=12):
    from dermbench import plugins

    return Tiny(), plugins.registry().dataset("dermsynth").obj(None, n=n, size=32).split("train")


def test_streamed_store_and_dataloader_workers_give_the_in_memory_bits(tmp_path):
    bb, split = _synth()
    ref = extract(bb, split, lambda x: [bb.embed(x)], batch_size=4)[0]  # in memory, threads: the old path
    st = FeatureStore(tmp_path, batch_size=4)
    got = st.embeddings(bb, split)  # streamed batch by batch into the .npy, read back memory-mapped
    assert got.dtype == np.float32 and np.array_equal(got, ref)
    w = extract(bb, split, lambda x: [bb.embed(x)], batch_size=4, workers=2)[0]  # DataLoader worker processes
    assert np.array_equal(w, ref)
    maps = st.patch_tokens(bb, split, [-1])
    assert maps[0].dtype == np.float16 and maps[0].shape[0] == len(split)
    assert st.stats.misses == 2 and st.stats.images_forwarded == 2 * len(split)
    assert np.array_equal(st.embeddings(bb, split), ref) and st.stats.hits == 1


def test_damaged_entry_is_recomputed_not_trusted(tmp_path):
    bb, split = _synth(12)
    st = FeatureStore(tmp_path, batch_size=4)
    ref = np.array(st.embeddings(bb, split))
    [e] = st.entries()
    (Path(e["path"]) / "a0.npy").write_bytes(b"\x93NUMPY garbage")
    assert np.array_equal(st.embeddings(bb, split), ref) and st.stats.misses == 2


LOCK_SCRIPT = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from test_scale import Tiny, _synth
from dermbench.features import FeatureStore
cache, log, go, me = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

class Logged(Tiny):  # every real forward pass appends one line to the log (O_APPEND: atomic across processes)
    def embed(self, x):
        with open(log, "a") as f:
            f.write(f"{me} {len(x)}\n")
        time.sleep(0.3)  # hold the lock long enough for the other process to arrive
        return super().embed(x)

bb, split = Logged(), _synth(32)[1]
(cache / f"ready-{me}").touch()
while not go.exists():
    time.sleep(0.01)
st = FeatureStore(cache, batch_size=4)
x = st.embeddings(bb, split)
print(f"{me} misses={st.stats.misses} hits={st.stats.hits} waits={st.stats.lock_waits} sum={float(x.sum())!r}")
"""


@pytest.mark.slow  # two Python processes importing torch (~30 s on the shared 2-core machine)
def test_concurrent_extraction_of_the_same_features_runs_one_forward_pass(tmp_path):
    script, log, go = tmp_path / "extract.py", tmp_path / "forwards.log", tmp_path / "go"
    script.write_text(LOCK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(log), str(go), me,
                               str(Path(__file__).parent)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in ("A", "B")]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready-{me}").exists() for me in "AB"):  # both loaded, then start together
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = log.read_text().split()
    forwards = list(zip(lines[::2], map(int, lines[1::2])))
    assert len(forwards) == 4 and sum(n for _, n in forwards) == 16  # 16 training images, 4 batches: once
    assert len({who for who, _ in forwards}) == 1  # all by one process
    stats = sorted(o[0].strip().splitlines()[-1] for o in outs)
    assert sum("misses=1" in s for s in stats) == 1 and sum("hits=1 waits=1" in s for s in stats) == 1, stats
    assert len({s.split("sum=")[1] for s in stats}) == 1  # both hold the same features


def test_sharded_extraction_parts_merge_into_the_single_process_entry(tmp_path):
    bb, split = _synth(40)  # 20 training images, 5 batches of 4, over 3 shards: 1 + 2 + 2 batches
    ref = extract(bb, split, lambda x: [bb.embed(x)], batch_size=4)[0]
    st = FeatureStore(tmp_path, batch_size=4)
    assert [st.shard_rows(20, 4, (i, 3)) for i in (1, 2, 3)] == [(0, 4), (4, 12), (12, 20)]
    assert st.extract_shard(bb, split, (3, 3)) == "part"
    assert st.extract_shard(bb, split, (1, 3)) == "part"
    assert st.read(st.key(bb, split, "embed"), split.ids) is None  # incomplete: no entry yet
    assert st.extract_shard(bb, split, (2, 3)) == "merged"  # the last shard assembles the entry
    assert st.stats.images_forwarded == 20
    assert np.array_equal(st.read(st.key(bb, split, "embed"), split.ids)[0], ref)  # bit-identical to one process
    assert not list(tmp_path.rglob("*.parts")) and not list(tmp_path.rglob("*.tmp"))
    assert st.extract_shard(bb, split, (2, 3)) == "hit"
    # parts left complete but unmerged (the merging shard was killed) are merged by the next reader
    st2 = FeatureStore(tmp_path / "b", batch_size=4)
    key = st2.key(bb, split, "embed")
    parts = st2._parts_dir(key, 2)
    for i, (lo, hi) in enumerate([st2.shard_rows(20, 4, (1, 2)), st2.shard_rows(20, 4, (2, 2))], 1):
        w_dir = parts / str(i)
        w_dir.mkdir(parents=True)
        np.save(w_dir / "a0.npy", ref[lo:hi])
        np.save(w_dir / "ids.npy", np.asarray(split.ids[lo:hi]))
        (w_dir / "index.json").write_text(json.dumps({**key, "rows": [lo, hi], "arrays": 1}))
    got = st2.embeddings(bb, split)
    assert np.array_equal(got, ref) and st2.stats.images_forwarded == 0 and st2.stats.hits == 1  # no forward pass
    assert not (parts.parent).exists()


DDP_SCRIPT = r"""
import sys
from pathlib import Path
import numpy as np
import torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from test_scale import Tiny, _synth
from dermbench import distributed as ddp
from dermbench.features import FeatureStore, extract
dist.init_process_group("gloo")
from dermbench import plugins
bb = Tiny()
ds = plugins.registry().dataset("dermsynth").obj(None, n=24, size=32)
st = FeatureStore(Path(sys.argv[1]), batch_size=4)
with st.collective():  # both ranks: batches shared, gathered, rank 0 writes
    x = np.array(st.embeddings(bb, ds.split("train")))
ref = extract(bb, ds.split("train"), lambda t: [bb.embed(t)], batch_size=4, distributed=False)[0]
assert np.array_equal(x, ref)
if ddp.rank() == 0:  # rank 0 alone afterwards (as when it runs the tasks): a hit, then a miss, no collective
    assert np.array_equal(st.embeddings(bb, ds.split("train")), ref)
    y = st.embeddings(bb, ds.split("test"))
    print(f"rank0 misses={st.stats.misses} hits={st.stats.hits} test_rows={len(y)}", flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow  # torchrun with 2 ranks
def test_torchrun_ranks_extract_together_then_rank0_works_alone_without_hanging(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    r = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                        str(script), str(tmp_path / "cache"), str(Path(__file__).parent)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank0 misses=2 hits=1 test_rows=12" in r.stdout, r.stdout


def test_segmentation_heads_stream_memory_mapped_patch_maps_batch_by_batch(tmp_path):
    """Patch maps come from the store read-only and memory-mapped; training and prediction take one batch of
    rows at a time and give the same head and masks as with the maps in memory."""
    import torch

    from dermbench_plugins.tasks.segmentation import predict_masks, train_head
    from dermbench_plugins.tasks.segmentation.heads import build_head

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(10, 8, 4, 4)).astype(np.float16)
    masks = rng.random((10, 16, 16)) > 0.5
    key = {**_key(), "kind": "patch", "layers": [-1], "dtype": "float16"}
    st = FeatureStore(tmp_path)
    st.put(key, [f"i{j}" for j in range(10)], [maps])
    mm = st.read(key, [f"i{j}" for j in range(10)])
    assert isinstance(mm[0].base, np.memmap) and not mm[0].flags.writeable
    out = []
    for m in ([maps], mm):
        torch.manual_seed(0)
        head = build_head("linear", [8], [(4, 4)])
        losses = train_head(head, m, masks, epochs=2, lr=1e-2, batch_size=4, weight_decay=0.0, seed=0)
        out.append((losses, predict_masks(head, m, 16, batch_size=3)))
    assert out[0][0] == out[1][0] and np.array_equal(out[0][1], out[1][1])


def test_patch_maps_and_embeddings_share_one_pass_with_the_bits_of_separate_passes(tmp_path):
    """Segmentation runs first (runner order), so its pass also fills the pooled-feature entry: one decode and,
    for timm ViTs, one forward per split; the cached numbers are those of separate embed/patch_tokens calls."""
    import torch

    from dermbench import plugins
    from dermbench.runner import plan

    split = plugins.registry().dataset("dermsynth").obj(None, n=12).split("train")
    vit = plugins.registry().model("random-vit").obj(None)
    x = torch.stack([vit.transform(s.load_image()) for s in split.samples[:3]])
    emb, maps = vit.embed_and_patch_tokens(x, [-1, 2])
    assert torch.equal(emb, vit.embed(x)) and all(torch.equal(a, b) for a, b in zip(maps, vit.patch_tokens(x, [-1, 2])))

    for bb in (vit, Tiny()):  # Tiny has no embed_and_patch_tokens: both calls on each decoded batch
        joint, apart = FeatureStore(tmp_path / f"{bb.info.name}-joint", batch_size=4), \
            FeatureStore(tmp_path / f"{bb.info.name}-apart", batch_size=4)
        maps = joint.patch_tokens(bb, split, [-1, 2])
        assert joint.stats.images_forwarded == len(split) and joint.stats.misses == 2
        e = joint.embeddings(bb, split)
        assert joint.stats.hits == 1 and joint.stats.images_forwarded == len(split)  # no second pass
        e2 = apart.embeddings(bb, split)
        maps2 = apart.patch_tokens(bb, split, [-1, 2])  # embeddings exist: the maps alone
        assert apart.stats.images_forwarded == 2 * len(split)
        assert e.dtype == np.float32 and np.array_equal(e, e2)
        assert all(a.dtype == np.float16 and np.array_equal(a, b) for a, b in zip(maps, maps2))

    sharded = FeatureStore(tmp_path / "sharded", batch_size=4)  # --extract-only array job, then the task step
    assert [sharded.extract_shard(vit, split, (i, 3)) for i in (1, 2, 3)] == ["part", "part", "merged"]
    forwarded = sharded.stats.images_forwarded
    sharded.patch_tokens(vit, split, [-1, 2])
    assert sharded.stats.images_forwarded - forwarded == len(split)  # the maps alone: the shards' embeddings kept
    assert np.array_equal(sharded.embeddings(vit, split), FeatureStore(tmp_path / f"{vit.info.name}-apart",
                                                                        batch_size=4).embeddings(vit, split))

    cells = plan(["random-vit"], ["probe", "segmentation", "retrieval"], ["dermsynth"]).cells
    assert [c.task for c in cells] == ["segmentation", "probe", "retrieval"]


def test_extract_only_shards_the_patch_maps_segmentation_reads(tmp_path):
    """Slurm recipe with segmentation: two array tasks shard the patch maps (the layers the task declares through
    Segmentation.patch_layers); the task step then trains on them without a forward pass."""
    from dataclasses import replace

    from dermbench import runner
    from dermbench.results import read_record

    opts = runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "c", dataset_opts={"n": 12}, n_boot=50,
                             task_params={"segmentation": {"epochs": 2}})
    for i in (1, 2):
        runner.run(["random-vit"], ["segmentation"], ["dermsynth"], replace(opts, extract_only=True, shard=(i, 2)),
                   quiet=True)
    assert not list((tmp_path / "r").rglob("seed*.json"))  # extraction only
    kinds = sorted((e["kind"], tuple(e["layers"])) for e in FeatureStore(tmp_path / "c").entries())
    assert kinds == [("patch", (11,)), ("patch", (11,))]  # the last of 12 blocks; train and test, merged parts
    s = runner.run(["random-vit"], ["segmentation"], ["dermsynth"], opts, quiet=True)
    (cell, path) = s.done[0]
    rec = read_record(path)
    assert rec.provenance["feature_cache"]["images_forwarded"] == 0 and rec.metrics["dice"]["value"] > 0
