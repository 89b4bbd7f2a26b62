"""`dermbench audit` on the real HAM10000 / PH2 / PAD-UFES-20 subsets, with planted near-duplicates."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dermbench import audit
from dermbench.api import DermbenchError
from dermbench.runner import RunOptions, Runner

from conftest import SHARED_DATA

DATASETS = ["ham10000", "ph2", "pad-ufes-20"]


def _load(name):
    return Runner(RunOptions(data_root=SHARED_DATA), quiet=True).dataset(name)


def test_real_datasets_have_no_pairs_and_report_is_written(tmp_path):
    rep = audit.main(DATASETS, data_root=SHARED_DATA, out=tmp_path / "audit")
    assert {k: v["images"] for k, v in rep["datasets"].items()} == {"ham10000": 75, "ph2": 45, "pad-ufes-20": 46}
    assert all(v["within_pairs"] == 0 for v in rep["datasets"].values())
    assert [(a["a"], a["b"], a["pairs"]) for a in rep["across"]] == [
        ("ham10000", "ph2", 0), ("ham10000", "pad-ufes-20", 0), ("ph2", "pad-ufes-20", 0)]
    on_disk = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert on_disk["version"] == 1 and on_disk["settings"]["max_distance"] == 4 and on_disk["pairs"] == []
    md = (tmp_path / "audit" / "audit.md").read_text()
    assert "| ham10000 | ph2 | 0 |" in md and "How to read" in md


def test_planted_copies_are_found_and_nothing_else(tmp_path):
    ph2, ham = _load("ph2"), _load("ham10000")
    folder = tmp_path / "pretrain"
    folder.mkdir()
    test = ph2.split("test").samples[:3]
    for s in test:  # resized to 60 % and re-encoded as JPEG q=80: what a scraped copy looks like
        im = s.load_image()
        im.resize((im.width * 3 // 5, im.height * 3 // 5), Image.Resampling.BILINEAR).save(folder / f"{s.id}.jpg",
                                                                                           quality=80)
    train = ham.split("train").samples[:2]
    for s in train:  # byte-identical copies
        shutil.copy(s.image, folder / f"copy_{s.id}.jpg")
    unrelated = Image.fromarray((np.random.default_rng(0).random((200, 240, 3)) * 255).astype(np.uint8))
    unrelated.save(folder / "noise.png")
    rep = audit.main(["ph2", "ham10000"], data_root=SHARED_DATA, pretrain={"mymodel": folder}, out=tmp_path / "a")
    pre = {p["dataset"]: p for p in rep["pretraining"]}
    assert pre["ph2"]["images"] == 6 and pre["ph2"]["pairs"] == 3 and pre["ph2"]["test_pairs"] == 3
    assert pre["ham10000"]["pairs"] == 2 and pre["ham10000"]["test_pairs"] == 0
    found = {p["b"] for p in rep["pairs"] if p["kind"] == "pretraining"}
    assert found == {f"ph2/test/{s.id}" for s in test} | {f"ham10000/train/{s.id}" for s in train}
    assert all(p["hamming"] <= 4 and p["pixel_diff"] <= 0.03 for p in rep["pairs"])
    copies = [p for p in rep["pairs"] if "copy_" in p["a"]]
    assert all(p["hamming"] == 0 and p["pixel_diff"] == 0 for p in copies)
    sheet = tmp_path / "a" / "contact_sheet.png"
    with Image.open(sheet) as im:
        assert im.size[1] == 112 * 5
    assert "| mymodel | 6 | ph2 | 3 | 3 |" in (tmp_path / "a" / "audit.md").read_text()


def test_guard_and_audit_share_the_hash():
    from dermino_model import data

    s = _load("ph2").samples[0]
    im = s.load_image()
    assert data.phash(im) == audit.phash(im)
    small = im.resize((im.width // 2, im.height // 2))
    d = int(audit.hamming(np.array([audit.phash(im)], np.uint64), np.array([audit.phash(small)], np.uint64))[0, 0])
    assert d <= 4


def test_bad_input_errors(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.new("RGB", (28, 28), (200, 120, 100)).save(tiny / "a.png")
    with pytest.raises(DermbenchError, match=r"'tiny' are as small as 28 px.*--min-size 28"):
        audit.main(["ph2"], data_root=SHARED_DATA, pretrain={"tiny": tiny}, out=tmp_path / "o")
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.new("L", (64, 64), 90).save(grey / "g.png")
    with pytest.raises(DermbenchError, match="mix greyscale and colour.*--allow-mixed-modes"):
        audit.main(["ph2"], data_root=SHARED_DATA, pretrain={"grey": grey}, out=tmp_path / "o")
    rep = audit.main(["ph2"], data_root=SHARED_DATA, pretrain={"grey": grey}, out=tmp_path / "o", allow_mixed_modes=True)
    assert rep["pretraining"][0]["pairs"] == 0
    with pytest.raises(DermbenchError, match="holds no images"):
        audit.main(["ph2"], data_root=SHARED_DATA, pretrain={"x": tmp_path / "o"}, out=tmp_path / "o2")


def test_cli_audit(tmp_path):
    from dermbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["audit", "--dataset", "ph2", "--data-root", str(SHARED_DATA), "--pretrain", "nofolder",
              "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    main_out = tmp_path / "cli"
    with pytest.raises(SystemExit) as e:
        main(["audit", "--dataset", "ph2", "--data-root", f"ph2={SHARED_DATA / 'ph2'}", "--out", str(main_out)])
    assert e.value.code in (0, None)
    assert json.loads((main_out / "audit.json").read_text())["datasets"]["ph2"]["images"] == 45


def test_overlap_evidence_for_the_leaderboard(tmp_path):
    folder = tmp_path / "pre"
    folder.mkdir()
    s = _load("ph2").split("test").samples[0]
    shutil.copy(s.image, folder / "x.bmp")
    audit.main(["ph2", "ham10000"], data_root=SHARED_DATA, pretrain={"dermino": folder}, out=tmp_path / "audit")
    ev = audit.overlap_evidence(tmp_path / "audit")
    assert ev[("dermino", "ph2")]["test_pairs"] == 1 and ev[("dermino", "ham10000")]["pairs"] == 0
    assert audit.overlap_evidence(tmp_path / "nothing") == {}


def test_embedding_pass_refuses_random_init_backbones(tmp_path):
    with pytest.raises(DermbenchError, match="random-init backbone's embeddings do not measure image similarity"):
        audit.main(["ph2"], data_root=SHARED_DATA, model="random-vit", out=tmp_path / "o")


def test_embedding_pass_with_a_trained_like_backbone(tmp_path):
    """The embedding pass on real features: a seeded conv net (not flagged random_init) finds planted copies."""
    from dataclasses import replace

    from dermbench import hookimpl, plugins
    from test_transfer import INFO, TinyConv

    class P:
        @hookimpl
        def register_models(self, register):
            register(replace(INFO, name="tiny-embed", random_init=False), TinyConv)

    plugins.registry()
    plugins.register_plugin(P(), name="tiny-embed")
    try:
        folder = tmp_path / "pre"
        folder.mkdir()
        s = _load("ph2").split("test").samples[0]
        s.load_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "flipped.png")
        rep = audit.main(["ph2"], data_root=SHARED_DATA, pretrain={"m": folder}, model="tiny-embed",
                         cache_dir=tmp_path / "cache", out=tmp_path / "o", sim_threshold=0.99)
        pairs = [p for p in rep["pairs"] if p["kind"] == "pretraining"]
        assert f"ph2/test/{s.id}" in {p["b"] for p in pairs}
        hit = next(p for p in pairs if p["b"] == f"ph2/test/{s.id}")
        assert hit["method"] == "embedding" and hit["cosine"] >= 0.99 and hit["hamming"] > 4  # pHash misses a flip
        assert rep["settings"]["model"] == "tiny-embed" and rep["settings"]["sim_threshold"] == 0.99
    finally:
        plugins.unregister_plugin("tiny-embed")


def test_leaderboard_overlap_column_uses_audit_evidence(tmp_path):
    """A model's pretraining folder holding a PH2 test image shows up in the leaderboard's overlap column."""
    from dermbench import leaderboard, plugins, runner
    from test_transfer import TinyConv, TinyPlugin

    plugins.registry()
    plugins.register_plugin(TinyPlugin(), name="tiny-conv")
    try:
        res = tmp_path / "results"
        s = runner.run(["tiny-conv"], ["retrieval"], ["ph2"],
                       runner.RunOptions(out=res, cache_dir=tmp_path / "cache", data_root=SHARED_DATA, n_boot=50),
                       quiet=True)
        assert s.ok, s.failed
        assert leaderboard.build(res)["meta"]["tiny-conv"]["overlap"] == []
        folder = tmp_path / "pre"
        folder.mkdir()
        shutil.copy(_load("ph2").split("test").samples[0].image, folder / "leaked.bmp")
        audit.main(["ph2"], data_root=SHARED_DATA, pretrain={"tiny-conv": folder}, out=res / "audit")
        assert leaderboard.build(res)["meta"]["tiny-conv"]["overlap"] == ["ph2 (audit: 1 test near-duplicates)"]
    finally:
        plugins.unregister_plugin("tiny-conv")
