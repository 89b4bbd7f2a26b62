"""timm backbones: DINOv2 (S/B/L/g, with and without registers), ImageNet ViT-B, ResNet-50, random ViT.

Weights come from ``--weights``/``DERMBENCH_WEIGHTS_<NAME>``/the timm Hugging Face repo (see
:mod:`dermbench.weights`); checkpoints in timm's layout, the original DINOv2 layout (including DINOv2-style
``teacher_checkpoint.pth`` files) and DDP ``module.`` prefixes all load. No torch import at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dermbench import hookimpl
from dermbench.api import IMAGENET, INCEPTION, ModelInfo, Preprocess

DINOV2_CITE = "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024, arXiv:2304.07193"
REG_CITE = "Darcet et al., Vision Transformers Need Registers, ICLR 2024, arXiv:2309.16588"

#: DINOv2's own 224 px eval recipe (dinov2/data/transforms.py make_classification_eval_transform):
#: bicubic resize of the shorter side to 256, centre crop 224, ImageNet mean/std. timm's cfg targets 518 px.
DINOV2_PRE = Preprocess(
    crop=224, resize=256, interpolation="bicubic", **IMAGENET,
    note="DINOv2 eval recipe at 224: resize 256 bicubic, centre crop 224, ImageNet mean/std (timm cfg is 518 px, crop_pct 1.0)",
)
VIT_EMBED_NOTE = "CLS token after the final LayerNorm (what DINOv2 and DermINO linear-probe/kNN on)"


@dataclass(frozen=True)
class TimmSpec:
    """How to build one registered name: timm architecture, pretrained tag, create kwargs."""

    arch: str
    tag: str | None  # None: random init only
    kwargs: dict[str, Any] = field(default_factory=dict)
    dinov2_layout: bool = False  # accept original DINOv2 / DINO teacher checkpoints

    @property
    def hub_repo(self) -> str | None:
        return f"timm/{self.arch}.{self.tag}" if self.tag else None


def _dinov2(size: str, letter: str, dim: int, reg: bool) -> tuple[ModelInfo, TimmSpec]:
    arch = f"vit_{size}_patch14_{'reg4_' if reg else ''}dinov2"
    name = f"dinov2-{letter}{'-reg' if reg else ''}"
    info = ModelInfo(
        name=name,
        family="dinov2",
        source="timm",
        embed_dim=dim,
        patch_size=14,
        preprocess=DINOV2_PRE,
        capabilities=frozenset({"cls", "patch_tokens"}),
        weights=(f"hf-hub:timm/{arch}.lvd142m",),
        license="Apache-2.0",
        commercial_use=True,
        trained_on=("lvd142m",),
        citation=DINOV2_CITE + ("; " + REG_CITE if reg else ""),
        description=f"DINOv2 ViT-{letter.upper()}/14{' with 4 register tokens' if reg else ''}, self-supervised on LVD-142M; "
        "run at 224 px (16x16 patches)",
        embed_note=VIT_EMBED_NOTE + (" (register tokens are not part of embed or patch_tokens)" if reg else ""),
    )
    return info, TimmSpec(arch, "lvd142m", {"img_size": 224}, dinov2_layout=True)


def _specs() -> list[tuple[ModelInfo, TimmSpec]]:
    out = []
    for size, letter, dim in (("small", "s", 384), ("base", "b", 768), ("large", "l", 1024), ("giant", "g", 1536)):
        out.append(_dinov2(size, letter, dim, reg=False))
        out.append(_dinov2(size, letter, dim, reg=True))
    vit_pre = Preprocess(
        crop=224, resize=248, interpolation="bicubic", **INCEPTION,
        note="timm augreg cfg: crop_pct 0.9 (resize 248, crop 224), bicubic, mean/std 0.5 (not ImageNet's)",
    )
    out.append((
        ModelInfo(
            name="vit-b", family="vit", source="timm", embed_dim=768, patch_size=16, preprocess=vit_pre,
            capabilities=frozenset({"cls", "patch_tokens"}),
            weights=("hf-hub:timm/vit_base_patch16_224.augreg_in21k",),
            license="Apache-2.0", commercial_use=True, trained_on=("imagenet21k",),
            citation="Steiner et al., How to train your ViT? Data, Augmentation, and Regularization in Vision "
            "Transformers, TMLR 2022, arXiv:2106.10270",
            description="ViT-B/16 supervised on ImageNet-21k (AugReg), the ImageNet baseline",
            embed_note=VIT_EMBED_NOTE,
        ),
        TimmSpec("vit_base_patch16_224", "augreg_in21k"),
    ))
    out.append((
        ModelInfo(
            name="resnet50", family="resnet", source="timm", embed_dim=2048, patch_size=None,
            preprocess=Preprocess(
                crop=224, resize=256, interpolation="bilinear", **IMAGENET,
                note="torchvision recipe (timm tv_in1k cfg): resize 256 bilinear, crop 224, ImageNet mean/std",
            ),
            capabilities=frozenset({"cls", "patch_tokens"}),
            weights=("hf-hub:timm/resnet50.tv_in1k",),
            license="BSD-3-Clause", commercial_use=True, trained_on=("imagenet1k",),
            citation="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
            description="ResNet-50, torchvision ImageNet-1k weights (v1)",
            embed_note="global average pool of the last stage (2048-d); patch_tokens = stem + 4 stages (layers 0..4) "
            "as (N, C, H/s, W/s) feature maps",
        ),
        TimmSpec("resnet50", "tv_in1k"),
    ))
    out.append((
        ModelInfo(
            name="random-vit", family="random", source="timm", embed_dim=384, patch_size=16,
            preprocess=Preprocess(crop=224, resize=248, interpolation="bicubic", **INCEPTION,
                                  note="timm vit_small_patch16_224 cfg (no training, so the choice is arbitrary)"),
            capabilities=frozenset({"cls", "patch_tokens"}),
            license="Apache-2.0", commercial_use=True, trained_on=(),
            citation="",
            description="ViT-S/16 with seeded random init: the floor any pretrained model must beat",
            embed_note="CLS token after the final LayerNorm of an untrained ViT-S/16 (seeded: random:<seed>)",
            random_init=True,
        ),
        TimmSpec("vit_small_patch16_224", None),
    ))
    return out


def load_timm(info: ModelInfo, spec: TimmSpec, weights: Any = None, device: str = "cpu", seed: int = 0,
              **opts: Any):
    """Build ``spec.arch``, load its weights (or seeded random init for baselines), wrap as TimmBackbone.

    ``opts`` are passed to ``timm.create_model`` (tests use ``depth=`` to build shallow ViT-L/g quickly).
    """
    from dermbench.api import TimmBackbone, create_timm, load_timm_weights
    from dermbench.api import (
        HubSource,
        dinov2_backbone_state_dict,
        env_var_for,
        extract_state_dict,
        read_checkpoint,
        resolve_weights,
        strip_prefixes,
    )

    if not info.weights_env:
        info = replace(info, weights_env=env_var_for(info.name))
    kwargs = {**spec.kwargs, **opts}
    if info.random_init:
        if weights is not None:
            from dermbench.api import DermbenchError

            raise DermbenchError(f"model {info.name!r} is a random-init baseline; it takes no --weights "
                                 "(its init is set by --model-opt seed=N, not by --seed)")
        model = create_timm(spec.arch, seed=seed, **kwargs)
        return TimmBackbone(info, model, f"random:{seed}").to(device)
    hub = HubSource(spec.hub_repo, files=("model.safetensors", "pytorch_model.bin")) if spec.hub_repo else None
    res = resolve_weights(info, weights, hub=hub)
    model = create_timm(spec.arch, seed=0, **kwargs)
    raw = read_checkpoint(res.path)
    if spec.dinov2_layout:
        sd = dinov2_backbone_state_dict(raw)
    else:
        sd = strip_prefixes(extract_state_dict(raw, source=str(res.path)), ("module.",))
    load_timm_weights(model, sd, source=str(res.path))
    return TimmBackbone(info, model, res.weights_id).to(device)


def _loader(info: ModelInfo, spec: TimmSpec):
    def load(weights: Any = None, device: str = "cpu", seed: int = 0, **opts: Any):
        return load_timm(info, spec, weights=weights, device=device, seed=seed, **opts)

    load.__doc__ = f"Load {info.name} ({spec.arch}{'.' + spec.tag if spec.tag else ''})."
    return load


SPECS = {info.name: (info, spec) for info, spec in _specs()}


@hookimpl
def register_models(register):
    for info, spec in SPECS.values():
        register(info, _loader(info, spec))
