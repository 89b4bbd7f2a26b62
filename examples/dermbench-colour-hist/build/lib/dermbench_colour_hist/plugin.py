"""A dermbench model plugin: colour histograms as a hand-crafted baseline "backbone".

Dermatologists read colour (the C of ABCD); a learned model that cannot beat colour statistics has not
learned much. This module shows everything a model plugin needs:

1. a ``ModelInfo`` (metadata as data: size, preprocessing, capabilities, licence, training data);
2. a class implementing the Backbone protocol (``info``, ``weights_id``, ``transform``, ``embed``,
   ``patch_tokens``, ``to``);
3. a loader ``load(weights=None, device="cpu", **opts)`` and a ``register_models`` hook.

Nothing heavy is imported at module level, so ``dermbench --help`` stays instant with the plugin installed.
"""

from __future__ import annotations

from typing import Any, Sequence

from dermbench import hookimpl
from dermbench.api import DermbenchError, ModelInfo, Preprocess

BINS = 8

INFO = ModelInfo(
    name="colour-hist",
    family="handcrafted",
    source="custom",
    embed_dim=3 * BINS + 6,
    # values in [0, 1]: mean 0, std 1 leaves ToTensor's output as it is
    preprocess=Preprocess(crop=224, resize=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear",
                          note="resize 224 + centre crop, RGB in [0, 1] (no normalisation)"),
    patch_size=None,
    capabilities=frozenset({"cls"}),  # no patch tokens: segmentation tasks skip this model, saying why
    license="Apache-2.0",
    commercial_use=True,
    trained_on=(),  # nothing is learned
    citation="Example plugin of dermbench (docs/plugins.md)",
    description="Per-channel RGB histograms (8 bins) + opponent-colour means/stds; no weights",
    embed_note="30-d: 3x8 normalised RGB histogram counts, then mean and std of (R-G, (R+G)/2-B, (R+G+B)/3)",
    random_init=False,
)


class ColourHist:
    """The Backbone protocol, implemented directly (no dermbench helper classes needed)."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self.weights_id = "handcrafted:colour-hist-v1"  # no weights: a version string identifies the features
        self.transform = info.preprocess.build()
        self.device = "cpu"

    def embed(self, images: "Any") -> "Any":
        import torch

        if images.ndim != 4 or images.shape[1] != 3:
            raise DermbenchError(f"colour-hist expects (N, 3, H, W) images, got {tuple(images.shape)}")
        x = images.to(self.device).clamp(0, 1)
        n = x.shape[0]
        idx = (x * BINS).long().clamp(max=BINS - 1).flatten(2)  # (N, 3, HW) bin indices
        hist = torch.zeros(n, 3, BINS, device=x.device).scatter_add_(2, idx, torch.ones_like(idx, dtype=torch.float))
        hist = hist / idx.shape[-1]
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        opp = torch.stack([r - g, (r + g) / 2 - b, (r + g + b) / 3], 1).flatten(2)
        feats = torch.cat([hist.flatten(1), opp.mean(-1), opp.std(-1)], 1)
        return feats.float().cpu()

    def patch_tokens(self, images: "Any", layers: Sequence[int]) -> list["Any"]:
        raise DermbenchError("colour-hist has no patch tokens (capabilities: cls); segmentation skips it")

    def to(self, device: str) -> "ColourHist":
        self.device = str(device)
        return self


def load(weights: Any = None, device: str = "cpu", **opts: Any) -> ColourHist:
    """Loader called by dermbench: ``weights``/``opts`` are refused since this model has none."""
    if weights is not None or opts:
        raise DermbenchError("colour-hist has no weights and no options")
    return ColourHist(INFO).to(device)


@hookimpl
def register_models(register):
    register(INFO, load)
