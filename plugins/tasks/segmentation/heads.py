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


def build_head(kind: str, channels: Sequence[int], sizes: Sequence[tuple[int, int]], n_classes: int = 2,
               decoder_channels: int = 256) -> nn.Module:
    if kind == "linear":
        return LinearHead(channels[-1], n_classes)
    if kind == "upernet":
        return UperNetHead(channels, sizes, n_classes, decoder_channels=decoder_channels)
    raise DermbenchError(f"segmentation head {kind!r} unknown; choose head=linear or head=upernet")
