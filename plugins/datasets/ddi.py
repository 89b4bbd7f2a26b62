"""DDI, Diverse Dermatology Images (Daneshjou et al. 2022): benign vs malignant with grouped skin tone.

Reads ``ddi_metadata.csv`` as released (an unnamed index column, then ``DDI_ID,DDI_file,skin_tone,malignant,
disease``) and images ``<DDI_file>`` (``000001.png`` ...) anywhere under the root. ``skin_tone`` is the
Fitzpatrick group 12 / 34 / 56 (types I-II / III-IV / V-VI): it goes to ``meta['fitzpatrick_group']``;
``meta['fitzpatrick']`` stays None because single types are not given.
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo
from dermbench.api import (
    Row,
    as_root,
    bad_value,
    build_dataset,
    dataset_options,
    index_files,
    map_labels,
    read_csv,
    require_file,
)

CLASSES = ("benign", "malignant")
LAYOUT = "ddi_metadata.csv and 000001.png ... (the images may sit in a sub-folder)"
HOW_TO = (
    "Request DDI through the Stanford AIMI data portal (https://ddi-dataset.github.io, research-use agreement), "
    f"unzip it and pass the folder as --data-root. Expected layout: {LAYOUT}."
)
INFO = DatasetInfo(
    name="ddi",
    description="DDI clinical images, benign vs malignant; Fitzpatrick groups 12/34/56 (fairness)",
    fields=frozenset({"labels", "fitzpatrick"}),
    label_names=CLASSES,
    license="Stanford DDI research-use agreement (non-commercial, no redistribution)",
    commercial_use=False,
    citation="R. Daneshjou et al., 'Disparities in dermatology AI performance on a diverse, curated clinical image "
    "set', Science Advances 8(32), eabq6147 (2022).",
    how_to_obtain=HOW_TO,
    official_split=False,
    aliases=("ddi",),
)


@dataset_options
def load_ddi(
    root: Any, *, split_seed: int = 0, skip_bad_images: bool = False, split_file: str | None = None, **_: Any
) -> Dataset:
    """DDI, malignant (1) vs benign (0); split stratified by label."""
    root = as_root(root, INFO.name, HOW_TO)
    csv = require_file(root, ["ddi_metadata.csv"], INFO.name, LAYOUT)
    df = read_csv(csv, INFO.name, ["DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"])
    labels = map_labels(
        [str(v).strip().capitalize() for v in df["malignant"]], {"False": 0, "True": 1}, INFO.name, csv, "malignant"
    )
    images = index_files(root)
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        tone = str(rec["skin_tone"]).strip()
        if tone not in ("12", "34", "56"):
            raise bad_value(INFO.name, csv, "skin_tone", i + 2, rec["skin_tone"], ("12", "34", "56"))
        stem = str(rec["DDI_file"]).strip().rsplit(".", 1)[0]
        meta = {
            "fitzpatrick": None,
            "fitzpatrick_group": tone,
            "disease": str(rec["disease"]).strip(),
            "ddi_id": str(rec["DDI_ID"]).strip(),
        }
        rows.append(Row(id=stem, image=images.get(stem), label=labels[i], meta=meta))
    return build_dataset(
        INFO,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        expected_image=str(root / "000001.png"),
        what=f"rows of {csv.name}",
        split_file=split_file,
    )


@hookimpl
def register_datasets(register):
    register(INFO, load_ddi)
