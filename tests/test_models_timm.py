"""timm model plugins: real architectures with random weights, saved in upstream layouts and reloaded."""

from __future__ import annotations

import math

import pytest
import torch

from models_util import fake_hub_file, images

from dermbench.api import DermbenchError, WeightsUnavailable
from dermbench.backbones import TimmBackbone, create_timm
from dermbench_plugins.models.timm_models import SPECS, load_timm

torch.set_num_threads(2)


def load(name, **kw):
    info, spec = SPECS[name]
    return load_timm(info, spec, **kw)


def reference(arch, file, **kw):
    """timm's own loading path (pretrained_cfg_overlay=file), independent of dermbench's."""
    import timm

    return timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(file)), **kw).eval()


def test_registry_lists_timm_models():
    from dermbench.plugins import registry

    names = set(registry().models)
    assert {"dinov2-s", "dinov2-b", "dinov2-l", "dinov2-g", "dinov2-s-reg", "dinov2-g-reg", "vit-b", "resnet50",
            "random-vit"} <= names
    info = registry().model("dinov2-b").info
    assert info.weights_env == "DERMBENCH_WEIGHTS_DINOV2_B"
    assert info.license == "Apache-2.0" and info.commercial_use


def test_random_vit_is_seeded_and_shapes():
    a, b, c = load("random-vit", seed=3), load("random-vit", seed=3), load("random-vit", seed=4)
    x = images(2)
    ea, eb, ec = a.embed(x), b.embed(x), c.embed(x)
    assert ea.shape == (2, 384) and a.weights_id == "random:3"
    assert torch.equal(ea, eb)
    assert not torch.allclose(ea, ec)
    maps = a.patch_tokens(x, [-1, 2, -1])
    assert [tuple(m.shape) for m in maps] == [(2, 384, 14, 14)] * 3
    assert torch.equal(maps[0], maps[2]) and not torch.allclose(maps[0], maps[1])
    # the last block's normed patch tokens are exactly forward_features minus the CLS token
    with torch.no_grad():
        tok = a.model.forward_features(x)[:, 1:]
    assert torch.allclose(maps[0].flatten(2).transpose(1, 2), tok, atol=1e-5)
    # seeding does not disturb the global RNG
    torch.manual_seed(0)
    r1 = torch.rand(1)
    torch.manual_seed(0)
    load("random-vit", seed=5)
    assert torch.equal(torch.rand(1), r1)


def test_dinov2_hub_cache_layout_loads_and_matches_timm(tmp_path, monkeypatch):
    """A timm hub file (518 px position table) in the HF cache: resolved offline, resampled to 224."""
    from safetensors.torch import save_file

    src = create_timm("vit_small_patch14_dinov2", seed=11)  # default 518 px, like the published file
    f = fake_hub_file(tmp_path / "hub", "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors")
    save_file(src.state_dict(), str(f))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    bb = load("dinov2-s")
    assert bb.weights_id == "hub:timm/vit_small_patch14_dinov2.lvd142m@0123456789abcdef0123456789abcdef01234567"
    ref = reference("vit_small_patch14_dinov2.lvd142m", f, img_size=224)
    x = images(2)
    e = bb.embed(x)
    assert e.shape == (2, 384)
    with torch.no_grad():
        assert torch.allclose(e, ref(x), atol=1e-5)
    maps = bb.patch_tokens(x, [-1])
    assert maps[0].shape == (2, 384, 16, 16)


def _to_dinov2_original(sd, reg=False):
    """timm keys -> facebookresearch/dinov2 keys (the layout of DINOv2/DermINO training checkpoints)."""
    out = {k: v.clone() for k, v in sd.items()}
    if reg:
        out["register_tokens"] = out.pop("reg_token")
        pos = out.pop("pos_embed")
        cls_pos = torch.zeros_like(pos[:, :1])
        out["pos_embed"] = torch.cat([cls_pos, pos], 1)
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return out


def _teacher_checkpoint(sd, chunks=2):
    """Wrap as DINOv2's teacher_checkpoint.pth: {"teacher": {"backbone.blocks.<chunk>.<i>.*", "dino_head.*"}}."""
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    per = math.ceil(n / chunks)
    teacher = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // per}.{i}." + k.split(".", 2)[2]
        teacher["backbone." + k] = v
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, sd["cls_token"].shape[-1])
    teacher["ibot_head.last_layer.weight_g"] = torch.ones(8, 1)
    return {"teacher": teacher, "iteration": 10}


@pytest.mark.parametrize("name,arch,reg", [("dinov2-s", "vit_small_patch14_dinov2", False),
                                            ("dinov2-s-reg", "vit_small_patch14_reg4_dinov2", True)])
def test_dinov2_teacher_checkpoint_original_layout(tmp_path, name, arch, reg):
    src = create_timm(arch, seed=5, img_size=224)
    orig = _to_dinov2_original(src.state_dict(), reg=reg)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(_teacher_checkpoint(orig), path)
    bb = load(name, weights=str(path))
    assert bb.weights_id.startswith("sha256:") and len(bb.weights_id) == 7 + 64
    x = images(1)
    with torch.no_grad():
        expected = src.forward_head(src.forward_features(x), pre_logits=True)
    assert torch.allclose(bb.embed(x), expected, atol=1e-5)
    # registers are dropped from the maps: 16x16 patches at 224 px
    assert bb.patch_tokens(x, [0, -1])[1].shape == (1, 384, 16, 16)


def test_dinov2_giant_swiglu_original_layout_shallow(tmp_path):
    """ViT-g uses SwiGLU (original keys mlp.w12/w3); built with depth=1 (a test-only override) to stay fast."""
    src = create_timm("vit_giant_patch14_dinov2", seed=2, img_size=224, depth=1)
    orig = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in src.state_dict().items()}
    orig["mask_token"] = torch.zeros(1, 1536)
    assert any(".mlp.w12." in k for k in orig)
    path = tmp_path / "g.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in orig.items()}}, path)
    bb = load("dinov2-g", weights=path, depth=1)
    x = images(1)
    e = bb.embed(x)
    assert e.shape == (1, bb.info.embed_dim) == (1, 1536)
    with torch.no_grad():
        assert torch.allclose(e, src.forward_head(src.forward_features(x), pre_logits=True), atol=1e-4)


def test_vit_b_checkpoint_with_21k_head(tmp_path, monkeypatch):
    """The augreg_in21k file carries a 21843-class head: the backbone drops it; env var resolution."""
    from safetensors.torch import save_file

    src = create_timm("vit_base_patch16_224", seed=1, num_classes=21843)
    path = tmp_path / "vitb.safetensors"
    save_file(src.state_dict(), str(path))
    monkeypatch.setenv("DERMBENCH_WEIGHTS_VIT_B", str(path))
    bb = load("vit-b")
    x = images(1)
    with torch.no_grad():
        expected = src.forward_head(src.forward_features(x), pre_logits=True)
    assert torch.allclose(bb.embed(x), expected, atol=1e-5)
    assert bb.patch_tokens(x, [5])[0].shape == (1, 768, 14, 14)


def test_resnet50_torchvision_state_dict(tmp_path):
    src = create_timm("resnet50", seed=4, num_classes=1000).eval()
    sd = {"module." + k: v for k, v in src.state_dict().items()}  # DDP-saved torchvision-style keys
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": sd, "epoch": 90}, path)
    bb = load("resnet50", weights=path)
    x = images(2)
    with torch.no_grad():
        expected = src.forward_head(src.forward_features(x), pre_logits=True)
    e = bb.embed(x)
    assert e.shape == (2, 2048) and torch.allclose(e, expected, atol=1e-4)
    maps = bb.patch_tokens(x, [-1, 1])
    assert [tuple(m.shape) for m in maps] == [(2, 2048, 7, 7), (2, 256, 56, 56)]


def test_key_mismatch_names_keys(tmp_path):
    src = create_timm("vit_small_patch14_dinov2", seed=0, img_size=224)
    sd = src.state_dict()
    sd.pop("blocks.3.attn.qkv.weight")
    sd["blocks.3.attn.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(DermbenchError) as e:
        load("dinov2-s", weights=path)
    msg = str(e.value)
    assert "missing keys (1): blocks.3.attn.qkv.weight" in msg and "blocks.3.attn.extra" in msg and str(path) in msg


def test_wrong_size_checkpoint_reports_shapes(tmp_path):
    from safetensors.torch import save_file

    src = create_timm("vit_small_patch16_224", seed=0)
    path = tmp_path / "small.safetensors"
    save_file(src.state_dict(), str(path))
    with pytest.raises(DermbenchError, match=r"shape mismatches .*checkpoint \(384,\) vs model \(768,\)"):
        load("vit-b", weights=path)


def test_offline_without_weights_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("DERMBENCH_WEIGHTS_DINOV2_L", raising=False)
    with pytest.raises(WeightsUnavailable) as e:
        load("dinov2-l")
    msg = str(e.value)
    for part in ("'dinov2-l'", "timm/vit_large_patch14_dinov2.lvd142m", "DERMBENCH_WEIGHTS_DINOV2_L", "hf download",
                 "--weights"):
        assert part in msg


def test_bad_images_are_refused_or_adapted():
    bb = load("random-vit", seed=0)
    with pytest.raises(DermbenchError, match="224x224"):
        bb.embed(torch.zeros(1, 3, 200, 200))
    with pytest.raises(DermbenchError, match="3 colour channels, got 4"):
        bb.embed(torch.zeros(1, 4, 224, 224))
    grey = torch.rand(1, 1, 224, 224)
    assert torch.equal(bb.embed(grey), bb.embed(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(DermbenchError, match="out of range"):
        bb.patch_tokens(grey, [12])
    with pytest.raises(DermbenchError, match="random-init baseline"):
        load("random-vit", weights="x.pth")


def test_large_metadata_and_shallow_build():
    """ViT-L metadata against the architecture, built with depth=2 (test-only override)."""
    bb = load("random-vit", seed=0)  # warm import
    info, spec = SPECS["dinov2-l"]
    m = create_timm(spec.arch, seed=0, depth=2, **spec.kwargs)
    b = TimmBackbone(info, m, "random:0")
    x = images(1)
    assert b.embed(x).shape == (1, info.embed_dim) == (1, 1024)
    assert b.patch_tokens(x, [-1])[0].shape == (1, 1024, 224 // info.patch_size, 224 // info.patch_size)
    assert bb.info.image_size == 224


@pytest.mark.parametrize("name", ["dinov2-s", "dinov2-b-reg", "dinov2-g", "vit-b", "resnet50"])
def test_preprocessing_matches_published_config(name):
    """mean/std/interpolation from timm's pretrained cfg; resize = crop / crop_pct (torchvision/augreg) or
    DINOv2's own 256->224 eval recipe (timm's DINOv2 cfg is for 518 px)."""
    import timm

    info, spec = SPECS[name]
    cfg = timm.models.get_pretrained_cfg(f"{spec.arch}.{spec.tag}")
    pre = info.preprocess
    assert pre.mean == tuple(cfg.mean) and pre.std == tuple(cfg.std)
    assert pre.interpolation == cfg.interpolation
    if name.startswith("dinov2"):
        assert (pre.resize, pre.crop) == (256, 224) and cfg.input_size[-1] == 518
    else:
        assert pre.crop == cfg.input_size[-1]
        assert pre.resize == math.floor(pre.crop / cfg.crop_pct)
    assert pre.build()  # builds a torchvision transform


def test_transform_feeds_embed():
    from PIL import Image

    bb = load("random-vit", seed=0)
    img = Image.new("RGB", (300, 260), (200, 120, 90))
    x = bb.transform(img)
    assert x.shape == (3, 224, 224)
    assert abs(float(x[0, 0, 0]) - (200 / 255 - 0.5) / 0.5) < 1e-5
    assert bb.embed(x.unsqueeze(0)).shape == (1, 384)
