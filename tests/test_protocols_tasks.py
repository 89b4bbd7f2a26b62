"""``--protocol dermino|panderm`` through the runner: each preset changes the documented options, is recorded,
and its numbers equal the protocol functions applied to the record's own predictions (real dermsynth images,
random-weight ViT with 2 blocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dermbench import runner, stats
from dermbench_plugins.tasks.protocols import dermino as D

SYNTH = {"n": 60, "size": 96}
TINY = {"depth": 2}


def _run(tmp_path: Path, tasks: list[str], protocol: str, **params) -> dict[str, dict]:
    opts = runner.RunOptions(out=tmp_path / protocol / "r", cache_dir=tmp_path / "cache", n_boot=200,
                             dataset_opts=dict(SYNTH), model_opts=dict(TINY), protocol=protocol,
                             task_params=params)
    s = runner.run(["random-vit"], tasks, ["dermsynth"], opts, quiet=True)
    assert not s.failed, s.failed
    return {c.task: {**json.loads(Path(p).read_text()), "_path": str(p)} for c, p in s.done}


def test_protocol_presets_resolve_documented_options():
    from dermbench import plugins

    reg = plugins.registry()
    want = {
        "probe": {"dermino": {"standardize": False, "epoch_length": "auto", "init": "normal"},
                  "panderm": {"solver": "lbfgs", "C": "auto", "standardize": False}},
        "retrieval": {"dermino": {"tie_break": "lowest"}},
        "segmentation": {"dermino": {"metric": "dermino", "batch_size": 64, "schedule": "dermino",
                                     "mask_resize": "bilinear"}},
        "captioning": {"dermino": {"metrics": "dermino", "visual_tokens": 0, "visual_expand": 8, "max_len": 256,
                                   "pre_prompt": "<s>[INST] ", "num_beams": 1}},
    }
    for task, presets in want.items():
        info = reg.task(task).info
        for name, expected in presets.items():
            params = runner.resolve_task_params(info, {}, name)
            assert {k: params[k] for k in expected} == expected, (task, name)
        assert runner.resolve_task_params(info, {}, "default") == dict(info.defaults)
    # a user's --task-opt wins over the preset
    assert runner.resolve_task_params(reg.task("probe").info, {"standardize": True}, "panderm")["standardize"] is True


def test_dermino_and_panderm_presets_on_dermsynth(tmp_path):
    base = _run(tmp_path, ["retrieval", "probe"], "default")
    der = _run(tmp_path, ["retrieval", "probe"], "dermino")
    pan = _run(tmp_path, ["probe"], "panderm")
    assert der["probe"]["provenance"]["protocol"] == "dermino"
    assert len({base["probe"]["config_hash"], der["probe"]["config_hash"], pan["probe"]["config_hash"]}) == 3
    # kNN: same neighbours and vote fractions (AUROC identical); predictions differ only on vote ties, where the
    # dermino record takes the lowest tied label
    sb, sd = np.array(base["retrieval"]["predictions"]["scores"]), np.array(der["retrieval"]["predictions"]["scores"])
    np.testing.assert_array_equal(sb, sd)
    assert base["retrieval"]["metrics"]["auroc_macro"]["value"] == der["retrieval"]["metrics"]["auroc_macro"]["value"]
    yd = np.array(der["retrieval"]["predictions"]["y_pred"])
    np.testing.assert_array_equal(yd, sd.argmax(axis=1))
    assert der["retrieval"]["extra"]["tie_break"] == "lowest"
    # probe: raw features, N(0, .01) init; dermsynth is not one of the authors' datasets -> true epochs
    e = der["probe"]["extra"]
    assert (e["standardize"], e["init"], e["epoch_length"], e["iterations"]) == (False, "normal", "epoch", 50)
    # PanDerm: L-BFGS with C = D*K/100 (D = 384 for random-vit, K = 6 dermsynth classes)
    p = pan["probe"]["extra"]
    assert p["solver"] == "lbfgs" and p["C"] == pytest.approx(384 * 6 / 100) and p["weight_norm"] > 0
    assert not np.allclose(pan["probe"]["predictions"]["scores"], base["probe"]["predictions"]["scores"])


def test_segmentation_dermino_metric_in_the_record_equals_the_authors_function(tmp_path):
    rec = _run(tmp_path, ["segmentation"], "dermino", segmentation={"epochs": 2, "n_overlays": 0,
                                                                     "save_masks": True})["segmentation"]
    assert list(rec["metrics"])[:2] == ["dermino_dice", "dermino_jac"]
    e = rec["extra"]
    assert (e["metric"], e["batch_size"], e["schedule"], e["mask_resize"]) == ("dermino", 64, "dermino", "bilinear")
    assert "DermINO" not in e["metric_variant"]
    pr = rec["predictions"]
    counts = np.stack([pr[k] for k in ("seg_tp", "seg_fp", "seg_fn", "seg_tn")], axis=1)
    d, j = D.dermino_seg_weighted(counts, np.ones((1, len(counts))))
    assert rec["metrics"]["dermino_dice"]["value"] == pytest.approx(d[0])
    assert rec["metrics"]["dermino_jac"]["value"] == pytest.approx(j[0])
    assert e["dermino_metric"]["dice"] == pytest.approx(d[0]) and e["dermino_metric"]["n_batches"] == 1
    # the stored masks agree with the recorded per-image counts
    from dermbench_plugins.tasks.segmentation import load_predicted_masks

    masks = load_predicted_masks(Path(rec["_path"]).parent / rec["artifacts"][0])
    # predicted lesion pixels per image = tp + fp of the recorded counts
    np.testing.assert_array_equal([masks[i].sum() for i in pr["ids"]], counts[:, 0] + counts[:, 1])
    lo, hi = rec["metrics"]["dermino_dice"]["ci_low"], rec["metrics"]["dermino_dice"]["ci_high"]
    assert lo <= d[0] <= hi
    assert stats.point(pr, "dermino_jac") == pytest.approx(j[0])


def test_caption_prefix_expands_cls_into_8_tokens_between_template_parts():
    """The DermINO authors' layout: [<s>[INST] ] [8 tokens = Linear(D, 8H)(CLS)] [instruction] [caption]."""
    import torch

    from dermbench_plugins.tasks.captioning import lm as L

    caps = ["a brown macule", "a red plaque"]
    tok = L.word_tokenizer(caps + ["<s>[INST] Please descript this dermatology image: [/INST]"])
    model = L.tiny_lm(tok, n_positions=64, dim=32, layers=1, seed=0)
    lm = L.LanguageModel(model, tok, "tiny", "tiny", model.config.n_embd, torch.float32, [])
    cap = L.PrefixCaptioner(lm, 12, prompt=" Please descript this dermatology image: [/INST]", max_len=8, seed=0,
                            device="cpu", expand=8, pre_prompt="<s>[INST] ")
    pre, post = len(cap.pre_ids), len(cap.head_ids)
    assert pre >= 1 and post >= 5 and cap.proj.out_features == 8 * 32
    vis = torch.randn(3, 1, 12)
    emb = cap._prefix(vis)
    assert emb.shape == (3, pre + 8 + post, 32)
    # the 8 visual positions are the reshaped projection of the single CLS vector
    np.testing.assert_allclose(emb[:, pre : pre + 8].detach().numpy(),
                               cap.proj(vis).reshape(3, 8, 32).detach().numpy(), rtol=1e-6)


def test_segmentation_upernet_dermino_uses_an_mmseg_style_uperhead(tmp_path):
    import torch

    from dermbench_plugins.tasks.segmentation.heads import MMSegUPerHead

    head = MMSegUPerHead([16] * 4, n_classes=2)  # decoder_channels=0 -> the backbone width (16)
    assert head.channels == 16 and isinstance(head.drop, torch.nn.Identity)
    x = [torch.randn(2, 16, 6, 6) for _ in range(4)]
    assert head(x).shape == (2, 2, 6, 6)
    # PPM: 4 pooled branches of 1x1 conv (no bias) on the last map
    assert sum(p.numel() for m in head.ppm for p in m[1][0].parameters()) == 4 * 16 * 16
    opts = runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "cache", n_boot=100,
                             dataset_opts=dict(SYNTH), model_opts={"depth": 4}, protocol="dermino",
                             task_params={"segmentation-upernet": {"epochs": 1, "n_overlays": 0,
                                                                    "decoder_channels": 24}})
    s = runner.run(["random-vit"], ["segmentation-upernet"], ["dermsynth"], opts, quiet=True)
    assert not s.failed, s.failed
    rec = json.loads(Path(s.done[0][1]).read_text())
    e = rec["extra"]
    assert e["layers"] == [0, 1, 2, 3] and e["pyramid"] is None and e["decoder"].startswith("mmseg-style UPerHead (24")
    assert list(rec["metrics"])[:2] == ["dermino_dice", "dermino_jac"]
