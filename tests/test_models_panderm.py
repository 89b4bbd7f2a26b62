"""PanDerm: checkpoints written in PanDerm's own (BEiT/CAE) key layout load into timm ViTs exactly."""

from __future__ import annotations

import pytest
import torch

from models_util import images

from dermbench.api import DermbenchError, WeightsUnavailable
from dermbench.backbones import create_timm
from dermbench_plugins.models.panderm import PANDERM_PRE, load_panderm, sincos_2d

torch.set_num_threads(2)


def _reference(arch: str, seed: int, **kw) -> torch.nn.Module:
    """A timm ViT as PanDerm's would be: zero key bias, fixed sin-cos positions."""
    m = create_timm(arch, seed=seed, img_size=224, init_values=0.1, **kw).eval()
    with torch.no_grad():
        for blk in m.blocks:
            d = blk.attn.qkv.bias.shape[0] // 3
            blk.attn.qkv.bias[d : 2 * d] = 0
            blk.ls1.gamma.uniform_(0.05, 0.2)  # not the init value: a swapped gamma would show
            blk.ls2.gamma.uniform_(0.05, 0.2)
        m.pos_embed.copy_(sincos_2d(14, m.embed_dim))
    return m


def _to_panderm(sd: dict, prefix: str = "", keep_pos: bool = True) -> dict:
    """timm keys -> PanDerm keys: q_bias/v_bias (no k bias), gamma_1/2, optional pos_embed."""
    out = {}
    for k, v in sd.items():
        if k.endswith("attn.qkv.bias"):
            d = v.shape[0] // 3
            base = k[: -len("qkv.bias")]
            out[prefix + base + "q_bias"] = v[:d].clone()
            out[prefix + base + "v_bias"] = v[2 * d :].clone()
            continue
        k = k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        if k == "pos_embed" and not keep_pos:
            continue
        out[prefix + k] = v.clone()
    return out


def test_panderm_base_plain_layout(tmp_path):
    ref = _reference("vit_base_patch16_224", seed=7)
    pd = _to_panderm(ref.state_dict())
    assert "blocks.0.attn.q_bias" in pd and "blocks.0.gamma_1" in pd and "blocks.0.attn.qkv.bias" not in pd
    pd["head.weight"] = torch.zeros(10, 768)  # a fine-tuned head that the backbone does not use
    path = tmp_path / "panderm_bb_data6_checkpoint-499.pth"
    torch.save({"model": pd, "epoch": 499}, path)
    bb = load_panderm("b", weights=path)
    x = images(2)
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 0]  # CLS after the final norm
    e = bb.embed(x)
    assert e.shape == (2, 768) == (2, bb.info.embed_dim)
    assert torch.allclose(e, expected, atol=1e-5)
    assert bb.patch_tokens(x, [3, -1])[0].shape == (2, 768, 14, 14)
    assert bb.info.license == "CC-BY-NC-ND-4.0" and not bb.info.commercial_use
    assert "ham10000" in bb.info.trained_on


def test_panderm_large_encoder_prefix_regenerated_pos_and_decoder(tmp_path):
    """ViT-L layout (``encoder.`` prefix, pretraining decoder keys beside it), built with depth=2 (test-only
    override of the 24-block model); the checkpoint lacks pos_embed, so the fixed table is regenerated."""
    ref = _reference("vit_large_patch16_224", seed=3, depth=2)
    pd = _to_panderm(ref.state_dict(), prefix="encoder.", keep_pos=False)
    pd["decoder.blocks.0.norm1.weight"] = torch.ones(4)
    pd["regressor_and_decoder.mask_token"] = torch.zeros(1, 1, 4)
    path = tmp_path / "panderm_ll_data6_checkpoint-499.pth"
    torch.save({"model": pd}, path)
    bb = load_panderm("l", weights=path, depth=2)
    x = images(1)
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 0]
    assert torch.allclose(bb.embed(x), expected, atol=1e-5)
    assert bb.embed(x).shape == (1, 1024)
    assert bb.dropped_keys == []  # select_prefix("encoder.") already left the decoder out


def test_panderm_wrong_variant_says_which(tmp_path):
    ref = _reference("vit_base_patch16_224", seed=0, depth=2)
    path = tmp_path / "panderm_bb_data6_checkpoint-499.pth"
    torch.save(_to_panderm(ref.state_dict()), path)
    with pytest.raises(DermbenchError, match=r"shape mismatches .*\(768,\) vs model \(1024,\).*use panderm-b"):
        load_panderm("l", weights=path, depth=2)


def test_panderm_without_weights_points_to_release(monkeypatch):
    monkeypatch.delenv("DERMBENCH_WEIGHTS_PANDERM_L", raising=False)
    with pytest.raises(WeightsUnavailable) as e:
        load_panderm("l")
    msg = str(e.value)
    assert "panderm_ll_data6_checkpoint-499.pth" in msg and "drive.google.com" in msg
    assert "DERMBENCH_WEIGHTS_PANDERM_L" in msg


def test_sincos_table_and_preprocess():
    pe = sincos_2d(14, 768)
    assert pe.shape == (1, 197, 768)
    assert torch.count_nonzero(pe[0, 0]) == 0
    # token t = 14*i + j: first quarter sin(i * omega_k), third quarter sin(j * omega_k); omega_0 = 1
    assert torch.isclose(pe[0, 1 + 14 * 3 + 5, 0], torch.sin(torch.tensor(3.0)))
    assert torch.isclose(pe[0, 1 + 14 * 3 + 5, 384], torch.sin(torch.tensor(5.0)))
    assert torch.isclose(pe[0, 1 + 14 * 3 + 5, 192], torch.cos(torch.tensor(3.0)))
    # PanDerm's published eval normalisation, typo included
    assert PANDERM_PRE.std == (0.228, 0.224, 0.225) and PANDERM_PRE.mean == (0.485, 0.456, 0.406)
    assert (PANDERM_PRE.resize, PANDERM_PRE.crop) == (256, 224) and "typo" in PANDERM_PRE.note
