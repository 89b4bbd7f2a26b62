"""DINO projection head and the supervised prototype layer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with an explicit ``g * v / ||v||`` weight (per output row).

    Written out instead of ``torch.nn.utils.weight_norm`` (deprecated) so parameter names are stable:
    ``last_layer.v`` and ``last_layer.g``; ``g`` starts at 1 and stays trainable, as in DINOv2, so the
    logits start as cosines bounded by 1.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.g = nn.Parameter(torch.ones(out_dim))
        nn.init.trunc_normal_(self.v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.v * (self.g / self.v.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)
        return F.linear(x, w)


class DINOHead(nn.Module):
    """MLP (in -> hidden -> GELU ... -> bottleneck), L2 normalisation, then the weight-normed prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (max(nlayers, 1) - 1) + [bottleneck_dim]
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x)
        eps = 1e-6 if z.dtype in (torch.float16, torch.bfloat16) else 1e-12
        z = F.normalize(z, dim=-1, p=2, eps=eps)
        return self.last_layer(z)


class PrototypeClassifier(nn.Module):
    """DermINO's supervised term: ``logits = X_cls W^T`` with W (n_classes, D) initialised from text embeddings.

    ``trainable=False`` is the authors' code: W is built outside the student (``SSLMetaArch.linear``), so it
    is never in the optimiser, gets no weight decay and keeps its unit-norm text rows; gradients still flow
    *through* it into the backbone. ``trainable=True`` is the paper's wording ("prototype initialization").
    """

    def __init__(self, dim: int, n_classes: int, init: torch.Tensor | None = None, trainable: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim), requires_grad=trainable)
        if init is not None:
            if tuple(init.shape) != (n_classes, dim):
                raise ValueError(f"prototype init has shape {tuple(init.shape)}, expected {(n_classes, dim)}")
            with torch.no_grad():
                self.weight.copy_(init)
        else:
            nn.init.trunc_normal_(self.weight, std=0.02)

    @property
    def trainable(self) -> bool:
        return self.weight.requires_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):  # logits feed a BCE: keep them fp32
            return F.linear(x.float(), self.weight.float())
