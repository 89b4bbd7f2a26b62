"""examples/dermbench-example-dataset, installed as an outside author would (tests/examples_util.py), on a
collection laid out its own way: a temp folder of real HAM10000 images and masks (copied from ../shared/data)
described by a JSON-lines manifest. `plugins check` passes for both registered names,
and `dermbench run` runs the example task and segmentation on it."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from examples_util import EXAMPLES, dermbench, env, installed_examples, python, records

PKG = EXAMPLES / "dermbench-example-dataset"
PER_CLASS = 4  # 7 classes x 4 = 28 real images, split by lesion


def build_collection(ham: Path, root: Path) -> dict[str, dict]:
    """ROOT/manifest.jsonl + images/<part>/ + masks/ (copies of real HAM10000 files in the temp folder), one
    line per image and one whose image is absent; split by lesion so no lesion is in both halves. Returns the
    manifest lines by id."""
    import shutil

    meta = {r["image_id"]: r for r in csv.DictReader(open(ham / "HAM10000_metadata.csv"))}
    by_class: dict[str, list[Path]] = {}
    for p in sorted(ham.glob("HAM10000_images_part_*/*.jpg")):
        by_class.setdefault(meta[p.stem]["dx"], []).append(p)
    (root / "masks").mkdir(parents=True)
    lines = {}
    for dx, paths in sorted(by_class.items()):
        lesions = sorted({meta[p.stem]["lesion_id"] for p in paths[:PER_CLASS]})
        for p in paths[:PER_CLASS]:
            m = meta[p.stem]
            image = root / "images" / p.parent.name.rsplit("_", 1)[-1] / p.name
            image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, image)
            mask = f"{p.stem}_segmentation.png"
            shutil.copyfile(ham / "HAM10000_segmentations_lesion_tschandl" / mask, root / "masks" / mask)
            lines[p.stem] = {"image": str(image.relative_to(root)), "label": dx,
                             "split": "train" if lesions.index(m["lesion_id"]) % 2 == 0 else "test",
                             "mask": f"masks/{mask}", "sex": m["sex"] if m["sex"] in ("female", "male") else None,
                             "age": float(m["age"]) if m["age"] else None, "lesion": m["lesion_id"]}
    ghost = {"image": "images/1/ISIC_9999999.jpg", "label": "nv", "split": "test",
             "mask": "masks/ISIC_9999999_segmentation.png"}
    with open(root / "manifest.jsonl", "w") as f:
        for rec in [*lines.values(), ghost]:
            f.write(json.dumps(rec) + "\n")
    return lines


@pytest.fixture(scope="module")
def collection(tmp_path_factory, shared_data) -> dict:
    tmp = tmp_path_factory.mktemp("example-dataset")
    root = tmp / "my-clinic"
    lines = build_collection(shared_data / "ham10000", root)
    return {"site": installed_examples(), "tmp": tmp, "root": root, "lines": lines,
            "env": env(installed_examples(), tmp)}


@pytest.fixture(scope="module")
def shared_data() -> Path:
    from conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.fail(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


def test_collection_fixture_is_balanced(collection):
    lines = collection["lines"]
    assert len(lines) == 7 * PER_CLASS
    train = [v for v in lines.values() if v["split"] == "train"]
    assert 0 < len(train) < len(lines)
    lesions = {s: {v["lesion"] for v in lines.values() if v["split"] == s} for s in ("train", "test")}
    assert not lesions["train"] & lesions["test"]


def test_plugins_check_passes_for_both_example_datasets(collection):
    out = python(
        "import json, sys\n"
        "from dermbench.check import check_dataset\n"
        f"rs = [check_dataset(n, data_root={str(collection['root'])!r}) for n in ('lesion-manifest', 'lesion-manifest-seg')]\n"
        "print(json.dumps(rs, default=str))\n",
        collection["env"], collection["tmp"])
    plain, seg = json.loads(out.strip().splitlines()[-1])
    lines = collection["lines"]
    n_train = sum(v["split"] == "train" for v in lines.values())
    for r in (plain, seg):
        assert r["ok"], r["checks"]
        assert r["plugin"] == "lesion-manifest" and r["n"] == 7 * PER_CLASS and r["skipped"] == {"missing_image": 1}
        assert r["splits"] == {"train": n_train, "test": 7 * PER_CLASS - n_train}
        assert r["class_counts"] == {dx: PER_CLASS for dx in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")}
    checked = {c["check"] for c in plain["checks"]}
    assert {"sex: samples carry meta['sex']", "age: samples carry meta['age']",
            "groups: samples carry meta['group']"} <= checked
    assert "masks: first 4 readable, binary, image-sized, non-empty" in {c["check"] for c in seg["checks"]}
    cli = dermbench(["plugins", "check", "lesion-manifest-seg", "--data-root", str(collection["root"])],
                    collection["env"], collection["tmp"])
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-2000:]
    assert "OK" in cli.stdout


@pytest.mark.slow
def test_example_dataset_runs_end_to_end(collection):
    res = collection["tmp"] / "results"
    p = dermbench(["run", "--model", "random-vit", "--task", "prototype,segmentation",
                   "--dataset", "lesion-manifest,lesion-manifest-seg", "--data-root", str(collection["root"]),
                   "--task-opt", "segmentation.epochs=2", "--task-opt", "segmentation.n_overlays=0",
                   "--out", str(res), "--n-boot", "100", "--quiet"], collection["env"], collection["tmp"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = {(r["task"], r["dataset"]): r for r in records(res)}
    # segmentation needs masks: it ran on the -seg variant only
    assert set(recs) == {("prototype", "lesion-manifest"), ("prototype", "lesion-manifest-seg"),
                         ("segmentation", "lesion-manifest-seg")}
    lines = collection["lines"]
    classes = sorted({v["label"] for v in lines.values()})
    test_ids = sorted(k for k, v in lines.items() if v["split"] == "test")
    for (task, ds), rec in recs.items():
        pred = rec["predictions"]
        assert sorted(pred["ids"]) == test_ids
        if task != "segmentation":
            assert [classes[y] for y in pred["y_true"]] == [lines[i]["label"] for i in pred["ids"]]
            assert rec["dataset_info"]["label_names"] == classes
    dice = np.asarray(recs[("segmentation", "lesion-manifest-seg")]["predictions"]["dice"], dtype=float)
    assert dice.shape == (len(test_ids),) and ((0 <= dice) & (dice <= 1)).all()
    # the manifest's split, whichever variant reads it: same test images, same predictions
    plain, seg = recs[("prototype", "lesion-manifest")], recs[("prototype", "lesion-manifest-seg")]
    assert plain["split"]["sizes"] == seg["split"]["sizes"] and plain["predictions"]["y_pred"] == seg["predictions"]["y_pred"]
    lb = dermbench(["leaderboard", "--results", str(res), "--format", "md", "--no-plots"], collection["env"],
                   collection["tmp"])
    assert lb.returncode == 0, lb.stdout[-3000:] + lb.stderr[-3000:]
    board = lb.stdout.lower()
    assert "prototype" in board and "lesion" in board
    assert f"{plain['metrics']['auroc_macro']['value']:.3f}" in board
    assert f"{recs[('segmentation', 'lesion-manifest-seg')]['metrics']['dice']['value']:.3f}" in board


def _load(variant: str):
    sys.path.insert(0, str(PKG / "src"))
    try:
        import dermbench_lesion_manifest as m
    finally:
        sys.path.remove(str(PKG / "src"))
    return m.load_manifest_seg if variant == "seg" else m.load_manifest


@pytest.mark.parametrize("line, message", [
    ("{not json", r"manifest.jsonl line 2: not valid JSON .*write one JSON object per line"),
    ('{"image": "a.jpg", "label": "nv"}', r"line 2: no \['split'\]; every line needs image, label and split"),
    ('{"image": "a.jpg", "label": "nv", "split": "test", "sex": "M"}', r"line 2: sex='M'; use one of"),
    ('{"image": "a.jpg", "label": "nv", "split": "test", "age": -3}', r"line 2: age=-3; use a number of years"),
    ('{"image": "a.jpg", "label": "melanoma", "split": "test"}',
     r"line 2: label 'melanoma' is not in .*classes.txt \(\['nv', 'mel'\]\); add it there or fix the line"),
])
def test_bad_manifest_lines_are_named(tmp_path, line, message):
    from dermbench.api import DermbenchError

    (tmp_path / "classes.txt").write_text("nv\nmel\n")
    (tmp_path / "manifest.jsonl").write_text('{"image": "b.jpg", "label": "mel", "split": "train"}\n' + line + "\n")
    with pytest.raises(DermbenchError, match=message):
        _load("")(tmp_path)


def test_seg_variant_needs_masks_and_wrong_root_says_layout(tmp_path):
    from dermbench.api import DermbenchError

    (tmp_path / "manifest.jsonl").write_text('{"image": "b.jpg", "label": "mel", "split": "train"}\n')
    with pytest.raises(DermbenchError, match=r"line 1: no 'mask'; lesion-manifest-seg needs a mask on every line"):
        _load("seg")(tmp_path)
    with pytest.raises(DermbenchError, match=r"cannot find file manifest.jsonl under .*Expected layout: ROOT/manifest"):
        (tmp_path / "elsewhere").mkdir()
        _load("")(tmp_path / "elsewhere")
