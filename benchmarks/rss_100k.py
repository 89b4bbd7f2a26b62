"""Peak memory of a 100k-image retrieval + probe run on cached features (issue 21: must stay under 4 GB).

The features are synthetic (class-structured Gaussians, 1024-d float32 like a ViT-L) and written straight into
the feature-store format with ``FeatureStore.put`` under the key of ``random-vit`` on a registered 100k-sample
dataset, so no backbone runs over 100k images; the measured run is the real runner (``runner.run``): store
reads (memory-mapped), NaN checks, kNN, the linear probe, bootstrap CIs and record writing.

    python benchmarks/rss_100k.py prepare /tmp/rss100k           # ~1 min, writes ~410 MB of features
    /usr/bin/time -v python benchmarks/rss_100k.py run /tmp/rss100k   # read "Maximum resident set size"
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dermbench import hookimpl
from dermbench.api import DatasetInfo

N, D, C, TRAIN = 100_000, 1024, 7, 80_000
INFO = DatasetInfo(name="synth100k", description="100k ids + labels, features pre-written",
                   label_names=tuple(f"c{i}" for i in range(C)), needs_root=False)


class Synth100k:
    """A dataset plugin: N samples, ids and labels only (images are never loaded: features are cached)."""

    @hookimpl
    def register_datasets(self, register):
        register(INFO, load)


def _no_image():
    from dermbench.api import DermbenchError

    raise DermbenchError("synth100k has no images: run `benchmarks/rss_100k.py prepare` to write its features")


def load(root=None, **kw):
    import numpy as np

    from dermbench.api import Dataset, Sample

    y = np.random.default_rng(0).integers(0, C, N)
    samples = [Sample(id=f"s{i:06d}", image=_no_image, label=int(y[i])) for i in range(N)]
    return Dataset(info=INFO, samples=samples,
                   splits={"train": list(range(TRAIN)), "test": list(range(TRAIN, N))},
                   label_names=[f"c{i}" for i in range(C)], split_source="fixed 80/20",
                   content_fingerprint="rss100k-v1")


def _setup():
    from dermbench import plugins

    plugins.registry()  # first-party plugins first
    plugins.register_plugin(Synth100k(), name="synth100k")
    return plugins.registry()


def prepare(cache: Path) -> None:
    import numpy as np

    from dermbench.features import FeatureStore

    reg = _setup()
    ds = reg.dataset("synth100k").obj(None)
    bb = reg.model("random-vit").obj(device="cpu")
    st = FeatureStore(cache)
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(C, D)).astype(np.float32)
    for name in ("train", "test"):
        split = ds.split(name)
        y = split.labels
        x = centers[y] * 0.3 + rng.normal(size=(len(y), D)).astype(np.float32)
        t0 = time.perf_counter()
        d = st.put(st.key(bb, split, "embed"), split.ids, [x])
        print(f"{name}: {x.shape} float32 -> {d} in {time.perf_counter() - t0:.1f}s")


def run(cache: Path, out: Path) -> None:
    import resource

    from dermbench import runner

    _setup()
    t0 = time.perf_counter()
    s = runner.run(["random-vit"], ["retrieval", "probe"], ["synth100k"],
                   runner.RunOptions(out=out, cache_dir=cache, n_boot=200), quiet=True)
    assert s.ok and len(s.done) == 2, s.failed
    from dermbench.results import read_record

    for _, path in s.done:
        r = read_record(path)
        print(f"{r.task}: n_test={r.split['n']}, feature cache {r.provenance['feature_cache']}, "
              f"{r.extra.get('index', '')}")
    print(f"done {len(s.done)} cells in {time.perf_counter() - t0:.0f}s; records in {out}")
    print(f"peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    cmd, cache = sys.argv[1], Path(sys.argv[2])
    if cmd == "prepare":
        prepare(cache)
    elif cmd == "run":
        run(cache, Path(sys.argv[3]) if len(sys.argv) > 3 else cache / "results")
    else:
        sys.exit(__doc__)
