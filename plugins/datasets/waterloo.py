"""Skin Cancer Detection dataset of the Waterloo VIP lab (Amelard et al.): melanoma vs not, with contours.

Layout (as used by DermINO's data code; the archive keeps one folder per class): images
``<base>_orig.jpg`` (other ``<base>_<suffix>.jpg`` names are accepted) and lesion masks
``<base>_contour.png`` in the same folder, under a ``melanoma`` and a ``notmelanoma`` (or ``not_melanoma``)
folder, matched case-insensitively at any depth. ``waterloo`` is the classification view, ``waterloo-seg``
adds masks (image/mask sizes checked at load).
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import (
    Row,
    as_root,
    variant_loader,
    build_dataset,
    dataset_options,
    describe_dir,
    find_file,
    index_files,
)

CLASSES = ("not melanoma", "melanoma")
LAYOUT = "<any>/melanoma/<source>/<base>_orig.jpg + <base>_contour.png and <any>/notmelanoma/..."
HOW_TO = (
    "Download the 'Skin Cancer Detection' dataset from the University of Waterloo VIP lab "
    "(https://uwaterloo.ca/vision-image-processing-lab/research-demos/skin-cancer-detection), unzip it and pass "
    f"the folder as --data-root. Expected layout: {LAYOUT}."
)


def _info(name: str, masks: bool) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        description="Waterloo VIP skin cancer images, melanoma vs not" + (", lesion contours" if masks else ""),
        fields=frozenset({"labels"} | ({"masks"} if masks else set())),
        label_names=CLASSES,
        license="not stated (academic use, Waterloo VIP lab)",
        commercial_use=False,
        citation="R. Amelard, J. Glaister, A. Wong, D. A. Clausi, 'High-Level Intuitive Features (HLIFs) for "
        "Intuitive Skin Lesion Description', IEEE Trans. Biomed. Eng. 62(3), 2015.",
        how_to_obtain=HOW_TO,
        aliases=("waterloo", "skincancer"),
    )


INFOS = {"waterloo": _info("waterloo", False), "waterloo-seg": _info("waterloo-seg", True)}


@dataset_options
def _load(
    variant: str,
    root: Any,
    *,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    split_file: str | None = None,
    **_: Any,
) -> Dataset:
    info = INFOS[variant]
    root = as_root(root, variant, HOW_TO)
    mel = find_file(root, ["melanoma"], want_dir=True)
    non = find_file(root, ["notmelanoma", "not_melanoma", "not melanoma", "not-melanoma", "nonmelanoma"], want_dir=True)
    if mel is None or non is None:
        raise DermbenchError(
            f"{variant}: cannot find both a melanoma/ and a notmelanoma/ folder under {root}. "
            f"Expected layout: {LAYOUT}. "
            f"Found in {root}: {describe_dir(root)}"
        )
    rows = []
    for label, folder in ((0, non), (1, mel)):
        files = index_files(folder, exts=(".jpg", ".jpeg", ".png"))
        contours = {k[: -len("_contour")].lower(): v for k, v in files.items() if k.lower().endswith("_contour")}
        for stem, path in sorted(files.items()):
            if stem.lower().endswith("_contour"):
                continue
            base = stem.rsplit("_", 1)[0] if "_" in stem else stem
            rid = f"{CLASSES[label]}/{path.parent.relative_to(folder).as_posix()}/{stem}".replace("/./", "/")
            rows.append(
                Row(id=rid, image=path, label=label, mask=contours.get(base.lower()), meta={"fitzpatrick": None})
            )
    if not rows:
        raise DermbenchError(f"{variant}: no images in {mel} or {non}. Expected layout: {LAYOUT}")
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        check_masks=variant == "waterloo-seg",
        what="images",
        split_file=split_file,
    )


load_waterloo = variant_loader(_load, "waterloo", "Waterloo skin cancer, melanoma (1) vs not (0).")
load_waterloo_seg = variant_loader(_load, "waterloo-seg", "Waterloo skin cancer with lesion contour masks.")


@hookimpl
def register_datasets(register):
    register(INFOS["waterloo"], load_waterloo)
    register(INFOS["waterloo-seg"], load_waterloo_seg)
