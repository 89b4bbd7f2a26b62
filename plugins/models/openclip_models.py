"""open_clip image-text backbones: OpenAI CLIP ViT-B/16, SigLIP ViT-B/16, BiomedCLIP.

Image-text models declare the ``text`` capability and add two methods to the Backbone API:

* ``encode_text(list[str]) -> (N, D)``: L2-normalised projected text embeddings;
* ``embed_image_for_text(images) -> (N, D)``: L2-normalised projected image embeddings in the same space,
  so zero-shot scores are plain dot products (scaled by ``logit_scale`` if a task wants logits).

``embed`` is the projected image embedding without normalisation (``encode_image``), the feature the CLIP
authors' linear-probe example uses; SigLIP has no CLS token and no projection: its embed is the MAP
(attention-pool) output. ``patch_tokens`` are the vision tower's block outputs with the final norm
(``normalize_intermediates=True``), prefix tokens dropped, as (N, width, h, w).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dermbench import hookimpl
from dermbench.api import INCEPTION, OPENAI_CLIP, DermbenchError, ModelInfo, Preprocess
from dermbench.api import BaseBackbone

if TYPE_CHECKING:  # pragma: no cover
    import torch

EMBED_NOTE = ("projected image embedding, encode_image(normalize=False) ({what}); embed_image_for_text is its "
              "L2-normalised form, encode_text the matching L2-normalised text embedding")

#: BiomedBERT (microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract) architecture, so BiomedCLIP's text tower
#: can be built without fetching that repo: its weights come from the BiomedCLIP checkpoint itself.
BIOMEDBERT_CONFIG = {
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2,
    "vocab_size": 30522,
}
BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
#: open_clip_config.json of the BiomedCLIP release (used when the weights directory does not carry one)
BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    },
    "preprocess_cfg": {"mean": list(OPENAI_CLIP["mean"]), "std": list(OPENAI_CLIP["std"])},
}


@dataclass(frozen=True)
class ClipSpec:
    """How to build one name: open_clip model name (or an inline config), hub repo, tokenizer source."""

    model_name: str | None
    repo: str
    tokenizer: str  # "simple" (bundled BPE) or "hf" (tokenizer files of the hub repo / weights folder)
    context_length: int = 77
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenClipBackbone(BaseBackbone):
    """An open_clip model as a Backbone with a text tower (see the module docstring for the features)."""

    def __init__(self, info: ModelInfo, model: "torch.nn.Module", weights_id: str, tokenizer_factory: Any) -> None:
        super().__init__(info, weights_id, fixed_size=True)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._tokenizer_factory = tokenizer_factory
        self._tokenizer: Any = None

    def _module(self) -> "torch.nn.Module":
        return self.model

    def _embed(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.model.encode_image(x, normalize=False)

    def _vision_blocks(self) -> Any:
        v = self.model.visual
        if hasattr(v, "trunk"):
            return v.trunk.blocks
        return v.transformer.resblocks

    def num_layers(self) -> int:
        return len(self._vision_blocks())

    def _patch_tokens(self, x: "torch.Tensor", layers: list[int]) -> list["torch.Tensor"]:
        idx = self._norm_layers(layers)
        uniq = sorted(set(idx))
        out = self.model.visual.forward_intermediates(
            x, indices=uniq, normalize_intermediates=True, intermediates_only=True, output_fmt="NCHW"
        )
        maps = out["image_intermediates"] if isinstance(out, dict) else out
        by = dict(zip(uniq, maps, strict=True))
        return [by[i] for i in idx]

    # -- text ----------------------------------------------------------------------------------------
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._tokenizer_factory()
        return self._tokenizer

    def encode_text(self, texts: Sequence[str]) -> "torch.Tensor":
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise DermbenchError(f"encode_text expects a list of strings, got {type(texts).__name__}")
        tokens = self.tokenizer()(list(texts)).to(self.device)
        with torch.inference_mode():
            return self.model.encode_text(tokens, normalize=True).float().cpu()

    def embed_image_for_text(self, images: "torch.Tensor") -> "torch.Tensor":
        import torch

        x = self._check(images)
        with torch.inference_mode():
            return self.model.encode_image(x, normalize=True).float().cpu()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


# --------------------------------------------------------------------------------------------------
# Metadata


def _infos() -> dict[str, tuple[ModelInfo, ClipSpec]]:
    caps = frozenset({"cls", "patch_tokens", "text"})
    clip_pre = Preprocess(crop=224, resize=224, interpolation="bicubic", **OPENAI_CLIP,
                          note="OpenAI CLIP: bicubic resize shorter side 224, centre crop 224, CLIP mean/std")
    siglip_pre = Preprocess(crop=224, interpolation="bicubic", resize_mode="squash", **INCEPTION,
                            note="SigLIP (open_clip webli cfg): squash-resize to 224x224 (no crop), bicubic, mean/std 0.5")
    bmc_pre = Preprocess(crop=224, resize=224, interpolation="bicubic", **OPENAI_CLIP,
                         note="BiomedCLIP open_clip_config.json: CLIP mean/std, bicubic resize 224 + centre crop")
    return {
        "clip-b16": (
            ModelInfo(
                name="clip-b16", family="clip", source="open_clip", embed_dim=512, patch_size=16, preprocess=clip_pre,
                capabilities=caps, weights=("open_clip:ViT-B-16-quickgelu/openai", "hf-hub:timm/vit_base_patch16_clip_224.openai"),
                license="MIT", commercial_use=True, trained_on=("openai-wit-400m",),
                citation="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, "
                "ICML 2021, arXiv:2103.00020",
                description="OpenAI CLIP ViT-B/16 (QuickGELU), image-text contrastive on 400M web pairs",
                embed_note=EMBED_NOTE.format(what="512-d after the visual projection of the CLS token"),
            ),
            ClipSpec("ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.openai", "simple"),
        ),
        "siglip-b16": (
            ModelInfo(
                name="siglip-b16", family="siglip", source="open_clip", embed_dim=768, patch_size=16,
                preprocess=siglip_pre, capabilities=caps,
                weights=("open_clip:ViT-B-16-SigLIP/webli", "hf-hub:timm/ViT-B-16-SigLIP"),
                license="Apache-2.0", commercial_use=True, trained_on=("webli",),
                citation="Zhai et al., Sigmoid Loss for Language Image Pre-Training, ICCV 2023, arXiv:2303.15343",
                description="SigLIP ViT-B/16 (WebLI), sigmoid image-text loss; no CLS token",
                embed_note=EMBED_NOTE.format(what="768-d MAP attention-pool output; SigLIP has no CLS token and no projection"),
            ),
            ClipSpec("ViT-B-16-SigLIP", "timm/ViT-B-16-SigLIP", "hf", context_length=64,
                     tokenizer_kwargs={"clean": "canonicalize"}),
        ),
        "biomedclip": (
            ModelInfo(
                name="biomedclip", family="biomedclip", source="open_clip", embed_dim=512, patch_size=16,
                preprocess=bmc_pre, capabilities=caps, weights=(f"hf-hub:{BIOMEDCLIP_REPO}",),
                license="MIT", commercial_use=True, trained_on=("pmc-15m",),
                citation="Zhang et al., BiomedCLIP: a multimodal biomedical foundation model pretrained from fifteen "
                "million scientific image-text pairs, arXiv:2303.00915",
                description="BiomedCLIP: ViT-B/16 + PubMedBERT, contrastive on 15M PubMed Central figure-caption pairs "
                "(model card: research use intended)",
                embed_note=EMBED_NOTE.format(what="512-d linear projection of the CLS token"),
            ),
            ClipSpec(None, BIOMEDCLIP_REPO, "hf", context_length=256, files=("open_clip_pytorch_model.bin",)),
        ),
    }


INFOS = _infos()


# --------------------------------------------------------------------------------------------------
# Construction


def biomedbert_config_dir() -> Path:
    """A local folder with BiomedBERT's config.json (written once), so no hub lookup is needed."""
    from dermbench.api import cache_dir

    d = cache_dir() / "hf-configs" / "BiomedBERT-base-uncased-abstract"
    f = d / "config.json"
    if not f.exists() or json.loads(f.read_text()) != BIOMEDBERT_CONFIG:
        d.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(BIOMEDBERT_CONFIG, indent=1))
        tmp.replace(f)
    return d


def build_model(name: str, weights_dir: Path | None = None, seed: int = 0) -> "torch.nn.Module":
    """The architecture of ``name`` with random weights (built offline)."""
    import torch

    info, spec = INFOS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.model_name is not None:
            import open_clip

            return open_clip.create_model(spec.model_name, pretrained=None)
        from open_clip.model import CustomTextCLIP

        cfg = BIOMEDCLIP_CONFIG
        if weights_dir is not None and (weights_dir / "open_clip_config.json").exists():
            cfg = json.loads((weights_dir / "open_clip_config.json").read_text())
        model_cfg = json.loads(json.dumps(cfg["model_cfg"]))
        model_cfg["text_cfg"]["hf_model_name"] = str(biomedbert_config_dir())
        model_cfg["text_cfg"]["hf_model_pretrained"] = False
        return CustomTextCLIP(**model_cfg)


def _convert(model: "torch.nn.Module", sd: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """open_clip's own fix-ups of released checkpoints (the steps of open_clip.load_checkpoint)."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        if key in sd and getattr(model, key, None) is not None and model.state_dict()[key].ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(model.state_dict()[key].shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None and "logit_scale" in sd:
        import torch

        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    own = model.state_dict()
    for k in [k for k in sd if k.endswith("position_ids") and k not in own]:
        del sd[k]
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    return sd


def _tokenizer_factory(name: str, weights_path: Path | None):
    info, spec = INFOS[name]

    def make() -> Any:
        from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

        if spec.tokenizer == "simple":
            return SimpleTokenizer(context_length=spec.context_length)
        sources: list[str] = []
        if weights_path is not None:
            folder = weights_path if weights_path.is_dir() else weights_path.parent
            if any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")):
                sources.append(str(folder))
        sources.append(spec.repo)
        errors = []
        for src in sources:
            try:
                return HFTokenizer(src, context_length=spec.context_length, **spec.tokenizer_kwargs)
            except Exception as e:  # offline cache miss, missing files
                errors.append(f"{src}: {type(e).__name__}")
        raise DermbenchError(
            f"the text tower of {name!r} needs its tokenizer files and none were found ({'; '.join(errors)}). "
            f"Put the tokenizer files of https://huggingface.co/{spec.repo} next to the weights, or fetch them: "
            f"`hf download {spec.repo}` (HF_HUB_OFFLINE blocks downloads)."
        )

    return make


def load_openclip(name: str, weights: Any = None, device: str = "cpu", seed: int = 0, **opts: Any) -> OpenClipBackbone:
    from dermbench.api import (
        HubSource,
        env_var_for,
        extract_state_dict,
        load_into,
        read_checkpoint,
        resolve_weights,
        strip_prefixes,
    )

    if opts:
        raise DermbenchError(f"model {name!r} takes no options {sorted(opts)}")
    info, spec = INFOS[name]
    info = replace(info, weights_env=env_var_for(name))
    res = resolve_weights(info, weights, hub=HubSource(spec.repo, files=spec.files))
    wdir = res.path if res.path.is_dir() else res.path.parent
    model = build_model(name, weights_dir=wdir, seed=seed)
    raw = read_checkpoint(_weights_file(res.path, spec))
    sd = strip_prefixes(extract_state_dict(raw, source=str(res.path)), ("module.",))
    load_into(model, _convert(model, sd), source=str(res.path))
    return OpenClipBackbone(info, model, res.weights_id, _tokenizer_factory(name, res.path)).to(device)


def _weights_file(path: Path, spec: ClipSpec) -> Path:
    if not path.is_dir():
        return path
    for f in spec.files:
        if (path / f).exists():
            return path / f
    raise DermbenchError(f"directory {path} holds none of {list(spec.files)}; pass the weights file itself")


def _loader(name: str):
    def load(weights: Any = None, device: str = "cpu", seed: int = 0, **opts: Any) -> OpenClipBackbone:
        return load_openclip(name, weights=weights, device=device, seed=seed, **opts)

    load.__doc__ = f"Load {name} through open_clip."
    return load


@hookimpl
def register_models(register):
    for name, (info, _) in INFOS.items():
        register(info, _loader(name))
