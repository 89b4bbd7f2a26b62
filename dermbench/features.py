"""Content-addressed feature store: each (model, weights, transform, split, layers) goes through the backbone once.

Key = sha256(model name, weights id, transform key, split hash, kind, layers). Entries are ``.npz`` files with a
JSON sidecar, written atomically, so concurrent or killed runs never see torn files. Every task that works on
frozen features (retrieval, probe, fairness, federated, captioning, segmentation's patch maps) reads from here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from dermbench.api import Backbone, DermbenchError, Split, stable_hash
from dermbench.results import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def default_cache_dir() -> Path:
    env = os.environ.get("DERMBENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dermbench"


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    images_forwarded: int = 0
    extract_seconds: float = 0.0


class FeatureStore:
    def __init__(self, root: Path | None = None, batch_size: int = 32, num_threads: int = 2):
        self.root = Path(root) if root else default_cache_dir()
        self.dir = self.root / "features"
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.stats = StoreStats()

    # ---------------------------------------------------------------- keys and paths
    @staticmethod
    def key(backbone: Backbone, split: Split, kind: str, layers: Sequence[int] = (), dtype: str = "float32") -> dict:
        return {
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

    def _path(self, key: dict) -> Path:
        h = stable_hash(key, n=32)
        return self.dir / h[:2] / f"{h}.npz"

    # ---------------------------------------------------------------- public API
    def embeddings(self, backbone: Backbone, split: Split, device: str = "cpu", progress: Any = None) -> "np.ndarray":
        """(n, D) float32 from ``backbone.embed``, in split order."""
        key = self.key(backbone, split, "embed")
        arrays = self._get_or_compute(key, split, lambda x: [backbone.embed(x)], device, progress, backbone)
        return arrays[0]

    def patch_tokens(
        self, backbone: Backbone, split: Split, layers: Sequence[int], device: str = "cpu", progress: Any = None
    ) -> list["np.ndarray"]:
        """One (n, D, h, w) float16 map per layer, from ``backbone.patch_tokens``."""
        key = self.key(backbone, split, "patch", layers, dtype="float16")
        return self._get_or_compute(
            key, split, lambda x: backbone.patch_tokens(x, list(layers)), device, progress, backbone, np_dtype="float16"
        )

    def _get_or_compute(self, key, split, fn, device, progress, backbone, np_dtype="float32") -> list["np.ndarray"]:
        import numpy as np

        path = self._path(key)
        if path.exists():
            try:
                with np.load(path) as z:
                    ids = z["ids"].tolist()
                    if ids == split.ids:
                        self.stats.hits += 1
                        return [z[f"a{i}"] for i in range(len(z.files) - 1)]
            except Exception:  # a damaged entry is recomputed, never trusted
                pass
        self.stats.misses += 1
        t0 = time.perf_counter()
        arrays = extract(backbone, split, fn, device=device, batch_size=self.batch_size,
                         num_threads=self.num_threads, progress=progress, np_dtype=np_dtype)
        self.stats.extract_seconds += time.perf_counter() - t0
        self.stats.images_forwarded += len(split)
        from dermbench import distributed as ddp

        if ddp.rank() == 0:  # one writer; the others already hold the gathered arrays
            self._write(path, key, split, arrays)
        return arrays

    def _write(self, path: Path, key: dict, split: Split, arrays: list["np.ndarray"]) -> None:
        import numpy as np

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(split.ids), **{f"a{i}": a for i, a in enumerate(arrays)})
        os.replace(tmp, path)
        meta = {**key, "n": len(split), "shapes": [list(a.shape) for a in arrays], "created": time.time(),
                "bytes": path.stat().st_size}
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))

    # ---------------------------------------------------------------- cache management
    def entries(self) -> list[dict]:
        out = []
        for meta in sorted(self.dir.rglob("*.json")) if self.dir.exists() else []:
            try:
                d = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            d["path"] = str(meta.with_suffix(".npz"))
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
                for p in (Path(e["path"]), Path(e["path"]).with_suffix(".json")):
                    p.unlink(missing_ok=True)
                n += 1
        return n


def extract(
    backbone: Backbone,
    split: Split,
    fn: Callable[[Any], list[Any]],
    *,
    device: str = "cpu",
    batch_size: int = 32,
    num_threads: int = 2,
    progress: Any = None,
    np_dtype: str = "float32",
) -> list["np.ndarray"]:
    """Run ``fn`` over the split in batches; image decoding/preprocessing overlaps the forward pass.

    Under torch.distributed, batch b is computed by rank b mod world and the batches are gathered on every
    rank: the same batch compositions as a single process, hence bit-identical features.
    """
    import numpy as np
    import torch

    from dermbench import distributed as ddp

    samples = split.samples
    tf = backbone.transform

    def load_batch(lo: int):
        return torch.stack([tf(s.load_image()) for s in samples[lo : lo + batch_size]])

    starts = list(range(0, len(samples), batch_size))
    if not starts:
        raise DermbenchError(f"split {split.name!r} of {split.dataset.name!r} is empty: nothing to extract")
    mine = starts[ddp.rank() :: ddp.world()]
    results: dict[int, list[np.ndarray]] = {}
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        futures = {lo: None for lo in mine}
        if mine:
            futures[mine[0]] = pool.submit(load_batch, mine[0])
        for i, lo in enumerate(mine):
            if i + 1 < len(mine):
                futures[mine[i + 1]] = pool.submit(load_batch, mine[i + 1])
            x = futures[lo].result().to(device)
            futures[lo] = None  # free memory
            with torch.inference_mode():
                res = fn(x)
            results[lo] = [r.detach().float().cpu().numpy().astype(np_dtype) for r in res]
            if progress is not None:
                progress(len(results[lo][0]) * ddp.world())
    if ddp.is_active():
        for part in ddp.all_gather(results):
            results.update(part)
    n_out = len(results[starts[0]])
    return [np.concatenate([results[lo][j] for lo in starts], axis=0) for j in range(n_out)]
