"""BEiT-style block masking of the student's global crops, and the multi-crop collate.

Block masking (as in BEiT/iBOT/DINOv2): rectangles of >= 4 patches with log-uniform aspect ratio in
[0.3, 1/0.3] are added until a crop's target count is reached (it may fall short). Half of the
2B global crops are masked, with targets stratified over ``linspace(0.1, 0.5)``; the other half
get empty masks. Everything draws from an explicit ``numpy.random.Generator`` so a batch is a pure
function of its seed (needed for exact resume and for the DDP-equals-single-process test).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


class BlockMasker:
    """Masks for an ``h x w`` patch grid; ``__call__(n, rng)`` returns an (h, w) bool array with <= n True."""

    def __init__(self, h: int, w: int, min_patches: int = 4, max_patches: int | None = None,
                 min_aspect: float = 0.3, max_aspect: float | None = None) -> None:
        self.h, self.w = h, w
        self.min_patches = min_patches
        self.max_patches = max_patches if max_patches is not None else int(0.5 * h * w)
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        for _ in range(10):
            area = rng.uniform(self.min_patches, max(self.min_patches, budget))
            ratio = math.exp(rng.uniform(*self.log_aspect))
            bh, bw = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < bh < self.h and 0 < bw < self.w:
                top, left = int(rng.integers(0, self.h - bh + 1)), int(rng.integers(0, self.w - bw + 1))
                region = mask[top : top + bh, left : left + bw]
                new = int(bh * bw - region.sum())
                if 0 < new <= budget:
                    region[...] = True
                    return new
        return 0

    def __call__(self, n_target: int, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.h, self.w), dtype=bool)
        count = 0
        while count < n_target:
            budget = min(n_target - count, self.max_patches)
            added = self._add_block(mask, budget, rng)
            if added == 0:
                break
            count += added
        return mask


def sample_masks(n_crops: int, grid: tuple[int, int], rng: np.random.Generator,
                 sample_probability: float = 0.5, ratio_min_max: tuple[float, float] = (0.1, 0.5)) -> np.ndarray:
    """(n_crops, h*w) bool masks: ``int(n_crops * p)`` crops masked with stratified ratios, order shuffled."""
    h, w = grid
    n_patches = h * w
    masker = BlockMasker(h, w, max_patches=int(ratio_min_max[1] * n_patches))
    n_masked = int(n_crops * sample_probability)
    probs = np.linspace(ratio_min_max[0], ratio_min_max[1], n_masked + 1)
    out = np.zeros((n_crops, n_patches), dtype=bool)
    for i in range(n_masked):
        target = int(n_patches * rng.uniform(probs[i], probs[i + 1]))
        out[i] = masker(target, rng).reshape(-1)
    rng.shuffle(out, axis=0)
    return out


def collate_multicrop(items: Sequence[dict[str, Any]], patch_size: int, seed: int = 0,
                      sample_probability: float = 0.5, ratio_min_max: tuple[float, float] = (0.1, 0.5),
                      masks: Any = None) -> dict:
    """Stack crops view-major ([all view 1; all view 2; ...]) and draw the iBOT masks from ``seed``
    (or take ``masks``, (n_global*B, h*w) bool, drawn by the caller for a larger global batch).

    Each item has ``global`` (list of 2 CHW tensors), ``local`` (list of CHW tensors), ``targets`` (C,),
    ``known`` (C,) and ``index``. Labels are replicated in the global-crop order (``cat([y, y])``).
    """
    import torch

    n_global = len(items[0]["global"])
    n_local = len(items[0]["local"])
    glob = torch.stack([it["global"][v] for v in range(n_global) for it in items])
    loc = torch.stack([it["local"][v] for v in range(n_local) for it in items]) if n_local else None
    gh, gw = glob.shape[-2] // patch_size, glob.shape[-1] // patch_size
    if masks is None:
        masks = torch.from_numpy(
            sample_masks(glob.shape[0], (gh, gw), np.random.default_rng(seed), sample_probability, ratio_min_max)
        )
    per_crop = masks.sum(dim=1, keepdim=True).clamp_min(1).float()
    weight = (1.0 / per_crop).expand_as(masks)[masks]
    targets = torch.stack([it["targets"] for it in items])
    known = torch.stack([it["known"] for it in items])
    return {
        "global": glob,
        "local": loc,
        "masks": masks,
        "masks_weight": weight,
        "targets": targets.repeat(n_global, 1),
        "known": known.repeat(n_global, 1),
        "index": torch.tensor([it["index"] for it in items]),
        "n_global": n_global,
    }


def split_batch(batch: dict, rank: int, world: int) -> dict:
    """The share of a global view-major batch that ``rank`` of ``world`` processes would hold (tests, DDP)."""
    import torch

    b = batch["index"].shape[0]
    if b % world:
        raise ValueError(f"batch {b} not divisible by world size {world}")
    sl = slice(rank * (b // world), (rank + 1) * (b // world))

    def views(x):
        return None if x is None else torch.cat([v[sl] for v in x.split(b)])

    masks = views(batch["masks"])
    per_crop = masks.sum(dim=1, keepdim=True).clamp_min(1).float()
    return {
        "global": views(batch["global"]),
        "local": views(batch["local"]),
        "masks": masks,
        "masks_weight": (1.0 / per_crop).expand_as(masks)[masks],
        "targets": views(batch["targets"]),
        "known": views(batch["known"]),
        "index": batch["index"][sl],
        "n_global": batch["n_global"],
    }
