"""DermINO trainer: smoke run, exact resume, checkpoint -> backbone, NaN guard, data sources, leakage guard."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dermbench import hookimpl, plugins
from dermbench.api import Dataset, DatasetInfo, DermbenchError, Sample, WeightsUnavailable
from dermino_model.config import build_config
from dermino_model.data import PretrainItem, PretrainSet
from dermino_model.trainer import Trainer, list_checkpoints

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def _img(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.random((6, 6, 3))
    arr = np.kron(base, np.ones((size // 6, size // 6, 1))) * 200 + rng.random((size, size, 3)) * 55
    return Image.fromarray(arr.astype(np.uint8))


def synth_set(n: int = 12) -> PretrainSet:
    """Two labelled sources with overlapping label names plus unlabelled images."""
    items = []
    for i in range(n):
        img = _img(i)
        src = ("a", "b", "u")[i % 3]
        lab = {"a": ["Melanoma", "Nevus", "BCC"][i % 3 if i % 3 else (i // 3) % 3], "b": ["melanoma", "SK"][i % 2],
               "u": None}[src]
        items.append(PretrainItem(f"x{i}", (lambda im=img: im), src, lab, f"x{i}"))
    return PretrainSet(items, {"a": ["Melanoma", "Nevus", "BCC"], "b": ["melanoma", "SK"]})


def make_trainer(tmp_path, **over) -> Trainer:
    cfg = build_config("smoke", overrides=over)
    tr = Trainer(cfg, tmp_path, pset=synth_set())
    tr.setup()
    return tr


def test_smoke_step_every_term_and_schedule_branch(tmp_path):
    tr = make_trainer(tmp_path / "run")
    assert tr.total_steps == 3 and tr.iters_per_epoch == 1
    t_before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    rec = tr.train_step(tr.batches[0])
    for k in ("dino", "ibot", "koleo", "sup", "total", "teacher_entropy", "prototypes_used", "grad_norm", "lr"):
        assert k in rec and np.isfinite(rec[k]), k
    assert rec["sup"] > 0 and rec["known_labels"] > 0 and rec["masked_tokens"] > 0
    assert rec["lr"] == 0.0 and rec["last_layer_lr"] == 0.0 and rec["teacher_temp"] == pytest.approx(0.04)
    groups = {g["name"]: g for g in tr.optimizer.param_groups}
    assert groups["dino_head.last_layer.v"]["lr"] == 0.0
    s = tr.student_raw
    assert s.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert s.dino_head.mlp[0].weight.grad.abs().sum() > 0
    assert s.prototypes.weight.grad is None and "prototypes.weight" not in groups  # frozen (authors' code)
    assert all(p.grad is None for p in tr.teacher.parameters())
    rec2 = tr.train_step(tr.batches[1])
    assert rec2["lr"] > 0 and rec2["last_layer_lr"] > 0 and rec2["teacher_temp"] == pytest.approx(0.07)
    changed = [k for k, v in tr.teacher.state_dict().items() if not torch.equal(v, t_before[k])]
    assert any("blocks.0" in k for k in changed)  # EMA moved the teacher toward the post-step student
    # label space: Melanoma/melanoma merged; source b knows only its own classes
    sp = tr.space
    assert sp.source_maps["a"]["Melanoma"] == sp.source_maps["b"]["melanoma"] and len(sp.classes) == 4
    b_row = next(i for i, it in enumerate(tr.pset.items) if it.source == "b")
    assert tr.batches.known[b_row].sum() == 2
    u_row = next(i for i, it in enumerate(tr.pset.items) if it.source == "u")
    assert tr.batches.known[u_row].sum() == 0


def test_resume_is_exact_and_checkpoint_loads_as_backbone(tmp_path):
    full = make_trainer(tmp_path / "full", checkpoint_every=2)
    s_full = full.train(progress=False)
    assert s_full["step"] == 3 and len(list_checkpoints(tmp_path / "full")) == 2

    part = make_trainer(tmp_path / "part", checkpoint_every=2)
    part.train(stop_at=2, progress=False)
    resumed = make_trainer(tmp_path / "part", checkpoint_every=2)
    assert resumed.resume() and resumed.step == 2
    resumed.train(progress=False)
    for k, v in full.teacher.state_dict().items():
        assert torch.equal(v, resumed.teacher.state_dict()[k]), k
    for k, v in full.student_raw.state_dict().items():
        assert torch.equal(v, resumed.student_raw.state_dict()[k]), k

    ckpt = list_checkpoints(tmp_path / "full")[-1]
    meta = json.loads((ckpt / "dermino.json").read_text())
    assert meta["labels"]["classes"] and meta["arch"]["embed_dim"] == 64 and meta["config"]["preset"] == "smoke"
    from dermino_model.plugin import DERMINO, _load

    bb = _load(DERMINO, weights=str(tmp_path / "full"))  # an output dir: newest checkpoint
    assert bb.info.embed_dim == 64 and bb.info.image_size == 64 and bb.weights_id.startswith("sha256:")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = full.teacher.backbone(x)["cls"]
    assert torch.allclose(bb.embed(x), ref, atol=1e-5)
    maps = bb.patch_tokens(x, [-1])
    assert maps[0].shape == (2, 64, 8, 8)


def test_default_location_env_and_missing_message(tmp_path, monkeypatch):
    from dermino_model.backbone import demo_dir, resolve
    from dermino_model.plugin import DERMINO, _load

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "home"))
    monkeypatch.delenv("DERMBENCH_WEIGHTS_DERMINO", raising=False)
    with pytest.raises(WeightsUnavailable, match="dermbench pretrain --preset demo"):
        resolve(None)
    tr = make_trainer(demo_dir())
    tr.train(stop_at=1, progress=False)
    assert resolve(None).name == "ckpt-0000001"
    assert _load(DERMINO).info.embed_dim == 64
    from dermino_model.demo import ensure_demo_checkpoint

    logs: list[str] = []
    assert ensure_demo_checkpoint(log=logs.append) == resolve(None)  # exists: no pretraining run
    assert len(logs) == 1 and "ckpt-0000001" in logs[0]
    monkeypatch.setenv("DERMBENCH_WEIGHTS_DERMINO", str(tmp_path / "nowhere"))
    with pytest.raises(DermbenchError, match="DERMBENCH_WEIGHTS_DERMINO"):
        resolve(None)


def test_released_dinov2_layout_checkpoint_loads(tmp_path):
    """A DINOv2-style teacher_checkpoint.pth: {'teacher': {'backbone.blocks.<chunk>.<i>...', 'dino_head...'}}."""
    from dermino_model.plugin import DERMINO, _load
    from dermino_model.vit import create_vit

    vit = create_vit("custom", 14, 56, layerscale=1e-5, embed_dim=128, depth=4, num_heads=2)
    sd = {}
    for k, v in vit.state_dict().items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = k.replace(f"blocks.{i}.", f"blocks.{i // 2}.{i}.", 1)  # block_chunks=2
        sd[f"backbone.{k}"] = v.clone()
    sd["backbone.mask_token"] = torch.zeros(1, 128)
    sd["dino_head.mlp.0.weight"] = torch.zeros(4, 128)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": sd}, path)
    bb = _load(DERMINO, weights=str(path))
    assert bb.info.embed_dim == 128 and bb.info.patch_size == 14
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        vit.eval()
        import torch.nn.functional as F  # noqa: F401

        from timm.layers import resample_abs_pos_embed

        vit2 = create_vit("custom", 14, 224, layerscale=1e-5, embed_dim=128, depth=4, num_heads=2)
        own = dict(vit.state_dict())
        own["pos_embed"] = resample_abs_pos_embed(own["pos_embed"], new_size=(16, 16), old_size=(4, 4))
        vit2.load_state_dict(own)
        ref = vit2.eval().forward_head(vit2.forward_features(x), pre_logits=True)
    assert torch.allclose(bb.embed(x), ref, atol=1e-4)


def test_nan_guard_keeps_last_checkpoint(tmp_path):
    tr = make_trainer(tmp_path / "nan", checkpoint_every=1)
    tr.train(stop_at=1, progress=False)
    ck = list_checkpoints(tmp_path / "nan")
    with torch.no_grad():
        tr.student_raw.dino_head.mlp[0].weight.fill_(float("nan"))  # diverged weights
    with pytest.raises(DermbenchError, match="NaN/inf loss at step 1.*ckpt-0000001 is intact"):
        tr.train_step(tr.batches[1])
    assert list_checkpoints(tmp_path / "nan") == ck
    tr.cfg.nan_policy = "skip"
    rec = tr.train_step(tr.batches[1])
    assert rec["skipped"] and tr.step == 2


class _TinyDerm:
    """A runtime dataset plugin: labelled train split, a test split with one near-copy of a train image."""

    def __init__(self, leak: bool, labels: bool = True) -> None:
        self.leak, self.labels = leak, labels

    @hookimpl
    def register_datasets(self, register):
        names = ("Melanoma", "Nevus") if self.labels else ()
        info = DatasetInfo(name="tinyderm", needs_root=False, label_names=names)

        def load(root=None, **_):
            samples = [Sample(f"s{i}", (lambda i=i: _img(100 + i)), label=(i % 2 if self.labels else None))
                       for i in range(10)]
            test_img = (lambda: _img(100).resize((40, 40))) if self.leak else (lambda: _img(999))
            samples.append(Sample("t0", test_img, label=0 if self.labels else None))
            samples.append(Sample("t1", lambda: _img(998), label=1 if self.labels else None))
            return Dataset(info, samples, {"train": list(range(10)), "test": [10, 11]}, label_names=list(names))

        register(info, load)


@pytest.fixture
def tinyderm():
    def add(leak=False, labels=True):
        plugins.register_plugin(_TinyDerm(leak, labels), name="tinyderm-test")

    yield add
    plugins.unregister_plugin("tinyderm-test")


def test_sources_from_registry_and_leakage_guard(tmp_path, tinyderm):
    from dermino_model.data import leakage_guard, load_sources

    tinyderm(leak=True)
    src = [{"dataset": "tinyderm", "split": "train"}, {"folder": str(tmp_path / "imgs")}]
    (tmp_path / "imgs").mkdir()
    _img(7).save(tmp_path / "imgs" / "a.png")
    pset = load_sources(src)
    assert len(pset.items) == 11 and pset.label_sources == {"tinyderm:train": ["Melanoma", "Nevus"]}
    assert pset.items[-1].label is None
    with pytest.raises(DermbenchError, match=r"near-duplicates.*s0 ~ tinyderm/t0.*leakage: drop"):
        leakage_guard(pset, "refuse", ["tinyderm"], {})
    notes = leakage_guard(pset, "drop", ["tinyderm"], {})
    assert len(pset.items) == 10 and "dropped 1" in notes[-1]
    assert "s0" not in {it.id.split("/")[-1] for it in pset.items}


def test_no_leak_passes_and_unlabelled_dataset_message(tmp_path, tinyderm):
    from dermino_model.data import leakage_guard, load_sources

    tinyderm(leak=False, labels=False)
    with pytest.raises(DermbenchError, match="has no labels; add labels: none"):
        load_sources([{"dataset": "tinyderm"}])
    pset = load_sources([{"dataset": "tinyderm", "labels": "none"}])
    assert "no near-duplicates" in leakage_guard(pset, "refuse", ["tinyderm"], {})[-1]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    from dermino_model.data import drop_unreadable

    ps = load_sources([{"folder": str(bad)}])
    with pytest.raises(DermbenchError, match="broken.jpg"):
        drop_unreadable(ps, skip=False)


def test_phash_collision_of_different_images_is_not_a_leak():
    """Same dark-blob-on-light-skin layout, different colours: the grey pHash collides, the thumbnail test does not."""
    from dermino_model.data import hamming, phash, thumbnail

    yy, xx = np.mgrid[:64, :64]
    blob = ((xx - 30) / 18.0) ** 2 + ((yy - 34) / 13.0) ** 2 < 1

    def paint(bg, fg):
        return Image.fromarray(np.where(blob[..., None], np.array(fg), np.array(bg)).astype(np.uint8))

    a, c = paint((230, 190, 160), (90, 50, 30)), paint((200, 200, 245), (40, 40, 130))
    h = lambda im: np.array([phash(im)], dtype=np.uint64)  # noqa: E731
    mad = lambda x, y: np.abs(thumbnail(x).astype(float) - thumbnail(y).astype(float)).mean() / 255  # noqa: E731
    assert hamming(h(a), h(c))[0, 0] <= 4  # the hash alone would call them duplicates
    assert mad(a, c) > 0.03
    copy = a.resize((50, 50)).resize((64, 64))
    assert hamming(h(a), h(copy))[0, 0] <= 4 and mad(a, copy) < 0.03


def test_activation_checkpointing_gives_identical_gradients(tmp_path):
    from dermino_model.trainer import step_losses

    tr = make_trainer(tmp_path / "ckpt", drop_path_rate=0.0)
    batch = tr.batches[0]
    grads = []
    for flag in (False, True):
        tr.student_raw.zero_grad(set_to_none=True)
        tr.student_raw.backbone.checkpointing = flag
        tr.student_raw.train()
        loss, _ = step_losses(tr.student_raw, tr.teacher, batch, tr.cfg, 0.05, None)
        loss.backward()
        grads.append((loss.item(), tr.student_raw.backbone.vit.blocks[0].mlp.fc1.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_pretrain_command_through_plugin_hook(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dermbench import cli

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "home"))
    out = tmp_path / "cli"
    res = CliRunner().invoke(cli.app, ["pretrain", "--preset", "smoke", "--out", str(out), "--quiet",
                                       "--set", "sup_weight=0.5", "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    assert "ckpt-0000002" in res.output and "dermbench run --model dermino --weights" in res.output
    recs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert recs[0]["config"]["sup_weight"] == 0.5 and recs[0]["total_steps"] == 2
    assert [r["step"] for r in recs if "dino" in r] == [0, 1]
    bad = CliRunner().invoke(cli.app, ["pretrain", "--preset", "nope", "--output", str(out)])
    assert bad.exit_code != 0 and "unknown preset 'nope'" in str(bad.exception)
