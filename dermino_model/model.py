"""Student and teacher modules (backbone + DINO head [+ iBOT head] [+ prototypes]) and the EMA update."""

from __future__ import annotations


import torch
import torch.nn as nn

from dermino_model.heads import DINOHead, PrototypeClassifier
from dermino_model.vit import MaskedViT, create_vit, load_into_masked_vit, read_state_dict, resolve_init_weights


class SSLModel(nn.Module):
    """One side of the distillation. ``forward`` runs the student; ``teacher_forward`` the teacher."""

    def __init__(self, backbone: MaskedViT, dino_head: DINOHead, ibot_head: DINOHead | None = None,
                 prototypes: PrototypeClassifier | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head
        self.prototypes = prototypes

    def _patch_head(self) -> DINOHead:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def forward(self, glob: torch.Tensor, loc: torch.Tensor | None, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Student: masked global crops and unmasked local crops."""
        g = self.backbone(glob, masks)
        patches = g["patch"].flatten(0, 1)[masks.flatten().bool()]
        out = {"cls": g["cls"], "cls_logits": self.dino_head(g["cls"]), "patch_logits": self._patch_head()(patches)}
        if loc is not None:
            out["local_logits"] = self.dino_head(self.backbone(loc)["cls"])
        if self.prototypes is not None:
            out["sup_logits"] = self.prototypes(g["cls"])
        return out

    @torch.no_grad()
    def teacher_forward(self, glob: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher: unmasked global crops; patch outputs at the positions the student had masked."""
        g = self.backbone(glob)
        patches = g["patch"].flatten(0, 1)[masks.flatten().bool()]
        return {"cls": g["cls"], "cls_logits": self.dino_head(g["cls"]), "patch_logits": self._patch_head()(patches)}


def build_models(cfg, n_classes: int, prototype_init: torch.Tensor | None = None) -> tuple[SSLModel, SSLModel, list[str]]:
    """(student, teacher, notes). The teacher starts as an exact copy of the student, without drop-path.

    ``cfg.init_weights`` (a file, ``dinov2_vitb14`` or an HF repo id) initialises the student backbone *and* its
    mask token (resampling the position table to ``global_size``), then the teacher copies the student, as
    the authors' ``SSLMetaArch`` does. Heads are always fresh. Prototypes are frozen unless
    ``cfg.prototype_trainable``.
    """
    notes: list[str] = []
    kw = dict(embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads)
    s_vit = create_vit(cfg.arch, cfg.patch_size, cfg.global_size, cfg.drop_path_rate, cfg.layerscale,
                       drop_path_uniform=getattr(cfg, "drop_path_uniform", False), **kw)
    s_backbone = MaskedViT(s_vit)
    if cfg.init_weights:
        path = resolve_init_weights(cfg.init_weights)
        notes += load_into_masked_vit(s_backbone, read_state_dict(path))
        notes.append(f"student initialised from {path}")
    dim = s_vit.embed_dim

    def head() -> DINOHead:
        return DINOHead(dim, cfg.n_prototypes, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_nlayers)

    protos = (PrototypeClassifier(dim, n_classes, prototype_init, trainable=getattr(cfg, "prototype_trainable", True))
              if n_classes else None)
    student = SSLModel(s_backbone, head(), head() if cfg.separate_ibot_head else None, protos)
    t_vit = create_vit(cfg.arch, cfg.patch_size, cfg.global_size, 0.0, cfg.layerscale, **kw)
    teacher = SSLModel(MaskedViT(t_vit), head(), head() if cfg.separate_ibot_head else None, None)
    sd = {k: v for k, v in student.state_dict().items() if not k.startswith("prototypes.")}
    teacher.load_state_dict(sd)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher, notes


def ema_pairs(student: nn.Module, teacher: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    s = dict(student.named_parameters())
    t_params, s_params = [], []
    for name, p in teacher.named_parameters():
        t_params.append(p)
        s_params.append(s[name])
    return t_params, s_params


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, for every teacher parameter (after the optimiser step)."""
    t, s = ema_pairs(student, teacher)
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, [x.detach() for x in s], alpha=1.0 - momentum)


def unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m
