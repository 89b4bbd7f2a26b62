"""Trainable segmentation heads on frozen patch maps: DermINO's linear head and a UperNet head.

Imported only inside the task's ``run`` (it imports torch). Both heads map a list of (B, C_i, h_i, w_i) maps to
(B, n_classes, h, w) logits at the resolution of their finest input; the task upsamples them to the mask size.

* ``LinearHead``: BatchNorm -> Dropout2d(0.1) -> 1x1 conv on the last map (DermINO / DINOv2 "linear" protocol).
* ``UperNetHead``: a multi-scale pyramid fed to segmentation-models-pytorch's UPerNet decoder (PPM + FPN + fusion).
  ViTs give maps of one resolution: the pyramid is built as in BEiT / ViTDet practice, 4x up (two stride-2
  transposed convs), 2x up (one), identity, 2x down (max-pool); as in ViTDet's simple feature pyramid each
  upsampling halves the channels (D -> D/2 -> D/4), which keeps the finest level cheap for ViT-L/g.
  CNNs already give a pyramid (their stages), used as is, finest first.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

import torch
from torch import nn

from dermbench.api import DermbenchError

SMP_HINT = "pip install 'dermbench[seg]' (segmentation-models-pytorch) to use head=upernet"


def smp_available() -> bool:
    return importlib.util.find_spec("segmentation_models_pytorch") is not None


class LinearHead(nn.Module):
    """BN -> Dropout2d(0.1) -> 1x1 conv on the last map of the list."""

    def __init__(self, in_channels: int, n_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.drop = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(in_channels, n_classes, kernel_size=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.drop(self.bn(feats[-1])))


class ViTPyramid(nn.Module):
    """Four same-resolution ViT maps -> 4x up (D/4 ch), 2x up (D/2), 1x (D), 2x down (D): a simple feature pyramid."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        if len(channels) != 4:
            raise DermbenchError(
                f"head=upernet on a ViT needs 4 layers (one per pyramid level), got {len(channels)}; "
                "pass e.g. --task-opt segmentation.layers=auto (4 evenly spaced blocks)"
            )
        c0, c1 = channels[0], channels[1]
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(c0, c0 // 2, kernel_size=2, stride=2),
            nn.BatchNorm2d(c0 // 2),
            nn.GELU(),
            nn.ConvTranspose2d(c0 // 2, c0 // 4, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(c1, c1 // 2, kernel_size=2, stride=2)
        self.same = nn.Identity()
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_channels = [c0 // 4, c1 // 2, channels[2], channels[3]]

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up4(feats[0]), self.up2(feats[1]), self.same(feats[2]), self.down2(feats[3])]


class UperNetHead(nn.Module):
    """Pyramid (built for ViTs, given for CNNs) -> smp UPerNetDecoder -> Dropout2d(0.1) -> 1x1 conv."""

    def __init__(self, channels: Sequence[int], sizes: Sequence[tuple[int, int]], n_classes: int = 2,
                 decoder_channels: int = 256, dropout: float = 0.1):
        super().__init__()
        if not smp_available():
            raise DermbenchError(f"segmentation head 'upernet' needs segmentation-models-pytorch: {SMP_HINT}")
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        if len(channels) < 2:
            raise DermbenchError(f"head=upernet needs at least 2 layers, got {len(channels)}; use layers=auto")
        same_res = len(set(sizes)) == 1
        self.pyramid: ViTPyramid | None = None
        if same_res:
            self.pyramid = ViTPyramid(channels)
            self.order = list(range(len(channels)))
            chans = self.pyramid.out_channels
        else:
            # a CNN's stages: finest first, as the decoder expects
            self.order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1])
            chans = [channels[i] for i in self.order]
        # smp's decoder drops the first two entries (the 1/1 and 1/2 levels of an smp encoder)
        self.decoder = UPerNetDecoder(encoder_channels=[1, 1, *chans], encoder_depth=len(chans) + 1,
                                      decoder_channels=decoder_channels)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(decoder_channels, n_classes, kernel_size=1)
        self.built_pyramid = same_res

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [feats[i] for i in self.order]
        if self.pyramid is not None:
            levels = self.pyramid(levels)
        dummy = levels[0]  # placeholders for the two levels the decoder skips
        out = self.decoder([dummy, dummy, *levels])
        return self.cls(self.drop(out))


def _cbr(cin: int, cout: int, k: int) -> nn.Sequential:
    """conv (no bias) -> BN -> ReLU, the unit of mmseg's UPerHead."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MMSegUPerHead(nn.Module):
    """UPerNet decoder as mmsegmentation's ``UPerHead`` defines it, on the maps as given (no pyramid built): the
    DermINO authors' ``segment_upernet`` setup (ViT blocks 2/5/8/11, all 16x16, ``channels`` = D, dropout 0).

    PPM on the last map (adaptive average pools 1, 2, 3, 6 -> 1x1 conv-BN-ReLU -> bilinear back; concat with
    the map; 3x3 bottleneck), 1x1 lateral conv-BN-ReLU on the others, top-down addition, 3x3 FPN conv-BN-ReLU
    on each but the last, all resized to the first map, concatenated, 3x3 fusion, dropout, 1x1 classifier."""

    def __init__(self, channels: Sequence[int], n_classes: int = 2, decoder_channels: int = 0,
                 dropout: float = 0.0, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        if len(channels) < 2:
            raise DermbenchError(f"decoder=mmseg needs at least 2 layers, got {len(channels)}; use layers=auto")
        C = int(decoder_channels) or int(channels[-1])  # 0: the backbone's width (the authors' D channels)
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _cbr(channels[-1], C, 1))
                                 for s in pool_scales)
        self.psp_bottleneck = _cbr(channels[-1] + len(pool_scales) * C, C, 3)
        self.lateral = nn.ModuleList(_cbr(c, C, 1) for c in channels[:-1])
        self.fpn = nn.ModuleList(_cbr(C, C, 3) for _ in channels[:-1])
        self.fuse = _cbr(len(channels) * C, C, 3)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.cls = nn.Conv2d(C, n_classes, kernel_size=1)
        self.channels = C

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F

        def up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return x if x.shape[-2:] == like.shape[-2:] else F.interpolate(x, size=like.shape[-2:], mode="bilinear",
                                                                          align_corners=False)

        top = feats[-1]
        psp = self.psp_bottleneck(torch.cat([top, *[up(m(top), top) for m in self.ppm]], dim=1))
        lat = [conv(f) for conv, f in zip(self.lateral, feats[:-1])] + [psp]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + up(lat[i], lat[i - 1])
        outs = [conv(x) for conv, x in zip(self.fpn, lat[:-1])] + [lat[-1]]
        fused = self.fuse(torch.cat([up(o, outs[0]) for o in outs], dim=1))
        return self.cls(self.drop(fused))


def build_head(kind: str, channels: Sequence[int], sizes: Sequence[tuple[int, int]], n_classes: int = 2,
               decoder_channels: int = 256, decoder: str = "vitdet") -> nn.Module:
    if kind == "linear":
        return LinearHead(channels[-1], n_classes)
    if kind == "upernet" and decoder == "mmseg":
        return MMSegUPerHead(channels, n_classes, decoder_channels=decoder_channels)
    if kind == "upernet":
        return UperNetHead(channels, sizes, n_classes, decoder_channels=decoder_channels or 256)
    raise DermbenchError(f"segmentation head {kind!r} unknown; choose head=linear or head=upernet")
