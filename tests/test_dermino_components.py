"""Masking, augmentation, schedules, EMA, heads, masked ViT, param groups, prototypes, config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dermbench.api import DermbenchError
from dermino_model.config import PRESETS, build_config
from dermino_model.masking import BlockMasker, collate_multicrop, sample_masks, split_batch
from dermino_model.schedules import CosineSchedule, LinearThenConstant, build_schedules, param_groups

torch.set_num_threads(1)


# ---------------------------------------------------------------- masking
def test_mask_counts_ratios_and_stratification():
    rng = np.random.default_rng(0)
    for n_crops in (8, 16, 9):
        m = sample_masks(n_crops, (8, 8), rng)
        per = m.sum(1)
        assert (per > 0).sum() == int(n_crops * 0.5)  # exactly int(2B * 0.5) crops masked
        assert per.max() <= 32  # <= 0.5 N
        assert per[per > 0].min() >= 1
    big = sample_masks(200, (14, 14), np.random.default_rng(1))
    ratios = np.sort(big.sum(1)[big.sum(1) > 0] / 196)
    assert ratios.min() < 0.2 and ratios.max() > 0.4  # spread over [0.1, 0.5]
    assert ratios.max() <= 0.5


def test_block_masker_blocks_are_rectangles_unions():
    m = BlockMasker(8, 8)(16, np.random.default_rng(3))
    assert 4 <= m.sum() <= 16  # at least one 4-patch block, never above target


def _item(i: int, n_local: int = 2) -> dict:
    g = torch.full((3, 32, 32), float(i))
    return {"global": [g, g + 100], "local": [torch.full((3, 16, 16), float(i) + 1000 * (v + 1)) for v in range(n_local)],
            "targets": torch.tensor([float(i), 0.0]), "known": torch.tensor([True, i % 2 == 0]), "index": i}


def test_collate_is_view_major_with_replicated_labels_and_no_local_masks():
    batch = collate_multicrop([_item(i) for i in range(4)], patch_size=8, seed=0)
    assert batch["global"].shape == (8, 3, 32, 32) and batch["local"].shape == (8, 3, 16, 16)
    assert batch["global"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 100, 101, 102, 103]
    assert batch["local"][:, 0, 0, 0].tolist() == [1000, 1001, 1002, 1003, 2000, 2001, 2002, 2003]
    assert batch["targets"][:, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert batch["masks"].shape == (8, 16)  # global crops only
    assert batch["masks_weight"].shape[0] == batch["masks"].sum()
    per = batch["masks"].sum(1)
    w = batch["masks_weight"]
    assert torch.allclose(w.sum(), torch.tensor(float((per > 0).sum())))  # each masked crop's weights sum to 1
    half = split_batch(batch, 1, 2)
    assert half["global"][:, 0, 0, 0].tolist() == [2, 3, 102, 103]
    assert torch.equal(half["masks"], torch.cat([batch["masks"][2:4], batch["masks"][6:8]]))


# ---------------------------------------------------------------- augment
def test_multicrop_shapes_determinism_and_blur_semantics():
    from PIL import Image

    from dermino_model.augment import MultiCrop, blur_probabilities

    img = Image.fromarray((np.random.default_rng(0).random((80, 90, 3)) * 255).astype(np.uint8))
    aug = MultiCrop(global_size=48, local_size=24, n_local=3)
    a, b, c = aug(img, seed=5), aug(img, seed=5), aug(img, seed=6)
    assert [t.shape for t in a["global"]] == [(3, 48, 48)] * 2 and [t.shape for t in a["local"]] == [(3, 24, 24)] * 3
    assert a["global"][0].dtype == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a["global"] + a["local"], b["global"] + b["local"]))
    assert not torch.equal(a["global"][0], c["global"][0])
    assert blur_probabilities("dinov2") == (0.0, 0.9, 0.5)  # effective DINOv2 behaviour (the inverted-p bug)
    assert blur_probabilities("intended") == (1.0, 0.1, 0.5)
    probs = [t.p for t in aug.global1.transforms if type(t).__name__ == "RandomApply" and
             type(t.transforms[0]).__name__ == "GaussianBlur"]
    assert probs == [0.0]
    with pytest.raises(ValueError):
        blur_probabilities((0.5, 2.0, 0.1))


# ---------------------------------------------------------------- schedules
def test_schedule_endpoints():
    cfg = build_config("paper", overrides={"sources": [{"dataset": "dermsynth"}]})
    s = build_schedules(cfg, total=1000, iters_per_epoch=10, batch_total=1024)
    assert s.lr[0] == 0.0 and s.lr[99] == pytest.approx(2e-3)  # 10 epochs warmup; batch 1024: no scaling
    assert s.lr[999] == pytest.approx(1e-6, rel=1e-2) and s.lr[5000] == 1e-6
    assert all(s.last_layer_lr[i] == 0.0 for i in range(10)) and s.last_layer_lr[10] > 0
    assert s.wd[0] == pytest.approx(0.04) and s.wd[999] == pytest.approx(0.2, rel=1e-3)  # DermINO.yaml: 0.2
    assert s.momentum[0] == pytest.approx(0.992) and s.momentum[999] == pytest.approx(1.0, abs=1e-6)
    assert s.teacher_temp[0] == pytest.approx(0.04) and s.teacher_temp[299] == pytest.approx(0.07)
    assert s.teacher_temp[150] < 0.07 and s.teacher_temp[800] == 0.07
    assert len(s.lr) == 1000
    literal = build_schedules(build_config("paper", overrides={"lr_scaling": "none", "sources": [{"dataset": "x"}]}),
                              1000, 10, 2048)
    assert max(literal.lr.values) == pytest.approx(2e-3)
    assert CosineSchedule(1.0, 0.0, 3, 0)[1] == pytest.approx(0.5 + 0.5 * math.cos(math.pi / 3))
    assert LinearThenConstant(0.04, 0.07, 2)[1] == 0.07


def test_param_groups_layer_decay_and_no_wd():
    from dermino_model.vit import MaskedViT, create_vit

    vit = MaskedViT(create_vit("custom", 16, 64, layerscale=1e-5, embed_dim=32, depth=12, num_heads=2))  # ViT-B layout
    named = [(f"backbone.{n}", p) for n, p in vit.named_parameters()] + [("dino_head.last_layer.v", torch.nn.Parameter(torch.zeros(1)))]
    groups = {g["name"]: g for g in param_groups(named, 12, 0.9, 0.2)}
    assert groups["backbone.vit.blocks.0.attn.qkv.weight"]["lr_mult"] == pytest.approx(0.9 ** 12)
    assert groups["backbone.vit.blocks.11.mlp.fc1.weight"]["lr_mult"] == pytest.approx(0.9)
    assert groups["backbone.vit.pos_embed"]["lr_mult"] == pytest.approx(0.9 ** 13)
    assert groups["backbone.vit.patch_embed.proj.weight"]["lr_mult"] == pytest.approx(0.9 ** 13 * 0.2)
    assert groups["backbone.vit.norm.weight"]["lr_mult"] == 1.0 and groups["backbone.vit.norm.weight"]["wd_mult"] == 0
    assert groups["backbone.vit.blocks.3.attn.qkv.bias"]["wd_mult"] == 0
    assert groups["backbone.vit.blocks.3.ls1.gamma"]["wd_mult"] == 0
    assert groups["backbone.vit.pos_embed"]["wd_mult"] == 1 and groups["backbone.mask_token"]["wd_mult"] == 1
    assert groups["dino_head.last_layer.v"]["is_last_layer"] and groups["dino_head.last_layer.v"]["lr_mult"] == 1.0


# ---------------------------------------------------------------- EMA, heads, ViT
def test_ema_arithmetic():
    from dermino_model.model import ema_update

    s, t = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update(s, t, 0.9)
    for k, v in t.state_dict().items():
        assert torch.allclose(v, 0.9 * t0[k] + 0.1 * s.state_dict()[k])
    before = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update(s, t, 1.0)
    assert all(torch.equal(v, before[k]) for k, v in t.state_dict().items())
    ema_update(s, t, 0.0)
    assert all(torch.equal(v, s.state_dict()[k]) for k, v in t.state_dict().items())


def test_dino_head_logits_are_scaled_cosines():
    from dermino_model.heads import DINOHead

    h = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(5, 16)
    out = h(x)
    assert out.shape == (5, 10) and out.abs().max() <= 1.0 + 1e-5  # g = 1 at init
    with torch.no_grad():
        h.last_layer.g.fill_(3.0)
    assert torch.allclose(h(x), 3 * out, atol=1e-5)
    assert {n for n, _ in h.named_parameters() if "last_layer" in n} == {"last_layer.v", "last_layer.g"}


def test_mask_token_substituted_before_pos_embed_and_teacher_has_no_drop_path():
    from dermino_model.model import build_models

    cfg = build_config("smoke", overrides={"drop_path_rate": 0.2})
    student, teacher, _ = build_models(cfg, 3, None)
    bb = student.backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[0, :10] = True
    with torch.no_grad():
        bb.mask_token.normal_()
        out = bb(x, masks)["patch"]
        plain = bb(x)["patch"]
        x2 = x.clone()
        x2[0, :, :8, :] = 5.0  # change pixels inside the first masked patches only (row 0: patches 0..7)
        out2 = bb(x2, masks)["patch"]
    assert not torch.allclose(out[0], plain[0]) and torch.allclose(out[1], plain[1])
    assert torch.allclose(out2, out, atol=1e-5)  # masked pixels are invisible to the student
    assert all(b.drop_path1.__class__.__name__ == "Identity" for b in teacher.backbone.vit.blocks)
    assert any(b.drop_path1.__class__.__name__ == "DropPath" for b in student.backbone.vit.blocks)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    # two positions given the same mask token still differ: the positional embedding is added after it
    with torch.no_grad():
        bb.vit.pos_embed.normal_()
        emb = bb.vit._pos_embed(torch.where(masks[0].view(1, 8, 8, 1), bb.mask_token.view(1, 1, 1, -1),
                                            bb.vit.patch_embed(x[:1])))
    assert not torch.allclose(emb[0, 1], emb[0, 2])


# ---------------------------------------------------------------- prototypes
def test_label_normalisation_and_union_find_merge():
    from dermino_model.prototypes import merge_labels, normalise_label, prototype_init

    assert normalise_label("  Basal_Cell-Carcinoma (BCC)! ") == "basal cell carcinoma bcc"
    assert normalise_label("Naëvus／Mole") == "naevus mole"  # NFKC fullwidth slash, accent stripped
    space = merge_labels({"a": ["Melanoma", "Nevus", "BCC"], "b": ["MELANOMA", "melanomas", "SK"]}, "hash", 0.7)
    assert space.source_maps["a"]["Melanoma"] == space.source_maps["b"]["MELANOMA"] == space.source_maps["b"]["melanomas"]
    assert len(set(space.source_maps["a"].values())) == 3 and len(space.classes) == 4
    assert space.known_classes("b") == sorted({space.source_maps["b"][k] for k in ("MELANOMA", "SK")})
    w = prototype_init(space, 64)
    assert w.shape == (4, 64) and np.allclose(np.linalg.norm(w, axis=1), 0.02 * 8)
    with pytest.raises(DermbenchError, match="merged all"):
        merge_labels({"a": ["melanoma", "nevus", "bcc", "sk"]}, "hash", -1.0)


def test_projection_preserves_cosines_when_widening():
    from dermino_model.prototypes import project

    v = np.random.default_rng(0).standard_normal((5, 16))
    w = project(v, 40)
    assert w.shape == (5, 40)
    assert np.allclose(v @ v.T, w @ w.T, atol=1e-8)
    assert project(v, 8).shape == (5, 8)


def test_minilm_text_encoder_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from dermino_model.prototypes import get_text_encoder, merge_labels

    name, enc = get_text_encoder("minilm")
    e = enc(["melanoma", "malignant melanoma", "psoriasis"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # real semantics, not a stub
    space = merge_labels({"a": ["Melanoma", "Psoriasis"], "b": ["malignant melanoma"]}, enc, 0.8)
    assert space.source_maps["a"]["Melanoma"] == space.source_maps["b"]["malignant melanoma"]


# ---------------------------------------------------------------- config
def test_config_presets_file_and_bad_values(tmp_path):
    assert set(PRESETS) == {"smoke", "demo", "paper", "paper-literal"}
    p = build_config("paper", overrides={"sources": [{"dataset": "x"}]})
    assert (p.arch, p.global_size, p.lr, p.batch_size_per_gpu, p.epochs, p.lr_scaling) == (
        "vit_base", 224, 2e-3, 256, 100, "sqrt_wrt_1024")
    lit = build_config("paper-literal", overrides={"sources": [{"dataset": "x"}]})
    assert (lit.lr_scaling, lit.epoch_length, lit.prototype_trainable) == ("none", 0, True)
    with pytest.raises(DermbenchError, match="sources is empty"):
        build_config("paper")
    assert build_config("paper", require_sources=False).sources == []
    f = tmp_path / "c.yaml"
    f.write_text("preset: smoke\nsup_weight: 0\nglobal_scale: [0.5, 1.0]\n")
    c = build_config(None, f)
    assert c.preset == "smoke" and c.sup_weight == 0.0 and c.global_scale == (0.5, 1.0)
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"koleo_weight": 0.0}))
    assert build_config("smoke", j).koleo_weight == 0.0
    with pytest.raises(DermbenchError, match="did you mean"):
        build_config("smoke", overrides={"sup_wieght": 0})
    with pytest.raises(DermbenchError, match="batch_size_per_gpu"):
        build_config("smoke", overrides={"batch_size_per_gpu": 1})
    with pytest.raises(DermbenchError, match="multiples of patch_size"):
        build_config("smoke", overrides={"local_size": 30})


# ---------------------------------------------------------------- kNN probe + paired bootstrap
def test_knn_scores_and_paired_bootstrap():
    from dermino_model.evidence import paired_bootstrap
    from dermino_model.monitor import knn_scores, macro_auroc

    rng = np.random.default_rng(0)
    y_bank, y = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 30)
    centres = np.eye(3, 8) * 4
    good = knn_scores(centres[y_bank] + rng.normal(size=(60, 8)), y_bank, centres[y] + rng.normal(size=(90, 8)), 3, k=10)
    assert np.allclose(good.sum(1), 1) and macro_auroc(y, good) > 0.95
    noise = rng.random((90, 3))
    res = paired_bootstrap(y, good, noise, n_boot=200, seed=1)
    assert res["diff"] > 0.3 and res["ci_low"] > 0 and res["p"] < 0.01
    same = paired_bootstrap(y, good, good, n_boot=50)
    assert same["diff"] == 0 and same["p"] == 1.0


def test_prototype_logits_stay_fp32_under_autocast():
    from dermino_model.heads import PrototypeClassifier

    w = torch.randn(3, 8)
    p = PrototypeClassifier(8, 3, init=w)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = p(x)
    assert out.dtype == torch.float32 and torch.allclose(out, x @ w.T, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        PrototypeClassifier(8, 4, init=w)
