"""PanDerm-B/-L (Yan et al., Nature Medicine 2025) as timm ViTs, through a key converter.

PanDerm's model code is CC-BY-NC-ND, so it is not vendored: the released pretraining checkpoints
(``panderm_bb_data6_checkpoint-499.pth``: plain state dict; ``panderm_ll_data6_checkpoint-499.pth``: keys
under ``encoder.``) are converted into timm's ``vit_{base,large}_patch16_224`` layout:

* BEiT/CAE attention keeps ``qkv`` without bias plus ``q_bias``/``v_bias``: timm's ``qkv.bias`` is
  ``cat(q_bias, 0, v_bias)`` (the key bias is zero by construction);
* layer scale ``gamma_1``/``gamma_2`` -> ``ls1.gamma``/``ls2.gamma``;
* the position table is a fixed 2-D sin-cos table (MoCo v3 / CAE formula, zero CLS slot); it is taken
  from the checkpoint when present, regenerated otherwise;
* modules the encoder does not use at inference (decoder/regressor/teacher of the CAE pretraining) are
  dropped and listed in ``backbone.dropped_keys``; keys of the encoder's own modules must match exactly.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dermbench import hookimpl
from dermbench.api import DermbenchError, ModelInfo, Preprocess

if TYPE_CHECKING:  # pragma: no cover
    import torch

PANDERM_CITE = (
    "Yan et al., A multimodal vision foundation model for clinical dermatology, Nature Medicine 2025, "
    "doi:10.1038/s41591-025-03747-y"
)
#: PanDerm's published eval transform (classification get_eval_transforms): Resize(256) (torchvision's
#: default bilinear), CenterCrop(224), ImageNet mean with std (0.228, 0.224, 0.225): the 0.228 is a typo
#: for 0.229 in their code, kept because the released linear-probe numbers were produced with it.
PANDERM_PRE = Preprocess(
    crop=224, resize=256, interpolation="bilinear",
    mean=(0.485, 0.456, 0.406), std=(0.228, 0.224, 0.225),
    note="PanDerm eval recipe: Resize 256 (bilinear), CenterCrop 224, ImageNet mean, std (0.228,0.224,0.225) "
    "as published (0.228 is their typo for 0.229, kept to reproduce their numbers); PanDerm's segmentation "
    "code uses mean/std 0.5 instead",
)
#: What the ISIC archive holds; PanDerm's pretraining data include public ISIC-archive dermoscopy, so any
#: benchmark drawn from it may overlap (the leaderboard flags these).
ISIC_ARCHIVE = ("isic-archive", "isic2016", "isic2017", "isic2018", "isic2019", "isic2020", "ham10000", "bcn20000")
GDRIVE = {
    "b": "https://drive.google.com/file/d/17J4MjsZu3gdBP6xAQi_NMDVvH65a00HB/view?usp=sharing",
    "l": "https://drive.google.com/file/d/1SwEzaOlFV_gBKf2UzeowMC8z9UH7AQbE/view?usp=sharing",
}
FILES = {"b": "panderm_bb_data6_checkpoint-499.pth", "l": "panderm_ll_data6_checkpoint-499.pth"}
ARCH = {"b": ("vit_base_patch16_224", 768), "l": ("vit_large_patch16_224", 1024)}
ENCODER_MODULES = ("cls_token", "pos_embed", "patch_embed", "blocks", "norm", "fc_norm", "head", "reg_token")


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0, cls_token: bool = True) -> "torch.Tensor":
    """Fixed 2-D sin-cos position table (1, [1+] grid*grid, dim), MoCo v3 / CAE convention:
    ``meshgrid(ij)`` over (w, h), each axis gets dim/4 frequencies ``1/temperature**(k/(dim/4))``,
    channels ``[sin(w), cos(w), sin(h), cos(h)]``; the CLS slot is zero."""
    import torch

    if dim % 4:
        raise DermbenchError(f"sin-cos position table needs embed dim divisible by 4, got {dim}")
    gw, gh = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w = gw.flatten()[:, None] * omega[None]
    out_h = gh.flatten()[:, None] * omega[None]
    pe = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]
    if cls_token:
        pe = torch.cat([torch.zeros(1, 1, dim), pe], dim=1)
    return pe


def convert_panderm(sd: dict[str, "torch.Tensor"], model: "torch.nn.Module") -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """PanDerm (BEiT/CAE layout) -> timm ViT keys. Returns (converted state dict, dropped key names)."""
    import torch

    from dermbench.api import select_prefix, strip_prefixes

    sd = strip_prefixes(sd, ("module.",))
    sd = select_prefix(sd, "encoder.")
    dropped = sorted(k for k in sd if k.split(".", 1)[0] not in ENCODER_MODULES)
    out: dict[str, torch.Tensor] = {}
    q_bias: dict[str, torch.Tensor] = {}
    v_bias: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in dropped or k.startswith(("head.", "fc_norm.")):
            continue  # classifier / mean-pool norm of fine-tuned variants: not part of the CLS backbone
        m = re.match(r"(blocks\.\d+\.attn)\.(q_bias|v_bias)$", k)
        if m:
            (q_bias if m.group(2) == "q_bias" else v_bias)[m.group(1)] = v
            continue
        k = re.sub(r"\.gamma_([12])$", lambda g: f".ls{g.group(1)}.gamma", k)
        out[k] = v
    for pre, q in q_bias.items():
        if pre not in v_bias:
            raise DermbenchError(f"PanDerm checkpoint has {pre}.q_bias but no {pre}.v_bias")
        out[f"{pre}.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v_bias[pre]])
    grid = model.patch_embed.grid_size[0]
    dim = model.embed_dim
    pos = out.get("pos_embed")
    if pos is None:
        out["pos_embed"] = sincos_2d(grid, dim)
    elif pos.shape[1] == grid * grid:  # table stored without the CLS slot
        out["pos_embed"] = torch.cat([torch.zeros(1, 1, dim, dtype=pos.dtype), pos], dim=1)
    return out, dropped


def _info(v: str) -> ModelInfo:
    arch, dim = ARCH[v]
    size = {"b": "ViT-B/16", "l": "ViT-L/16"}[v]
    return ModelInfo(
        name=f"panderm-{v}",
        family="panderm",
        source="timm",
        embed_dim=dim,
        patch_size=16,
        preprocess=PANDERM_PRE,
        capabilities=frozenset({"cls", "patch_tokens"}),
        weights=(f"gdrive:{FILES[v]} ({GDRIVE[v]})",),
        license="CC-BY-NC-ND-4.0",
        commercial_use=False,
        trained_on=ISIC_ARCHIVE + ("panderm-private-2m",),
        citation=PANDERM_CITE,
        description=f"PanDerm{'' if v == 'l' else '_Base'} {size}, CAEv2-style self-supervised on ~2M dermatology "
        "images (4 modalities, 11 institutions); fixed 224 px",
        embed_note="CLS token after the final LayerNorm: PanDerm's linear-probe feature (lin_probe, 'standard')",
    )


def load_panderm(v: str, weights: Any = None, device: str = "cpu", seed: int = 0, **opts: Any):
    """Build timm ``vit_{base,large}_patch16_224`` with layer scale, convert and load the PanDerm file.

    ``opts`` go to ``timm.create_model`` (tests pass ``depth=`` to build a shallow ViT-L quickly).
    """
    from dermbench.api import TimmBackbone, create_timm
    from dermbench.api import env_var_for, extract_state_dict, load_into, read_checkpoint, resolve_weights

    info = _info(v)
    info = replace(info, weights_env=env_var_for(info.name))
    how = (f"PanDerm has no hub copy: download {FILES[v]} from {GDRIVE[v]} (linked from "
           "https://github.com/SiyuanYan1/PanDerm, CC-BY-NC-ND 4.0, non-commercial research only).")
    res = resolve_weights(info, weights, hub=None, how_to_get=how)
    arch, _ = ARCH[v]
    model = create_timm(arch, seed=seed, img_size=224, init_values=0.1, **opts)
    sd = extract_state_dict(read_checkpoint(res.path), prefer=("model",), source=str(res.path))
    conv, dropped = convert_panderm(sd, model)
    other = "l" if v == "b" else "b"
    try:
        load_into(model, conv, source=str(res.path))
    except DermbenchError as e:
        hint = (f" The file name looks like PanDerm-{other.upper()} ({FILES[other]}): use panderm-{other}."
                if FILES[other].split("_checkpoint")[0] in str(res.path) else "")
        raise DermbenchError(str(e) + hint) from None
    bb = TimmBackbone(info, model, res.weights_id, fixed_size=True)
    bb.dropped_keys = dropped  # type: ignore[attr-defined]
    return bb.to(device)


def _loader(v: str):
    def load(weights: Any = None, device: str = "cpu", seed: int = 0, **opts: Any):
        return load_panderm(v, weights=weights, device=device, seed=seed, **opts)

    load.__doc__ = f"Load PanDerm-{v.upper()} from {FILES[v]}."
    return load


@hookimpl
def register_models(register):
    for v in ("b", "l"):
        register(_info(v), _loader(v))
