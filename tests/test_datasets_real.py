"""Dataset plugins on the real files in ../shared/data (PH2, HAM10000, PAD-UFES-20).

Expected counts come from each folder's SOURCE.md, not from the loaders.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from dermbench_plugins.datasets import ham10000, pad_ufes20, ph2

from dermbench.api import DermbenchError
from dermbench.plugins import registry


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("DERMBENCH_CACHE", str(d))
    return d


def _sides_disjoint(ds, key="group"):
    groups = {name: {ds.samples[i].meta[key] for i in idx} for name, idx in ds.splits.items()}
    names = list(groups)
    return all(not (groups[a] & groups[b]) for a in names for b in names if a < b)


# ------------------------------------------------------------------------------------------ PH2


def test_ph2_three_class_from_txt(shared_data, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="dermbench.datasets"):
        ds = ph2.load_ph2(shared_data / "ph2")
    assert len(ds) == 45
    assert ds.skipped == {"missing_image": 155}
    lines = [r.getMessage() for r in caplog.records if "no image" in r.getMessage()]
    assert len(lines) == 1 and "155 of 200" in lines[0] and str(shared_data / "ph2") in lines[0]
    assert Counter(s.label for s in ds.samples) == {0: 15, 1: 15, 2: 15}
    by_id = {s.id: s for s in ds.samples}
    assert by_id["IMD003"].label == 0 and by_id["IMD004"].label == 1 and by_id["IMD058"].label == 2
    assert by_id["IMD035"].meta["criteria"]["asymmetry"] == "2"
    assert by_id["IMD016"].meta["colors"] == ["light-brown", "dark-brown"]
    assert ds.label_names == ["common nevus", "atypical nevus", "melanoma"]
    assert sorted(ds.splits) == ["test", "train"]
    assert sorted(ds.splits["train"] + ds.splits["test"]) == list(range(45))
    for name in ("train", "test"):  # stratified: every class on both sides, about half each
        c = Counter(ds.samples[i].label for i in ds.splits[name])
        assert set(c) == {0, 1, 2} and all(7 <= v <= 8 for v in c.values())
    img = by_id["IMD003"].load_image()
    assert img.mode == "RGB" and img.size == (765, 574)


def test_ph2_xlsx_gives_same_labels(shared_data, cache):
    a = ph2.load_ph2(shared_data / "ph2")
    b = ph2.load_ph2(shared_data / "ph2", table="xlsx")
    assert [(s.id, s.label) for s in a.samples] == [(s.id, s.label) for s in b.samples]
    assert a.splits == b.splits  # same ids and labels -> same seeded split


def test_ph2_binary_and_seg(shared_data, cache):
    b = ph2.load_ph2_binary(shared_data / "ph2")
    assert Counter(s.label for s in b.samples) == {0: 30, 1: 15}
    assert b.label_names == ["nevus", "melanoma"]
    seg = ph2.load_ph2_seg(shared_data / "ph2")
    assert "masks" in seg.info.fields and len(seg) == 45
    s = next(x for x in seg.samples if x.id == "IMD003")
    m = s.load_mask()
    assert m.dtype == bool and m.shape == (574, 765)
    assert 0.02 < m.mean() < 0.98  # a lesion, not an empty or full mask


def test_ph2_split_file_written_hashed_and_reused(shared_data, cache):
    ds = ph2.load_ph2(shared_data / "ph2", split_seed=3)
    files = list((cache / "splits").glob("ph2-seed3-*.json"))
    assert len(files) == 1 and str(files[0]) in ds.split_source
    body = json.loads(files[0].read_text())
    assert sorted(body["splits"]["train"]) == sorted(ds.samples[i].id for i in ds.splits["train"])
    assert body["sha256"][:16] in ds.split_source
    again = ph2.load_ph2(shared_data / "ph2", split_seed=3)
    assert again.splits == ds.splits and again.split_source == ds.split_source
    other = ph2.load_ph2(shared_data / "ph2", split_seed=4)
    assert other.splits != ds.splits
    assert ds.split("test").hash != other.split("test").hash


def test_ph2_split_file_mismatch_is_reported(shared_data, cache, tmp_path):
    """A changed image folder must not silently give another split."""
    src = shared_data / "ph2" / "PH2Dataset"
    root = tmp_path / "ph2"
    (root / "PH2Dataset" / "PH2 Dataset images").mkdir(parents=True)
    (root / "PH2Dataset" / "PH2_dataset.txt").symlink_to(src / "PH2_dataset.txt")
    cases = sorted(p.name for p in (src / "PH2 Dataset images").iterdir())
    for c in cases:
        (root / "PH2Dataset" / "PH2 Dataset images" / c).symlink_to(src / "PH2 Dataset images" / c)
    ph2.load_ph2(root)
    (root / "PH2Dataset" / "PH2 Dataset images" / "IMD003").unlink()
    with pytest.raises(DermbenchError, match=r"no longer matches the data: 1 id\(s\) in the file are gone.*IMD003"):
        ph2.load_ph2(root)


def test_ph2_tampered_split_file_is_refused(shared_data, cache):
    ph2.load_ph2(shared_data / "ph2")
    path = next((cache / "splits").glob("ph2-seed0-*.json"))
    body = json.loads(path.read_text())
    body["splits"]["train"].append(body["splits"]["test"].pop())
    path.write_text(json.dumps(body))
    with pytest.raises(DermbenchError, match="was modified"):
        ph2.load_ph2(shared_data / "ph2")


def test_ph2_wrong_root_lists_what_is_there(shared_data, cache):
    with pytest.raises(DermbenchError) as e:
        ph2.load_ph2(shared_data / "scin")
    msg = str(e.value)
    assert "PH2_dataset.txt" in msg and "dataset/" in msg and "SOURCE.md" in msg


# ------------------------------------------------------------------------------------------ HAM10000


def test_ham10000_metadata_sites_sex_and_lesion_split(shared_data, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="dermbench.datasets"):
        ds = ham10000.load_ham10000(shared_data / "ham10000")
    assert len(ds) == 75 and ds.skipped == {"missing_image": 9940}
    assert any("9940 of 10015" in r.getMessage() for r in caplog.records)
    assert Counter(ds.label_names[s.label] for s in ds.samples) == {
        "nv": 13,
        "bkl": 12,
        "mel": 10,
        "vasc": 10,
        "df": 10,
        "akiec": 10,
        "bcc": 10,
    }
    assert Counter(s.meta["site"] for s in ds.samples) == {
        "rosendahl": 30,
        "vidir_modern": 23,
        "vidir_molemax": 20,
        "vienna_dias": 2,
    }
    assert Counter(s.meta["sex"] for s in ds.samples) == {"male": 39, "female": 36}
    assert {s.image.parent.name for s in ds.samples} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    by_id = {s.id: s for s in ds.samples}
    assert by_id["ISIC_0025554"].meta["group"] == "HAM_0000907" and by_id["ISIC_0025554"].meta["age"] == 75.0
    assert _sides_disjoint(ds)


def test_ham10000_kaggle_metadata_without_dataset_column(shared_data, cache):
    dv = ham10000.load_ham10000(shared_data / "ham10000")
    kg = ham10000.load_ham10000(shared_data / "ham10000", metadata="kaggle_kmader_variant/HAM10000_metadata.csv")
    assert [(s.id, s.label, s.meta["age"], s.meta["sex"]) for s in dv.samples] == [
        (s.id, s.label, s.meta["age"], s.meta["sex"]) for s in kg.samples
    ]
    assert all(s.meta["site"] is None for s in kg.samples)


def test_ham10000_seg_masks_match_images(shared_data, cache):
    ds = ham10000.load_ham10000_seg(shared_data / "ham10000")  # header-checks all 75 pairs
    assert len(ds) == 75 and "masks" in ds.info.fields
    s = ds.samples[0]
    m = s.load_mask()
    assert m.shape == (450, 600) and 0.01 < m.mean() < 0.99


# ------------------------------------------------------------------------------------------ PAD-UFES-20


def test_pad_ufes20_fitspatrick_gender_patient_split(shared_data, cache):
    ds = pad_ufes20.load_pad_ufes20(shared_data / "pad-ufes-20")
    assert len(ds) == 46 and ds.skipped == {"missing_image": 2252}
    assert Counter(ds.label_names[s.label] for s in ds.samples) == {
        "BCC": 16,
        "NEV": 11,
        "ACK": 8,
        "SEK": 6,
        "MEL": 3,
        "SCC": 2,
    }
    assert Counter(s.meta["sex"] for s in ds.samples) == {"female": 21, "male": 18, None: 7}
    assert Counter(s.meta["fitzpatrick"] for s in ds.samples) == {2: 22, 3: 13, 1: 3, 4: 1, None: 7}
    assert all(
        s.meta["fitzpatrick_group"] == {1: "12", 2: "12", 3: "34", 4: "34"}.get(s.meta["fitzpatrick"])
        for s in ds.samples
    )
    assert _sides_disjoint(ds)
    img = ds.samples[0].load_image()
    assert img.mode == "RGB" and min(img.size) > 0


def test_registry_lists_real_dataset_variants():
    names = set(registry().datasets)
    assert {"ph2", "ph2-binary", "ph2-seg", "ham10000", "ham10000-seg", "pad-ufes-20"} <= names
    info = registry().dataset("ham10000").info
    assert not info.commercial_use and "Tschandl" in info.citation and "Dataverse" in info.how_to_obtain
    assert {"sex", "age", "site", "groups"} <= info.fields
    assert registry().dataset("pad-ufes-20").info.commercial_use  # CC BY 4.0


def test_ham10000_dataverse_tab_variant(shared_data, cache, tmp_path):
    """The newer Dataverse release ships the metadata as a quoted, tab-separated .tab file."""
    src = shared_data / "ham10000"
    root = tmp_path / "ham_tab"
    root.mkdir()
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        (root / part).symlink_to(src / part)
    lines = (src / "HAM10000_metadata.csv").read_text().splitlines()
    tab = ["\t".join(f'"{c}"' if not c.isdigit() else c for c in line.split(",")) for line in lines]
    (root / "HAM10000_metadata.tab").write_text("\n".join(tab) + "\n")
    a = ham10000.load_ham10000(src)
    b = ham10000.load_ham10000(root)
    assert [(s.id, s.label, s.meta["site"], s.meta["age"]) for s in a.samples] == [
        (s.id, s.label, s.meta["site"], s.meta["age"]) for s in b.samples
    ]


def test_reencoded_image_changes_split_hash_not_split(shared_data, cache, tmp_path):
    """Same ids, other pixels: the split stays, its hash (feature-cache key) changes."""
    src = shared_data / "pad-ufes-20"
    root = tmp_path / "pad"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").symlink_to(src / "metadata.csv")
    files = sorted((src / "images").iterdir())
    for f in files:
        (root / "images" / f.name).symlink_to(f)
    before = pad_ufes20.load_pad_ufes20(root)
    from PIL import Image

    victim = root / "images" / files[0].name
    img = Image.open(files[0]).convert("RGB").resize((32, 32))
    victim.unlink()
    img.save(victim)
    after = pad_ufes20.load_pad_ufes20(root)
    assert after.splits == before.splits
    # the fingerprint covers the whole dataset, so both sides' hashes move
    for side in ("train", "test"):
        assert after.split(side).ids == before.split(side).ids
        assert after.split(side).hash != before.split(side).hash
    again = pad_ufes20.load_pad_ufes20(root)
    assert again.split("test").hash == after.split("test").hash  # and it is stable for unchanged files
