"""HAM10000 (Tschandl et al. 2018): 7-class dermoscopy with sex, age, acquisition site; lesion masks.

Reads ``HAM10000_metadata.csv`` (Dataverse: ``lesion_id,image_id,dx,dx_type,age,sex,localization,dataset``; the
Kaggle copy lacks ``dataset``; the newer Dataverse ``.tab`` is tab-separated), images from wherever
``ISIC_xxxxxxx.jpg`` lies under the root (``HAM10000_images_part_1`` and ``_part_2``), and the Tschandl masks
``HAM10000_segmentations_lesion_tschandl/ISIC_xxxxxxx_segmentation.png``. Several images can show one lesion,
so the seeded split keeps each ``lesion_id`` on one side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo
from dermbench.api import (
    variant_loader,
    Row,
    as_root,
    build_dataset,
    dataset_options,
    find_file,
    index_files,
    dataset_log as log,
    map_labels,
    parse_age,
    parse_sex,
    read_csv,
    require_file,
)

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
LAYOUT = (
    "HAM10000_metadata.csv, HAM10000_images_part_1/ISIC_0024306.jpg ..., HAM10000_images_part_2/ISIC_0029306.jpg ..., "
    "and for ham10000-seg HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png"
)
HOW_TO = (
    "Download HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T): HAM10000_images_part_1.zip, "
    "HAM10000_images_part_2.zip, HAM10000_metadata (csv or tab) and HAM10000_segmentations_lesion_tschandl.zip; "
    f"unzip them into one folder and pass it as --data-root. Expected layout: {LAYOUT}."
)
CITATION = (
    "P. Tschandl, C. Rosendahl, H. Kittler, 'The HAM10000 dataset, a large collection of multi-source dermatoscopic "
    "images of common pigmented skin lesions', Sci. Data 5, 180161 (2018). doi:10.1038/sdata.2018.161"
)
LICENSE = "CC BY-NC 4.0 (Dataverse; mirrors state CC BY-NC-SA 4.0): non-commercial, attribution"
MASK_DIR = "HAM10000_segmentations_lesion_tschandl"


def _info(name: str, description: str, masks: bool) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        description=description,
        fields=frozenset({"labels", "sex", "age", "site", "groups"} | ({"masks"} if masks else set())),
        label_names=CLASSES,
        license=LICENSE,
        commercial_use=False,
        citation=CITATION,
        how_to_obtain=HOW_TO,
        official_split=False,
        aliases=("ham10000", "isic2018", "isic2018-task3", "dermamnist"),
    )


INFOS = {
    "ham10000": _info("ham10000", "HAM10000 dermoscopy, 7 classes; sex, age, site (dataset column)", False),
    "ham10000-seg": _info("ham10000-seg", "HAM10000 lesion segmentation (Tschandl masks), with 7-class labels", True),
}


@dataset_options
def _load(
    variant: str,
    root: Any,
    *,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    split_file: str | None = None,
    metadata: str | None = None,
    **_: Any,
) -> Dataset:
    info = INFOS[variant]
    root = as_root(root, variant, HOW_TO)
    if metadata:  # e.g. the Kaggle copy of the metadata kept beside the Dataverse one
        meta_path = Path(metadata).expanduser()
        meta_path = meta_path if meta_path.is_absolute() else root / meta_path
    else:
        meta_path = require_file(
            root, ["HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata"], variant, LAYOUT
        )
    sep = "\t" if meta_path.suffix.lower() == ".tab" else ","
    df = read_csv(meta_path, variant, ["lesion_id", "image_id", "dx", "age", "sex", "localization"], sep=sep)
    labels = map_labels(df["dx"].tolist(), {c: i for i, c in enumerate(CLASSES)}, variant, meta_path, "dx")
    has_site = "dataset" in df.columns
    if not has_site:
        log.info("%s: %s has no 'dataset' column (Kaggle copy); site is unknown", variant, meta_path)
    images = index_files(root, exts=(".jpg", ".jpeg"), exclude_suffixes=("_segmentation",))
    masks: dict[str, Any] = {}
    if variant == "ham10000-seg":
        mdir = require_file(root, [MASK_DIR], variant, LAYOUT, want_dir=True)
        masks = {k.lower(): v for k, v in index_files(mdir, exts=(".png",)).items()}
    else:
        mdir = find_file(root, [MASK_DIR], want_dir=True)
        if mdir is not None:
            masks = {k.lower(): v for k, v in index_files(mdir, exts=(".png",)).items()}
    rows = []
    for i, rec in enumerate(df.itertuples(index=False)):
        image_id = str(rec.image_id).strip()
        meta = {
            "group": str(rec.lesion_id).strip(),
            "lesion_id": str(rec.lesion_id).strip(),
            "sex": parse_sex(rec.sex),
            "age": parse_age(rec.age),
            "body_site": None if str(rec.localization).strip() in ("", "unknown") else str(rec.localization).strip(),
            "site": (str(getattr(rec, "dataset")).strip() or None) if has_site else None,
            "dx_type": str(getattr(rec, "dx_type", "")).strip() or None,
            "fitzpatrick": None,
        }
        rows.append(
            Row(
                id=image_id,
                image=images.get(image_id),
                label=labels[i],
                mask=masks.get(f"{image_id}_segmentation".lower()),
                meta=meta,
            )
        )
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        grouped=True,
        check_masks=variant == "ham10000-seg",
        expected_image=str(root / "HAM10000_images_part_1" / "ISIC_0024306.jpg"),
        what=f"metadata rows in {meta_path.name}",
        split_file=split_file,
    )


load_ham10000 = variant_loader(
    _load, "ham10000", "HAM10000, 7 classes; split grouped by lesion_id. ``metadata=<file>`` picks another copy.")
load_ham10000_seg = variant_loader(
    _load, "ham10000-seg", "HAM10000 with Tschandl lesion masks (image/mask sizes checked at load time).")


@hookimpl
def register_datasets(register):
    register(INFOS["ham10000"], load_ham10000)
    register(INFOS["ham10000-seg"], load_ham10000_seg)
