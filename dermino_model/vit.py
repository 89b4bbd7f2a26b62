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
               layerscale: float | None = 1e-5, embed_dim: int = 0, depth: int = 0, num_heads: int = 0,
               drop_path_uniform: bool = False) -> nn.Module:
    """A timm VisionTransformer (CLS pooling, no classifier) with the given geometry.

    timm spreads drop-path linearly from 0 to ``drop_path_rate`` over the blocks; DINOv2 (and DermINO's
    0.4) use the same rate in every block (``drop_path_uniform``), which is applied here afterwards.
    """
    from timm.models.vision_transformer import VisionTransformer

    d, L, h = arch_dims(arch, embed_dim, depth, num_heads)
    vit = VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=d, depth=L, num_heads=h, mlp_ratio=4.0,
        num_classes=0, global_pool="token", dynamic_img_size=True, drop_path_rate=drop_path_rate,
        init_values=layerscale if layerscale else None,
    )
    if drop_path_uniform:
        set_uniform_drop_path(vit, drop_path_rate)
    return vit


def set_uniform_drop_path(vit: nn.Module, rate: float) -> None:
    """The same stochastic-depth rate on both residual branches of every block (DINOv2 ``drop_path_uniform``)."""
    from timm.layers import DropPath

    for blk in vit.blocks:
        blk.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
        blk.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()


def drop_path_rates(vit: nn.Module) -> list[float]:
    """Per-block drop-path probability (0 for none), for tests and the printed configuration."""
    return [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in vit.blocks]


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
# Reading weights (ours, DINO v1/DINOv2 releases in torch.hub / timm / transformers layouts, DermINO's
# teacher_checkpoint.pth)

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")

#: torch.hub names of the DINOv2 releases -> file name under ``<torch hub dir>/checkpoints``
DINOV2_HUB = {f"dinov2_vit{s}14": f"dinov2_vit{s}14_pretrain.pth" for s in ("s", "b", "l", "g")}
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{file}"


def _hub_dir() -> Path:
    try:
        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # pragma: no cover
        return Path("~/.cache/torch/hub/checkpoints").expanduser()


def resolve_init_weights(spec: str) -> Path:
    """A local weights file for ``init_weights``: a path, a torch.hub DINOv2 name or a Hugging Face repo id.

    Nothing is downloaded (training nodes are often offline and a silent download hides which file was
    used): hub names are looked up in the torch.hub and Hugging Face caches, and the error says how to get
    the file. Accepted names: ``dinov2_vitb14`` (torch.hub), ``timm/vit_base_patch14_dinov2.lvd142m`` or
    ``vit_base_patch14_dinov2.lvd142m`` (timm), ``facebook/dinov2-base`` (transformers).
    """
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    tried: list[str] = []
    name = spec.removeprefix("hf-hub:").removeprefix("hf_hub:")
    if name in DINOV2_HUB:
        f = _hub_dir() / DINOV2_HUB[name]
        if f.is_file():
            return f
        tried.append(str(f))
    elif p.suffix not in (".pth", ".pt", ".safetensors", ".bin", ".ckpt") and not name.startswith(("/", ".", "~")):
        repo = name if "/" in name else f"timm/{name}"
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:  # pragma: no cover
            hf_hub_download = None
        for fname in ("model.safetensors", "pytorch_model.bin"):
            if hf_hub_download is None:
                break
            try:
                return Path(hf_hub_download(repo, fname, local_files_only=True))
            except Exception:
                tried.append(f"{repo}/{fname} (Hugging Face cache)")
    else:
        tried.append(str(p))
    how = ("download https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth to "
           f"{_hub_dir()}/ (then init_weights=dinov2_vitb14 finds it), or run `huggingface-cli download "
           "timm/vit_base_patch14_dinov2.lvd142m` (or facebook/dinov2-base), or point init_weights at any local "
           "DINOv2 ViT-B/14 file: --set init_weights=/path/to/dinov2_vitb14_pretrain.pth")
    if name in DINOV2_HUB:
        file = DINOV2_HUB[name]
        how = (f"download {DINOV2_URL.format(name=name, file=file)} to {_hub_dir()}/{file} "
               f"(e.g. curl -L --create-dirs -o {_hub_dir()}/{file} {DINOV2_URL.format(name=name, file=file)}), "
               "or pass a local file with --set init_weights=PATH")
    raise DermbenchError(f"initial backbone weights {spec!r} not found (looked at: {', '.join(tried)}). To get them: "
                         f"{how}. Set init_weights='' to start from random weights instead.")


def _qkv(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(t is None for t in parts) else torch.cat(parts, dim=0)  # type: ignore[arg-type]


def from_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` keys (4.x ``attention.attention.query`` or 5.x ``attention.q_proj``) -> timm's."""
    sd = {k.removeprefix("dinov2."): v for k, v in sd.items()}
    if any(".mlp.weights_in" in k or ".mlp.w12" in k for k in sd):
        raise DermbenchError("SwiGLU DINOv2 checkpoints (ViT-g) are not supported; use a ViT-S/B/L MLP checkpoint")
    out: dict[str, torch.Tensor] = {}
    e = "embeddings."
    for src, dst in ((f"{e}cls_token", "cls_token"), (f"{e}position_embeddings", "pos_embed"),
                     (f"{e}patch_embeddings.projection.weight", "patch_embed.proj.weight"),
                     (f"{e}patch_embeddings.projection.bias", "patch_embed.proj.bias"),
                     ("layernorm.weight", "norm.weight"), ("layernorm.bias", "norm.bias")):
        if src in sd:
            out[dst] = sd[src]
    if f"{e}mask_token" in sd:
        out["mask_token"] = sd[f"{e}mask_token"].reshape(1, -1)
    if f"{e}register_tokens" in sd:
        raise DermbenchError("DINOv2 checkpoints with register tokens (*_reg4) are not supported; use the plain one")
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        a, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            new = [sd.get(f"{a}attention.{x}_proj.{kind}") for x in "qkv"]
            old = [sd.get(f"{a}attention.attention.{x}.{kind}") for x in ("query", "key", "value")]
            qkv = _qkv(new) if _qkv(new) is not None else _qkv(old)
            if qkv is not None:
                out[f"{b}attn.qkv.{kind}"] = qkv
            proj = sd.get(f"{a}attention.o_proj.{kind}", sd.get(f"{a}attention.output.dense.{kind}"))
            if proj is not None:
                out[f"{b}attn.proj.{kind}"] = proj
            for mod in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                if f"{a}{mod}.{kind}" in sd:
                    out[f"{b}{mod}.{kind}"] = sd[f"{a}{mod}.{kind}"]
        for j in (1, 2):
            if f"{a}layer_scale{j}.lambda1" in sd:
                out[f"{b}ls{j}.gamma"] = sd[f"{a}layer_scale{j}.lambda1"]
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Backbone tensors (timm key names, plus ``mask_token`` when the file has one) from any supported layout.

    Handles a safetensors file or a ``torch.load(weights_only=True)`` checkpoint; ``{"teacher": {...}}`` /
    ``{"model": ...}`` nesting; ``teacher.``/``backbone.``/``module.`` prefixes (the released DermINO
    ``teacher_checkpoint.pth``); DINOv2 ``block_chunks`` keys ``blocks.<chunk>.<i>.``; the torch.hub DINOv2
    release (timm names plus ``mask_token``); and Hugging Face ``Dinov2Model`` files. Teacher weights are
    preferred when both teacher and student are present.
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
    if any(k.startswith(("embeddings.", "dinov2.embeddings.")) for k in sd):
        sd = from_transformers(sd)
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
    1e-5 init that would silently shrink every pretrained residual branch. ``mask_token`` is not part of a
    timm ViT: :func:`load_into_masked_vit` takes it.
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


def load_into_masked_vit(mvit: "MaskedViT", sd: dict[str, torch.Tensor]) -> list[str]:
    """Backbone weights *and* the iBOT ``mask_token`` (DINOv2 releases and our exports carry it; timm's don't)."""
    notes = load_into_vit(mvit.vit, sd)
    if "mask_token" in sd:
        mt = sd["mask_token"].reshape(1, -1)
        if mt.shape != mvit.mask_token.shape:
            raise DermbenchError(f"mask_token has shape {tuple(mt.shape)}, expected {tuple(mvit.mask_token.shape)}")
        with torch.no_grad():
            mvit.mask_token.copy_(mt.to(mvit.mask_token.dtype))
        notes.append("mask_token loaded")
    else:
        notes.append("checkpoint has no mask_token: it starts at zeros (DINOv2's init)")
    return notes


def export_state_dict(mvit: "MaskedViT") -> dict[str, torch.Tensor]:
    """timm-named backbone tensors plus ``mask_token`` (DINOv2's top-level name), as written to checkpoints."""
    sd = {k: v.detach().cpu().contiguous() for k, v in mvit.vit.state_dict().items()}
    sd["mask_token"] = mvit.mask_token.detach().cpu().contiguous()
    return sd
