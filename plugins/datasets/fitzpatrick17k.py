"""Fitzpatrick17k (Groh et al. 2021): clinical atlas images with Fitzpatrick skin type, three task variants.

Reads ``fitzpatrick17k.csv`` from the official repo (``md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,
nine_partition_label,three_partition_label,qc,url,url_alphanum``). The images are not distributed; users fetch
them (from ``url``, or via the authors' request form) into any folder under the root, named ``<md5hash>.jpg``.

Variants (DermINO): ``fitzpatrick17k-2`` benign vs malignant (non-neoplastic rows excluded),
``fitzpatrick17k-3`` the three-partition label, ``fitzpatrick17k-9`` the nine-partition label.
``fitzpatrick_scale`` -1 means unknown and becomes None. ``site`` is the source atlas (from the url host).
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import (
    variant_loader,
    Row,
    as_root,
    build_dataset,
    dataset_options,
    fitzpatrick_group,
    index_files,
    is_blank,
    dataset_log as log,
    map_labels,
    parse_fitzpatrick,
    read_csv,
    require_file,
)

THREE = ("non-neoplastic", "benign", "malignant")
TWO = ("benign", "malignant")
NINE = (
    "inflammatory",
    "malignant epidermal",
    "genodermatoses",
    "benign dermal",
    "benign epidermal",
    "malignant melanoma",
    "benign melanocyte",
    "malignant cutaneous lymphoma",
    "malignant dermal",
)
LAYOUT = "fitzpatrick17k.csv and images/<md5hash>.jpg (any sub-folder of the root)"
HOW_TO = (
    "Get fitzpatrick17k.csv from github.com/mattgroh/fitzpatrick17k and the images from each row's url (or the "
    "authors' request form); save each image as <md5hash>.jpg in one folder next to the csv and pass the folder "
    f"as --data-root. Expected layout: {LAYOUT}."
)
CITATION = (
    "M. Groh, C. Harris, L. Soenksen, F. Lau, R. Han, A. Kim, A. Koochek, O. Badri, 'Evaluating Deep Neural Networks "
    "Trained on Clinical Images in Dermatology with the Fitzpatrick 17k Dataset', CVPR Workshops (ISIC) 2021."
)
LICENSE = "annotations CC BY-NC-SA 3.0; images keep their source atlases' terms"

VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "fitzpatrick17k-2": ("three_partition_label", TWO, "benign vs malignant (non-neoplastic excluded)"),
    "fitzpatrick17k-3": ("three_partition_label", THREE, "three-partition label"),
    "fitzpatrick17k-9": ("nine_partition_label", NINE, "nine-partition label"),
}

INFOS = {
    name: DatasetInfo(
        name=name,
        description=f"Fitzpatrick17k clinical images, {desc}; Fitzpatrick skin type 1-6",
        fields=frozenset({"labels", "fitzpatrick", "site"}),
        label_names=labels,
        license=LICENSE,
        commercial_use=False,
        citation=CITATION,
        how_to_obtain=HOW_TO,
        official_split=False,
        aliases=("fitzpatrick17k",),
    )
    for name, (_col, labels, desc) in VARIANTS.items()
}


def _atlas(url: Any) -> str | None:
    if is_blank(url):
        return None
    host = str(url).split("//", 1)[-1].split("/", 1)[0].lower()
    return host[4:] if host.startswith("www.") else host


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
    column, classes, _desc = VARIANTS[variant]
    root = as_root(root, variant, HOW_TO)
    csv = require_file(root, ["fitzpatrick17k.csv"], variant, LAYOUT)
    df = read_csv(
        csv, variant, ["md5hash", "fitzpatrick_scale", "label", "nine_partition_label", "three_partition_label", "url"]
    )
    lines = list(range(2, len(df) + 2))
    if variant == "fitzpatrick17k-2":
        keep = [i for i, v in enumerate(df[column]) if str(v).strip() != "non-neoplastic"]
        log.info(
            "%s: %d non-neoplastic rows of %s excluded (benign vs malignant task)",
            variant,
            len(df) - len(keep),
            csv.name,
        )
        df = df.iloc[keep].reset_index(drop=True)
        lines = [lines[i] for i in keep]
    mapping = {c: i for i, c in enumerate(classes)}
    labels = []
    for v, line in zip(df[column].tolist(), lines):
        labels.extend(map_labels([v], mapping, variant, csv, column, first_line=line))
    dup = df["md5hash"].duplicated()
    if dup.any():
        i = int(dup.values.nonzero()[0][0])
        raise DermbenchError(f"{variant}: {csv} line {lines[i]}: md5hash {df['md5hash'][i]!r} appears twice")
    images = index_files(root, exts=(".jpg", ".jpeg", ".png"))
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        h = str(rec["md5hash"]).strip()
        fst = parse_fitzpatrick(rec["fitzpatrick_scale"])
        meta = {
            "fitzpatrick": fst,
            "fitzpatrick_group": fitzpatrick_group(fst),
            "fitzpatrick_centaur": parse_fitzpatrick(rec.get("fitzpatrick_centaur")),
            "condition": str(rec["label"]).strip(),
            "site": _atlas(rec["url"]),
            "qc": None if is_blank(rec.get("qc")) else str(rec["qc"]).strip(),
        }
        rows.append(Row(id=h, image=images.get(h), label=labels[i], meta=meta))
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        expected_image=str(root / "images" / f"{rows[0].id}.jpg") if rows else "",
        what=f"rows of {csv.name} ({variant})",
        split_file=split_file,
    )


load_fitzpatrick17k_2, load_fitzpatrick17k_3, load_fitzpatrick17k_9 = (
    variant_loader(_load, v, f"Fitzpatrick17k, {VARIANTS[v][2]}.")
    for v in ("fitzpatrick17k-2", "fitzpatrick17k-3", "fitzpatrick17k-9")
)


@hookimpl
def register_datasets(register):
    register(INFOS["fitzpatrick17k-2"], load_fitzpatrick17k_2)
    register(INFOS["fitzpatrick17k-3"], load_fitzpatrick17k_3)
    register(INFOS["fitzpatrick17k-9"], load_fitzpatrick17k_9)
