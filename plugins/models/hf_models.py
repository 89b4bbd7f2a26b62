"""transformers image-text backbones: MedSigLIP-448 (SigLIP) and MONET (CLIP ViT-L/14).

Both load from a Hugging Face-style directory (``save_pretrained`` layout: ``config.json``, weights,
tokenizer files) given by ``--weights``/``DERMBENCH_WEIGHTS_<NAME>`` or found in the HF cache; the
architecture is read from that ``config.json``, so what is declared below is checked against it at load.

Features (the ``text`` capability is documented in :mod:`dermbench_plugins.models.openclip_models`):

* ``embed``: ``get_image_features(...)``: SigLIP's MAP-pooled vision output (1152-d for MedSigLIP, no
  projection), CLIP's projected CLS token (768-d for MONET; what MONET scores concepts with);
* ``embed_image_for_text`` / ``encode_text``: the same, L2-normalised, in the shared image-text space;
* ``patch_tokens``: hidden states of the requested vision blocks, prefix (CLS) token dropped, with the
  vision tower's final LayerNorm applied (``post_layernorm``), as (N, D, h, w).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dermbench import hookimpl
from dermbench.api import IMAGENET, INCEPTION, DermbenchError, ModelInfo, Preprocess
from dermbench.api import BaseBackbone

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class HFSpec:
    repo: str
    kind: str  # siglip | clip
    gated: bool = False
    max_text_len: int = 64
    pad_to_max: bool = True  # SigLIP was trained with max_length padding


class HFImageTextBackbone(BaseBackbone):
    """A transformers ``SiglipModel``/``CLIPModel`` as a Backbone with a text tower."""

    def __init__(self, info: ModelInfo, model: "torch.nn.Module", weights_id: str, spec: HFSpec, tokenizer_dir: Path | None):
        super().__init__(info, weights_id, fixed_size=True)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.spec = spec
        self._tokenizer_dir = tokenizer_dir
        self._tokenizer: Any = None

    def _module(self) -> "torch.nn.Module":
        return self.model

    @staticmethod
    def _pooled(out: Any) -> "torch.Tensor":
        return out if hasattr(out, "shape") else out.pooler_output

    def _embed(self, x: "torch.Tensor") -> "torch.Tensor":
        return self._pooled(self.model.get_image_features(pixel_values=x))

    def num_layers(self) -> int:
        return self.model.config.vision_config.num_hidden_layers

    def _patch_tokens(self, x: "torch.Tensor", layers: list[int]) -> list["torch.Tensor"]:
        idx = self._norm_layers(layers)
        vm = self.model.vision_model
        out = vm(pixel_values=x, output_hidden_states=True)
        hs = out.hidden_states  # (embeddings, block 0, ..., block L-1)
        n_prefix = 1 if self.spec.kind == "clip" else 0
        maps = []
        for i in idx:
            t = vm.post_layernorm(hs[i + 1][:, n_prefix:])
            n, l, d = t.shape
            g = int(round(l**0.5))
            maps.append(t.transpose(1, 2).reshape(n, d, g, g))
        return maps

    # -- text ----------------------------------------------------------------------------------------
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            srcs = [str(self._tokenizer_dir)] if self._tokenizer_dir is not None else []
            srcs.append(self.spec.repo)
            errors = []
            for s in srcs:
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(s)
                    break
                except Exception as e:
                    errors.append(f"{s}: {type(e).__name__}")
            else:
                raise DermbenchError(
                    f"the text tower of {self.info.name!r} needs its tokenizer and none was found ({'; '.join(errors)}). "
                    f"Save the tokenizer files of https://huggingface.co/{self.spec.repo} in the weights directory."
                )
        return self._tokenizer

    def encode_text(self, texts: Sequence[str]) -> "torch.Tensor":
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise DermbenchError(f"encode_text expects a list of strings, got {type(texts).__name__}")
        tok = self.tokenizer()(
            list(texts), padding="max_length" if self.spec.pad_to_max else True, truncation=True,
            max_length=self.spec.max_text_len, return_tensors="pt",
        )
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        if self.spec.kind == "siglip":
            tok.pop("attention_mask", None)  # SigLIP's text tower is run without a mask (pads are real tokens)
        with torch.inference_mode():
            f = self._pooled(self.model.get_text_features(**tok))
        return torch.nn.functional.normalize(f.float(), dim=-1).cpu()

    def embed_image_for_text(self, images: "torch.Tensor") -> "torch.Tensor":
        import torch

        x = self._check(images)
        with torch.inference_mode():
            f = self._embed(x)
        return torch.nn.functional.normalize(f.float(), dim=-1).cpu()


# --------------------------------------------------------------------------------------------------
# Metadata

INFOS: dict[str, tuple[ModelInfo, HFSpec]] = {
    "medsiglip": (
        ModelInfo(
            name="medsiglip", family="siglip", source="hf", embed_dim=1152, patch_size=14,
            preprocess=Preprocess(
                crop=448, interpolation="bicubic", resize_mode="squash", **INCEPTION,
                note="SiglipImageProcessor of google/medsiglip-448: resize to 448x448 (squash), rescale 1/255, "
                "mean/std 0.5",
            ),
            capabilities=frozenset({"cls", "patch_tokens", "text"}),
            weights=("hf-hub:google/medsiglip-448",),
            license="Health AI Developer Foundations terms (gated)", commercial_use=False,
            trained_on=("hai-def-medical",),  # undisclosed medical image-text data, incl. dermatology
            citation="Sellergren et al., MedGemma Technical Report, arXiv:2507.05201",
            description="MedSigLIP-448: SigLIP-400M image/text encoders tuned on medical image-text data "
            "(radiology, dermatology, ophthalmology, pathology); 448 px. Commercial use only under the HAI-DEF terms",
            embed_note="MAP-pooled vision output (pooler_output of get_image_features, 1152-d; SigLIP has no CLS token "
            "and no projection)",
        ),
        HFSpec("google/medsiglip-448", "siglip", gated=True, max_text_len=64, pad_to_max=True),
    ),
    "monet": (
        ModelInfo(
            name="monet", family="clip", source="hf", embed_dim=768, patch_size=14,
            preprocess=Preprocess(
                crop=224, resize=224, interpolation="bicubic", **IMAGENET,
                note="MONET README: bicubic Resize 224, CenterCrop 224, ImageNet mean/std (not CLIP's)",
            ),
            capabilities=frozenset({"cls", "patch_tokens", "text"}),
            weights=("hf-hub:suinleelab/monet", "hf-hub:chanwkim/monet"),
            license="unknown (no licence file in suinleelab/MONET)", commercial_use=False,
            trained_on=("monet-pubmed-textbook-105k",),
            citation="Kim et al., Transparent medical image AI via an image-text foundation model grounded in medical "
            "literature, Nature Medicine 2024",
            description="MONET: CLIP ViT-L/14 fine-tuned on 105,550 dermatology image-text pairs from PubMed and textbooks",
            embed_note="projected CLS token (get_image_features, 768-d), the embedding MONET scores concepts with",
        ),
        HFSpec("suinleelab/monet", "clip", max_text_len=77, pad_to_max=False),
    ),
}


def _check_config(info: ModelInfo, cfg: dict[str, Any], path: Path) -> ModelInfo:
    """The directory's config must describe the declared model: embed dim and native size are refused when
    they differ (features and preprocessing would be wrong); a different patch size is taken from the
    config with a warning (it only changes the token grid)."""
    v = cfg.get("vision_config", {})
    dim = cfg.get("projection_dim") if cfg.get("model_type") == "clip" else v.get("hidden_size")
    found = {"embed_dim": dim, "image_size": v.get("image_size")}
    want = {"embed_dim": info.embed_dim, "image_size": info.image_size}
    bad = {k: (found[k], want[k]) for k in want if found[k] is not None and found[k] != want[k]}
    if bad:
        raise DermbenchError(
            f"{path}/config.json does not describe {info.name!r}: "
            + ", ".join(f"{k}={a} (expected {b})" for k, (a, b) in bad.items())
            + ". Is this the right model directory?"
        )
    patch = v.get("patch_size")
    if patch is not None and patch != info.patch_size:
        import warnings

        warnings.warn(f"{info.name}: config.json has patch_size {patch}, metadata says {info.patch_size}; using {patch}",
                      stacklevel=3)
        info = replace(info, patch_size=int(patch))
    return info


def load_hf(name: str, weights: Any = None, device: str = "cpu", seed: int = 0, check_config: bool = True,
            **opts: Any) -> HFImageTextBackbone:
    """Load ``name`` from a save_pretrained directory. ``check_config=False`` lets tests use a scaled-down
    config of the same architecture (the full MedSigLIP is 800M parameters)."""
    from dermbench.api import HubSource, env_var_for, resolve_weights

    if opts:
        raise DermbenchError(f"model {name!r} takes no options {sorted(opts)}")
    info, spec = INFOS[name]
    info = replace(info, weights_env=env_var_for(name))
    res = resolve_weights(info, weights, hub=HubSource(spec.repo, files=("config.json",), kind="dir", gated=spec.gated))
    path = res.path
    if not path.is_dir() or not (path / "config.json").exists():
        raise DermbenchError(
            f"model {name!r} loads from a Hugging Face-style directory (config.json + weights), got {path}. "
            f"Point --weights at the folder of `hf download {spec.repo}` (or a save_pretrained() folder)."
        )
    cfg = json.loads((path / "config.json").read_text())
    if check_config:
        info = _check_config(info, cfg, path)
    model = _from_pretrained(spec, path)
    return HFImageTextBackbone(info, model, res.weights_id, spec, path).to(device)


def _from_pretrained(spec: HFSpec, path: Path) -> "torch.nn.Module":
    """``from_pretrained`` with safetensors only, and missing/unexpected keys turned into a clear error."""
    import transformers

    cls = transformers.SiglipModel if spec.kind == "siglip" else transformers.CLIPModel
    try:
        model, info = cls.from_pretrained(str(path), output_loading_info=True, use_safetensors=None)
    except Exception as e:
        raise DermbenchError(f"cannot load {cls.__name__} from {path}: {type(e).__name__}: {e}") from e
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    missing = [k for k in bad.get("missing_keys", []) if not k.endswith("position_ids")]
    unexpected = [k for k in bad.get("unexpected_keys", []) if not k.endswith("position_ids")]
    mism = list(bad.get("mismatched_keys", []))
    if missing or unexpected or mism:
        raise DermbenchError(
            f"checkpoint {path} does not match {cls.__name__}: missing keys {missing[:10]}, unexpected keys "
            f"{unexpected[:10]}, shape mismatches {mism[:10]}"
        )
    return model


def _loader(name: str):
    def load(weights: Any = None, device: str = "cpu", seed: int = 0, **opts: Any) -> HFImageTextBackbone:
        return load_hf(name, weights=weights, device=device, seed=seed, **opts)

    load.__doc__ = f"Load {name} through transformers."
    return load


@hookimpl
def register_models(register):
    for name, (info, _) in INFOS.items():
        register(info, _loader(name))
