"""Datasets not redistributable here (DDI, Derm7pt, MED-Node, ACNE04, SkinCAP, DermaMNIST, Waterloo) and the
generic folder/csv datasets, read from tiny fixtures that each test writes in the exact published format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dermbench_plugins.datasets import acne04, ddi, derm7pt, dermamnist, generic, mednode, skincap, waterloo
from PIL import Image

from dermbench.api import DermbenchError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _img(path: Path, seed: int, size=(8, 6), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "L":
        Image.fromarray(((rng.random(size[::-1]) > 0.5) * 255).astype(np.uint8), "L").save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


# ------------------------------------------------------------------------------------------ DDI


def test_ddi(tmp_path):
    root = tmp_path / "ddi"
    lines = [",DDI_ID,DDI_file,skin_tone,malignant,disease"]
    tones = ["12", "34", "56"]
    for i in range(12):
        lines.append(f"{i},{i + 1},{i + 1:06d}.png,{tones[i % 3]},{'True' if i % 2 else 'False'},disease-{i}")
        _img(root / "ddidiversedermatologyimages" / f"{i + 1:06d}.png", i)
    lines.append("12,13,000013.png,34,False,not-downloaded")
    root.mkdir(exist_ok=True)
    (root / "ddi_metadata.csv").write_text("\n".join(lines) + "\n")
    ds = ddi.load_ddi(root)
    assert len(ds) == 12 and ds.skipped == {"missing_image": 1}
    s = {x.id: x for x in ds.samples}
    assert s["000002"].label == 1 and s["000002"].meta["fitzpatrick_group"] == "34"
    assert s["000001"].label == 0 and s["000001"].meta["fitzpatrick"] is None
    for name in ("train", "test"):
        assert {ds.samples[i].label for i in ds.splits[name]} == {0, 1}
    (root / "ddi_metadata.csv").write_text("\n".join(lines[:3] + [lines[3].replace(",56,", ",7,")]) + "\n")
    with pytest.raises(DermbenchError, match=r"line 4, column 'skin_tone': value '7'"):
        ddi.load_ddi(root)


# ------------------------------------------------------------------------------------------ Derm7pt

D7_COLS = (
    "case_num,diagnosis,seven_point_score,pigment_network,streaks,pigmentation,regression_structures,"
    "dots_and_globules,blue_whitish_veil,vascular_structures,level_of_diagnostic_difficulty,elevation,"
    "location,sex,management,clinic,derm,case_id,notes"
)


def _derm7pt(root: Path, dx: list[str]) -> None:
    rel = root / "release_v0"
    rows = [D7_COLS]
    for i, d in enumerate(dx):
        clinic, derm = f"Aal{i}/NEL{i:03d}.jpg", f"Aal{i}/Nel{i:03d}.jpg"
        rows.append(
            f"{i + 1},{d},0,absent,absent,absent,absent,absent,absent,absent,low,flat,back,"
            f"{'female' if i % 2 else 'male'},excision,{clinic},{derm},case{i},"
        )
        _img(rel / "images" / clinic, i, (10, 8))
        _img(rel / "images" / derm, 100 + i, (6, 6))
    (rel / "meta").mkdir(parents=True, exist_ok=True)
    (rel / "meta" / "meta.csv").write_text("\n".join(rows) + "\n")
    n = len(dx)
    for name, idx in (("train", range(0, n - 4)), ("valid", range(n - 4, n - 2)), ("test", range(n - 2, n))):
        (rel / "meta" / f"{name}_indexes.csv").write_text("indexes\n" + "".join(f"{k}\n" for k in idx))


def test_derm7pt_groups_and_official_split(tmp_path):
    dx = [
        "clark nevus",
        "melanoma (in situ)",
        "basal cell carcinoma",
        "seborrheic keratosis",
        "lentigo",
        "melanoma metastasis",
        "vascular lesion",
        "reed or spitz nevus",
        "melanoma",
        "dermal nevus",
    ]
    _derm7pt(tmp_path, dx)
    ds = derm7pt.load_derm7pt_derm(tmp_path)
    assert [ds.label_names[s.label] for s in ds.samples] == [
        "NEV",
        "MEL",
        "BCC",
        "SK",
        "MISC",
        "MEL",
        "MISC",
        "NEV",
        "MEL",
        "NEV",
    ]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert ds.samples[1].meta["sex"] == "female" and ds.samples[0].load_image().size == (6, 6)
    clinic = derm7pt.load_derm7pt_clinic(tmp_path)
    assert clinic.samples[0].load_image().size == (10, 8)
    _derm7pt(tmp_path, dx[:-1] + ["melanocytic blob"])
    with pytest.raises(DermbenchError, match=r"meta.csv line 11, column 'diagnosis': value 'melanocytic blob'"):
        derm7pt.load_derm7pt_derm(tmp_path)


# ------------------------------------------------------------------------------------------ MED-Node, folder


def test_mednode_folders(tmp_path):
    base = tmp_path / "complete_mednode_dataset"
    for i in range(3):
        _img(base / "melanoma" / f"{i}.jpg", i)
    for i in range(4):
        _img(base / "naevus" / f"{i}.jpg", 10 + i)
    ds = mednode.load_mednode(tmp_path)
    assert len(ds) == 7 and sum(s.label for s in ds.samples) == 3
    assert ds.label_names == ["naevus", "melanoma"]
    with pytest.raises(DermbenchError, match="melanoma/ and naevus/"):
        mednode.load_mednode(base / "melanoma")


def test_generic_folder_plain_and_with_split_dirs(tmp_path):
    for k, cls in enumerate(("b_cls", "a_cls", "c_cls")):
        for i in range(4):
            _img(tmp_path / "plain" / cls / "sub" / f"{i}.png", 10 * k + i)
    ds = generic.load_folder(tmp_path / "plain")
    assert ds.label_names == ["a_cls", "b_cls", "c_cls"] and len(ds) == 12
    assert ds.split_source.startswith("seeded-stratified-50/50")
    sub = generic.load_folder(tmp_path / "plain", classes="c_cls,a_cls")
    assert sub.label_names == ["c_cls", "a_cls"] and len(sub) == 8
    assert {sub.label_names[s.label] for s in sub.samples if s.id.startswith("c_cls/")} == {"c_cls"}
    for part, n in (("train", 3), ("test", 2)):
        for cls in ("x", "y"):
            for i in range(n):
                _img(tmp_path / "split" / part / cls / f"{cls}{i}.jpg", i)
    sp = generic.load_folder(tmp_path / "split")
    assert {k: len(v) for k, v in sp.splits.items()} == {"train": 6, "test": 4}
    assert sp.split_source.startswith("official (")
    with pytest.raises(DermbenchError, match=r"class folder\(s\) \['zzz'\] not found"):
        generic.load_folder(tmp_path / "plain", classes="zzz")


def test_generic_csv_optional_columns_become_fields(tmp_path):
    root = tmp_path / "private"
    lines = ["file,dx,patient,seg,text,fst,gender,where"]
    for i in range(10):
        _img(root / "img" / f"{i}.jpg", i, (8, 6))
        _img(root / "msk" / f"{i}.png", i, (8, 6), "L")
        lines.append(
            f"img/{i}.jpg,{'mel' if i % 2 else 'nev'},P{i // 2},msk/{i}.png,a lesion {i},{1 + i % 6},"
            f"{'F' if i % 3 else 'M'},site{i % 2}"
        )
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    opts = dict(
        path_col="file",
        label_col="dx",
        group_col="patient",
        mask_col="seg",
        caption_col="text",
        fitzpatrick_col="fst",
        sex_col="gender",
        site_col="where",
    )
    ds = generic.load_csv(root, **opts)
    assert ds.info.fields == frozenset({"labels", "groups", "masks", "captions", "fitzpatrick", "sex", "site"})
    assert ds.label_names == ["mel", "nev"] and len(ds) == 10
    s = ds.samples[3]
    assert (s.caption, s.meta["fitzpatrick"], s.meta["sex"], s.meta["group"]) == ("a lesion 3", 4, "male", "P1")
    assert s.load_mask().shape == (6, 8)
    sides = {n: {ds.samples[i].meta["group"] for i in idx} for n, idx in ds.splits.items()}
    assert not sides["train"] & sides["test"]
    with pytest.raises(
        DermbenchError, match=r"table.csv line 2, column 'dx': value 'nev' is not one of \['bcc', 'mel'\]"
    ):
        generic.load_csv(root, classes="mel,bcc", **opts)
    with pytest.raises(DermbenchError, match=r"no column\(s\) \['label'\]; columns found: \['file', 'dx'"):
        generic.load_csv(root, path_col="file")


# ------------------------------------------------------------------------------------------ ACNE04


def test_acne04_folds(tmp_path):
    cls = tmp_path / "Classification"
    train0, test0 = [], []
    for sev in range(4):
        for n in range(3):
            _img(cls / "JPEGImages" / f"levle{sev}_{n}.jpg", 10 * sev + n)
            (test0 if n == 2 else train0).append(f"levle{sev}_{n}.jpg  {sev}  {5 * sev + n}")
    (cls / "NNEW_trainval_0.txt").write_text("\n".join(train0) + "\n")
    (cls / "NNEW_test_0.txt").write_text("\n".join(test0) + "\n")
    (cls / "NNEW_trainval_1.txt").write_text("\n".join(test0 + train0[:4]) + "\n")
    (cls / "NNEW_test_1.txt").write_text("\n".join(train0[4:]) + "\n")
    ds = acne04.load_acne04(tmp_path)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "test": 4}
    s = next(x for x in ds.samples if x.id == "levle3_1")
    assert s.label == 3 and s.meta["lesion_count"] == 16 and ds.label_names[3] == "very severe"
    f1 = acne04.load_acne04(tmp_path, fold="1")
    assert {k: len(v) for k, v in f1.splits.items()} == {"train": 8, "test": 4} and "fold 1" in f1.split_source
    assert "levle0_2" in f1.split("train").ids and "levle0_2" in ds.split("test").ids
    with pytest.raises(DermbenchError, match="fold=7"):
        acne04.load_acne04(tmp_path, fold=7)
    (cls / "NNEW_test_0.txt").write_text("levle0_2.jpg 4 3\n")
    with pytest.raises(DermbenchError, match=r"NNEW_test_0.txt line 1: severity 4 is not one of"):
        acne04.load_acne04(tmp_path)


# ------------------------------------------------------------------------------------------ SkinCAP


def test_skincap_release_csv_and_derived_csv(tmp_path):
    lines = ["id,skincap_file_path,disease,caption_zh,caption_zh_polish,caption_zh_polish_en,skin_tone"]
    for i in range(6):
        _img(tmp_path / "skincap" / f"{i + 1}.png", i)
        lines.append(f'{i + 1},{i + 1}.png,psoriasis,中文,中文,"Red, scaly plaques {i}.",{1 + i % 6}')
    (tmp_path / "skincap_v240623.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = skincap.load_skincap(tmp_path)
    assert len(ds) == 6 and ds.samples[2].caption == "Red, scaly plaques 2."
    assert ds.samples[2].label is None and ds.samples[2].meta["fitzpatrick"] == 3
    (tmp_path / "derived.csv").write_text("id,caption_en\n1,first\n2,second\n3,third\n4,fourth\n")
    d2 = skincap.load_skincap(tmp_path, csv="derived.csv")
    assert [s.caption for s in d2.samples] == ["first", "second", "third", "fourth"]


# ------------------------------------------------------------------------------------------ DermaMNIST


def _npz(path: Path, size: int, n=(6, 2, 3), bad_label=False):
    rng = np.random.default_rng(size)
    arrays = {}
    for part, k in zip(("train", "val", "test"), n):
        arrays[f"{part}_images"] = rng.integers(0, 255, (k, size, size, 3), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(k) % 7).reshape(-1, 1).astype(np.uint8)
    if bad_label:
        arrays["test_labels"][0, 0] = 9
    np.savez(path, **arrays)
    return arrays


def test_dermamnist_any_size_and_subset(tmp_path):
    a28 = _npz(tmp_path / "dermamnist.npz", 28)
    _npz(tmp_path / "dermamnist_64.npz", 64)
    ds = dermamnist.load_dermamnist(tmp_path)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 3}
    s = ds.samples[ds.splits["test"][1]]
    assert s.label == 1 and s.id == "test/1"
    assert np.array_equal(np.asarray(s.load_image()), a28["test_images"][1])
    big = dermamnist.load_dermamnist(tmp_path, size=64)
    assert big.samples[0].load_image().size == (64, 64)
    assert big.content_fingerprint != ds.content_fingerprint
    assert big.split("test").hash != ds.split("test").hash
    import pickle

    assert pickle.loads(pickle.dumps(s.image))().size == (28, 28)  # lazy images survive DataLoader workers
    _npz(tmp_path / "dermamnist_128.npz", 128, bad_label=True)
    with pytest.raises(DermbenchError, match=r"test_labels\[0\] = 9"):
        dermamnist.load_dermamnist(tmp_path, size=128)


# ------------------------------------------------------------------------------------------ Waterloo


def test_waterloo_orig_and_contour(tmp_path):
    for cls, n in (("Melanoma", 3), ("NotMelanoma", 4)):
        for i in range(n):
            d = tmp_path / "skin_data" / cls / "dermIS"
            _img(d / f"{cls}{i}_orig.jpg", i, (9, 7))
            if not (cls == "NotMelanoma" and i == 0):
                _img(d / f"{cls}{i}_contour.png", i, (9, 7), "L")
    ds = waterloo.load_waterloo(tmp_path)
    assert len(ds) == 7 and sum(s.label for s in ds.samples) == 3
    assert all(not s.id.endswith("_contour") for s in ds.samples)
    seg = waterloo.load_waterloo_seg(tmp_path)
    assert len(seg) == 6 and seg.skipped == {"missing_mask": 1}
    assert seg.samples[0].load_mask().shape == (7, 9)
