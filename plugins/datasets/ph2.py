"""PH2 dermoscopic images (Mendonça et al. 2013): 3-class, melanoma-vs-rest and lesion segmentation.

Reads the authors' own files: the ``||``-delimited ``PH2_dataset.txt`` (Latin-1, CRLF, a legend block after
the table) or, when only it is present, ``PH2_dataset.xlsx`` (legend rows above the header, "X" cells for the
diagnosis). Images: ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp``; lesion masks
``IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp`` (1-bit BMP, same size as the image).
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
    find_file,
    index_files,
    require_file,
)

CLASSES_3 = ("common nevus", "atypical nevus", "melanoma")
CLASSES_2 = ("nevus", "melanoma")
CRITERIA = ("asymmetry", "pigment_network", "dots_globules", "streaks", "regression_areas", "blue_whitish_veil")
COLORS = ("white", "red", "light-brown", "dark-brown", "blue-gray", "black")

LAYOUT = (
    "PH2Dataset/PH2_dataset.txt (or PH2_dataset.xlsx) and "
    "PH2Dataset/PH2 Dataset images/IMD003/IMD003_Dermoscopic_Image/IMD003.bmp, "
    "PH2Dataset/PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.bmp"
)
HOW_TO = (
    "Request PH2 from the ADDI project (https://www.fc.up.pt/addi/ph2%20database.html), unpack PH2Dataset.rar "
    f"and pass --data-root <folder containing PH2Dataset>. Expected layout: {LAYOUT}."
)
CITATION = (
    "T. Mendonça, P. M. Ferreira, J. S. Marques, A. R. S. Marçal, J. Rozeira, 'PH2 - A dermoscopic image database "
    "for research and benchmarking', IEEE EMBC 2013, pp. 5437-5440."
)
LICENSE = "research/education use, free of charge from the authors; no redistribution"


def _info(name: str, description: str, labels: tuple[str, ...], masks: bool) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        description=description,
        fields=frozenset({"labels", "groups"} | ({"masks"} if masks else set())),
        label_names=labels,
        license=LICENSE,
        commercial_use=False,
        citation=CITATION,
        how_to_obtain=HOW_TO,
        official_split=False,
        aliases=("ph2",),
    )


INFOS = {
    "ph2": _info("ph2", "PH2 dermoscopy, 3 classes by Clinical Diagnosis (80/80/40)", CLASSES_3, False),
    "ph2-binary": _info("ph2-binary", "PH2 dermoscopy, melanoma vs nevus (common + atypical)", CLASSES_2, False),
    "ph2-seg": _info("ph2-seg", "PH2 lesion segmentation (expert masks), with 3-class labels", CLASSES_3, True),
}


# --------------------------------------------------------------------------------------------------
# The two table formats


def parse_txt(path: Path) -> list[dict[str, Any]]:
    """Rows of ``PH2_dataset.txt``: name, clinical diagnosis (0/1/2), histology, criteria, colours.

    The table ends at the first line that does not start with ``|`` (the legend block follows).
    """
    try:
        text = path.read_bytes().decode("latin-1")
    except OSError as e:
        raise DermbenchError(f"ph2: cannot read {path}: {e}") from None
    lines = text.splitlines()
    out: list[dict[str, Any]] = []
    header_seen = False
    for lineno, line in enumerate(lines, start=1):
        if not line.startswith("|"):
            if header_seen:
                break
            continue
        cells = line.split("||")
        if len(cells) < 6:
            raise DermbenchError(
                f"ph2: {path} line {lineno} has {len(cells) - 1} '||' fields; expected "
                "'|| Name || Histological Diagnosis || Clinical Diagnosis || criteria... || Colors ||'"
            )
        name = cells[1].strip()
        if not header_seen:
            if name.lower() != "name" or "clinical diagnosis" not in cells[3].strip().lower():
                raise DermbenchError(
                    f"ph2: {path} line {lineno} is not the PH2 header; found {line.strip()[:80]!r}, expected "
                    "'|| Name || Histological Diagnosis || Clinical Diagnosis || ...'"
                )
            header_seen = True
            continue
        crit = [c.strip() for c in cells[4].split("|")]
        out.append(
            {
                "name": name,
                "histology": cells[2].strip() or None,
                "clinical": cells[3].strip(),
                "criteria": dict(zip(CRITERIA, crit)),
                "colors": [COLORS[int(c) - 1] for c in cells[5].split() if c.isdigit() and 1 <= int(c) <= 6],
                "line": lineno,
            }
        )
    if not header_seen:
        raise DermbenchError(f"ph2: {path} has no '|| Name || ...' table; is it the PH2_dataset.txt from PH2Dataset?")
    return out


def parse_xlsx(path: Path) -> list[dict[str, Any]]:
    """Rows of ``PH2_dataset.xlsx`` (header row located by its 'Image Name' cell, not a fixed offset)."""
    import pandas as pd

    try:
        raw = pd.read_excel(path, header=None, dtype=str)
    except Exception as e:
        raise DermbenchError(f"ph2: cannot read {path} as a spreadsheet: {e}") from None
    hdr = [i for i in range(len(raw)) if str(raw.iat[i, 0]).strip() == "Image Name"]
    if not hdr:
        raise DermbenchError(f"ph2: {path} has no 'Image Name' header cell in column A; is it PH2_dataset.xlsx?")
    h = hdr[0]
    cols = [str(c).split("\n")[0].strip() for c in raw.iloc[h]]
    need = ["Image Name", "Common Nevus", "Atypical Nevus", "Melanoma"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise DermbenchError(f"ph2: {path} has no column(s) {missing}; columns found: {cols}")
    out = []
    for i in range(h + 1, len(raw)):
        row = {c: raw.iat[i, j] for j, c in enumerate(cols)}
        name = str(row["Image Name"]).strip()
        if not name or name == "nan":
            continue
        marks = [k for k, c in enumerate(need[1:]) if str(row[c]).strip().upper() == "X"]
        clinical = str(marks[0]) if len(marks) == 1 else f"{len(marks)} diagnosis cells marked"
        hist = str(row.get("Histological Diagnosis", "")).strip()
        out.append(
            {
                "name": name,
                "histology": None if hist in ("", "nan") else hist,
                "clinical": clinical,
                "criteria": {},
                "colors": [
                    c.lower()
                    for c in ("White", "Red", "Light-Brown", "Dark-Brown", "Blue-Gray", "Black")
                    if str(row.get(c, "")).strip().upper() == "X"
                ],
                "line": i + 1,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# Loader


@dataset_options
def _load(
    variant: str,
    root: Any,
    *,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    table: str = "auto",
    split_file: str | None = None,
    **_: Any,
) -> Dataset:
    info = INFOS[variant]
    root = as_root(root, variant, HOW_TO)
    names = {"auto": ["PH2_dataset.txt", "PH2_dataset.xlsx"], "txt": ["PH2_dataset.txt"], "xlsx": ["PH2_dataset.xlsx"]}
    if table not in names:
        raise DermbenchError(f"{variant}: table={table!r}; expected auto, txt or xlsx")
    meta_path = require_file(root, names[table], variant, LAYOUT)
    records = parse_xlsx(meta_path) if meta_path.suffix.lower() == ".xlsx" else parse_txt(meta_path)
    img_dir = find_file(root, ["PH2 Dataset images"], want_dir=True) or meta_path.parent
    bmps = index_files(img_dir, exts=(".bmp",))
    rows: list[Row] = []
    for rec in records:
        name = rec["name"]
        if rec["clinical"] not in ("0", "1", "2"):
            raise DermbenchError(
                f"{variant}: {meta_path} line {rec['line']} ({name}): Clinical Diagnosis {rec['clinical']!r} is not "
                "one of ['0', '1', '2'] (0 common nevus, 1 atypical nevus, 2 melanoma)"
            )
        y3 = int(rec["clinical"])
        label = int(y3 == 2) if variant == "ph2-binary" else y3
        case = img_dir / name
        img = case / f"{name}_Dermoscopic_Image" / f"{name}.bmp"
        mask = case / f"{name}_lesion" / f"{name}_lesion.bmp"
        image = img if img.is_file() else bmps.get(name)
        lesion = mask if mask.is_file() else bmps.get(f"{name}_lesion")
        meta = {
            "group": name,
            "diagnosis": CLASSES_3[y3],
            "histology": rec["histology"],
            "criteria": rec["criteria"],
            "colors": rec["colors"],
            "fitzpatrick": None,
            "sex": None,
            "age": None,
        }
        rows.append(Row(id=name, image=image, label=label, mask=lesion, meta=meta))
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        check_masks=variant == "ph2-seg",
        expected_image=str(img_dir / "IMD003" / "IMD003_Dermoscopic_Image" / "IMD003.bmp"),
        what=f"cases in {meta_path.name}",
        split_file=split_file,
    )


load_ph2 = variant_loader(_load, "ph2", "PH2, 3 classes (common nevus / atypical nevus / melanoma).")
load_ph2_binary = variant_loader(_load, "ph2-binary", "PH2, melanoma (1) vs nevus (0).")
load_ph2_seg = variant_loader(_load, "ph2-seg", "PH2 with lesion masks (image/mask sizes checked at load time).")


@hookimpl
def register_datasets(register):
    register(INFOS["ph2"], load_ph2)
    register(INFOS["ph2-binary"], load_ph2_binary)
    register(INFOS["ph2-seg"], load_ph2_seg)
