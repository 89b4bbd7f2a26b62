"""Per-iteration schedules (DINOv2 ``CosineScheduler`` semantics) and layer-wise lr-decay parameter groups."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np


class CosineSchedule:
    """Linear warmup ``start_warmup -> base`` over ``warmup`` iterations, then cosine ``base -> final``.

    ``sched[i]`` past the end returns ``final``; ``freeze`` iterations at the start are forced to 0
    (the last-layer lr of the first "epoch").
    """

    def __init__(self, base: float, final: float, total: int, warmup: int = 0, start_warmup: float = 0.0,
                 freeze: int = 0) -> None:
        warmup = min(warmup, total)
        ramp = np.linspace(start_warmup, base, warmup) if warmup else np.zeros(0)
        n = total - warmup
        it = np.arange(n)
        cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * it / max(n, 1)))
        self.values = np.concatenate([ramp, cos]).astype(np.float64)
        self.values[: min(freeze, total)] = 0.0
        self.final = final
        assert len(self.values) == total

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> float:
        return float(self.values[i]) if i < len(self.values) else float(self.final)


class LinearThenConstant:
    """Teacher temperature: linear ``start -> end`` over ``warmup`` iterations, then ``end``."""

    def __init__(self, start: float, end: float, warmup: int) -> None:
        self.start, self.end, self.warmup = start, end, warmup

    def __getitem__(self, i: int) -> float:
        if self.warmup <= 1:
            return self.end if i >= self.warmup else self.start
        if i >= self.warmup:
            return self.end
        return self.start + (self.end - self.start) * i / (self.warmup - 1)


@dataclass
class Schedules:
    lr: CosineSchedule
    last_layer_lr: CosineSchedule
    wd: CosineSchedule
    momentum: CosineSchedule
    teacher_temp: LinearThenConstant

    def at(self, i: int) -> dict[str, float]:
        return {"lr": self.lr[i], "last_layer_lr": self.last_layer_lr[i], "wd": self.wd[i],
                "momentum": self.momentum[i], "teacher_temp": self.teacher_temp[i]}


def build_schedules(cfg: Any, total: int, iters_per_epoch: int, batch_total: int) -> Schedules:
    """All schedules for ``total`` iterations; "epochs" are ``iters_per_epoch`` iterations (explicit)."""
    lr = peak_lr(cfg.lr, cfg.lr_scaling, batch_total)
    warm = int(cfg.warmup_epochs * iters_per_epoch)
    return Schedules(
        lr=CosineSchedule(lr, cfg.min_lr, total, warm),
        last_layer_lr=CosineSchedule(lr, cfg.min_lr, total, warm,
                                     freeze=int(cfg.freeze_last_layer_epochs * iters_per_epoch)),
        wd=CosineSchedule(cfg.weight_decay, cfg.weight_decay_end, total),
        momentum=CosineSchedule(cfg.momentum_teacher, cfg.final_momentum_teacher, total),
        teacher_temp=LinearThenConstant(cfg.warmup_teacher_temp, cfg.teacher_temp,
                                        int(cfg.warmup_teacher_temp_epochs * iters_per_epoch)),
    )


def peak_lr(lr: float, scaling: str, batch_total: int) -> float:
    """``none`` uses ``lr`` literally (DermINO's 2e-3); ``sqrt_wrt_1024`` is DINOv2's rule."""
    if scaling == "none":
        return lr
    if scaling == "sqrt_wrt_1024":
        return lr * math.sqrt(batch_total / 1024)
    if scaling == "linear_wrt_256":
        return lr * batch_total / 256
    raise ValueError(f"lr_scaling {scaling!r}: use none | sqrt_wrt_1024 | linear_wrt_256")


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings/tokens, i+1 for block i, depth+1 for the final norm and everything else."""
    if any(k in name for k in ("pos_embed", "patch_embed", "cls_token", "mask_token", "reg_token")):
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    return depth + 1


def param_groups(named_params: list[tuple[str, Any]], depth: int, layer_decay: float,
                 patch_embed_lr_mult: float) -> list[dict]:
    """One group per parameter, carrying lr/wd multipliers and the ``last_layer`` flag.

    Backbone parameters (names starting with ``backbone.``) get ``decay^(depth+1-layer_id)``; heads and
    prototypes get 1. No weight decay on biases, norms and LayerScale gammas; the weight-norm gain
    ``last_layer.g`` *is* decayed, as DINOv2's ``last_layer.weight_g`` (its name matches none of those rules).
    Frozen parameters (``requires_grad=False``: the authors' prototypes) get no group at all.
    """
    groups = []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        mult = 1.0
        if name.startswith("backbone."):
            mult = layer_decay ** (depth + 1 - layer_id(name, depth))
            if "patch_embed" in name:
                mult *= patch_embed_lr_mult
        no_wd = name.endswith(".bias") or "norm" in name or "gamma" in name
        groups.append({"params": [p], "name": name, "lr_mult": mult, "wd_mult": 0.0 if no_wd else 1.0,
                       "is_last_layer": "last_layer" in name})
    return groups


def apply_schedules(optimizer: Any, values: dict[str, float]) -> None:
    for g in optimizer.param_groups:
        base = values["last_layer_lr"] if g["is_last_layer"] else values["lr"]
        g["lr"] = base * g["lr_mult"]
        g["weight_decay"] = values["wd"] * g["wd_mult"]
