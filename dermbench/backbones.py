"""Model-agnostic Backbone helpers: input checks, batching-free frozen inference, timm adapter.

A Backbone is frozen: eval mode, ``torch.inference_mode`` inside every call, outputs returned as CPU
float32 tensors (the feature store turns them into numpy). ``TimmBackbone`` wraps any timm model; the
model plugins (and third parties such as the DermINO plugin) build the timm module, load weights through
:mod:`dermbench.weights` and hand it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from dermbench.api import DermbenchError, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    import torch


class BaseBackbone:
    """Shared plumbing: transform from ``info.preprocess``, device handling, input validation.

    Subclasses implement ``_embed(x)`` and ``_patch_tokens(x, layers)`` on a validated tensor already on
    the right device. ``fixed_size`` refuses other input sizes (PanDerm asserts 224; timm ViTs built without
    ``dynamic_img_size`` have a fixed position table): resizing silently would change the features.
    """

    def __init__(self, info: ModelInfo, weights_id: str, fixed_size: bool = True) -> None:
        self.info = info
        self.weights_id = weights_id
        self.transform: Callable[[Any], "torch.Tensor"] = info.preprocess.build()
        self.device = "cpu"
        self.fixed_size = fixed_size

    # -- protocol ----------------------------------------------------------------------------------
    def embed(self, images: "torch.Tensor") -> "torch.Tensor":
        import torch

        x = self._check(images)
        with torch.inference_mode():
            out = self._embed(x)
        return out.float().cpu()

    def patch_tokens(self, images: "torch.Tensor", layers: Sequence[int]) -> list["torch.Tensor"]:
        import torch

        x = self._check_patch_request(images, layers)
        with torch.inference_mode():
            maps = self._patch_tokens(x, list(layers))
        return [m.float().cpu() for m in maps]

    def embed_and_patch_tokens(self, images: "torch.Tensor",
                               layers: Sequence[int]) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        """``(embed(images), patch_tokens(images, layers))``, bit-identical to the two calls, from one forward
        pass where the model allows it: the feature store fills both cache entries from one pass over a split
        when a run needs both (segmentation and a pooled-feature task)."""
        import torch

        x = self._check_patch_request(images, layers)
        with torch.inference_mode():
            emb, maps = self._embed_and_patch_tokens(x, list(layers))
        return emb.float().cpu(), [m.float().cpu() for m in maps]

    def _check_patch_request(self, images: "torch.Tensor", layers: Sequence[int]) -> "torch.Tensor":
        if "patch_tokens" not in self.info.capabilities:
            raise DermbenchError(
                f"model {self.info.name!r} has no patch tokens (capabilities: {sorted(self.info.capabilities)}); "
                "tasks needing them (segmentation) skip it."
            )
        if not layers:
            raise DermbenchError("patch_tokens needs at least one layer index (e.g. [-1])")
        return self._check(images)

    def to(self, device: str) -> "BaseBackbone":
        self._module().to(device)
        self.device = str(device)
        return self

    # -- helpers -----------------------------------------------------------------------------------
    def _module(self) -> "torch.nn.Module":
        raise NotImplementedError

    def _embed(self, x: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def _patch_tokens(self, x: "torch.Tensor", layers: list[int]) -> list["torch.Tensor"]:
        raise NotImplementedError

    def _embed_and_patch_tokens(self, x: "torch.Tensor",
                                layers: list[int]) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        """Two passes unless a subclass knows its model computes both in one."""
        return self._embed(x), self._patch_tokens(x, layers)

    def num_layers(self) -> int:
        """How many layer indices ``patch_tokens`` accepts (blocks for ViTs, stages for CNNs)."""
        raise NotImplementedError

    def _check(self, images: "torch.Tensor") -> "torch.Tensor":
        """Validate (N, C, H, W): 1-channel input is repeated to RGB; other channel counts and, for
        fixed-size models, other sizes are refused with the fix."""
        import torch

        if not isinstance(images, torch.Tensor):
            raise DermbenchError(
                f"model {self.info.name!r} expects a torch.Tensor batch (N, 3, H, W), got {type(images).__name__}; "
                "apply backbone.transform to each PIL image and torch.stack them"
            )
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise DermbenchError(f"model {self.info.name!r} expects (N, 3, H, W) images, got shape {tuple(images.shape)}")
        c, h, w = images.shape[1:]
        if c == 1:
            images = images.expand(-1, 3, -1, -1)
        elif c != 3:
            raise DermbenchError(
                f"model {self.info.name!r} expects 3 colour channels, got {c} (shape {tuple(images.shape)}); "
                "convert images to RGB (backbone.transform does)"
            )
        size = self.info.image_size
        if self.fixed_size and (h, w) != (size, size):
            raise DermbenchError(
                f"model {self.info.name!r} takes {size}x{size} images, got {h}x{w}; "
                f"preprocess with backbone.transform ({self.info.preprocess.crop} px crop)"
            )
        if not images.is_floating_point():
            raise DermbenchError(
                f"model {self.info.name!r} expects normalised float images, got dtype {images.dtype}; "
                "use backbone.transform"
            )
        return images.to(self.device, dtype=torch.float32)

    def _norm_layers(self, layers: Sequence[int]) -> list[int]:
        n = self.num_layers()
        out = []
        for i in layers:
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise DermbenchError(
                    f"layer {i} out of range for model {self.info.name!r}: it has {n} "
                    f"({'blocks' if self.info.patch_size else 'stages'}), valid -{n}..{n - 1}"
                )
            out.append(j)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, weights={self.weights_id}, device={self.device})"


class TimmBackbone(BaseBackbone):
    """A timm model (created with ``num_classes=0``) as a Backbone.

    ``embed`` = ``forward_head(forward_features(x), pre_logits=True)``, which is what timm's global pool
    of the model gives: the CLS token after the final norm for ViTs with ``global_pool='token'`` (DINOv2,
    augreg ViT, PanDerm, DermINO), MAP-attention pooling for SigLIP, global average pooling for CNNs.
    ``patch_tokens`` = ``forward_intermediates(..., output_fmt='NCHW', intermediates_only=True)``: for ViTs
    each block's patch tokens (prefix/register tokens dropped) with the final norm applied (``norm=True``,
    as DINOv2's ``get_intermediate_layers(norm=True)``) as (N, D, H/p, W/p); for CNNs the stem and stages.
    """

    def __init__(
        self,
        info: ModelInfo,
        model: "torch.nn.Module",
        weights_id: str,
        fixed_size: bool | None = None,
        norm_intermediates: bool = True,
    ) -> None:
        if fixed_size is None:
            fixed_size = not getattr(model, "dynamic_img_size", False)
        super().__init__(info, weights_id, fixed_size=fixed_size)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.norm_intermediates = norm_intermediates

    def _module(self) -> "torch.nn.Module":
        return self.model

    def _embed(self, x: "torch.Tensor") -> "torch.Tensor":
        feats = self.model.forward_features(x)
        return self.model.forward_head(feats, pre_logits=True)

    def num_layers(self) -> int:
        blocks = getattr(self.model, "blocks", None)
        if blocks is not None:
            return len(blocks)
        return len(getattr(self.model, "feature_info", [])) or 5

    def _patch_tokens(self, x: "torch.Tensor", layers: list[int]) -> list["torch.Tensor"]:
        return self._intermediates(x, layers, final=False)[1]

    def _intermediates(self, x: "torch.Tensor", layers: list[int],
                       final: bool) -> tuple["torch.Tensor | None", list["torch.Tensor"]]:
        idx = self._norm_layers(layers)
        uniq = sorted(set(idx))
        kw: dict[str, Any] = dict(indices=uniq, output_fmt="NCHW", intermediates_only=not final)
        if getattr(self.model, "blocks", None) is not None:
            kw["norm"] = self.norm_intermediates
        out = self.model.forward_intermediates(x, **kw)
        last, maps = out if final else (None, out)
        by = dict(zip(uniq, maps, strict=True))
        return last, [by[i] for i in idx]

    def _embed_and_patch_tokens(self, x: "torch.Tensor",
                                layers: list[int]) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        """One pass for timm's VisionTransformer (forward_intermediates runs every block and the final norm,
        exactly forward_features' ops: bit-identical, tested); two passes for anything that overrides them."""
        from timm.models.vision_transformer import VisionTransformer

        cls = type(self.model)
        if not all(getattr(cls, f, None) is getattr(VisionTransformer, f)
                   for f in ("forward_features", "forward_intermediates", "forward_head")):
            return super()._embed_and_patch_tokens(x, layers)
        last, maps = self._intermediates(x, layers, final=True)
        return self.model.forward_head(last, pre_logits=True), maps


# --------------------------------------------------------------------------------------------------
# timm construction + weights


def create_timm(arch: str, *, seed: int | None = None, **kwargs: Any) -> "torch.nn.Module":
    """``timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)``; with ``seed`` the random init
    is drawn from a private generator state so it is reproducible and leaves the global RNG untouched."""
    import timm
    import torch

    kwargs.setdefault("num_classes", 0)
    if seed is None:
        return timm.create_model(arch, pretrained=False, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=False, **kwargs)


def timm_filter(model: "torch.nn.Module", sd: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Run the checkpoint filter of the model's timm module (original DINOv2/OpenAI-CLIP/open_clip layouts
    → timm keys; position tables resampled to the model's grid, e.g. DINOv2's 518 px table to 224)."""
    import importlib

    mod = importlib.import_module(type(model).__module__)
    fn = getattr(mod, "checkpoint_filter_fn", None)
    sd = dict(sd)
    if fn is None:
        return sd
    return fn(sd, model)


def load_timm_weights(
    model: "torch.nn.Module",
    sd: Mapping[str, "torch.Tensor"],
    source: str,
    convert: Callable[[dict[str, "torch.Tensor"], "torch.nn.Module"], dict[str, "torch.Tensor"]] | None = None,
) -> None:
    """Convert (``convert`` or timm's filter), drop classifier heads the backbone does not have, then load
    strictly: missing/unexpected keys fail with their names."""
    sd = dict(sd)
    sd = convert(sd, model) if convert is not None else timm_filter(model, sd)
    own = model.state_dict()
    # a num_classes=0 backbone has no classifier: checkpoints with one (fc.*, head.*) are fine
    for k in [k for k in sd if k not in own and k.startswith(("fc.", "head."))]:
        sd.pop(k)
    from dermbench.weights import load_into

    load_into(model, sd, source)
