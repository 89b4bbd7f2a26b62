"""Fitzpatrick17k, SCIN and ISIC on their real metadata/ground-truth CSVs from ../shared/data.

Their images are not redistributable, so each test writes tiny stand-in images (8x8 PNG/JPEG) under the
exact file names the real data uses, next to a symlink to the real CSV. Expected labels are read from the
CSVs here with plain csv/ast code, independently of the loaders.
"""

from __future__ import annotations

import ast
import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dermbench_plugins.datasets import fitzpatrick17k as f17k
from dermbench_plugins.datasets import isic, scin
from PIL import Image

from dermbench.api import DermbenchError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _img(path: Path, seed: int, size=(8, 8), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "L":
        arr = (rng.random(size[::-1]) > 0.5).astype(np.uint8) * 255
    else:
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ Fitzpatrick17k


def test_fitzpatrick17k_variants(shared_data, tmp_path):
    src = shared_data / "fitzpatrick17k" / "fitzpatrick17k.csv"
    rows = _rows(src)
    pick: dict[str, dict[str, str]] = {}
    for part in ("non-neoplastic", "benign", "malignant"):
        for r in sorted((r for r in rows if r["three_partition_label"] == part), key=lambda r: r["md5hash"])[:5]:
            pick[r["md5hash"]] = r
    root = tmp_path / "f17k"
    root.mkdir()
    (root / "fitzpatrick17k.csv").symlink_to(src)
    for i, h in enumerate(sorted(pick)):
        _img(root / "images" / f"{h}.jpg", i)

    d3 = f17k.load_fitzpatrick17k_3(root)
    assert len(d3) == 15 and d3.skipped == {"missing_image": 16577 - 15}
    for s in d3.samples:
        r = pick[s.id]
        assert d3.label_names[s.label] == r["three_partition_label"]
        want = int(r["fitzpatrick_scale"])
        assert s.meta["fitzpatrick"] == (None if want == -1 else want)
        assert s.meta["site"] in ("dermaamin.com", "atlasdermatologico.com.br")
        assert s.meta["condition"] == r["label"]
    d2 = f17k.load_fitzpatrick17k_2(root)
    n2 = sum(r["three_partition_label"] != "non-neoplastic" for r in rows)
    assert n2 == 2234 + 2263
    assert len(d2) == 10 and d2.skipped == {"missing_image": n2 - 10}
    assert Counter(d2.label_names[s.label] for s in d2.samples) == {"benign": 5, "malignant": 5}
    d9 = f17k.load_fitzpatrick17k_9(root)
    assert all(d9.label_names[s.label] == pick[s.id]["nine_partition_label"] for s in d9.samples)
    assert d9.samples[0].load_image().size == (8, 8)


def test_fitzpatrick17k_unknown_partition_label(shared_data, tmp_path):
    text = (shared_data / "fitzpatrick17k" / "fitzpatrick17k.csv").read_text().splitlines()
    j = next(i for i, line in enumerate(text) if i > 2 and ",non-neoplastic," in line)
    text[j] = text[j].replace(",non-neoplastic,", ",pre-neoplastic,")
    (tmp_path / "fitzpatrick17k.csv").write_text("\n".join(text))
    with pytest.raises(DermbenchError, match=rf"line {j + 1}, column 'three_partition_label': value 'pre-neoplastic'"):
        f17k.load_fitzpatrick17k_3(tmp_path)


# ------------------------------------------------------------------------------------------ SCIN


def test_scin_conditions_demographics_and_case_groups(shared_data, tmp_path):
    src = shared_data / "scin" / "dataset"
    cases = {r["case_id"]: r for r in _rows(src / "scin_cases.csv")}
    labels = {r["case_id"]: r for r in _rows(src / "scin_labels.csv")}

    def top(cid):
        d = ast.literal_eval(labels[cid]["weighted_skin_condition_label"])
        return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if d else None

    chosen = []
    for cond in ("Eczema", "Urticaria", "Psoriasis"):
        cids = sorted(c for c in cases if top(c) == cond)
        multi = [c for c in cids if cases[c]["image_2_path"]][:2]
        chosen += multi + [c for c in cids if c not in multi][:2]
    root = tmp_path / "scin"
    (root / "dataset").mkdir(parents=True)
    for f in ("scin_cases.csv", "scin_labels.csv"):
        (root / "dataset" / f).symlink_to(src / f)
    n_images = 0
    for i, cid in enumerate(chosen):
        for k in (1, 2, 3):
            rel = cases[cid][f"image_{k}_path"]
            if rel:
                _img(root / rel, 10 * i + k)
                n_images += 1
    ds = scin.load_scin(root)
    assert len(ds) == n_images and n_images > len(chosen)
    by_case: dict[str, list] = {}
    for s in ds.samples:
        by_case.setdefault(s.meta["group"], []).append(s)
    assert set(by_case) == set(chosen)
    for cid, samples in by_case.items():
        assert {ds.label_names[s.label] for s in samples} == {top(cid)}
        s = samples[0]
        want_sex = {"MALE": "male", "FEMALE": "female"}.get(cases[cid]["sex_at_birth"])
        assert s.meta["sex"] == want_sex
        monk = labels[cid]["monk_skin_tone_label_us"]
        assert s.meta["monk"] == (int(float(monk)) if monk else None)
        derm = sorted(
            int(labels[cid][f"dermatologist_fitzpatrick_skin_type_label_{k}"][3:])
            for k in (1, 2, 3)
            if labels[cid][f"dermatologist_fitzpatrick_skin_type_label_{k}"].startswith("FST")
        )
        assert s.meta["fitzpatrick"] == (derm[(len(derm) - 1) // 2] if derm else None)
    sides = {name: {ds.samples[i].meta["group"] for i in idx} for name, idx in ds.splits.items()}
    assert not (sides["train"] & sides["test"])
    self_ds = scin.load_scin(root, fitzpatrick_source="self")
    fst = {s.id: s.meta["fitzpatrick"] for s in self_ds.samples}
    for s in self_ds.samples:
        raw = cases[s.meta["group"]]["fitzpatrick_skin_type"]
        assert fst[s.id] == (int(raw[3:]) if raw.startswith("FST") else None)


# ------------------------------------------------------------------------------------------ ISIC classification


def test_isic2018_task3_official_val_test(shared_data, tmp_path):
    src = shared_data / "isic_challenge_csvs" / "isic2018"
    root = tmp_path / "isic2018"
    root.mkdir()
    want = {}
    for part, folder in (("Validation", "val"), ("Test", "test")):
        gt = f"ISIC2018_Task3_{part}_GroundTruth.csv"
        (root / gt).symlink_to(src / gt)
        seen: Counter = Counter()
        for r in _rows(src / gt):
            cls = max(("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"), key=lambda c: float(r[c]))
            if seen[cls] < 2:
                seen[cls] += 1
                _img(root / f"ISIC2018_Task3_{part}_Input" / f"{r['image']}.jpg", len(want))
                want[r["image"]] = (cls, folder)
    ds = isic.load_isic2018(root)
    assert set(ds.splits) == {"val", "test"}
    assert len(want) >= 26  # 2 per class per part (the validation set has a class with only one image)
    assert len(ds) == len(want) and ds.skipped == {"missing_image": 193 + 1512 - len(want)}
    for name, idx in ds.splits.items():
        for i in idx:
            s = ds.samples[i]
            assert (ds.label_names[s.label], name) == want[s.id]
    assert ds.split_source.startswith("official (")


def test_isic2017_part3_labels_age_sex_and_superpixels_ignored(shared_data, tmp_path):
    src = shared_data / "isic_challenge_csvs" / "isic2017"
    root = tmp_path / "isic2017"
    root.mkdir()
    for f in ("ISIC-2017_Validation_Part3_GroundTruth.csv", "ISIC-2017_Validation_Data_metadata.csv"):
        (root / f).symlink_to(src / f)
    gt = _rows(src / "ISIC-2017_Validation_Part3_GroundTruth.csv")
    meta = {r["image_id"]: r for r in _rows(src / "ISIC-2017_Validation_Data_metadata.csv")}
    mel = [r for r in gt if float(r["melanoma"]) == 1][:3]
    sk = [r for r in gt if float(r["seborrheic_keratosis"]) == 1][:3]
    nv = [r for r in gt if float(r["melanoma"]) == 0 and float(r["seborrheic_keratosis"]) == 0][:3]
    for i, r in enumerate(mel + sk + nv):
        _img(root / "ISIC-2017_Validation_Data" / f"{r['image_id']}.jpg", i)
        _img(root / "ISIC-2017_Validation_Data" / f"{r['image_id']}_superpixels.png", 100 + i)
    ds = isic.load_isic2017(root)
    assert len(ds) == 9 and list(ds.splits) == ["val"]
    got = {s.id: ds.label_names[s.label] for s in ds.samples}
    assert got == {
        **{r["image_id"]: "melanoma" for r in mel},
        **{r["image_id"]: "seborrheic keratosis" for r in sk},
        **{r["image_id"]: "nevus" for r in nv},
    }
    for s in ds.samples:
        assert s.meta["age"] == float(meta[s.id]["age_approximate"])
        assert s.meta["sex"] == meta[s.id]["sex"]
        assert not s.image.stem.endswith("_superpixels")


# ------------------------------------------------------------------------------------------ ISIC segmentation


def test_isic_segmentation_naming_per_year(tmp_path):
    root = tmp_path / "isicseg"
    # 2016: capitalised _Segmentation
    for i in range(3):
        _img(root / "ISBI2016_ISIC_Part1_Training_Data" / f"ISIC_000000{i}.jpg", i, (12, 10))
        _img(root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / f"ISIC_000000{i}_Segmentation.png", i, (12, 10), "L")
    _img(root / "ISBI2016_ISIC_Part1_Test_Data" / "ISIC_0000009.jpg", 9, (12, 10))
    _img(root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000009_Segmentation.png", 9, (12, 10), "L")
    # 2017: superpixels beside the images; one image without mask
    for i in range(4):
        _img(root / "ISIC-2017_Training_Data" / f"ISIC_001000{i}.jpg", i, (12, 10))
        _img(root / "ISIC-2017_Training_Data" / f"ISIC_001000{i}_superpixels.png", i, (12, 10))
        if i < 3:
            _img(root / "ISIC-2017_Training_Part1_GroundTruth" / f"ISIC_001000{i}_segmentation.png", i, (12, 10), "L")
    _img(root / "ISIC-2017_Validation_Data" / "ISIC_0020000.jpg", 5, (12, 10))
    _img(root / "ISIC-2017_Validation_Part1_GroundTruth" / "ISIC_0020000_segmentation.png", 5, (12, 10), "L")
    # 2018: LICENSE files in the folders
    for i in range(2):
        _img(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_003000{i}.jpg", i, (12, 10))
        _img(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_003000{i}_segmentation.png", i, (12, 10), "L")
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC BY-NC")
    (root / "ISIC2018_Task1_Training_GroundTruth" / "ATTRIBUTION.txt").write_text("ISIC")

    d16 = isic.load_isic2016_seg(root)
    assert {k: len(v) for k, v in d16.splits.items()} == {"train": 3, "test": 1}
    assert d16.samples[0].load_mask().shape == (10, 12)
    d17 = isic.load_isic2017_seg(root)
    assert {k: len(v) for k, v in d17.splits.items()} == {"train": 3, "val": 1}
    assert d17.skipped == {"missing_mask": 1} and all("superpixels" not in s.id for s in d17.samples)
    d18 = isic.load_isic2018_seg(root)
    assert len(d18) == 2 and d18.info.fields == frozenset({"masks"})
    with pytest.raises(DermbenchError, match=r"ISBI2016_ISIC_Part1_Training_Data.*Found in .*: \(empty folder\)"):
        (tmp_path / "empty").mkdir()
        isic.load_isic2016_seg(tmp_path / "empty")
