"""ACNE04 (Wu et al. 2019): acne severity grading (Hayashi criterion), four levels, official 5-fold split.

Reads the authors' split files ``NNEW_trainval_<k>.txt`` / ``NNEW_test_<k>.txt`` (each line
``<file name> <severity 0-3> <lesion count>``, space-separated) and images from ``Classification/JPEGImages``
(named ``levle<severity>_<n>.jpg``, with the authors' spelling). ``fold`` (0-4, default 0) picks the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import Row, as_root, build_dataset, dataset_options, find_file, index_files, require_file

CLASSES = ("mild", "moderate", "severe", "very severe")
LAYOUT = (
    "Classification/NNEW_trainval_0.txt, Classification/NNEW_test_0.txt, Classification/JPEGImages/levle0_0.jpg ..."
)
HOW_TO = (
    "Download ACNE04 from the authors' repository (github.com/xpwu95/LDL, links in its README), unzip it and pass "
    f"the folder as --data-root. Expected layout: {LAYOUT}."
)
INFO = DatasetInfo(
    name="acne04",
    description="ACNE04 acne severity, 4 Hayashi levels; official 5-fold split (--dataset-opt fold=0..4)",
    fields=frozenset({"labels"}),
    label_names=CLASSES,
    license="not stated (research use)",
    commercial_use=False,
    citation="X. Wu, N. Wen, J. Liang, Y.-K. Lai, D. She, M.-M. Cheng, J. Yang, 'Joint Acne Image Grading and "
    "Counting via Label Distribution Learning', ICCV 2019.",
    how_to_obtain=HOW_TO,
    official_split=True,
    aliases=("acne04",),
)


def parse_split_file(path: Path) -> list[tuple[str, int, int, int]]:
    """(file name, severity, lesion count, line) for each non-empty line."""
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[1].lstrip("-").isdigit() or not parts[2].isdigit():
            raise DermbenchError(
                f"acne04: {path} line {lineno}: {line.strip()!r} is not '<file name> <severity 0-3> <lesion count>'"
            )
        sev = int(parts[1])
        if sev not in range(4):
            raise DermbenchError(f"acne04: {path} line {lineno}: severity {sev} is not one of [0, 1, 2, 3]")
        out.append((parts[0], sev, int(parts[2]), lineno))
    return out


@dataset_options
def load_acne04(root: Any, *, fold: Any = 0, skip_bad_images: bool = False, split_seed: int = 0, **_: Any) -> Dataset:
    """ACNE04, 4 severity levels, official fold ``fold``."""
    root = as_root(root, INFO.name, HOW_TO)
    try:
        k = int(fold)
    except (TypeError, ValueError):
        k = -1
    if k not in range(5):
        raise DermbenchError(f"acne04: fold={fold!r}; expected 0, 1, 2, 3 or 4")
    train_p = require_file(root, [f"NNEW_trainval_{k}.txt"], INFO.name, LAYOUT)
    test_p = find_file(root, [f"NNEW_test_{k}.txt"])
    if test_p is None:
        raise DermbenchError(f"acne04: NNEW_test_{k}.txt is missing (NNEW_trainval_{k}.txt is at {train_p}). {HOW_TO}")
    img_dir = find_file(root, ["JPEGImages"], want_dir=True) or root
    images = index_files(img_dir, exts=(".jpg", ".jpeg", ".png"))
    rows = []
    for part, path in (("train", train_p), ("test", test_p)):
        for fname, sev, count, _line in parse_split_file(path):
            stem = fname.rsplit(".", 1)[0]
            rows.append(
                Row(
                    id=stem,
                    image=images.get(stem),
                    label=sev,
                    split=part,
                    meta={"lesion_count": count, "fitzpatrick": None},
                )
            )
    return build_dataset(
        INFO,
        rows,
        root=root,
        skip_bad_images=skip_bad_images,
        split_seed=split_seed,
        official=f"ACNE04 fold {k}: {train_p.name} / {test_p.name}",
        expected_image=str(img_dir / "levle0_0.jpg"),
        what=f"lines of the fold-{k} split files",
    )


@hookimpl
def register_datasets(register):
    register(INFO, load_acne04)
