"""open_clip models: real architectures with random weights, saved as open_clip checkpoints, reloaded."""

from __future__ import annotations

import json

import pytest
import torch

from models_util import fake_hub_file, images

from dermbench.api import DermbenchError, WeightsUnavailable
from dermbench_plugins.models.openclip_models import INFOS, OpenClipBackbone, build_model, load_openclip

torch.set_num_threads(2)


def _save(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_clip_b16_round_trip_and_text(tmp_path):
    src = build_model("clip-b16", seed=1).eval()
    f = tmp_path / "open_clip_model.safetensors"
    _save(src, f)
    bb = load_openclip("clip-b16", weights=f)
    assert isinstance(bb, OpenClipBackbone) and bb.weights_id.startswith("sha256:")
    x = images(2)
    with torch.no_grad():
        ref = src.encode_image(x)
        ref_txt = src.encode_text(bb.tokenizer()(["melanoma", "a benign naevus"]), normalize=True)
    e = bb.embed(x)
    assert e.shape == (2, 512) == (2, bb.info.embed_dim) and torch.allclose(e, ref, atol=1e-5)
    zi = bb.embed_image_for_text(x)
    assert torch.allclose(zi.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(zi, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)
    t = bb.encode_text(["melanoma", "a benign naevus"])  # bundled BPE tokenizer: works offline
    assert t.shape == (2, 512) and torch.allclose(t, ref_txt, atol=1e-5)
    maps = bb.patch_tokens(x, [-1, 3])
    assert [tuple(m.shape) for m in maps] == [(2, 768, 14, 14)] * 2


def test_siglip_hub_cache_and_map_pool(tmp_path, monkeypatch):
    """SigLIP: no CLS token, embed = MAP pool (768-d); found in the HF cache under its open_clip file name."""
    src = build_model("siglip-b16", seed=2).eval()
    f = fake_hub_file(tmp_path / "hub", "timm/ViT-B-16-SigLIP", "open_clip_model.safetensors", revision="f" * 40)
    _save(src, f)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    bb = load_openclip("siglip-b16")
    assert bb.weights_id == "hub:timm/ViT-B-16-SigLIP@" + "f" * 40
    assert src.visual.trunk.global_pool == "map" and src.visual.trunk.num_prefix_tokens == 0
    x = images(1)
    with torch.no_grad():
        ref = src.encode_image(x)
    assert torch.allclose(bb.embed(x), ref, atol=1e-5)
    assert bb.patch_tokens(x, [-1])[0].shape == (1, 768, 14, 14)  # all 196 tokens are patches
    # the text tower needs the SigLIP tokenizer files: offline and absent, one clear message
    with pytest.raises(DermbenchError, match="hf download timm/ViT-B-16-SigLIP"):
        bb.encode_text(["psoriasis"])


def test_biomedclip_offline_build_and_local_tokenizer(tmp_path):
    """BiomedCLIP's BERT text tower is built from the declared BiomedBERT config (no hub lookup); the
    tokenizer comes from files next to the weights (a tiny WordPiece vocabulary here)."""
    src = build_model("biomedclip", seed=3).eval()
    assert src.text.transformer.config.vocab_size == 30522
    d = tmp_path / "biomedclip"
    d.mkdir()
    torch.save(src.state_dict(), d / "open_clip_pytorch_model.bin")  # the release's file name and format
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "melanoma", "nevus", "benign", "skin"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    bb = load_openclip("biomedclip", weights=d)
    x = images(1)
    with torch.no_grad():
        ref = src.encode_image(x)
    e = bb.embed(x)
    assert e.shape == (1, 512) and torch.allclose(e, ref, atol=1e-5)
    t = bb.encode_text(["benign nevus", "melanoma skin"])
    assert t.shape == (2, 512)
    ids = bb.tokenizer()(["benign nevus"])
    assert ids.shape == (1, 256) and ids[0, :4].tolist() == [2, 7, 6, 3]  # [CLS] benign nevus [SEP]
    with torch.no_grad():
        assert torch.allclose(t[:1], src.encode_text(ids, normalize=True), atol=1e-5)


def test_openclip_metadata_and_preprocess_match_open_clip_cfgs(monkeypatch, tmp_path):
    import open_clip

    for name, tag in (("clip-b16", ("ViT-B-16-quickgelu", "openai")), ("siglip-b16", ("ViT-B-16-SigLIP", "webli"))):
        info, _ = INFOS[name]
        cfg = open_clip.get_pretrained_cfg(*tag)
        pre = info.preprocess
        assert pre.mean == tuple(cfg["mean"]) and pre.std == tuple(cfg["std"])
        assert pre.interpolation == cfg["interpolation"]
        assert pre.resize_mode == {"shortest": "shorter", "squash": "squash"}[cfg["resize_mode"]]
        assert "text" in info.capabilities and info.image_size == open_clip.get_model_config(tag[0])["vision_cfg"]["image_size"]
        assert info.embed_dim == open_clip.get_model_config(tag[0])["embed_dim"]
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("DERMBENCH_WEIGHTS_BIOMEDCLIP", raising=False)
    with pytest.raises(WeightsUnavailable, match="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"):
        load_openclip("biomedclip")
