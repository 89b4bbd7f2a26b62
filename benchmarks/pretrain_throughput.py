"""DermINO pretraining throughput: images/s per GPU, peak memory and model-FLOPs utilisation (MFU).

The ``paper`` preset's model and multi-crop: ViT-B/14, 2 x 224 px global + 8 x 98 px local crops, separate
DINO and iBOT heads with K = 65,536 prototypes each, uniform drop path 0.4, frozen prototypes; random weights
(the DINOv2 initialisation does not change the cost). One full training step (teacher forward, student
forward+backward, all four losses, per-module clipping, AdamW, EMA) on pre-made GPU batches, so the figure is
the model's, not the JPEG decoder's. Baseline in the same process: the same step in fp32 without fused
attention; the script prints the bf16+SDPA / fp32 ratio. Target on one H100-class GPU: >= 800 img/s.

    python benchmarks/pretrain_throughput.py [--batch 64,128,256] [--steps 10]
    python benchmarks/pretrain_throughput.py --cpu-smoke      # tiny model on CPU: checks the script runs
    python benchmarks/pretrain_throughput.py --demo-ab        # CPU: demo step, authors' supervised term vs before

Without a GPU (and without --cpu-smoke) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, no sparsity


def vit_forward_flops(dim: int, depth: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Matmul FLOPs (2 per multiply-add) of one ViT forward: qkv + proj + MLP + attention scores/values."""
    per_block = 2 * tokens * dim * dim * (3 + 1 + 2 * mlp_ratio) + 2 * 2 * tokens * tokens * dim
    return depth * per_block


def head_flops(tokens: int, dim: int, hidden: int, bottleneck: int, k: int) -> float:
    return 2 * tokens * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * k)


def step_flops_per_image(cfg, masked_per_image: float) -> float:
    from dermino_model.vit import arch_dims

    d, depth, _ = arch_dims(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)
    ng = 1 + (cfg.global_size // cfg.patch_size) ** 2
    nl = 1 + (cfg.local_size // cfg.patch_size) ** 2
    student = 2 * vit_forward_flops(d, depth, ng) + cfg.n_local_crops * vit_forward_flops(d, depth, nl)
    teacher = 2 * vit_forward_flops(d, depth, ng)
    hs = head_flops(2 + cfg.n_local_crops + masked_per_image, d, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                    cfg.n_prototypes)
    ht = head_flops(2 + masked_per_image, d, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.n_prototypes)
    return 3 * (student + hs) + teacher + ht


def _dim(cfg) -> int:
    from dermino_model.vit import arch_dims

    return arch_dims(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)[0]


def synthetic_batch(cfg, b: int, device, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from dermino_model.masking import sample_masks

    g = torch.Generator().manual_seed(seed)
    grid = cfg.global_size // cfg.patch_size
    masks = torch.from_numpy(sample_masks(2 * b, (grid, grid), np.random.default_rng(seed)))
    per = masks.sum(1, keepdim=True).clamp_min(1).float()
    return {
        "global": torch.randn(2 * b, 3, cfg.global_size, cfg.global_size, generator=g).to(device),
        "local": torch.randn(cfg.n_local_crops * b, 3, cfg.local_size, cfg.local_size, generator=g).to(device),
        "masks": masks.to(device),
        "masks_weight": (1.0 / per).expand_as(masks)[masks].to(device),
        "targets": torch.eye(8)[torch.arange(2 * b) % 8].to(device),
        "known": (torch.arange(8).view(1, 8) < torch.tensor([8, 2, 2, 0] * b).view(-1, 1)[: 2 * b]).to(device),
        "n_global": 2,
    }


def measure(cfg, b: int, steps: int, device) -> dict:
    import torch

    from dermino_model import losses as L  # noqa: F401
    from dermino_model.model import build_models, ema_update
    from dermino_model.schedules import param_groups
    from dermino_model.trainer import clip_per_module, step_losses

    try:
        from timm.layers import set_fused_attn

        set_fused_attn(cfg.sdpa)
    except Exception:
        pass
    torch.manual_seed(0)
    student, teacher, _ = build_models(cfg, 8, torch.nn.functional.normalize(torch.randn(8, _dim(cfg)), dim=1))
    student.backbone.checkpointing = cfg.grad_checkpointing
    student.to(device).train()
    teacher.to(device)
    opt = torch.optim.AdamW(param_groups(list(student.named_parameters()), student.backbone.depth,
                                         cfg.layerwise_decay, cfg.patch_embed_lr_mult), lr=1e-4)
    batch = synthetic_batch(cfg, b, device)
    amp = device.type == "cuda" and cfg.precision == "bf16"

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = step_losses(student, teacher, batch, cfg, 0.07, None)
        loss.backward()
        clip_per_module(student, 3.0)
        opt.step()
        ema_update(student, teacher, 0.996)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        one()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    dt = (time.perf_counter() - t) / steps
    masked = float(batch["masks"].sum()) / b
    flops = step_flops_per_image(cfg, masked) * b
    out = {"batch_per_gpu": b, "precision": cfg.precision, "sdpa": cfg.sdpa, "s_per_step": dt, "img_per_s": b / dt,
           "tflops_per_s": flops / dt / 1e12,
           "crops": f"2x{cfg.global_size} + {cfg.n_local_crops}x{cfg.local_size} (patch {cfg.patch_size})"}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        out["gpu"] = name
        if peak:
            out["mfu"] = out["tflops_per_s"] / peak
    del student, teacher, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def demo_ab(steps: int, rounds: int = 2) -> int:
    """The demo preset's step on CPU with the supervised term as now and as before, interleaved (same process)."""
    import torch

    from dermino_model.config import build_config

    torch.set_num_threads(2)
    now = build_config("demo")
    before = build_config("demo", overrides={"prototype_trainable": True, "sup_normalisation": "per_entry",
                                             "prototype_norm": 0.0, "drop_path_uniform": False})
    t = {"now": [], "before": []}
    for _ in range(rounds):
        for name, cfg in (("before", before), ("now", now)):
            t[name].append(measure(cfg, cfg.batch_size_per_gpu, steps, torch.device("cpu"))["s_per_step"])
    a, b = min(t["now"]), min(t["before"])
    print(json.dumps({"s_per_step_now": a, "s_per_step_before": b, "rounds": rounds, "steps": steps}))
    print(f"demo step time now / before: {a / b:.3f}x (best of {rounds} interleaved rounds)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="64,128,256")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--demo-ab", action="store_true", help="CPU step time of the demo preset: frozen prototypes + "
                    "per-crop BCE (now) vs trainable prototypes + per-entry BCE (before), interleaved")
    args = ap.parse_args(argv)
    import torch

    from dermino_model.config import build_config

    if args.demo_ab:
        return demo_ab(max(args.steps // 5, 2))

    if args.cpu_smoke:
        device = torch.device("cpu")
        cfg = build_config("smoke", overrides={"n_local_crops": 2, "separate_ibot_head": True})
        batches = [4]
    elif not torch.cuda.is_available():
        print("pretrain_throughput: no CUDA GPU here; skipped (use --cpu-smoke to check the script on CPU)")
        return 0
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        cfg = build_config("paper", overrides={"init_weights": "", "precision": "bf16", "sdpa": True,
                                               "grad_checkpointing": args.grad_checkpointing}, require_sources=False)
        batches = [int(b) for b in args.batch.split(",")]
    rows = []
    for b in batches:
        try:
            rows.append(measure(cfg, b, args.steps, device))
        except torch.OutOfMemoryError:
            rows.append({"batch_per_gpu": b, "error": "out of memory (try --grad-checkpointing)"})
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_baseline:
        from dataclasses import replace

        ok = [r for r in rows if "img_per_s" in r]
        if ok:
            b = min(r["batch_per_gpu"] for r in ok)
            base = measure(replace(cfg, precision="fp32", sdpa=False), b, max(2, args.steps // 2), device)
            base["baseline"] = True
            print(json.dumps(base))
            fast = next(r for r in ok if r["batch_per_gpu"] == b)
            print(f"ratio bf16+SDPA / fp32-eager at batch {b}: {fast['img_per_s'] / base['img_per_s']:.2f}x")
    best = max((r.get("img_per_s", 0) for r in rows), default=0)
    print(f"best: {best:.1f} img/s per device (target on one H100: >= 800)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
