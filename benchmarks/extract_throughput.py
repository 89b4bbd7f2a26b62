"""Feature-store throughput vs the bare backbone forward, in one process (issue: data loading must not bottleneck).

1. images/s of `FeatureStore.embeddings` (decode + preprocess + forward + cache write) on dermsynth vs images/s of
   `backbone.embed` on pre-made tensors of the same batch size; prints `store/bare: <R>` (target >= 0.90).
2. scaling from 1 to 2 ranks on CPU (torchrun/gloo) over the same split, as a ratio of wall times.
3. on a GPU: images/s of ViT-B/16 and ViT-L/14 at 224, batch 256, bf16 autocast: the bare forward and the
   feature store (DataLoader decode workers on the free cores, pinned memory, non-blocking copies), with
   ``store/bare`` (skipped without a GPU).
Usage: python benchmarks/extract_throughput.py [--model random-vit] [--n 256] [--batch 32] [--no-ranks] [--gpu-n 4096]
On a GPU machine, the default --device is cuda, so part 1 also runs there (random-vit, batch --batch).
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
    ap.add_argument("--gpu-n", type=int, default=4096, help="images for the GPU store measurement")
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
        gpu_section(a.gpu_n)
    else:
        print("no GPU: bf16 ViT-B/16 and ViT-L/14 throughput skipped (run this script on a CUDA machine)")


def gpu_section(n: int) -> None:
    """images/s of the bare bf16 forward at batch 256 vs the feature store (DataLoader workers on the free cores,
    pinned memory, non-blocking copies, bf16 autocast) on n dermsynth images, for ViT-B/16 and ViT-L/14."""
    import torch

    from dermbench import plugins
    from dermbench.api import ModelInfo, Preprocess
    from dermbench.backbones import TimmBackbone, create_timm
    from dermbench.features import FeatureStore, default_workers

    ds = plugins.registry().dataset("dermsynth").obj(None, n=2 * n, size=224)
    split = ds.split("train")
    print(f"GPU {torch.cuda.get_device_name()}; store uses {default_workers('cuda')} decode workers, "
          f"{len(split)} dermsynth images (generated on the fly by the workers, like JPEG decoding)")
    for arch, label, dim in (("vit_base_patch16_224", "ViT-B/16", 768), ("vit_large_patch14_224", "ViT-L/14", 1024)):
        m = create_timm(arch, seed=0).cuda().eval()
        info = ModelInfo(name=f"bench-{arch}", family="vit", source="timm", embed_dim=dim, preprocess=Preprocess())
        bb = TimmBackbone(info, m, "random:0")
        bb.device = "cuda"
        x = torch.randn(256, 3, 224, 224, device="cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                bb.embed(x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            reps = 10
            for _ in range(reps):
                bb.embed(x)
            torch.cuda.synchronize()
        bare = reps * 256 / (time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as d:
            st = FeatureStore(Path(d), batch_size=256, amp="bf16")
            t0 = time.perf_counter()
            st.embeddings(bb, split, device="cuda")
            store = len(split) / (time.perf_counter() - t0)
        print(f"{label} 224 bf16 batch 256: bare {bare:.0f} img/s; feature store {store:.0f} img/s; "
              f"store/bare: {store / bare:.2f} (target >= 0.90 with 16 cores)")
        del m, bb
        torch.cuda.empty_cache()


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
