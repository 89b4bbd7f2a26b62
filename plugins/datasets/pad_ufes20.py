"""PAD-UFES-20 (Pacheco et al. 2020): smartphone images, 6 classes, Fitzpatrick type, gender, age.

Reads ``metadata.csv`` as released, including its misspelt ``fitspatrick`` column (a corrected
``fitzpatrick`` header is accepted too), and finds ``img_id`` files anywhere under the root (the official
zip spreads them over ``images/imgs_part_1..3``). Split: seeded stratified 50/50 at patient level.
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo
from dermbench.api import (
    Row,
    as_root,
    build_dataset,
    dataset_options,
    fitzpatrick_group,
    index_files,
    is_blank,
    map_labels,
    parse_age,
    parse_fitzpatrick,
    parse_sex,
    read_csv,
    require_file,
)

CLASSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
LAYOUT = "metadata.csv and images/imgs_part_1/PAT_46_881_939.png ... (any sub-folder of the root)"
HOW_TO = (
    "Download PAD-UFES-20 from Mendeley Data (doi:10.17632/zr7vgbcyr2.1), unzip it and the image zip parts "
    f"into one folder and pass it as --data-root. Expected layout: {LAYOUT}."
)
CITATION = (
    "A. G. C. Pacheco et al., 'PAD-UFES-20: A skin lesion dataset composed of patient data and clinical images "
    "collected from smartphones', Data in Brief 32 (2020) 106221. doi:10.17632/zr7vgbcyr2.1"
)

INFO = DatasetInfo(
    name="pad-ufes-20",
    description="PAD-UFES-20 smartphone images, 6 classes; Fitzpatrick, sex, age; patient-level split",
    fields=frozenset({"labels", "fitzpatrick", "sex", "age", "groups"}),
    label_names=CLASSES,
    license="CC BY 4.0",
    commercial_use=True,
    citation=CITATION,
    how_to_obtain=HOW_TO,
    official_split=False,
    aliases=("pad-ufes-20", "padufes20"),
)


@dataset_options
def load_pad_ufes20(
    root: Any, *, split_seed: int = 0, skip_bad_images: bool = False, split_file: str | None = None, **_: Any
) -> Dataset:
    """PAD-UFES-20, 6 classes; split grouped by patient_id."""
    root = as_root(root, INFO.name, HOW_TO)
    meta_path = require_file(root, ["metadata.csv"], INFO.name, LAYOUT)
    df = read_csv(meta_path, INFO.name, ["patient_id", "lesion_id", "img_id", "diagnostic", "age", "gender"])
    fst_col = "fitspatrick" if "fitspatrick" in df.columns else "fitzpatrick"
    if fst_col not in df.columns:
        read_csv(meta_path, INFO.name, ["fitspatrick"], nrows=0)  # raises naming the column and those found
    labels = map_labels(
        df["diagnostic"].tolist(), {c: i for i, c in enumerate(CLASSES)}, INFO.name, meta_path, "diagnostic"
    )
    images = index_files(root, exts=(".png", ".jpg", ".jpeg"))
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        img_id = str(rec["img_id"]).strip()
        fst = parse_fitzpatrick(rec[fst_col])
        meta = {
            "group": str(rec["patient_id"]).strip(),
            "patient_id": str(rec["patient_id"]).strip(),
            "lesion_id": str(rec["lesion_id"]).strip(),
            "fitzpatrick": fst,
            "fitzpatrick_group": fitzpatrick_group(fst),
            "sex": parse_sex(rec["gender"]),
            "age": parse_age(rec["age"]),
            "body_site": None if is_blank(rec.get("region")) else str(rec["region"]).strip(),
            "biopsed": str(rec.get("biopsed", "")).strip() == "True",
        }
        stem = img_id.rsplit(".", 1)[0]
        rows.append(Row(id=stem, image=images.get(stem), label=labels[i], meta=meta))
    return build_dataset(
        INFO,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        grouped=True,
        expected_image=str(root / "images" / "imgs_part_1" / "PAT_46_881_939.png"),
        what=f"metadata rows in {meta_path.name}",
        split_file=split_file,
    )


@hookimpl
def register_datasets(register):
    register(INFO, load_pad_ufes20)
