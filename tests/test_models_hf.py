"""transformers models (MedSigLIP, MONET): save_pretrained directories reloaded through the plugin.

The full MedSigLIP is ~800M parameters and MONET ~430M: too slow to build on 2 CPU cores, so the round
trips use scaled-down configs of the same classes (``check_config=False``, a test-only switch); the
declared metadata is checked against the published configuration values separately.
"""

from __future__ import annotations

import json

import pytest
import torch

from models_util import images

from dermbench.api import DermbenchError
from dermbench_plugins.models.hf_models import INFOS, HFImageTextBackbone, load_hf

torch.set_num_threads(2)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "melanoma", "nevus", "benign", "skin", "a", "photo", "of"]


def _tokenizer_files(d):
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))


def _siglip(size=448, patch=14):
    from transformers import SiglipConfig, SiglipModel

    cfg = SiglipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=size, patch_size=patch),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=len(WORDS), max_position_embeddings=64),
    )
    torch.manual_seed(0)
    return SiglipModel(cfg).eval()


def _clip():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           image_size=224, patch_size=14),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=len(WORDS), max_position_embeddings=77, bos_token_id=2, eos_token_id=3, pad_token_id=0),
        projection_dim=32,
    )
    torch.manual_seed(1)
    return CLIPModel(cfg).eval()


def test_medsiglip_directory_round_trip(tmp_path):
    src = _siglip()
    d = tmp_path / "medsiglip-448"
    src.save_pretrained(d)
    _tokenizer_files(d)
    assert (d / "model.safetensors").exists()
    bb = load_hf("medsiglip", weights=d, check_config=False)
    assert isinstance(bb, HFImageTextBackbone) and bb.weights_id.startswith("sha256:")
    x = images(1, size=448)
    with torch.no_grad():
        ref = src.vision_model(pixel_values=x).pooler_output  # MAP head
    e = bb.embed(x)
    assert e.shape == (1, 64) and torch.allclose(e, ref, atol=1e-5)
    maps = bb.patch_tokens(x, [0, -1])
    assert [tuple(m.shape) for m in maps] == [(1, 64, 32, 32)] * 2  # 448 / 14, no prefix token
    with torch.no_grad():
        last = src.vision_model(pixel_values=x).last_hidden_state  # post_layernorm applied
    assert torch.allclose(maps[1].flatten(2).transpose(1, 2), last, atol=1e-5)
    t = bb.encode_text(["a photo of melanoma", "benign nevus"])
    assert t.shape == (1 + 1, 64) and torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(bb.embed_image_for_text(x), torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)


def test_monet_directory_round_trip(tmp_path):
    src = _clip()
    d = tmp_path / "monet"
    src.save_pretrained(d)
    _tokenizer_files(d)
    bb = load_hf("monet", weights=d, check_config=False)
    x = images(2)
    with torch.no_grad():
        ref = src.visual_projection(src.vision_model(pixel_values=x).pooler_output)
    e = bb.embed(x)
    assert e.shape == (2, 32) and torch.allclose(e, ref, atol=1e-5)
    assert bb.patch_tokens(x, [-1])[0].shape == (2, 64, 16, 16)  # CLS dropped
    ids = bb.tokenizer()(["melanoma"], return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == [2, 5, 3]
    with torch.no_grad():
        want = torch.nn.functional.normalize(src.text_projection(src.text_model(input_ids=ids).pooler_output), dim=-1)
    assert torch.allclose(bb.encode_text(["melanoma"]), want, atol=1e-5)


def test_declared_config_is_checked(tmp_path):
    src = _siglip(size=224, patch=16)
    d = tmp_path / "not-medsiglip"
    src.save_pretrained(d)
    with pytest.raises(DermbenchError, match=r"embed_dim=64 \(expected 1152\).*image_size=224 \(expected 448\)"):
        load_hf("medsiglip", weights=d)
    with pytest.raises(DermbenchError, match="Hugging Face-style directory"):
        load_hf("monet", weights=d / "model.safetensors")


def test_missing_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    src = _clip()
    d = tmp_path / "monet"
    src.save_pretrained(d)
    sd = load_file(str(d / "model.safetensors"))
    sd.pop("visual_projection.weight")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DermbenchError, match="missing keys .*visual_projection.weight"):
        load_hf("monet", weights=d, check_config=False)


def test_preprocess_matches_published_processors():
    """MedSigLIP: SigLIP image processor (squash resize, bicubic, 0.5/0.5); MONET: ImageNet mean/std (its
    README/processor), bicubic resize + centre crop at 224."""
    from transformers import SiglipImageProcessor

    med, _ = INFOS["medsiglip"]
    p = SiglipImageProcessor()
    assert med.preprocess.mean == tuple(p.image_mean) and med.preprocess.std == tuple(p.image_std)
    assert med.preprocess.resize_mode == "squash" and p.resample == 3  # PIL bicubic
    assert (med.image_size, med.embed_dim, med.patch_size) == (448, 1152, 14)
    assert not med.commercial_use and "Health AI Developer Foundations" in med.license
    monet, _ = INFOS["monet"]
    assert monet.preprocess.mean == (0.485, 0.456, 0.406) and monet.preprocess.std == (0.229, 0.224, 0.225)
    assert (monet.image_size, monet.embed_dim, monet.patch_size) == (224, 768, 14)


def test_patch_size_is_taken_from_config_with_a_warning(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    cfg = SiglipConfig(
        vision_config=dict(hidden_size=1152, intermediate_size=64, num_hidden_layers=1, num_attention_heads=16,
                           image_size=448, patch_size=16),
        text_config=dict(hidden_size=1152, intermediate_size=64, num_hidden_layers=1, num_attention_heads=16,
                         vocab_size=len(WORDS), max_position_embeddings=64),
    )
    torch.manual_seed(0)
    d = tmp_path / "medsiglip-p16"
    SiglipModel(cfg).eval().save_pretrained(d)
    with pytest.warns(UserWarning, match="patch_size 16, metadata says 14"):
        bb = load_hf("medsiglip", weights=d)
    assert bb.info.patch_size == 16
    assert bb.patch_tokens(images(1, size=448), [-1])[0].shape == (1, 1152, 28, 28)
    assert bb.embed(images(1, size=448)).shape == (1, 1152)
