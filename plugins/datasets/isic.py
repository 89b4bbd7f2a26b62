"""ISIC challenge data: 2017 / 2018 classification ground truth, 2016 / 2017 / 2018 lesion segmentation.

Each year is read with its own official folder and file names; the challenge's train / validation / test
partition is the official split (split names ``train``, ``val``, ``test``; a part whose files are absent is
simply not there). Segmentation masks are matched case-insensitively (``_Segmentation.png`` in 2016,
``_segmentation.png`` later); the 2017 ``*_superpixels.png`` files that sit beside the images are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import (
    variant_loader,
    Row,
    as_root,
    build_dataset,
    dataset_options,
    describe_dir,
    find_file,
    index_files,
    parse_age,
    parse_sex,
    read_csv,
)

ISIC_LICENSE = "ISIC Archive terms: CC BY-NC 4.0 (2018 challenge data); per-image ISIC Archive licences (2016/2017)"
C2016 = (
    "D. Gutman, N. C. F. Codella et al., 'Skin Lesion Analysis toward Melanoma Detection: A Challenge at ISBI 2016, "
    "Hosted by the ISIC', arXiv:1605.01397."
)
C2017 = (
    "N. C. F. Codella et al., 'Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the 2017 ISBI, Hosted "
    "by the ISIC', ISBI 2018 (arXiv:1710.05006)."
)
C2018 = (
    "N. Codella et al., 'Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the ISIC', "
    "arXiv:1902.03368; P. Tschandl et al., Sci. Data 5, 180161 (2018)."
)
ARCHIVE = "https://challenge.isic-archive.com/data/"

# ------------------------------------------------------------------------------------------ classification

CLS = {
    "isic2017": dict(
        classes=("nevus", "melanoma", "seborrheic keratosis"),
        gt={
            "train": "ISIC-2017_Training_Part3_GroundTruth.csv",
            "val": "ISIC-2017_Validation_Part3_GroundTruth.csv",
            "test": "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
        },
        meta={
            "train": "ISIC-2017_Training_Data_metadata.csv",
            "val": "ISIC-2017_Validation_Data_metadata.csv",
            "test": "ISIC-2017_Test_v2_Data_metadata.csv",
        },
        layout="ISIC-2017_{Training,Validation,Test_v2}_Part3_GroundTruth.csv, "
        "ISIC-2017_Training_Data/ISIC_0000000.jpg, ISIC-2017_Validation_Data/..., ISIC-2017_Test_v2_Data/... "
        "(optional ISIC-2017_*_Data_metadata.csv for age/sex)",
        citation=C2017,
        desc="ISIC 2017 Part 3: melanoma / seborrheic keratosis / nevus; age, sex; official train/val/test",
    ),
    "isic2018": dict(
        classes=("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
        gt={
            "train": "ISIC2018_Task3_Training_GroundTruth.csv",
            "val": "ISIC2018_Task3_Validation_GroundTruth.csv",
            "test": "ISIC2018_Task3_Test_GroundTruth.csv",
        },
        meta={},
        layout="ISIC2018_Task3_{Training,Validation,Test}_GroundTruth.csv and ISIC2018_Task3_Training_Input/"
        "ISIC_0024306.jpg, ISIC2018_Task3_Validation_Input/..., ISIC2018_Task3_Test_Input/...",
        citation=C2018,
        desc="ISIC 2018 Task 3: 7 classes (HAM10000 train); official train/val/test",
    ),
}

CLS_INFOS = {
    name: DatasetInfo(
        name=name,
        description=cfg["desc"],
        fields=frozenset({"labels", "sex", "age"} if cfg["meta"] else {"labels"}),
        label_names=cfg["classes"],
        license=ISIC_LICENSE,
        commercial_use=False,
        citation=cfg["citation"],
        how_to_obtain=f"Download the {name[4:]} challenge images and ground truth from {ARCHIVE}, unzip into one "
        f"folder and pass it as --data-root. Expected layout: {cfg['layout']}.",
        official_split=True,
        aliases=(name,) + (("ham10000",) if name == "isic2018" else ()),
    )
    for name, cfg in CLS.items()
}


def _onehot_label(
    name: str, path: Path, line: int, image: str, values: dict[str, str], classes: tuple[str, ...]
) -> int:
    try:
        vals = [float(values[c]) for c in classes]
    except ValueError:
        raise DermbenchError(f"{name}: {path} line {line} ({image}): non-numeric ground truth {values}") from None
    ones = [i for i, v in enumerate(vals) if v == 1.0]
    if len(ones) != 1 or any(v not in (0.0, 1.0) for v in vals):
        raise DermbenchError(
            f"{name}: {path} line {line} ({image}): ground truth {dict(zip(classes, vals))} is not one-hot "
            "(exactly one column must be 1.0, the others 0.0)"
        )
    return ones[0]


@dataset_options
def _load_cls(name: str, root: Any, *, skip_bad_images: bool = False, split_seed: int = 0, **_: Any) -> Dataset:
    cfg = CLS[name]
    info = CLS_INFOS[name]
    root = as_root(root, name, info.how_to_obtain)
    gts = {part: find_file(root, [fn]) for part, fn in cfg["gt"].items()}
    if not any(gts.values()):
        raise DermbenchError(
            f"{name}: no ground-truth file ({', '.join(cfg['gt'].values())}) under {root}. "
            f"Found in {root}: {describe_dir(root)}. {info.how_to_obtain}"
        )
    images = index_files(root, exts=(".jpg", ".jpeg", ".png"), exclude_suffixes=("_superpixels", "_segmentation"))
    rows: list[Row] = []
    for part, gt in gts.items():
        if gt is None:
            continue
        if name == "isic2017":
            df = read_csv(gt, name, ["image_id", "melanoma", "seborrheic_keratosis"])
            meta_p = find_file(root, [cfg["meta"][part]])
            demo = {}
            if meta_p is not None:
                m = read_csv(meta_p, name, ["image_id", "age_approximate", "sex"])
                demo = {r["image_id"]: r for r in m.to_dict("records")}
            for i, r in enumerate(df.to_dict("records")):
                mel = _onehot_like(name, gt, i + 2, r, "melanoma")
                sk = _onehot_like(name, gt, i + 2, r, "seborrheic_keratosis")
                if mel and sk:
                    raise DermbenchError(
                        f"{name}: {gt} line {i + 2} ({r['image_id']}): both melanoma and "
                        "seborrheic_keratosis are 1; at most one may be"
                    )
                d = demo.get(r["image_id"], {})
                meta = {"sex": parse_sex(d.get("sex")), "age": parse_age(d.get("age_approximate")), "fitzpatrick": None}
                iid = str(r["image_id"]).strip()
                rows.append(
                    Row(id=iid, image=images.get(iid), label=1 if mel else 2 if sk else 0, meta=meta, split=part)
                )
        else:
            df = read_csv(gt, name, ["image", *cfg["classes"]])
            for i, r in enumerate(df.to_dict("records")):
                iid = str(r["image"]).strip()
                y = _onehot_label(name, gt, i + 2, iid, r, cfg["classes"])
                rows.append(Row(id=iid, image=images.get(iid), label=y, meta={"fitzpatrick": None}, split=part))
    found = ", ".join(f"{p}={g.name}" for p, g in gts.items() if g is not None)
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        official=f"ISIC {name[4:]} challenge partition: {found}",
        expected_image=str(root / "<challenge image folder>" / f"{rows[0].id}.jpg") if rows else "",
        what="ground-truth rows",
    )


def _onehot_like(name: str, path: Path, line: int, r: dict[str, Any], col: str) -> bool:
    v = str(r[col]).strip()
    if v in ("1", "1.0"):
        return True
    if v in ("0", "0.0"):
        return False
    raise DermbenchError(f"{name}: {path} line {line}, column {col!r}: value {v!r} is not one of ['0.0', '1.0']")


def load_isic2017(root: Any, **opts: Any) -> Dataset:
    """ISIC 2017 Part 3 classification (nevus / melanoma / seborrheic keratosis), official split."""
    return _load_cls("isic2017", root, **opts)


def load_isic2018(root: Any, **opts: Any) -> Dataset:
    """ISIC 2018 Task 3 classification (7 classes), official split."""
    return _load_cls("isic2018", root, **opts)


# ------------------------------------------------------------------------------------------ segmentation

SEG = {
    "isic2016-seg": dict(
        parts={
            "train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
            "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
        },
        citation=C2016,
        year="2016",
    ),
    "isic2017-seg": dict(
        parts={
            "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
            "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
            "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
        },
        citation=C2017,
        year="2017",
    ),
    "isic2018-seg": dict(
        parts={
            "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
            "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
            "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
        },
        citation=C2018,
        year="2018",
    ),
}


def _seg_layout(cfg: dict[str, Any]) -> str:
    return "; ".join(
        f"{img}/ISIC_0000000.jpg with {gt}/ISIC_0000000_segmentation.png" for img, gt in cfg["parts"].values()
    )


SEG_INFOS = {
    name: DatasetInfo(
        name=name,
        description=f"ISIC {cfg['year']} lesion segmentation (binary masks), official "
        + "/".join(cfg["parts"])
        + " partition",
        fields=frozenset({"masks"}),
        label_names=(),
        license=ISIC_LICENSE,
        commercial_use=False,
        citation=cfg["citation"],
        how_to_obtain=f"Download the ISIC {cfg['year']} segmentation (Part 1 / Task 1) images and ground truth from "
        f"{ARCHIVE}, unzip into one folder and pass it as --data-root. Expected layout: {_seg_layout(cfg)}.",
        official_split=True,
        aliases=(f"isic{cfg['year']}",),
    )
    for name, cfg in SEG.items()
}


@dataset_options
def _load_seg(name: str, root: Any, *, skip_bad_images: bool = False, split_seed: int = 0, **_: Any) -> Dataset:
    cfg = SEG[name]
    info = SEG_INFOS[name]
    root = as_root(root, name, info.how_to_obtain)
    rows: list[Row] = []
    found = []
    for part, (img_dir_name, gt_dir_name) in cfg["parts"].items():
        img_dir = find_file(root, [img_dir_name], want_dir=True)
        if img_dir is None:
            continue
        gt_dir = find_file(root, [gt_dir_name], want_dir=True)
        found.append(f"{part}={img_dir_name}")
        images = index_files(
            img_dir, exts=(".jpg", ".jpeg", ".png"), exclude_suffixes=("_superpixels", "_segmentation")
        )
        masks = {} if gt_dir is None else {k.lower(): v for k, v in index_files(gt_dir, exts=(".png",)).items()}
        for iid, path in sorted(images.items()):
            rows.append(Row(id=iid, image=path, mask=masks.get(f"{iid}_segmentation".lower()), split=part))
    if not rows:
        raise DermbenchError(
            f"{name}: no image folder ({', '.join(p[0] for p in cfg['parts'].values())}) with images under {root}. "
            f"Found in {root}: {describe_dir(root)}. {info.how_to_obtain}"
        )
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        check_masks=True,
        official=f"ISIC {cfg['year']} challenge folders: {', '.join(found)}",
        what="images",
    )


load_isic2016_seg, load_isic2017_seg, load_isic2018_seg = (
    variant_loader(_load_seg, v, f"ISIC {SEG[v]['year']} lesion segmentation, official partition.")
    for v in ("isic2016-seg", "isic2017-seg", "isic2018-seg")
)


@hookimpl
def register_datasets(register):
    register(CLS_INFOS["isic2017"], load_isic2017)
    register(CLS_INFOS["isic2018"], load_isic2018)
    register(SEG_INFOS["isic2016-seg"], load_isic2016_seg)
    register(SEG_INFOS["isic2017-seg"], load_isic2017_seg)
    register(SEG_INFOS["isic2018-seg"], load_isic2018_seg)
