"""A dermbench dataset plugin for a folder of images described by a JSON-lines manifest.

Layout (``ROOT`` is ``--data-root``)::

    ROOT/manifest.jsonl   one JSON object per line: image, label, split (required); mask, sex, age, lesion
    ROOT/classes.txt      optional class order, one name per line (default: sorted label names)

Paths in the manifest are relative to ``ROOT``. ``split`` is the collection's own split (train/test, ...),
so dermbench uses it as an official split. Lines whose image file is absent are skipped and counted by
``build_dataset``; everything else that is wrong is an error naming the line, the key and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import (
    Dataset, DatasetInfo, DermbenchError, Row, as_root, build_dataset, dataset_options, require_file,
)

__version__ = "0.1.0"

MANIFEST = "manifest.jsonl"
LAYOUT = f"ROOT/{MANIFEST} (one JSON object per line: image, label, split; optional mask, sex, age, lesion)"
HOW_TO = f"Point --data-root at the folder holding {MANIFEST}; expected layout: {LAYOUT}."
_COMMON = dict(license="CC-BY-4.0 (example; use your collection's own)", commercial_use=False,
               how_to_obtain=HOW_TO, needs_root=True, official_split=True,
               citation="Example dataset plugin of dermbench (examples/dermbench-example-dataset)")
INFO = DatasetInfo(name="lesion-manifest", description="images + JSON-lines manifest: labels, sex, age, lesion",
                   fields=frozenset({"labels", "sex", "age", "groups"}), **_COMMON)
SEG_INFO = DatasetInfo(name="lesion-manifest-seg", description="images + JSON-lines manifest with lesion masks",
                       fields=frozenset({"labels", "masks"}), **_COMMON)
SEXES = ("female", "male")


def _lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for no, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise DermbenchError(f"{path} line {no}: not valid JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(rec, dict):
            raise DermbenchError(f"{path} line {no}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in ("image", "label", "split") if k not in rec]
        if missing:
            raise DermbenchError(f"{path} line {no}: no {missing}; every line needs image, label and split")
        out.append((no, rec))
    if not out:
        raise DermbenchError(f"{path} is empty; write one JSON object per image")
    return out


def _file(root: Path, rel: Any) -> Path | None:
    p = root / str(rel)
    return p if p.is_file() else None  # absent files: skipped and counted by build_dataset


def _meta(path: Path, no: int, rec: dict[str, Any]) -> dict[str, Any]:
    sex, age = rec.get("sex"), rec.get("age")
    if sex is not None and sex not in SEXES:
        raise DermbenchError(f"{path} line {no}: sex={sex!r}; use one of {SEXES} or leave it out")
    if age is not None and not (isinstance(age, (int, float)) and 0 <= age <= 120):
        raise DermbenchError(f"{path} line {no}: age={age!r}; use a number of years in [0, 120] or leave it out")
    meta: dict[str, Any] = {"sex": sex, "age": None if age is None else float(age)}
    if rec.get("lesion") is not None:
        meta["group"] = str(rec["lesion"])  # images of one lesion stay in one split in grouped analyses
    return meta


def load(variant: str, root: Any, manifest: str = MANIFEST, split_seed: int = 0,
         skip_bad_images: bool = False) -> Dataset:
    """Read ``manifest`` under ``root`` into a Dataset (``variant``: "" or "seg")."""
    info = SEG_INFO if variant == "seg" else INFO
    base = as_root(root, info.name, HOW_TO)
    path = require_file(base, [manifest], info.name, LAYOUT, max_depth=1)
    lines = _lines(path)
    classes_file = base / "classes.txt"
    if classes_file.is_file():
        classes = [c.strip() for c in classes_file.read_text(encoding="utf-8").splitlines() if c.strip()]
    else:
        classes = sorted({str(rec["label"]) for _, rec in lines})
    index = {c: i for i, c in enumerate(classes)}
    rows, seen = [], set()
    for no, rec in lines:
        label = str(rec["label"])
        if label not in index:
            raise DermbenchError(f"{path} line {no}: label {label!r} is not in {classes_file} ({classes}); "
                                 "add it there or fix the line")
        rid = str(rec.get("id") or Path(str(rec["image"])).stem)
        if rid in seen:
            raise DermbenchError(f"{path} line {no}: id {rid!r} appears twice; give each line a unique 'id'")
        seen.add(rid)
        if variant == "seg" and not rec.get("mask"):
            raise DermbenchError(f"{path} line {no}: no 'mask'; {SEG_INFO.name} needs a mask on every line "
                                 f"(use {INFO.name} for images without masks)")
        rows.append(Row(id=rid, image=_file(base, rec["image"]), label=index[label], split=str(rec["split"]),
                        mask=_file(base, rec["mask"]) if variant == "seg" else None, meta=_meta(path, no, rec)))
    return build_dataset(info, rows, root=base, official=f"split key of {path.name}", check_masks=variant == "seg",
                         skip_bad_images=skip_bad_images, label_names=classes, expected_image=str(lines[0][1]["image"]),
                         what=f"lines of {path.name}", split_seed=split_seed)


@dataset_options
def load_manifest(root: Any, manifest: str = MANIFEST, split_seed: int = 0, skip_bad_images: bool = False) -> Dataset:
    return load("", root, manifest, split_seed, skip_bad_images)


@dataset_options
def load_manifest_seg(root: Any, manifest: str = MANIFEST, split_seed: int = 0,
                      skip_bad_images: bool = False) -> Dataset:
    return load("seg", root, manifest, split_seed, skip_bad_images)


@hookimpl
def register_datasets(register):
    register(INFO, load_manifest)
    register(SEG_INFO, load_manifest_seg)
