"""SkinCAP (Zhou et al. 2024): dermatology images with expert captions, for captioning and retrieval.

Reads ``skincap_v240623.csv`` as distributed on the Hugging Face hub (gated; columns ``id, skincap_file_path,
disease, caption_zh, caption_zh_polish, caption_zh_polish_en, ...``): the English caption is
``caption_zh_polish_en``. DermINO's derived CSVs with ``id`` and ``caption_en`` columns work too
(``--dataset-opt csv=<file>``). Images are found by the file name in ``skincap_file_path`` anywhere under the
root. ``disease`` is kept in ``meta['disease']``; samples have no class label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import (
    Row,
    as_root,
    build_dataset,
    dataset_options,
    fitzpatrick_group,
    index_files,
    is_blank,
    parse_fitzpatrick,
    read_csv,
    require_file,
)

LAYOUT = "skincap_v240623.csv and skincap/<skincap_file_path> (images in any sub-folder)"
HOW_TO = (
    "Accept the licence of the gated dataset joshuachou/SkinCAP on Hugging Face, download it "
    f"(csv + image folder) into one folder and pass it as --data-root. Expected layout: {LAYOUT}."
)
INFO = DatasetInfo(
    name="skincap",
    description="SkinCAP images with English expert captions (captioning, image-text retrieval)",
    fields=frozenset({"captions", "fitzpatrick"}),
    label_names=(),
    license="CC BY-NC-SA 4.0 + KAUST research-use agreement; no redistribution",
    commercial_use=False,
    citation="J. Zhou et al., 'SkinCAP: A Multi-modal Dermatology Dataset Annotated with Rich Medical Captions', "
    "arXiv:2405.18004 (2024).",
    how_to_obtain=HOW_TO,
    aliases=("skincap",),
)


@dataset_options
def load_skincap(
    root: Any,
    *,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    csv: str | None = None,
    split_file: str | None = None,
    **_: Any,
) -> Dataset:
    """SkinCAP image-caption pairs; seeded 50/50 split (DermINO used its own 3600/400 CSVs: pass them as csv=)."""
    root = as_root(root, INFO.name, HOW_TO)
    if csv:
        table = Path(csv).expanduser()
        table = table if table.is_absolute() else root / table
    else:
        table = require_file(root, ["skincap_v240623.csv"], INFO.name, LAYOUT)
    head = read_csv(table, INFO.name, ["id"], nrows=0)
    cap_col = next((c for c in ("caption_zh_polish_en", "caption_en") if c in head.columns), None)
    if cap_col is None:
        raise DermbenchError(
            f"skincap: {table} has neither 'caption_zh_polish_en' (SkinCAP release) nor 'caption_en' (derived CSV); "
            f"columns found: {list(head.columns)}"
        )
    df = read_csv(table, INFO.name, ["id", cap_col])
    images = index_files(root)
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        rid = str(rec["id"]).strip()
        ref = rec.get("skincap_file_path")
        stem = Path(str(ref).strip()).stem if not is_blank(ref) else rid
        caption = str(rec[cap_col]).strip()
        if not caption:
            raise DermbenchError(f"skincap: {table} line {i + 2} (id {rid}): empty caption in column {cap_col!r}")
        fst = parse_fitzpatrick(rec.get("skin_tone"))
        meta = {
            "disease": None if is_blank(rec.get("disease")) else str(rec["disease"]).strip(),
            "fitzpatrick": fst,
            "fitzpatrick_group": fitzpatrick_group(fst),
        }
        rows.append(Row(id=rid, image=images.get(stem), caption=caption, meta=meta))
    return build_dataset(
        INFO,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        expected_image=str(root / "skincap" / "1.png"),
        what=f"rows of {table.name}",
        split_file=split_file,
    )


@hookimpl
def register_datasets(register):
    register(INFO, load_skincap)
