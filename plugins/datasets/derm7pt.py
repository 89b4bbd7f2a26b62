"""Derm7pt, the seven-point checklist dataset (Kawahara et al. 2018): 5 diagnosis groups, official split.

Reads ``release_v0/meta/meta.csv`` and the official ``meta/{train,valid,test}_indexes.csv`` (column ``indexes``:
row numbers into meta.csv). Each case has a clinical (``clinic``) and a dermoscopic (``derm``) image, paths
relative to ``release_v0/images``: ``derm7pt-derm`` and ``derm7pt-clinic`` use one each. The twenty diagnoses
are grouped as in the dataset authors' 'group infrequent' setting: BCC, NEV (all nevi), MEL (all melanoma
variants incl. metastasis), MISC (dermatofibroma, lentigo, melanosis, miscellaneous, vascular lesion), SK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import Row, as_root, bad_value, build_dataset, dataset_options, parse_sex, read_csv, require_file

CLASSES = ("BCC", "NEV", "MEL", "MISC", "SK")
GROUPS = {
    "basal cell carcinoma": "BCC",
    **{
        n: "NEV"
        for n in (
            "blue nevus",
            "clark nevus",
            "combined nevus",
            "congenital nevus",
            "dermal nevus",
            "recurrent nevus",
            "reed or spitz nevus",
        )
    },
    **{
        n: "MEL"
        for n in (
            "melanoma",
            "melanoma (in situ)",
            "melanoma (less than 0.76 mm)",
            "melanoma (0.76 to 1.5 mm)",
            "melanoma (more than 1.5 mm)",
            "melanoma metastasis",
        )
    },
    **{n: "MISC" for n in ("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion")},
    "seborrheic keratosis": "SK",
}
LAYOUT = (
    "release_v0/meta/meta.csv, release_v0/meta/{train,valid,test}_indexes.csv, release_v0/images/<paths in meta.csv>"
)
HOW_TO = (
    "Register and download release_v0.zip from http://derm.cs.sfu.ca, unzip it and pass the folder as --data-root. "
    f"Expected layout: {LAYOUT}."
)
CITATION = (
    "J. Kawahara, S. Daneshvar, G. Argenziano, G. Hamarneh, 'Seven-Point Checklist and Skin Lesion Classification "
    "using Multi-Task Multi-Modal Neural Nets', IEEE JBHI 23(2):538-546, 2019."
)


def _info(name: str, kind: str) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        description=f"Derm7pt {kind} images, 5 diagnosis groups (BCC/NEV/MEL/MISC/SK); sex; official split",
        fields=frozenset({"labels", "sex", "groups"}),
        label_names=CLASSES,
        license="research use after registration at derm.cs.sfu.ca; no redistribution",
        commercial_use=False,
        citation=CITATION,
        how_to_obtain=HOW_TO,
        official_split=True,
        aliases=("derm7pt",),
    )


INFOS = {"derm7pt-derm": _info("derm7pt-derm", "dermoscopic"), "derm7pt-clinic": _info("derm7pt-clinic", "clinical")}


@dataset_options
def _load(variant: str, root: Any, *, skip_bad_images: bool = False, split_seed: int = 0, **_: Any) -> Dataset:
    info = INFOS[variant]
    column = "derm" if variant == "derm7pt-derm" else "clinic"
    root = as_root(root, variant, HOW_TO)
    meta_p = require_file(root, ["meta.csv"], variant, LAYOUT)
    df = read_csv(meta_p, variant, ["case_num", "diagnosis", "sex", "location", "clinic", "derm"])
    part_of: dict[int, str] = {}
    for part, fname in (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"), ("test", "test_indexes.csv")):
        p = meta_p.parent / fname
        if not p.is_file():
            raise DermbenchError(
                f"{variant}: official split file {p} is missing (expected beside {meta_p.name}). {HOW_TO}"
            )
        idx = read_csv(p, variant, ["indexes"])
        for j, v in enumerate(idx["indexes"]):
            try:
                k = int(str(v).strip())
            except ValueError:
                raise bad_value(variant, p, "indexes", j + 2, v, ["row numbers 0..%d" % (len(df) - 1)]) from None
            if not 0 <= k < len(df):
                raise DermbenchError(f"{variant}: {p} line {j + 2}: index {k} is outside meta.csv's {len(df)} rows")
            if k in part_of:
                raise DermbenchError(f"{variant}: meta.csv row {k} is in both {part_of[k]} and {part} ({p})")
            part_of[k] = part
    img_root = meta_p.parent.parent / "images"
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        if i not in part_of:
            continue
        dx = str(rec["diagnosis"]).strip()
        if dx not in GROUPS:
            raise bad_value(variant, meta_p, "diagnosis", i + 2, dx, GROUPS)
        rel = str(rec[column]).strip()
        path = img_root / rel
        meta = {
            "group": str(rec["case_num"]).strip(),
            "diagnosis": dx,
            "sex": parse_sex(rec["sex"]),
            "body_site": str(rec["location"]).strip() or None,
            "fitzpatrick": None,
        }
        rows.append(
            Row(
                id=f"{rec['case_num']}:{Path(rel).stem}",
                image=path if path.is_file() else None,
                label=CLASSES.index(GROUPS[dx]),
                meta=meta,
                split=part_of[i],
            )
        )
    return build_dataset(
        info,
        rows,
        root=root,
        skip_bad_images=skip_bad_images,
        split_seed=split_seed,
        official="derm7pt meta/{train,valid,test}_indexes.csv",
        expected_image=str(img_root / "<path in meta.csv>"),
        what=f"cases in {meta_p.name}",
    )


def load_derm7pt_derm(root: Any, **opts: Any) -> Dataset:
    """Derm7pt dermoscopic images, 5 groups, official split."""
    return _load("derm7pt-derm", root, **opts)


def load_derm7pt_clinic(root: Any, **opts: Any) -> Dataset:
    """Derm7pt clinical images, 5 groups, official split."""
    return _load("derm7pt-clinic", root, **opts)


@hookimpl
def register_datasets(register):
    register(INFOS["derm7pt-derm"], load_derm7pt_derm)
    register(INFOS["derm7pt-clinic"], load_derm7pt_clinic)
