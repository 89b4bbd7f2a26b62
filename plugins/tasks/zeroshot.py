"""Zero-shot classification with an image-text model: class prompts from templates, no training labels used.

Why: image-text models (CLIP, SigLIP, BiomedCLIP, MedSigLIP, MONET) can classify from class names alone;
that is a protocol of its own and the fairest comparison of their text alignment. Vision-only models are
skipped by the runner (``capabilities={"text"}``).

Protocol (CLIP's prompt ensembling): for each class, every template is filled with the class's prompt name,
the L2-normalised text embeddings are averaged and re-normalised; an image's class scores are the softmax of
``logit_scale * cos(image, class)`` (the model's own learned temperature, 100 when it has none), so ECE and
Brier measure the calibration of the model as released. Templates can be set per dataset (``templates``: a
list, or a dict ``{dataset: [..], "default": [..]}``); class prompt names default to the dataset's label
names with known abbreviations spelled out (``class_names`` overrides them).

Image embeddings come from the feature store when the model's ``embed`` is the unnormalised form of
``embed_image_for_text`` (checked on two images per cell); otherwise from raw forward passes.
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import DermbenchError, Split, TaskInfo, TaskOutput
from dermbench_plugins.tasks._shared.classification import (
    CLASSIFICATION_METRICS, calibration_artifacts, labelled, n_classes, predictions,
)

GENERIC_TEMPLATES = (
    "a photo of {}.",
    "an image of {}, a skin condition.",
    "a close-up photo of {} on the skin.",
    "{}",
)
DERMOSCOPY_TEMPLATES = (
    "a dermoscopic image of {}.",
    "a dermatoscopy photo of {}, a skin lesion.",
    "a dermoscopy image showing {}.",
    "{}",
)
CLINICAL_TEMPLATES = (
    "a clinical photo of {}.",
    "a photo of {}, a skin lesion.",
    "a close-up clinical image of {} on the skin.",
    "{}",
)
SEVERITY_TEMPLATES = (
    "a photo of {} acne.",
    "a clinical photo of the face with {} acne vulgaris.",
    "skin with {} acne.",
)

#: default template set per dataset name (exact name first, then the longest matching prefix)
DATASET_TEMPLATES: dict[str, tuple[str, ...]] = {
    "ham10000": DERMOSCOPY_TEMPLATES, "isic": DERMOSCOPY_TEMPLATES, "ph2": DERMOSCOPY_TEMPLATES,
    "derm7pt-derm": DERMOSCOPY_TEMPLATES, "dermamnist": DERMOSCOPY_TEMPLATES,
    "derm7pt-clinic": CLINICAL_TEMPLATES, "derm7pt": DERMOSCOPY_TEMPLATES,
    "pad-ufes-20": CLINICAL_TEMPLATES, "fitzpatrick17k": CLINICAL_TEMPLATES, "ddi": CLINICAL_TEMPLATES,
    "scin": CLINICAL_TEMPLATES, "mednode": CLINICAL_TEMPLATES, "waterloo": CLINICAL_TEMPLATES,
    "dermsynth": CLINICAL_TEMPLATES, "dermsynth-severity": SEVERITY_TEMPLATES, "acne04": SEVERITY_TEMPLATES,
}

#: class abbreviations used by public datasets, spelled out for the text tower (case-insensitive)
CLASS_ALIASES = {
    "akiec": "actinic keratosis", "ack": "actinic keratosis", "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis", "df": "dermatofibroma", "mel": "melanoma", "nv": "melanocytic nevus",
    "nev": "melanocytic nevus", "vasc": "vascular lesion", "scc": "squamous cell carcinoma",
    "sek": "seborrheic keratosis", "naevus": "nevus",
}

INFO = TaskInfo(
    name="zeroshot",
    description="zero-shot classification from class prompts (template ensemble per dataset, softmax over "
    "logit_scale * cosine); needs a text tower",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"text"}),
    metrics=CLASSIFICATION_METRICS,
    primary_metric="auroc_macro",
    defaults={"templates": None, "class_names": None, "test_split": "test", "use_cache": True},
)


def templates_for(dataset: str, option: Any) -> list[str]:
    """The template list for ``dataset``: from the option (list, or dict by dataset with "default"), else
    the built-in set for the dataset (exact name, then longest prefix), else the generic set."""
    chosen: Any = None
    if isinstance(option, dict):
        chosen = option.get(dataset, option.get("default"))
    elif option is not None:
        chosen = [option] if isinstance(option, str) else option
    if chosen is None:
        hits = [k for k in DATASET_TEMPLATES if dataset == k or dataset.startswith(k)]
        chosen = DATASET_TEMPLATES[max(hits, key=len)] if hits else GENERIC_TEMPLATES
    out = list(chosen)
    bad = [t for t in out if not isinstance(t, str) or t.count("{}") != 1]
    if not out or bad:
        raise DermbenchError(
            f"zeroshot templates for {dataset!r} must be a non-empty list of strings with exactly one '{{}}' "
            f"for the class name; bad: {bad or out!r}. Example: --task-opt 'zeroshot.templates=[\"a photo of {{}}.\"]'"
        )
    return out


def class_prompt_names(split: Split, option: Any) -> list[str]:
    """Class names as the text tower should read them (abbreviations expanded, underscores to spaces)."""
    names = list(split.dataset.label_names or split.dataset.info.label_names)
    C = n_classes(split)
    if option is not None:
        if isinstance(option, dict):
            names = [str(option.get(n, n)) for n in names]
        else:
            names = [str(x) for x in option]
        if len(names) != C:
            raise DermbenchError(
                f"zeroshot class_names has {len(names)} entries but {split.dataset.name} has {C} classes "
                f"({list(split.dataset.label_names)}); give one name per class, in label order, or a dict"
            )
        return names
    if len(names) != C:
        raise DermbenchError(
            f"zeroshot needs class names and {split.dataset.name} declares {len(names)} for {C} classes; "
            "pass --task-opt zeroshot.class_names='[\"...\", ...]'"
        )
    return [CLASS_ALIASES.get(n.strip().lower(), n.replace("_", " ").strip()) for n in names]


def class_embeddings(bb: Any, names: list[str], templates: list[str]) -> Any:
    """(C, D) L2-normalised mean of the normalised text embeddings of each class's prompts."""
    import torch

    prompts = [t.format(n) for n in names for t in templates]
    T = torch.cat([torch.as_tensor(bb.encode_text(prompts[lo : lo + 256]), dtype=torch.float32).cpu()
                   for lo in range(0, len(prompts), 256)])
    T = torch.nn.functional.normalize(T, dim=-1).reshape(len(names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(T, dim=-1)


def _raw_image_embeddings(ctx: Any, bb: Any, split: Split, batch: int = 32) -> Any:
    import torch

    out = []
    samples = split.samples
    with ctx.progress(f"image-text embeddings {ctx.model_info.name} / {split.dataset.name}:{split.name}",
                      len(split)) as adv:
        for lo in range(0, len(samples), batch):
            x = torch.stack([bb.transform(s.load_image()) for s in samples[lo : lo + batch]])
            out.append(torch.as_tensor(bb.embed_image_for_text(x), dtype=torch.float32).cpu())
            adv(len(x))
    return torch.cat(out)


def image_embeddings(ctx: Any, bb: Any, split: Split, use_cache: bool) -> tuple[Any, str]:
    """(n, D) L2-normalised image embeddings in the text space, and where they came from."""
    import torch

    if use_cache:
        feats = torch.tensor(ctx.features(split), dtype=torch.float32)
        probe = torch.stack([bb.transform(s.load_image()) for s in split.samples[:2]])
        direct = torch.as_tensor(bb.embed_image_for_text(probe), dtype=torch.float32).cpu()
        direct = torch.nn.functional.normalize(direct, dim=-1)
        cached = torch.nn.functional.normalize(feats[: len(probe)], dim=-1)
        if feats.shape[1] == direct.shape[1] and bool(((cached * direct).sum(-1) > 0.999).all()):
            return torch.nn.functional.normalize(feats, dim=-1), "feature cache (embed, L2-normalised)"
        ctx.log("zeroshot: embed() is not the image-text embedding of this model; using raw forward passes")
    return torch.nn.functional.normalize(_raw_image_embeddings(ctx, bb, split), dim=-1), "embed_image_for_text"


class ZeroShot:
    info = INFO

    def __init__(self, templates=None, class_names=None, test_split="test", use_cache=True):
        self.templates, self.class_names = templates, class_names
        self.test_split, self.use_cache = test_split, bool(use_cache)

    def run(self, ctx) -> TaskOutput:
        import numpy as np
        import torch

        test = ctx.split(self.test_split)
        yte = labelled(test)
        bb = ctx.backbone()
        missing = [m for m in ("encode_text", "embed_image_for_text") if not hasattr(bb, m)]
        if missing:
            raise DermbenchError(
                f"model {ctx.model_info.name!r} declares the 'text' capability but its backbone lacks "
                f"{', '.join(missing)} (see plugins/models/openclip_models.py for the API)"
            )
        templates = templates_for(test.dataset.name, self.templates)
        names = class_prompt_names(test, self.class_names)
        T = class_embeddings(bb, names, templates)
        img, source = image_embeddings(ctx, bb, test, self.use_cache)
        scale = float(getattr(bb, "logit_scale", 100.0) or 100.0)
        logits = scale * (img.double() @ T.double().T)
        scores = torch.softmax(logits, dim=1).numpy()
        y_pred = np.argmax(scores, axis=1)
        mi = ctx.model_info
        extra = {
            "templates": templates, "class_prompts": names, "logit_scale": scale, "image_embeddings": source,
            "n_prompts": len(templates) * len(names),
            "random_init_text_tower": bool(mi.random_init or str(getattr(bb, "weights_id", "")).startswith("random")),
        }
        arts = calibration_artifacts(ctx, yte, scores)
        return TaskOutput(predictions(test, yte, scores, y_pred), list(CLASSIFICATION_METRICS), test, extra=extra,
                          artifacts=arts)


@hookimpl
def register_tasks(register):
    register(INFO, ZeroShot)
