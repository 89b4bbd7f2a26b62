"""Content-addressed feature store: each (model, weights, transform, split, layers) goes through the backbone once.

Key = sha256(model name, weights id, transform key, split hash, kind, layers). An entry is a directory
``features/<h[:2]>/<h>/`` holding one ``.npy`` per array (``a0.npy``, ...), ``ids.npy`` and a small
``index.json``. Batches are streamed into the ``.npy`` files of a temporary directory that is renamed into
place, so concurrent or killed runs never see torn entries and a 10k-image set of patch maps never has to fit
in memory. Reads are memory-mapped (``np.load(mmap_mode='r')``): tasks index features without copying them and
concurrent tasks share the page cache. Entries of the first format (one ``.npz`` + ``.json`` sidecar) are still
read. A per-key lock file (``fcntl.flock``) makes concurrent runs that need the same features wait for the
first one's forward pass instead of repeating it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from dermbench.api import Backbone, DermbenchError, Split, stable_hash
from dermbench.results import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

FORMAT = 2  # 1 = single .npz per entry (still readable), 2 = directory of .npy files + index.json


def default_cache_dir() -> Path:
    """``dermbench.weights.cache_dir()``: DERMBENCH_CACHE (DERMBENCH_HOME a deprecated alias), else ~/.cache."""
    from dermbench.weights import cache_dir

    return cache_dir()


def default_workers(device: str) -> int:
    """DataLoader worker processes for decoding: 0 (threads, unchanged) on CPU, the free cores on an accelerator."""
    if not str(device).startswith("cuda"):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(32, cores - 1))


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the ordered image ids: an entry is only ever read for exactly the images it was made from."""
    import hashlib

    return hashlib.sha256("\0".join(ids).encode()).hexdigest()


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    images_forwarded: int = 0
    extract_seconds: float = 0.0
    lock_waits: int = 0  # times this process waited for another one extracting the same entry


class FeatureStore:
    """The cache. ``workers``/``amp``/``channels_last`` tune extraction on accelerators (see ``extract``)."""

    def __init__(self, root: Path | None = None, batch_size: int = 32, num_threads: int = 2,
                 workers: int | None = None, amp: str | None = None, channels_last: bool = False,
                 log: Callable[[str], None] | None = None):
        if amp not in (None, "bf16", "fp16"):
            raise DermbenchError(f"amp={amp!r} is not supported: use bf16, fp16 or nothing (full precision)")
        self.root = Path(root) if root else default_cache_dir()
        self.dir = self.root / "features"
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.workers = workers
        self.amp = amp
        self.channels_last = bool(channels_last)
        self.log = log
        self.stats = StoreStats()
        self._collective = False

    @contextlib.contextmanager
    def collective(self) -> Iterator[None]:
        """Under torchrun, misses inside this block are extracted by all ranks together (every rank must make the
        same calls in the same order); outside it each process works alone, so rank 0 running the tasks after
        the joint pre-extraction never waits on a collective the other ranks will not join."""
        from dermbench import distributed as ddp

        old, self._collective = self._collective, ddp.is_active()
        try:
            yield
        finally:
            self._collective = old

    # ---------------------------------------------------------------- keys and paths
    def key(self, backbone: Backbone, split: Split, kind: str, layers: Sequence[int] = (),
            dtype: str = "float32") -> dict:
        k = {
            "model": backbone.info.name,
            "weights_id": backbone.weights_id,
            "transform": backbone.info.preprocess.key(),
            "dataset": split.dataset.name,
            "split": split.name,
            "split_hash": split.hash,
            "kind": kind,
            "layers": list(layers),
            "dtype": dtype,
        }
        # only options that change the numbers enter the key; defaults keep existing entries valid
        if self.amp:
            k["amp"] = self.amp
        if self.channels_last:
            k["channels_last"] = True
        from dermbench.results import plugin_provenance  # 16.6: upgrading a plugin never reuses its stale features

        k["plugins"] = {"model": plugin_provenance("model", backbone.info.name),
                        "dataset": plugin_provenance("dataset", split.dataset.name)}
        return k

    def _entry_dir(self, key: dict) -> Path:
        h = stable_hash(key, n=32)
        return self.dir / h[:2] / h

    def _legacy_path(self, key: dict) -> Path:
        h = stable_hash(key, n=32)
        return self.dir / h[:2] / f"{h}.npz"

    # ---------------------------------------------------------------- public API
    def embeddings(self, backbone: Backbone, split: Split, device: str = "cpu", progress: Any = None) -> "np.ndarray":
        """(n, D) float32 from ``backbone.embed``, in split order (read-only, memory-mapped when cached)."""
        key = self.key(backbone, split, "embed")
        arrays = self._get_or_compute(key, split, lambda x: [backbone.embed(x)], device, progress, backbone)
        return arrays[0]

    def patch_tokens(
        self, backbone: Backbone, split: Split, layers: Sequence[int], device: str = "cpu", progress: Any = None
    ) -> list["np.ndarray"]:
        """One (n, D, h, w) float16 map per layer, from ``backbone.patch_tokens``.

        The maps are memory-mapped: slice them per batch (``maps[l][lo:hi]``) rather than converting them whole.
        """
        key = self.key(backbone, split, "patch", layers, dtype="float16")
        if not self._collective:
            both = self._with_embeddings(backbone, split, key, list(layers), device, progress)
            if both is not None:
                return both
        return self._get_or_compute(
            key, split, lambda x: backbone.patch_tokens(x, list(layers)), device, progress, backbone, np_dtype="float16"
        )

    def _with_embeddings(self, backbone: Backbone, split: Split, key: dict, layers: list[int], device: str,
                         progress: Any) -> list["np.ndarray"] | None:
        """Patch maps and pooled embeddings from one pass when neither entry exists yet (one process).

        The runner puts patch-token tasks first, so a run with segmentation and probe/kNN decodes and forwards
        each split once (``Backbone.embed_and_patch_tokens``, or both calls on each decoded batch). None: the
        embedding entry exists or another process is writing it; the caller extracts the maps alone."""
        ids = split.ids
        ekey = self.key(backbone, split, "embed")
        if self.read(key, ids) is not None or self.read(ekey, ids) is not None:
            return None
        with self.lock(key), self.lock(ekey, blocking=False) as free:
            if free is None or self.read(key, ids) is not None or self.read(ekey, ids) is not None:
                return None
            if self._merge_parts(ekey, ids):  # an --extract-only array job stored the embeddings in shards
                return None
            joint = getattr(backbone, "embed_and_patch_tokens", None)

            def fn(x):
                emb, maps = joint(x, layers) if joint else (backbone.embed(x), backbone.patch_tokens(x, layers))
                return [emb, *maps]

            self.stats.misses += 2
            t0 = time.perf_counter()
            ew, pw = _EntryWriter(self._entry_dir(ekey), len(split)), _EntryWriter(self._entry_dir(key), len(split))
            try:
                extract(backbone, split, fn, sink=lambda lo, arrays: (ew.add(lo, arrays[:1]), pw.add(lo, arrays[1:])),
                        np_dtype=["float32"] + ["float16"] * len(layers), distributed=False, device=device,
                        batch_size=self.batch_size, num_threads=self.num_threads, progress=progress,
                        workers=self.workers, amp=self.amp, channels_last=self.channels_last)
                ew.commit(ekey, ids)
                pw.commit(key, ids)
            finally:
                ew.abort()
                pw.abort()
            self.stats.extract_seconds += time.perf_counter() - t0
            self.stats.images_forwarded += len(split)
        return self._read_written(key, ids)

    def _read_written(self, key: dict, ids: Sequence[str]) -> list["np.ndarray"]:
        got = self.read(key, ids)
        if got is None:
            raise DermbenchError(f"feature entry {self._entry_dir(key)} was written but cannot be read back: check "
                                 f"the disk under {self.root} (full? another process deleting it?)")
        return got

    def put(self, key: dict, ids: Sequence[str], arrays: Sequence["np.ndarray"]) -> Path:
        """Write an entry directly (synthetic features for scale tests, imports from other tools)."""
        d = self._entry_dir(key)
        w = _EntryWriter(d, len(ids))
        try:
            w.add(0, list(arrays))
            w.commit(key, ids)
        finally:
            w.abort()
        return d

    def read(self, key: dict, ids: Sequence[str]) -> list["np.ndarray"] | None:
        """The entry's arrays (memory-mapped, read-only) if it exists and holds exactly ``ids``; else None."""
        import numpy as np

        d = self._entry_dir(key)
        if (d / "index.json").exists():
            try:
                meta = json.loads((d / "index.json").read_text())
                if meta.get("n") != len(ids):
                    return None
                if "ids_sha256" in meta:  # hashing the ids is ~10x cheaper than loading and comparing them
                    if meta["ids_sha256"] != ids_digest(ids):
                        return None
                elif np.load(d / "ids.npy", allow_pickle=False).tolist() != list(ids):
                    return None
                return [np.load(d / f"a{i}.npy", mmap_mode="r", allow_pickle=False).view(np.ndarray)
                        for i in range(int(meta["arrays"]))]
            except Exception:  # a damaged entry is recomputed, never trusted
                return None
        legacy = self._legacy_path(key)
        if legacy.exists():
            try:
                with np.load(legacy, allow_pickle=False) as z:
                    if z["ids"].tolist() == list(ids):
                        return [z[f"a{i}"] for i in range(len(z.files) - 1)]
            except Exception:
                return None
        return None

    @contextlib.contextmanager
    def lock(self, key: dict, blocking: bool = True) -> Iterator[bool | None]:
        """Exclusive per-entry lock across processes; yields True when it had to wait for another holder, and
        None (not holding it) when ``blocking=False`` and another process holds it.

        ``flock`` locks vanish with their process, so a killed extraction never leaves a stale lock.
        """
        d = self._entry_dir(key)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process exclusion
            yield False
            return
        fd: int | None = os.open(d.parent / f"{d.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                waited = False
            except BlockingIOError:
                waited = True
            if waited and not blocking:
                os.close(fd)
                fd = None
                yield None
                return
            if waited:
                self.stats.lock_waits += 1
                if self.log:
                    self.log(f"  waiting for another process extracting {key['model']} / "
                             f"{key['dataset']}:{key['split']} ({key['kind']})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield waited
        finally:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)

    def _get_or_compute(self, key, split, fn, device, progress, backbone, np_dtype="float32") -> list["np.ndarray"]:
        from dermbench import distributed as ddp

        ids = split.ids
        if not self._collective:
            got = self.read(key, ids)
            if got is not None:
                self.stats.hits += 1
                return got
            with self.lock(key):
                got = self.read(key, ids)  # the process we waited for may have written it
                if got is None and self._merge_parts(key, ids):  # shards of an --extract-only array job
                    got = self.read(key, ids)
                if got is not None:
                    self.stats.hits += 1
                    return got
                return self._compute(key, split, ids, fn, device, progress, backbone, np_dtype)
        # torchrun: rank 0 decides hit/miss under the lock and tells the others, so all ranks extract together
        with (self.lock(key) if ddp.rank() == 0 else contextlib.nullcontext()):
            hit = ddp.broadcast(self.read(key, ids) is not None if ddp.rank() == 0 else None)
            if hit:
                got = self.read(key, ids)
                if got is None:
                    raise DermbenchError(f"feature entry {self._entry_dir(key)} is not readable from rank "
                                         f"{ddp.rank()}: torchrun ranks need one shared --cache-dir")
                self.stats.hits += 1
                return got
            return self._compute(key, split, ids, fn, device, progress, backbone, np_dtype)

    def _compute(self, key, split, ids, fn, device, progress, backbone, np_dtype) -> list["np.ndarray"]:
        from dermbench import distributed as ddp

        self.stats.misses += 1
        t0 = time.perf_counter()
        opts = dict(device=device, batch_size=self.batch_size, num_threads=self.num_threads, progress=progress,
                    np_dtype=np_dtype, workers=self.workers, amp=self.amp, channels_last=self.channels_last)
        d = self._entry_dir(key)
        if self._collective:  # batches are gathered in memory on every rank; rank 0 writes the entry
            arrays = extract(backbone, split, fn, distributed=True, **opts)
            if ddp.rank() == 0:
                w = _EntryWriter(d, len(split))
                try:
                    w.add(0, arrays)
                    w.commit(key, ids)
                finally:
                    w.abort()
            ddp.barrier()
        else:  # one process: batches stream to disk, memory holds a batch, not the split
            w = _EntryWriter(d, len(split))
            try:
                extract(backbone, split, fn, sink=w.add, distributed=False, **opts)
                w.commit(key, ids)
            finally:
                w.abort()
            arrays = None
        self.stats.extract_seconds += time.perf_counter() - t0
        self.stats.images_forwarded += len(split)
        if arrays is None or ddp.rank() == 0:
            return self._read_written(key, ids)
        return arrays

    # ---------------------------------------------------------------- sharded extraction (Slurm arrays)
    @staticmethod
    def shard_rows(n: int, batch_size: int, shard: tuple[int, int]) -> tuple[int, int]:
        """Rows [lo, hi) of shard i of N (1-based): a contiguous run of whole batches, so bits match one process."""
        i, N = shard
        nb = -(-n // batch_size)
        return min(n, (i - 1) * nb // N * batch_size), min(n, i * nb // N * batch_size)

    def _parts_dir(self, key: dict, N: int) -> Path:
        d = self._entry_dir(key)
        return d.with_name(f"{d.name}.parts") / f"of{N}"

    def extract_shard(self, backbone: Backbone, split: Split, shard: tuple[int, int], device: str = "cpu",
                      progress: Any = None, layers: Sequence[int] | None = None) -> str:
        """Embed shard i of N of the split's rows into a part of the entry; the last part to finish merges.

        For array jobs over one huge split: every task writes its rows to ``<entry>.parts/ofN/i``; whoever
        finds all N parts present assembles the entry (streamed, under the entry lock) and removes the parts,
        and a later run that finds complete parts merges them itself. Returns 'hit', 'part' or 'merged'.
        With ``layers``: the patch maps of those layers (the entry ``patch_tokens`` reads) instead.
        """
        if layers:
            key, np_dtype = self.key(backbone, split, "patch", layers, dtype="float16"), "float16"
            fn = lambda x: backbone.patch_tokens(x, list(layers))  # noqa: E731
        else:
            key, np_dtype = self.key(backbone, split, "embed"), "float32"
            fn = lambda x: [backbone.embed(x)]  # noqa: E731
        ids = split.ids
        i, N = shard
        if not 1 <= i <= N:
            raise DermbenchError(f"shard {i}/{N}: need 1 <= i <= N")
        if self.read(key, ids) is not None:
            self.stats.hits += 1
            return "hit"
        lo, hi = self.shard_rows(len(ids), self.batch_size, shard)
        part = self._parts_dir(key, N) / str(i)
        with self.lock({**key, "part": f"{i}/{N}"}):
            if hi > lo and not (part / "index.json").exists():
                self.stats.misses += 1
                t0 = time.perf_counter()
                w = _EntryWriter(part, hi - lo)
                try:
                    extract(backbone, split, fn, device=device, np_dtype=np_dtype,
                            batch_size=self.batch_size, num_threads=self.num_threads, progress=progress,
                            sink=lambda b, arrs: w.add(b, arrs), workers=self.workers, amp=self.amp,
                            channels_last=self.channels_last, rows=(lo, hi), distributed=False)
                    w.commit({**key, "rows": [lo, hi], "shard": [i, N]}, ids[lo:hi])
                finally:
                    w.abort()
                self.stats.extract_seconds += time.perf_counter() - t0
                self.stats.images_forwarded += hi - lo
            elif hi <= lo:  # more shards than batches: an empty part still counts as done
                part.mkdir(parents=True, exist_ok=True)
                atomic_write_text(part / "index.json", json.dumps({**key, "rows": [lo, hi], "shard": [i, N]}))
        with self.lock(key):
            return "merged" if self._merge_parts(key, ids, N) else "part"

    def _merge_parts(self, key: dict, ids: Sequence[str], N: int | None = None) -> bool:
        """Assemble the entry from a complete set of parts (call under the entry lock); False if incomplete."""
        import numpy as np

        root = self._entry_dir(key).with_name(self._entry_dir(key).name + ".parts")
        if not root.exists():
            return False
        if self.read(key, ids) is not None:
            return True
        for pd in sorted(root.glob("of*")) if N is None else [root / f"of{N}"]:
            n_parts = int(pd.name[2:])
            metas = []
            for i in range(1, n_parts + 1):
                try:
                    metas.append(json.loads((pd / str(i) / "index.json").read_text()))
                except (OSError, json.JSONDecodeError):
                    break
            if len(metas) != n_parts:
                continue
            rows = [m["rows"] for m in metas]
            if rows[0][0] != 0 or rows[-1][1] != len(ids) or any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
                continue  # parts from another split size or batch size: not ours
            w = _EntryWriter(self._entry_dir(key), len(ids))
            try:
                for i, (lo, hi) in enumerate(rows, 1):
                    if hi <= lo:
                        continue
                    part = pd / str(i)
                    if np.load(part / "ids.npy", allow_pickle=False).tolist() != list(ids[lo:hi]):
                        raise DermbenchError(f"feature part {part} holds other images than rows {lo}:{hi} of "
                                             f"{key['dataset']}:{key['split']}; delete {root} and rerun")
                    arrs = [np.load(part / f"a{j}.npy", mmap_mode="r") for j in range(int(metas[i - 1]["arrays"]))]
                    for b in range(0, hi - lo, 4096):  # stream: a few MB at a time, never the whole split
                        w.add(lo + b, [np.asarray(a[b : b + 4096]) for a in arrs])
                w.commit(key, ids)
            finally:
                w.abort()
            shutil.rmtree(root, ignore_errors=True)
            return True
        return False

    # ---------------------------------------------------------------- cache management
    def entries(self) -> list[dict]:
        out = []
        for meta in sorted(self.dir.rglob("*.json")) if self.dir.exists() else []:
            try:
                d = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            d["path"] = str(meta.parent if meta.name == "index.json" else meta.with_suffix(".npz"))
            out.append(d)
        return out

    def clear(self, model: str | None = None, dataset: str | None = None) -> int:
        """Delete entries (all, or those matching model/dataset); returns how many were removed."""
        if model is None and dataset is None:
            n = len(self.entries())
            shutil.rmtree(self.dir, ignore_errors=True)
            return n
        n = 0
        for e in self.entries():
            if (model is None or e.get("model") == model) and (dataset is None or e.get("dataset") == dataset):
                p = Path(e["path"])
                if p.is_dir():
                    # rename first: a reader never sees a half-deleted entry, only a missing one
                    gone = p.with_name(f".{p.name}.{os.getpid()}.del")
                    os.rename(p, gone)
                    shutil.rmtree(gone, ignore_errors=True)
                else:
                    for q in (p, p.with_suffix(".json")):
                        q.unlink(missing_ok=True)
                n += 1
        return n


class _EntryWriter:
    """Streams batches into ``.npy`` files of a hidden temp directory; ``commit`` renames it into place."""

    def __init__(self, final: Path, n: int):
        self.final, self.n = final, n
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.arrays: list[Any] | None = None
        self.filled = 0

    def add(self, lo: int, batch: list["np.ndarray"]) -> None:
        import numpy as np

        if self.arrays is None:
            self.arrays = [np.lib.format.open_memmap(self.tmp / f"a{j}.npy", mode="w+", dtype=b.dtype,
                                                     shape=(self.n, *b.shape[1:])) for j, b in enumerate(batch)]
        for mm, b in zip(self.arrays, batch):
            mm[lo : lo + len(b)] = b
        self.filled += len(batch[0])

    def commit(self, key: dict, ids: Sequence[str]) -> None:
        import numpy as np

        if self.arrays is None or self.filled != self.n:
            raise DermbenchError(f"feature entry for {key.get('model')} / {key.get('dataset')}:{key.get('split')} "
                                 f"got {self.filled} of {self.n} rows; nothing was stored")
        shapes = []
        for mm in self.arrays:
            mm.flush()
            shapes.append(list(mm.shape))
        self.arrays = None  # close the maps before the rename
        np.save(self.tmp / "ids.npy", np.asarray(list(ids), dtype=str), allow_pickle=False)
        nbytes = sum(p.stat().st_size for p in self.tmp.iterdir())
        meta = {**key, "format": FORMAT, "n": self.n, "ids_sha256": ids_digest(ids), "arrays": len(shapes),
                "shapes": shapes,
                "created": time.time(), "bytes": nbytes}
        atomic_write_text(self.tmp / "index.json", json.dumps(meta, indent=1))
        if self.final.exists():  # a damaged entry (we only write after a failed read): move it out of the way
            gone = self.final.with_name(f".{self.final.name}.{os.getpid()}.del")
            os.rename(self.final, gone)
            shutil.rmtree(gone, ignore_errors=True)
        try:
            os.rename(self.tmp, self.final)
        except OSError:  # another writer got there first (same key = same content); keep theirs
            if not (self.final / "index.json").exists():
                raise

    def abort(self) -> None:
        self.arrays = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def extract(
    backbone: Backbone,
    split: Split,
    fn: Callable[[Any], list[Any]],
    *,
    device: str = "cpu",
    batch_size: int = 32,
    num_threads: int = 2,
    progress: Any = None,
    np_dtype: str | Sequence[str] = "float32",
    sink: Callable[[int, list["np.ndarray"]], None] | None = None,
    workers: int | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    rows: tuple[int, int] | None = None,
    distributed: bool | None = None,
) -> list["np.ndarray"] | None:
    """Run ``fn`` over the split in batches; image decoding/preprocessing overlaps the forward pass.

    Under torch.distributed, batch b is computed by rank b mod world and the batches are gathered on every
    rank: the same batch compositions as a single process, hence bit-identical features.

    With ``sink`` (one process only) each batch goes to ``sink(start, arrays)`` and nothing is kept; otherwise
    the concatenated arrays are returned. ``workers`` > 0 decodes in DataLoader worker processes (default: 0 on
    CPU, i.e. threads, the free cores on CUDA) with pinned memory and non-blocking copies; ``amp`` ('bf16' or
    'fp16') runs the forward under autocast and ``channels_last`` converts the batch layout. The batches are
    the same whatever the loader, so the defaults give the same bits as before. ``rows=(lo, hi)`` extracts
    only those rows (``lo`` a multiple of ``batch_size``: the batches of a whole-split run, hence its bits).
    ``distributed`` (default: whether torch.distributed is initialised) shares the batches among the ranks.
    """
    import numpy as np
    import torch

    from dermbench import distributed as ddp

    samples = split.samples
    if rows is not None:
        if rows[0] % batch_size:
            raise DermbenchError(f"rows start {rows[0]} is not a multiple of batch_size {batch_size}")
        samples = samples[rows[0] : rows[1]]
    tf = backbone.transform

    def load_batch(lo: int):
        return torch.stack([tf(s.load_image()) for s in samples[lo : lo + batch_size]])

    starts = list(range(0, len(samples), batch_size))
    if not starts:
        raise DermbenchError(f"split {split.name!r} of {split.dataset.name!r} is empty: nothing to extract")
    dist = ddp.is_active() if distributed is None else (distributed and ddp.is_active())
    if sink is not None and dist:
        raise DermbenchError("extract(sink=...) is single-process; under torchrun batches are gathered")
    rank, world = (ddp.rank(), ddp.world()) if dist else (0, 1)
    mine = starts[rank::world]
    cuda = str(device).startswith("cuda")
    workers = default_workers(device) if workers is None else int(workers)
    autocast = (torch.autocast(device_type=str(device).split(":")[0],
                               dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if amp else contextlib.nullcontext())
    results: dict[int, list[np.ndarray]] = {}

    def consume(lo: int, x) -> None:
        x = x.to(device, non_blocking=cuda)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast:
            res = fn(x)
        dtypes = np_dtype if isinstance(np_dtype, (list, tuple)) else [np_dtype] * len(res)
        out = [r.detach().float().cpu().numpy().astype(dt) for r, dt in zip(res, dtypes, strict=True)]
        if sink is not None:
            sink(lo, out)
        else:
            results[lo] = out
        if progress is not None:
            progress(len(out[0]) * world)

    if workers > 0:
        loader = torch.utils.data.DataLoader(
            _Batches(load_batch, mine), batch_size=None, num_workers=min(workers, len(mine)), pin_memory=cuda,
            prefetch_factor=4, persistent_workers=False)
        for lo, x in zip(mine, loader):
            consume(lo, x)
    else:
        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            futures = {lo: None for lo in mine}
            if mine:
                futures[mine[0]] = pool.submit(load_batch, mine[0])
            for i, lo in enumerate(mine):
                if i + 1 < len(mine):
                    futures[mine[i + 1]] = pool.submit(load_batch, mine[i + 1])
                x = futures[lo].result()
                futures[lo] = None  # free memory
                consume(lo, x)
    if sink is not None:
        return None
    if dist:
        for part in ddp.all_gather(results):
            results.update(part)
    n_out = len(results[starts[0]])
    return [np.concatenate([results[lo][j] for lo in starts], axis=0) for j in range(n_out)]


class _Batches:
    """Map-style dataset of whole batches (item i = batch starting at starts[i]) for DataLoader workers."""

    def __init__(self, load_batch: Callable[[int], Any], starts: list[int]):
        self.load_batch, self.starts = load_batch, starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        return self.load_batch(self.starts[i])
