"""Feature-store throughput vs the bare backbone forward, in one process (issue: data loading must not bottleneck).

1. images/s of `FeatureStore.embeddings` (decode + preprocess + forward + cache write) on dermsynth vs images/s of
   `backbone.embed` on pre-made tensors of the same batch size; prints `store/bare: <R>` (target >= 0.90).
2. scaling from 1 to 2 ranks on CPU (torchrun/gloo) over the same split, as a ratio of wall times.
3. on a GPU: images/s of ViT-B/16 at 224 in bf16 (skipped without one).
Usage: python benchmarks/extract_throughput.py [--model random-vit] [--n 256] [--batch 32] [--no-ranks]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bare_forward(bb, n: int, batch: int, device: str) -> float:
    import torch

    x = torch.randn(batch, 3, bb.info.image_size, bb.info.image_size, device=device)
    bb.embed(x)  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        bb.embed(x)
        done += batch
    return done / (time.perf_counter() - t0)


def store_throughput(bb, split, batch: int, device: str) -> float:
    from dermbench.features import FeatureStore

    with tempfile.TemporaryDirectory() as d:
        store = FeatureStore(Path(d), batch_size=batch)
        t0 = time.perf_counter()
        store.embeddings(bb, split, device=device)
        return len(split) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random-vit")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ranks", action="store_true")
    ap.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    a = ap.parse_args()

    from dermbench import plugins

    reg = plugins.registry()
    bb = reg.model(a.model).obj(device=a.device).to(a.device)
    ds = reg.dataset("dermsynth").obj(None, n=a.n, size=224)
    split = ds.split("train")
    bares, stores = [], []
    for _ in range(a.repeats):
        bares.append(bare_forward(bb, len(split), a.batch, a.device))
        stores.append(store_throughput(bb, split, a.batch, a.device))
    b, s = statistics.median(bares), statistics.median(stores)
    print(f"{a.model} on {a.device}, {len(split)} images, batch {a.batch}, median of {a.repeats}")
    print(f"bare backbone.embed: {b:.1f} img/s; feature store (decode+preprocess+forward+write): {s:.1f} img/s")
    print(f"store/bare: {s / b:.2f} (target >= 0.90)")

    if not a.no_ranks and a.device == "cpu":
        with tempfile.TemporaryDirectory() as d:
            times = {}
            for nproc in (1, 2):
                env = {**os.environ, "DERMBENCH_CACHE": str(Path(d) / f"c{nproc}"), "OMP_NUM_THREADS": str(2 // nproc)}
                cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", str(nproc),
                       "-m", "dermbench", "run", "--model", a.model, "--task", "retrieval", "--dataset", "dermsynth",
                       "--dataset-opt", f"n={a.n}", "--out", str(Path(d) / f"o{nproc}"), "--quiet", "--n-boot", "10"]
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                times[nproc] = time.perf_counter() - t0
            print(f"torchrun wall time incl. start-up: 1 rank {times[1]:.1f}s, 2 ranks {times[2]:.1f}s; "
                  f"scaling 1->2 ranks: {times[1] / times[2]:.2f}x (2 cores: ranks share them)")

    if _has_cuda():
        import torch

        from dermbench.backbones import TimmBackbone, create_timm
        from dermbench.api import ModelInfo, Preprocess

        m = create_timm("vit_base_patch16_224", seed=0).cuda().eval()
        info = ModelInfo(name="vit-b16-bench", family="vit", source="timm", embed_dim=768, preprocess=Preprocess())
        vb = TimmBackbone(info, m, "random:0")
        vb.device = "cuda"
        x = torch.randn(256, 3, 224, 224, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                vb.embed(x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                vb.embed(x)
            torch.cuda.synchronize()
        print(f"GPU {torch.cuda.get_device_name()}: ViT-B/16 224 bf16 embed: {20 * 256 / (time.perf_counter() - t0):.0f} img/s")
    else:
        print("no GPU: bf16 ViT-B/16 throughput skipped")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
