"""The shared diagnosis vocabulary and the ``<dataset>:<view>`` views, on the real HAM10000/PH2/PAD subsets."""

from __future__ import annotations

import json

import pytest

from dermbench import plugins, views, vocabulary
from dermbench.api import DermbenchError
from dermbench.runner import RunOptions, Runner

from conftest import SHARED_DATA as DATA


def test_every_class_of_every_dataset_is_mapped_or_excluded():
    reg = plugins.registry()
    assert len(reg.datasets) >= 20
    for name, entry in sorted(reg.datasets.items()):
        m = vocabulary.mapping_for(name)
        assert m is not None, f"{name}: no vocab/*.json entry"
        for cls in entry.info.label_names:
            cm = m.lookup(cls)  # raises for an unmapped class
            assert cm.term in (None, *vocabulary.TERMS) and cm.axis in (None, *vocabulary.AXIS)
        if m.granularity == "none":
            assert m.note, f"{name}: a dataset whose labels are not diagnoses says why"
        if m.granularity == "coarse":
            assert m.note, f"{name}: a coarse dataset says what its labels are"
            assert name in ("ddi", "waterloo", "waterloo-seg") or name.startswith("fitzpatrick17k")


def test_known_mappings():
    assert vocabulary.mapping_for("ham10000").terms(["mel", "nv", "bkl", "akiec"]) == ["melanoma", "nevus", "sk", "ak"]
    ham = vocabulary.mapping_for("ham10000")
    assert ham.lookup("akiec").axis == "malignant"  # includes Bowen's
    pad = vocabulary.mapping_for("pad-ufes-20")
    assert pad.lookup("ACK").axis == "uncertain" and pad.lookup("SCC").axis == "malignant"
    assert vocabulary.mapping_for("ph2").terms(["common nevus", "atypical nevus"]) == ["nevus", "nevus"]
    assert vocabulary.mapping_for("ddi").granularity == "coarse"


def test_unmapped_class_is_a_clear_error():
    m = vocabulary.parse_mapping("mine", {"classes": {"a": "melanoma"}}, "mine.json")
    with pytest.raises(DermbenchError, match=r"class 'b' is not in its vocabulary mapping \(mine.json\)"):
        m.lookup("b")
    with pytest.raises(DermbenchError, match="unknown vocabulary term 'melanomma'"):
        vocabulary.parse_mapping("mine", {"classes": {"a": "melanomma"}}, "mine.json")
    with pytest.raises(DermbenchError, match="valid terms"):
        vocabulary.parse_mapping("mine", {"classes": {"a": {"term": "x"}}}, "mine.json")


def test_views_relabel_real_ham10000():
    r = Runner(RunOptions(data_root=DATA / "ham10000"), quiet=True)
    base = r.dataset("ham10000")
    mvn = r.dataset("ham10000:mel-vs-nev")
    mal = r.dataset("ham10000:malignant")
    assert mvn.name == "ham10000:mel-vs-nev" and mvn.label_names == ["nevus", "melanoma"]
    names = base.label_names or list(base.info.label_names)
    n_mel = sum(names[s.label] == "mel" for s in base.samples)
    n_nv = sum(names[s.label] == "nv" for s in base.samples)
    assert len(mvn) == n_mel + n_nv and sum(s.label for s in mvn.samples) == n_mel
    # malignant view: mel, bcc, akiec malignant; nv, bkl, df, vasc benign; nothing uncertain in HAM10000
    assert len(mal) == len(base)
    n_malig = sum(names[s.label] in ("mel", "bcc", "akiec") for s in base.samples)
    assert sum(s.label for s in mal.samples) == n_malig
    # same train/test assignment as the base dataset, but a different split hash
    base_train = {base.samples[i].id for i in base.splits["train"]}
    assert {s.id for s in mvn.split("train").samples} <= base_train
    assert mvn.split("test").hash != base.split("test").hash != mal.split("test").hash


def test_view_errors():
    reg = plugins.registry()
    with pytest.raises(DermbenchError, match="unknown view 'mel-vs-bcc'.*mel-vs-nev"):
        reg.dataset("ham10000:mel-vs-bcc")
    with pytest.raises(DermbenchError, match="coarse labels.*ddi:malignant"):
        reg.dataset("ddi:mel-vs-nev")
    with pytest.raises(DermbenchError, match="not diagnoses"):
        reg.dataset("acne04:malignant")
    with pytest.raises(DermbenchError, match="unknown dataset 'hamm10000'"):
        reg.dataset("hamm10000:malignant")


def test_pad_ufes_malignant_view_drops_uncertain_ak():
    r = Runner(RunOptions(data_root=DATA / "pad-ufes-20"), quiet=True)
    base, mal = r.dataset("pad-ufes-20"), r.dataset("pad-ufes-20:malignant")
    names = base.label_names or list(base.info.label_names)
    n_ack = sum(names[s.label] == "ACK" for s in base.samples)
    assert n_ack > 0 and len(mal) == len(base) - n_ack
    assert mal.skipped.get("view dropped ACK") == n_ack


def test_vocab_files_are_valid_json():
    from pathlib import Path

    folder = Path(vocabulary.__file__).parents[1] / "plugins" / "datasets" / "vocab"
    files = sorted(folder.glob("*.json"))
    assert len(files) >= 10
    for f in files:
        for name, spec in json.loads(f.read_text()).items():
            if not name.startswith("_"):
                vocabulary.parse_mapping(name, spec, str(f))
    assert views.split_name("ph2:malignant") == ("ph2", "malignant")


def test_views_have_their_own_mapping():
    assert vocabulary.mapping_for("ph2:mel-vs-nev").terms(["nevus", "melanoma"]) == ["nevus", "melanoma"]
    assert vocabulary.mapping_for("ham10000:vocab").lookup("ak").axis == "malignant"  # HAM's akiec
    assert vocabulary.mapping_for("pad-ufes-20:vocab").lookup("ak").axis == "uncertain"
    m = vocabulary.mapping_for("ddi:malignant")
    assert m.granularity == "coarse" and m.axes(["benign", "malignant"]) == ["benign", "malignant"]
