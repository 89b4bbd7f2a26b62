"""Fine-tuning task: which parameters train (LoRA / BitFit / full), lr decay, validation carve, end-to-end cell."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dermbench import plugins, runner  # noqa: E402
from dermbench.api import DermbenchError  # noqa: E402
from dermbench.results import load_records  # noqa: E402
from dermbench_plugins.tasks.finetune import FineTuneModel, _layer_id, carve_validation, train_model  # noqa: E402


@pytest.fixture(scope="module")
def bb():
    import torch

    torch.set_num_threads(1)
    return plugins.registry().model("random-vit").obj(depth=2, seed=0)


@pytest.fixture(scope="module")
def images(bb):
    """12 real dermsynth images (64 px rendered, 224 px after the model's transform) and their labels."""
    import torch

    ds = plugins.registry().dataset("dermsynth").obj(None, n=12, size=64)
    x = torch.stack([bb.transform(s.load_image()) for s in ds.samples])
    return x, np.array([s.label for s in ds.samples])


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_lora_trains_only_adapters_and_head(bb, images):
    import torch

    before_orig = _snapshot(bb.model)
    m = FineTuneModel(bb, 6, "lora", lora_r=4, lora_alpha=8)
    names = [n for n, _ in m.named_trainable()]
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert {n for n in names if n.startswith("head.")} == {"head.weight", "head.bias"}
    # r * (in + out) for each qkv Linear (384 -> 1152) in 2 blocks, plus the 384x6 head
    assert m.param_counts()["trainable_params"] == 2 * 4 * (384 + 1152) + 384 * 6 + 6
    frozen = {n: p.detach().clone() for n, p in m.module.named_parameters() if "lora_" not in n}
    lora_b = {n: p.detach().clone() for n, p in m.module.named_parameters() if "lora_B" in n}
    x, y = images
    train_model(m, x[:8], y[:8], x[8:], y[8:], epochs=1, lr=1e-2, layer_decay=0.75, weight_decay=0.05,
                batch_size=4, patience=1, hflip=False, seed=0)
    for n, p in m.module.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, frozen[n]), f"{n} changed although LoRA must freeze it"
    assert any(not torch.equal(p, lora_b[n]) for n, p in m.module.named_parameters() if "lora_B" in n)
    # the runner's backbone (feature store) is untouched: fine-tuning works on a copy
    assert all(torch.equal(p, before_orig[n]) for n, p in bb.model.named_parameters())
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert not any("lora_" in n for n, _ in bb.model.named_parameters())


def test_bitfit_trains_only_biases(bb):
    m = FineTuneModel(bb, 3, "bitfit")
    names = [n for n, _ in m.named_trainable()]
    assert all(n.endswith("bias") or n == "head.weight" for n in names)
    n_bias = sum(p.numel() for n, p in bb.model.named_parameters() if n.endswith("bias"))
    assert m.param_counts()["trainable_backbone_params"] == n_bias > 0


def test_full_and_layer_decay_groups(bb):
    m = FineTuneModel(bb, 3, "full")
    c = m.param_counts()
    assert c["trainable_params"] == c["total_params"] == sum(p.numel() for p in bb.model.parameters()) + 3 * 384 + 3
    assert _layer_id("patch_embed.proj.weight", 2) == 0 and _layer_id("blocks.1.mlp.fc1.weight", 2) == 2
    assert _layer_id("norm.weight", 2) == 3
    groups = m.param_groups(1.0, 0.5, 0.05)
    lr_of = {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(bb.model.named_parameters())
    mod = dict(m.module.named_parameters())
    assert lr_of[id(mod["patch_embed.proj.weight"])] == (0.125, 0.05)  # 0.5 ** (2 + 1 - 0)
    assert lr_of[id(mod["blocks.0.attn.qkv.weight"])] == (0.25, 0.05)
    assert lr_of[id(mod["blocks.1.attn.qkv.bias"])] == (0.5, 0.0)  # no weight decay on biases
    assert lr_of[id(m.head.weight)] == (1.0, 0.05)
    assert set(named) == set(mod)


def test_validation_carve_is_stratified_and_seeded():
    y = np.array([0] * 10 + [1] * 5 + [2] * 2)
    tr, va = carve_validation(y, 0.2, "h1", 0)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(y)
    assert np.bincount(y[va]).tolist() == [2, 1, 1] and set(y[tr]) == {0, 1, 2}
    assert np.array_equal(va, carve_validation(y, 0.2, "h1", 0)[1])
    assert not np.array_equal(va, carve_validation(y, 0.2, "h2", 0)[1])
    with pytest.raises(DermbenchError, match="val_fraction"):
        carve_validation(y, 1.0, "h1", 0)


def test_bad_options_and_non_torch_backbone(bb):
    with pytest.raises(DermbenchError, match="full, lora, bitfit"):
        FineTuneModel(bb, 3, "adapter")
    with pytest.raises(DermbenchError, match="match no module"):
        FineTuneModel(bb, 3, "lora", lora_targets=["q_proj"])

    class NotTorch:  # a third-party Backbone built on something other than a torch module
        info = bb.info

    with pytest.raises(DermbenchError, match="does not expose a trainable torch module"):
        FineTuneModel(NotTorch(), 3, "full")


def test_finetune_cell_end_to_end(tmp_path):
    opts = runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "c", dataset_opts={"n": 36, "size": 64},
                             model_opts={"depth": 1}, n_boot=100,
                             task_params={"finetune": {"method": "lora", "epochs": 2, "batch_size": 8}})
    s = runner.run(["random-vit"], ["finetune"], ["dermsynth"], opts, quiet=True)
    assert not s.failed, s.failed
    rec = load_records(tmp_path / "r")[0]
    assert set(rec.metrics) == {"auroc_macro", "f1_macro", "accuracy", "balanced_accuracy", "ece", "brier"}
    e = rec.extra
    assert e["method"] == "lora" and 0 < e["trainable_params"] < e["total_params"]
    assert e["n_train"] + e["n_val"] == 18 and e["n_val"] == 6  # one validation image per class
    assert e["train_seconds"] > 0 and 1 <= e["epochs_run"] <= 2 and len(e["history"]) == e["epochs_run"]
    scores = np.asarray(rec.predictions["scores"])
    assert scores.shape == (18, 6) and np.allclose(scores.sum(1), 1.0)
    assert rec.provenance["feature_cache"]["images_forwarded"] == 0  # raw passes, not the feature store
    assert any(a.endswith("reliability.png") and os.path.exists(a) for a in rec.artifacts)
