"""Zero-shot task: a real open_clip CLIP architecture (tiny, random init, clearly labelled) registered at runtime."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dermbench import hookimpl, plugins, runner  # noqa: E402
from dermbench.api import INCEPTION, DermbenchError, ModelInfo, Preprocess  # noqa: E402
from dermbench.results import load_records  # noqa: E402
from dermbench_plugins.tasks import zeroshot as zs  # noqa: E402

TINY = ModelInfo(
    name="tiny-clip-random", family="clip", source="open_clip", embed_dim=32, patch_size=16,
    preprocess=Preprocess(crop=64, **INCEPTION), capabilities=frozenset({"cls", "text"}), random_init=True,
    description="open_clip CLIP architecture (1-layer ViT + 1-layer text transformer, bundled BPE tokenizer), "
    "random init: tests the zero-shot code path offline, not a model to compare",
)


def load_tiny(weights=None, device="cpu", seed=0, **opts):
    import torch
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from dermbench_plugins.models.openclip_models import OpenClipBackbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(embed_dim=32, vision_cfg={"image_size": 64, "layers": 1, "width": 64, "patch_size": 16,
                                               "head_width": 32},
                     text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1})
    return OpenClipBackbone(TINY, model, f"random:{seed}", SimpleTokenizer).to(device)


class _TinyPlugin:
    @hookimpl
    def register_models(self, register):
        register(TINY, load_tiny)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    plugins.register_plugin(_TinyPlugin(), name="test-tiny-clip")
    base = tmp_path_factory.mktemp("zs")
    try:
        opts = runner.RunOptions(out=base / "r", cache_dir=base / "c", dataset_opts={"n": 24, "size": 64}, n_boot=100)
        s = runner.run(["tiny-clip-random", "random-vit"], ["zeroshot"], ["dermsynth"], opts, quiet=True)
        opts.out, opts.task_params = base / "raw", {"zeroshot": {"use_cache": False}}
        s_raw = runner.run(["tiny-clip-random"], ["zeroshot"], ["dermsynth"], opts, quiet=True)
        assert not s_raw.failed, s_raw.failed
        yield base, s
    finally:
        plugins.unregister_plugin("test-tiny-clip")


def test_vision_only_model_is_skipped_with_reason(run_dir):
    _, s = run_dir
    assert not s.failed, s.failed
    skipped = {c.model: why for c, why in s.skipped}
    assert "random-vit" in skipped and "text" in skipped["random-vit"]
    assert [c.model for c, _ in s.done] == ["tiny-clip-random"]


def test_scores_match_an_independent_computation(run_dir):
    import torch

    base, _ = run_dir
    rec = load_records(base / "r")[0]
    assert set(rec.metrics) == {"auroc_macro", "f1_macro", "accuracy", "balanced_accuracy", "ece", "brier"}
    e = rec.extra
    assert e["random_init_text_tower"] is True and rec.model_info["weights_id"] == "random:0"
    assert e["templates"] == list(zs.CLINICAL_TEMPLATES) and e["image_embeddings"].startswith("feature cache")
    assert e["class_prompts"][2] == "basal cell carcinoma" and e["n_prompts"] == 6 * len(zs.CLINICAL_TEMPLATES)
    # recompute from the model directly: raw image-text embeddings, prompt ensemble, softmax(scale * cos)
    bb = load_tiny()
    ds = plugins.registry().dataset("dermsynth").obj(None, n=24, size=64)
    test = ds.split("test")
    img = bb.embed_image_for_text(torch.stack([bb.transform(s.load_image()) for s in test.samples]))
    txt = []
    for name in e["class_prompts"]:
        t = bb.encode_text([tpl.format(name) for tpl in e["templates"]])
        t = t / t.norm(dim=-1, keepdim=True)
        c = t.mean(0)
        txt.append(c / c.norm())
    logits = bb.logit_scale * img.double() @ torch.stack(txt).double().T
    want = torch.softmax(logits, 1).numpy()
    got = np.asarray(rec.predictions["scores"])
    assert rec.predictions["ids"] == test.ids
    assert np.allclose(got, want, atol=1e-5)
    assert np.array_equal(np.asarray(rec.predictions["y_pred"]), want.argmax(1))
    assert any(a.endswith("reliability.png") for a in rec.artifacts)
    raw = load_records(base / "raw")[0]  # use_cache=False: raw embed_image_for_text passes, same numbers
    assert raw.extra["image_embeddings"] == "embed_image_for_text"
    assert np.allclose(np.asarray(raw.predictions["scores"]), want, atol=1e-5)


def test_templates_per_dataset_and_errors():
    assert zs.templates_for("ham10000", None) == list(zs.DERMOSCOPY_TEMPLATES)
    assert zs.templates_for("isic2018", None) == list(zs.DERMOSCOPY_TEMPLATES)  # prefix match
    assert zs.templates_for("derm7pt-clinic", None) == list(zs.CLINICAL_TEMPLATES)  # longest prefix wins
    assert zs.templates_for("my-folder", None) == list(zs.GENERIC_TEMPLATES)
    opt = {"ph2": ["a dermoscopy of {}"], "default": ["{} on skin"]}
    assert zs.templates_for("ph2", opt) == ["a dermoscopy of {}"]
    assert zs.templates_for("ham10000", opt) == ["{} on skin"]
    assert zs.templates_for("x", "photo of {}") == ["photo of {}"]
    with pytest.raises(DermbenchError, match="exactly one"):
        zs.templates_for("x", ["a photo of a lesion"])


def test_class_names_expand_abbreviations_and_override():
    split = plugins.registry().dataset("dermsynth").obj(None, n=12, size=64).split("test")
    assert zs.class_prompt_names(split, None)[0] == "nevus"
    assert zs.CLASS_ALIASES["mel"] == "melanoma" and zs.CLASS_ALIASES["nv"] == "melanocytic nevus"
    assert zs.class_prompt_names(split, {"nevus": "mole"})[0] == "mole"
    with pytest.raises(DermbenchError, match="one name per class"):
        zs.class_prompt_names(split, ["a", "b"])


def test_finetune_of_an_image_text_model_trains_the_image_tower_only():
    from dermbench_plugins.tasks.finetune import FineTuneModel

    bb = load_tiny()
    for method in ("full", "bitfit"):
        names = [n for n, _ in FineTuneModel(bb, 3, method).named_trainable()]
        assert names and all(n.startswith(("backbone.visual.", "head.")) for n in names), method
    with pytest.raises(DermbenchError, match="match no module"):  # open_clip attention has no 'qkv' Linear
        FineTuneModel(bb, 3, "lora")
