"""Segmentation task: metrics vs scikit-learn, real PH2 / HAM10000 masks, learning on dermsynth, heads, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score

from dermbench import hookimpl, plugins, runner
from dermbench.api import Dataset, DatasetInfo, DermbenchError, ModelInfo, Preprocess, Sample
from dermbench_plugins.tasks import segmentation as seg

PH2_CASE = "PH2Dataset/PH2 Dataset images/{0}/{0}_{1}/{0}{2}.bmp"
TINY_VIT = {"depth": 2}  # random-vit with 2 blocks: the real architecture, 6x faster extraction


def _ph2(root: Path, case: str, lesion: bool = False) -> Path:
    part, suffix = ("lesion", "_lesion") if lesion else ("Dermoscopic_Image", "")
    return root / "ph2" / PH2_CASE.format(case, part, suffix)


def _opts(tmp_path: Path, params: dict, **kw) -> runner.RunOptions:
    kw.setdefault("model_opts", dict(TINY_VIT))
    return runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "c", n_boot=200,
                             task_params={"segmentation": params}, **kw)


def _record(summary: runner.RunSummary, with_path: bool = False):
    assert not summary.failed, summary.failed
    assert len(summary.done) == 1, summary
    path = Path(summary.done[0][1])
    rec = json.loads(path.read_text())
    return (rec, path) if with_path else rec


# ------------------------------------------------------------------------------------------ metrics


def test_dice_jaccard_equal_sklearn_per_image_including_empty_masks():
    rng = np.random.default_rng(0)
    true = rng.random((6, 20, 24)) < np.linspace(0.05, 0.6, 6)[:, None, None]
    pred = rng.random((6, 20, 24)) < 0.3
    true[4] = False  # empty truth, non-empty prediction -> 0
    true[5] = pred[5] = False  # both empty -> 1
    d, j = seg.dice_jaccard(pred, true)
    dc, jc = seg.dice_jaccard(pred, true, class_averaged=True)
    for i in range(6):
        t, p = true[i].ravel(), pred[i].ravel()
        assert d[i] == pytest.approx(f1_score(t, p, zero_division=1.0))
        assert j[i] == pytest.approx(jaccard_score(t, p, zero_division=1.0))
        assert dc[i] == pytest.approx(f1_score(t, p, average="macro", labels=[0, 1], zero_division=1.0))
        assert jc[i] == pytest.approx(jaccard_score(t, p, average="macro", labels=[0, 1], zero_division=1.0))
    assert d[4] == 0.0 and j[4] == 0.0 and d[5] == 1.0 and j[5] == 1.0
    assert 0.0 < d[:4].min() and d[:4].max() < 1.0


def test_resolve_layers_evenly_spaced_vit_blocks_and_cnn_stages():
    assert seg.resolve_layers("auto", "upernet", 12, is_vit=True) == [2, 5, 8, 11]
    assert seg.resolve_layers("auto", "upernet", 24, is_vit=True) == [5, 11, 17, 23]
    assert seg.resolve_layers("auto", "upernet", 5, is_vit=False) == [1, 2, 3, 4]  # timm ResNet: stem + 4 stages
    assert seg.resolve_layers("auto", "linear", 12, is_vit=True) == [11]
    assert seg.resolve_layers("3, 7", "upernet", 12, is_vit=True) == [3, 7]
    with pytest.raises(DermbenchError, match="comma-separated"):
        seg.resolve_layers("last", "upernet", 12, is_vit=True)


def test_upernet_head_builds_pyramid_for_vit_patch14_and_uses_cnn_stages():
    import torch

    from dermbench_plugins.tasks.segmentation.heads import UperNetHead

    torch.manual_seed(0)
    vit = [torch.randn(2, 24, 16, 16) for _ in range(4)]  # ViT patch 14 at 224 px: 16 x 16 grid
    head = UperNetHead([24] * 4, [(16, 16)] * 4, decoder_channels=16)
    assert head.built_pyramid and head(vit).shape == (2, 2, 64, 64)  # 4x up level = 1/4 of the image
    cnn = [torch.randn(2, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4), (64, 2))]
    head = UperNetHead([8, 16, 32, 64], [(16, 16), (8, 8), (4, 4), (2, 2)], decoder_channels=16)
    assert not head.built_pyramid and head(cnn).shape == (2, 2, 16, 16)
    with pytest.raises(DermbenchError, match="4 layers"):
        UperNetHead([24] * 3, [(16, 16)] * 3, decoder_channels=16)


# ------------------------------------------------------------------------------------------ real masks


def test_real_ph2_mask_follows_the_model_crop(shared_data):
    """Independent geometry: PIL resize (shorter side 248, nearest) + centre crop 224, computed by hand."""
    ds = plugins.registry().dataset("ph2-seg").obj(shared_data)
    split = ds.split("test")
    pre = Preprocess(crop=224, resize=248, interpolation="bicubic")
    got = seg.prepare_masks(split, pre, 224)
    for k, s in enumerate(split.samples[:3]):
        with Image.open(s.mask) as im:
            m = im.convert("L")
        w, h = m.size
        nw, nh = (int(248 * w / h), 248) if w >= h else (248, int(248 * h / w))
        left, top = int(round((nw - 224) / 2)), int(round((nh - 224) / 2))
        ref = np.asarray(m.resize((nw, nh), Image.NEAREST).crop((left, top, left + 224, top + 224))) > 127
        assert np.array_equal(got[k], ref), s.id
        assert 0.01 < got[k].mean() < 0.99
    small = seg.prepare_masks(split, pre, 56)  # configurable size
    assert small.shape == (len(split), 56, 56)
    assert abs(small.mean() - got.mean()) < 0.02


@pytest.mark.parametrize("dataset", ["ph2-seg", "ham10000-seg"])
def test_real_dataset_end_to_end_scores_match_stored_masks(tmp_path, shared_data, dataset):
    opts = _opts(tmp_path, {"epochs": 4, "n_overlays": 3}, data_root=shared_data)
    rec, rec_path = _record(runner.run(["random-vit"], ["segmentation"], [dataset], opts, quiet=True), True)
    pred_d = rec["predictions"]
    dice = np.array(pred_d["dice"])
    assert rec["metrics"]["dice"]["value"] == pytest.approx(dice.mean())
    assert rec["metrics"]["dice"]["ci_low"] <= dice.mean() <= rec["metrics"]["dice"]["ci_high"]
    assert rec["extra"]["metric_variant"] == "lesion (foreground) only"
    assert "mean:dice_class_avg" in rec["metrics"]
    # independent recomputation: stored bit-packed predictions vs truth masks through scikit-learn
    masks = seg.load_predicted_masks(rec_path.parent / rec["artifacts"][0])
    ds = plugins.registry().dataset(dataset).obj(shared_data)
    test = ds.split("test")
    truth = seg.prepare_masks(test, plugins.registry().model("random-vit").info.preprocess, 224)
    assert list(masks) == pred_d["ids"] == test.ids
    for i, sid in enumerate(test.ids):
        ref = f1_score(truth[i].ravel(), masks[sid].ravel(), zero_division=1.0)
        assert dice[i] == pytest.approx(ref), sid
    assert np.array(pred_d["area_true"]) == pytest.approx(truth.mean(axis=(1, 2)))
    assert dice.mean() > 0.3  # four epochs on real lesions already beat chance clearly
    overlays = [a for a in rec["artifacts"] if a.endswith(".png")]
    assert len(overlays) == 3
    for a in overlays:
        with Image.open(rec_path.parent / a) as im:
            assert im.size == (3 * 224 + 4, 224 + 14)


# ------------------------------------------------------------------------------------------ dermsynth


@pytest.mark.slow
def test_trained_head_beats_untrained_on_dermsynth_and_is_deterministic(tmp_path):
    from dermbench import stats

    synth = {"n": 96, "size": 96}

    def run(params: dict, sub: str) -> dict:
        o = _opts(tmp_path / sub, {"size": 112, **params}, dataset_opts=dict(synth),  # masks scored at 112 px
                  model_opts={"depth": 4})
        o.cache_dir = tmp_path / "cache"  # features shared by all runs: extracted once
        return _record(runner.run(["random-vit"], ["segmentation"], ["dermsynth"], o, quiet=True))

    untrained = run({"epochs": 1, "lr": 0.0, "n_overlays": 0, "save_masks": False}, "u")  # the head at its init
    trained = run({"n_overlays": 1}, "t")  # the protocol's defaults: Adam 1e-3, cosine, 20 epochs
    again = run({"n_overlays": 0}, "a")
    classavg = run({"n_overlays": 0, "class_averaged": True}, "ca")
    d_u, d_t = untrained["metrics"]["dice"]["value"], trained["metrics"]["dice"]["value"]
    assert d_t > d_u + 0.15 and d_t > 0.45, (d_t, d_u)
    assert trained["extra"]["train_loss"][-1] < trained["extra"]["train_loss"][0]
    # paired bootstrap through the statistics engine: same split hash and seed -> identical resamples
    t = stats.paired_test(trained["predictions"], untrained["predictions"], "dice",
                          split_hash=trained["split"]["hash"], seed=0, n_boot=500)
    assert t["diff"] == pytest.approx(d_t - d_u) and t["p_value"] < 0.01 and t["ci_low"] > 0.1
    assert again["predictions"]["dice"] == trained["predictions"]["dice"]  # same seed -> identical numbers
    assert classavg["extra"]["metric_variant"] == "per-image mean of lesion and background scores"  # not DermINO's
    assert classavg["predictions"]["dice"] == trained["predictions"]["dice_class_avg"]
    assert "mean:dice_lesion" in classavg["metrics"]


# ------------------------------------------------------------------------------------------ CNNs, skipping


class _TestModels:
    """A random-init ResNet-18 (CNN: stages as patch maps) and a model without patch tokens."""

    @hookimpl
    def register_models(self, register):
        pre = Preprocess(crop=96, resize=96, interpolation="bilinear")

        def load_resnet(device="cpu", **_):
            from dermbench.backbones import TimmBackbone, create_timm

            return TimmBackbone(info_r, create_timm("resnet18", seed=0), "random:0").to(device)

        info_r = ModelInfo(name="test-resnet18", family="resnet", source="timm", embed_dim=512, preprocess=pre,
                           capabilities=frozenset({"cls", "patch_tokens"}), random_init=True)
        register(info_r, load_resnet)
        register(ModelInfo(name="test-cls-only", family="x", source="custom", embed_dim=8, preprocess=pre),
                 load_resnet)


@pytest.fixture
def seg_test_models():
    plugins.registry()
    plugins.register_plugin(_TestModels(), name="seg-test-models")
    yield
    plugins.unregister_plugin("seg-test-models")


def test_upernet_on_cnn_stages_and_vit_blocks_and_model_without_patch_tokens_skipped(tmp_path, seg_test_models):
    opts = _opts(tmp_path, {"head": "upernet", "epochs": 1, "decoder_channels": 16, "n_overlays": 1},
                 dataset_opts={"n": 16, "size": 96}, model_opts={"depth": 4})
    s = runner.run(["test-resnet18", "test-cls-only", "random-vit"], ["segmentation"], ["dermsynth"], opts,
                   quiet=True)
    assert len(s.skipped) == 1 and "patch_tokens" in s.skipped[0][1] and s.skipped[0][0].model == "test-cls-only"
    assert not s.failed and len(s.done) == 2
    recs = {c.model: json.loads(Path(p).read_text()) for c, p in s.done}
    cnn, vit = recs["test-resnet18"]["extra"], recs["random-vit"]["extra"]
    assert cnn["layers"] == [1, 2, 3, 4] and cnn["pyramid"] == "backbone stages (CNN)"
    assert [m["h"] for m in cnn["feature_maps"]] == [24, 12, 6, 3]
    assert vit["layers"] == [0, 1, 2, 3] and vit["pyramid"].startswith("built")
    assert [m["h"] for m in vit["feature_maps"]] == [14] * 4 and vit["decoder"] == "smp UPerNetDecoder"
    for rec in recs.values():
        d = np.array(rec["predictions"]["dice"])
        assert len(d) == len(rec["predictions"]["ids"]) == rec["split"]["n"] and ((0 <= d) & (d <= 1)).all()


# ------------------------------------------------------------------------------------------ bad input


def test_mask_of_another_size_is_refused_naming_both_files_and_sizes(shared_data):
    img = _ph2(shared_data, "IMD003")
    ham_mask = next((shared_data / "ham10000").rglob("*_segmentation.png"))
    s = Sample(id="IMD003", image=img, mask=ham_mask)
    with pytest.raises(DermbenchError) as e:
        seg.load_mask_checked(s)
    msg = str(e.value)
    assert str(ham_mask) in msg and str(img) in msg and "765x574" in msg and "600x450" in msg


def test_non_binary_and_missing_masks_are_refused(tmp_path, shared_data):
    img = _ph2(shared_data, "IMD003")
    with Image.open(img) as im:
        w, h = im.size
    grey = np.zeros((h, w), np.uint8)
    grey[100:200, 100:300] = 128
    grey[200:300, 100:300] = 255
    p = tmp_path / "grey.png"
    Image.fromarray(grey).save(p)
    with pytest.raises(DermbenchError, match=r"values \[0, 128, 255\].*Binarise"):
        seg.load_mask_checked(Sample(id="x", image=img, mask=p))
    with pytest.raises(DermbenchError, match="has no mask"):
        seg.load_mask_checked(Sample(id="x", image=img, mask=None))


def test_empty_truth_masks_are_scored_by_the_documented_policy(shared_data):
    """A real image with an empty mask: 'no lesion' predicted scores 1, any lesion predicted scores 0."""
    img = _ph2(shared_data, "IMD003")
    with Image.open(img) as im:
        w, h = im.size
    s = Sample(id="empty", image=img, mask=lambda: np.zeros((h, w), np.uint8))
    ds = Dataset(DatasetInfo(name="empty-masks", fields=frozenset({"masks"})), [s], {"test": [0]})
    truth = seg.prepare_masks(ds.split("test"), Preprocess(), 224)
    assert not truth.any()
    d, j = seg.dice_jaccard(np.zeros_like(truth), truth)
    assert d[0] == 1.0 and j[0] == 1.0
    some = np.zeros_like(truth)
    some[0, 5, 5] = True
    assert seg.dice_jaccard(some, truth)[0][0] == 0.0


def test_unknown_head_and_option_values_are_refused():
    with pytest.raises(DermbenchError, match="head=linear or head=upernet"):
        seg.Segmentation(head="unet")
    with pytest.raises(DermbenchError, match="class_averaged"):
        seg.Segmentation(class_averaged="maybe")
    with pytest.raises(DermbenchError, match="layers"):
        runner.task_params(plugins.registry().task("segmentation").info, {"layer": 3})
