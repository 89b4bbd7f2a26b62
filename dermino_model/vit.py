"""Student/teacher ViT on timm's VisionTransformer, with an iBOT mask token.

The mask token replaces masked patch embeddings *before* the positional embedding is added (as in
DINOv2/iBOT/BEiT), so the model still knows where a masked patch sits. ``dynamic_img_size`` lets the
same weights run on 224-px global and 96-px local crops (positional embeddings resampled bicubically).
The student gets drop-path and LayerScale; the teacher is built with drop-path 0 and runs in eval mode.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dermbench.api import DermbenchError

#: embed_dim, depth, num_heads
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_micro": (64, 2, 2),  # smoke tests only
    "vit_mini": (128, 4, 4),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


def arch_dims(arch: str, embed_dim: int = 0, depth: int = 0, num_heads: int = 0) -> tuple[int, int, int]:
    if arch not in ARCHS and not (embed_dim and depth and num_heads):
        raise DermbenchError(f"unknown arch {arch!r}: use one of {', '.join(ARCHS)} or set embed_dim/depth/num_heads")
    d, L, h = ARCHS.get(arch, (0, 0, 0))
    return embed_dim or d, depth or L, num_heads or h


def create_vit(arch: str, patch_size: int, img_size: int, drop_path_rate: float = 0.0,
               layerscale: float | None = 1e-5, embed_dim: int = 0, depth: int = 0, num_heads: int = 0) -> nn.Module:
    """A timm VisionTransformer (CLS pooling, no classifier) with the given geometry."""
    from timm.models.vision_transformer import VisionTransformer

    d, L, h = arch_dims(arch, embed_dim, depth, num_heads)
    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=d, depth=L, num_heads=h, mlp_ratio=4.0,
        num_classes=0, global_pool="token", dynamic_img_size=True, drop_path_rate=drop_path_rate,
        init_values=layerscale if layerscale else None,
    )


class MaskedViT(nn.Module):
    """``forward(x, masks)`` -> dict(cls=(B, D), patch=(B, N, D)), both after the final LayerNorm."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.embed_dim = vit.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, vit.embed_dim))
        self.checkpointing = False

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        vit = self.vit
        x = vit.patch_embed(x)  # (B, H, W, D) with dynamic_img_size
        b, h, w, d = x.shape
        if masks is not None:
            m = masks.view(b, h, w, 1).to(torch.bool)
            x = torch.where(m, self.mask_token.to(x.dtype).view(1, 1, 1, d), x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        if self.checkpointing and self.training:
            from torch.utils.checkpoint import checkpoint

            for blk in vit.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = vit.blocks(x)
        x = vit.norm(x)
        return {"cls": x[:, 0], "patch": x[:, vit.num_prefix_tokens :]}


# --------------------------------------------------------------------------------------------------
# Reading weights (ours, DINO v1/DINOv2 releases, DermINO's teacher_checkpoint.pth)

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a ``torch.load(weights_only=True)`` checkpoint, prefixes stripped.

    Handles ``{"teacher": {...}}`` / ``{"model": ...}`` nesting, ``teacher.``/``backbone.``/``module.``
    prefixes (the released DermINO ``teacher_checkpoint.pth``), and DINOv2 ``block_chunks`` keys
    ``blocks.<chunk>.<i>.``. Teacher weights are preferred when both teacher and student are present.
    """
    path = Path(path)
    if not path.is_file():
        raise DermbenchError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DermbenchError(
            f"cannot read weights {path}: {type(e).__name__}: {e}. Expected a .safetensors file or a "
            "torch checkpoint of tensors (weights_only=True)."
        ) from e
    for key in ("teacher", "model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise DermbenchError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    for sub in ("module.", "teacher.", "module.", "backbone.", "module.", "vit."):
        if any(k.startswith(sub) for k in sd):  # keep that sub-module only (teacher over student, backbone over heads)
            sd = {k[len(sub):]: v for k, v in sd.items() if k.startswith(sub)}
    sd = {k: v for k, v in sd.items() if not k.startswith(("dino_head.", "ibot_head.", "head."))}
    return {_CHUNKED.sub(r"blocks.\2.", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def infer_geometry(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """embed_dim, depth, patch_size, heads (dim/64) and the native grid from a ViT state dict."""
    if "patch_embed.proj.weight" not in sd:
        raise DermbenchError("state dict has no patch_embed.proj.weight: not a ViT backbone checkpoint")
    w = sd["patch_embed.proj.weight"]
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    n_tok = int(sd["pos_embed"].shape[1]) - 1 if "pos_embed" in sd else 196
    grid = int(round(n_tok ** 0.5))
    return {"embed_dim": dim, "depth": depth, "patch_size": patch, "num_heads": max(dim // 64, 1),
            "grid": grid, "layerscale": int("blocks.0.ls1.gamma" in sd)}


def load_into_vit(vit: nn.Module, sd: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Load a (converted) backbone state dict into a timm ViT, resampling pos_embed; returns notes.

    A checkpoint without LayerScale (DINO v1) loaded into a LayerScale model gets gammas of 1.0, not the
    1e-5 init that would silently shrink every pretrained residual branch.
    """
    from timm.layers import resample_abs_pos_embed

    sd = dict(sd)
    notes: list[str] = []
    sd.pop("mask_token", None)
    if "pos_embed" in sd and sd["pos_embed"].shape != vit.pos_embed.shape:
        old = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=vit.patch_embed.grid_size,
                                                 old_size=(old, old), num_prefix_tokens=1)
        notes.append(f"pos_embed resampled {old}x{old} -> {tuple(vit.patch_embed.grid_size)}")
    own = vit.state_dict()
    if "blocks.0.ls1.gamma" in own and "blocks.0.ls1.gamma" not in sd:
        for k, v in own.items():
            if k.endswith(("ls1.gamma", "ls2.gamma")):
                sd[k] = torch.ones_like(v)
        notes.append("checkpoint has no LayerScale: gammas set to 1.0")
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise DermbenchError(
            f"weights do not match the ViT: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}. "
            "Check arch/patch_size against the checkpoint."
        )
    return notes
