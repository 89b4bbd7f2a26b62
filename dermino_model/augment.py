"""DINOv2 multi-crop augmentation: 2 global crops + N local crops, each from its own seeded RNG stream.

Defaults follow DINOv2: global RandomResizedCrop scale (0.32, 1.0), local (0.05, 0.32), horizontal flip,
colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur, solarisation p 0.2 on
global crop 2, ImageNet normalisation.

**Blur probabilities, chosen on purpose.** DINOv2's ``GaussianBlur(p)`` passed ``1 - p`` to
``RandomApply`` whose argument is the probability of *applying*, so its nominal (1.0, 0.1, 0.5) became
an effective (0.0, 0.9, 0.5) for (global 1, global 2, local); the released checkpoints were trained with
the effective values (dinov2 PR #411; dinov3 #286/#342 kept them by swapping the call-site values).
``blur="dinov2"`` (default) reproduces that effective behaviour, which is what "DINOv2 defaults" means
for DermINO; ``blur="intended"`` uses the nominal (1.0, 0.1, 0.5) that DINO v1 really applied; a
3-tuple sets them explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

BLUR_PRESETS = {"dinov2": (0.0, 0.9, 0.5), "intended": (1.0, 0.1, 0.5)}


def blur_probabilities(blur: str | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(blur, str):
        if blur not in BLUR_PRESETS:
            raise ValueError(f"blur {blur!r}: use one of {sorted(BLUR_PRESETS)} or three probabilities")
        return BLUR_PRESETS[blur]
    vals = tuple(float(v) for v in blur)
    if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"blur probabilities must be three values in [0, 1], got {blur!r}")
    return vals  # type: ignore[return-value]


@dataclass
class MultiCrop:
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    blur: Any = "dinov2"
    solarize_p: float = 0.2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        from torchvision import transforms as T

        pb1, pb2, pbl = blur_probabilities(self.blur)
        flip_color = [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        bic = T.InterpolationMode.BICUBIC

        def blur(p: float) -> Any:
            return T.RandomApply([T.GaussianBlur(9, sigma=(0.1, 2.0))], p=p)

        self.global1 = T.Compose([T.RandomResizedCrop(self.global_size, scale=self.global_scale, interpolation=bic),
                                  *flip_color, blur(pb1), *norm])
        self.global2 = T.Compose([T.RandomResizedCrop(self.global_size, scale=self.global_scale, interpolation=bic),
                                  *flip_color, blur(pb2), T.RandomSolarize(128, p=self.solarize_p), *norm])
        self.local = T.Compose([T.RandomResizedCrop(self.local_size, scale=self.local_scale, interpolation=bic),
                                *flip_color, blur(pbl), *norm])

    def __call__(self, image: Any, seed: int) -> dict[str, list]:
        """Crops of one PIL image; the same ``seed`` gives the same crops (torch RNG forked, global state untouched)."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            glob = [self.global1(image), self.global2(image)]
            loc = [self.local(image) for _ in range(self.n_local)]
        return {"global": glob, "local": loc}
