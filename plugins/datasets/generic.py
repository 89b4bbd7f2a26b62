"""Generic datasets for private collections: ``folder`` (class per sub-folder) and ``csv`` (a table of paths).

Options come from ``--dataset-opt key=value`` (the runner forwards them as loader keyword arguments).

``folder``: ``<root>/<class>/**/<image>``; classes are the sub-folder names in sorted order (or ``classes=a,b,c``
to fix order and subset). A root holding ``train/`` and ``test/`` (optionally ``val/``) with class folders
inside each is read as an official split.

``csv``: ``csv=<file>`` (default: the only ``*.csv`` at the root), ``path_col`` (default ``path``; ``image``,
``filename``, ``file`` are tried too), ``label_col`` (default ``label``), optional ``id_col``, ``group_col``,
``mask_col``, ``caption_col``, ``fitzpatrick_col``, ``sex_col``, ``age_col``, ``site_col`` and ``split_col``
(an official split column). Paths are relative to the CSV's folder. ``classes=a,b,c`` fixes the label set;
a label outside it is an error naming the row.

The label set and the fields these datasets carry are known only after loading, so the returned
``Dataset.info`` lists the fields actually present (the registered info declares labels only).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import (
    IMAGE_EXTS,
    Row,
    as_root,
    build_dataset,
    dataset_options,
    describe_dir,
    fitzpatrick_group,
    index_files,
    is_blank,
    map_labels,
    opt_bool,
    parse_age,
    parse_fitzpatrick,
    parse_sex,
    read_csv,
)

SPLIT_DIRS = ("train", "val", "test")

FOLDER_INFO = DatasetInfo(
    name="folder",
    description="Class-per-folder images (--dataset-opt classes=...; train/test folders = official split)",
    fields=frozenset({"labels"}),
    license="user-supplied",
    how_to_obtain="Your own data: <root>/<class name>/<image>, or <root>/{train,test}/<class name>/<image>.",
)
CSV_INFO = DatasetInfo(
    name="csv",
    description="Images listed in a CSV (path, label; optional group/mask/caption/fitzpatrick/sex/age/site/split)",
    fields=frozenset({"labels"}),
    license="user-supplied",
    how_to_obtain="Your own data: a CSV with columns path,label[,group,mask,caption,...]; "
    "pass --data-root <folder> --dataset-opt csv=<file> path_col=... label_col=...",
)


def _classes_opt(classes: Any) -> list[str] | None:
    if classes is None or classes == "":
        return None
    items = classes if isinstance(classes, (list, tuple)) else str(classes).split(",")
    return [str(c).strip() for c in items if str(c).strip()]


@dataset_options
def load_folder(
    root: Any,
    *,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    classes: Any = None,
    split_file: str | None = None,
    name: str = "folder",
    **_: Any,
) -> Dataset:
    """Class-per-folder images; ``classes`` fixes the class order (and drops other folders)."""
    root = as_root(root, name, FOLDER_INFO.how_to_obtain)
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    official = bool(subdirs) and set(subdirs) <= set(SPLIT_DIRS) and "train" in subdirs and len(subdirs) > 1
    parts = [(d, root / d) for d in subdirs] if official else [(None, root)]
    wanted = _classes_opt(classes)
    found: set[str] = set()
    for _part, base in parts:
        found |= {p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}
    names = wanted or sorted(found)
    if wanted:
        missing = [c for c in wanted if c not in found]
        if missing:
            raise DermbenchError(f"{name}: class folder(s) {missing} not found under {root}; found {sorted(found)}")
    if not names:
        raise DermbenchError(
            f"{name}: no class sub-folders under {root}; expected <root>/<class>/<image>. Found: {describe_dir(root)}"
        )
    rows: list[Row] = []
    for part, base in parts:
        for k, cls in enumerate(names):
            for stem, path in sorted(index_files(base / cls, IMAGE_EXTS).items()):
                rid = f"{part}/{cls}/{stem}" if part else f"{cls}/{stem}"
                rows.append(Row(id=rid, image=path, label=k, split=part, meta={"group": rid}))
    if not rows:
        raise DermbenchError(f"{name}: the class folders {names} under {root} hold no images ({', '.join(IMAGE_EXTS)})")
    info = replace(FOLDER_INFO, name=name, label_names=tuple(names))
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        official=f"{'/'.join(subdirs)} sub-folders" if official else None,
        what="images",
        split_file=split_file,
        label_names=names,
    )


@dataset_options
def load_csv(
    root: Any,
    *,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    csv: str | None = None,
    path_col: str | None = None,
    label_col: str = "label",
    id_col: str | None = None,
    group_col: str | None = None,
    mask_col: str | None = None,
    caption_col: str | None = None,
    fitzpatrick_col: str | None = None,
    sex_col: str | None = None,
    age_col: str | None = None,
    site_col: str | None = None,
    split_col: str | None = None,
    classes: Any = None,
    split_file: str | None = None,
    name: str = "csv",
    sep: str = ",",
    check_masks: Any = True,
    **_: Any,
) -> Dataset:
    """Images listed in a CSV; column names configurable, optional columns become fields."""
    root = as_root(root, name, CSV_INFO.how_to_obtain)
    if csv:
        table = Path(csv).expanduser()
        table = table if table.is_absolute() else root / table
        if not table.is_file():
            raise DermbenchError(f"{name}: csv={csv!r}: no such file {table}. Found in {root}: {describe_dir(root)}")
    else:
        cands = sorted(root.glob("*.csv"))
        if len(cands) != 1:
            raise DermbenchError(
                f"{name}: found {len(cands)} *.csv files at {root} ({', '.join(p.name for p in cands) or 'none'}); "
                "pass --dataset-opt csv=<file>"
            )
        table = cands[0]
    import pandas as pd

    head = read_csv(table, name, (), sep=sep, nrows=0)
    if path_col is None:
        path_col = next((c for c in ("path", "image", "filename", "file", "image_path") if c in head.columns), "path")
    optional = dict(
        id=id_col,
        group=group_col,
        mask=mask_col,
        caption=caption_col,
        fitzpatrick=fitzpatrick_col,
        sex=sex_col,
        age=age_col,
        site=site_col,
        split=split_col,
    )
    df: pd.DataFrame = read_csv(table, name, [path_col, label_col] + [c for c in optional.values() if c], sep=sep)
    raw = [str(v).strip() for v in df[label_col]]
    wanted = _classes_opt(classes)
    names = wanted or sorted(set(raw))
    labels = map_labels(raw, {c: i for i, c in enumerate(names)}, name, table, label_col)
    base = table.parent
    rows: list[Row] = []
    fields = {"labels"}
    for i, rec in enumerate(df.to_dict("records")):
        rel = str(rec[path_col]).strip()
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        meta: dict[str, Any] = {}
        if group_col:
            meta["group"] = str(rec[group_col]).strip()
            fields.add("groups")
        if fitzpatrick_col:
            meta["fitzpatrick"] = parse_fitzpatrick(rec[fitzpatrick_col])
            meta["fitzpatrick_group"] = fitzpatrick_group(meta["fitzpatrick"])
            fields.add("fitzpatrick")
        if sex_col:
            meta["sex"] = parse_sex(rec[sex_col])
            fields.add("sex")
        if age_col:
            meta["age"] = parse_age(rec[age_col])
            fields.add("age")
        if site_col:
            meta["site"] = None if is_blank(rec[site_col]) else str(rec[site_col]).strip()
            fields.add("site")
        mask = None
        if mask_col and not is_blank(rec[mask_col]):
            m = Path(str(rec[mask_col]).strip())
            mask = m if m.is_absolute() else base / m
            fields.add("masks")
        caption = None
        if caption_col and not is_blank(rec[caption_col]):
            caption = str(rec[caption_col]).strip()
            fields.add("captions")
        rid = str(rec[id_col]).strip() if id_col else rel
        split = None
        if split_col:
            split = str(rec[split_col]).strip().lower()
            split = {"valid": "val", "validation": "val"}.get(split, split)
            if split not in SPLIT_DIRS:
                raise DermbenchError(
                    f"{name}: {table} line {i + 2}, column {split_col!r}: value {rec[split_col]!r} is not one of "
                    f"{list(SPLIT_DIRS)}"
                )
        rows.append(
            Row(
                id=rid,
                image=p if p.is_file() else None,
                label=labels[i],
                mask=mask if mask and mask.is_file() else None,
                caption=caption,
                meta=meta,
                split=split,
            )
        )
    info = replace(CSV_INFO, name=name, label_names=tuple(names), fields=frozenset(fields))
    return build_dataset(
        info,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        official=f"column {split_col!r} of {table.name}" if split_col else None,
        grouped=bool(group_col),
        check_masks="masks" in fields and opt_bool(check_masks),
        expected_image=str(base / str(df[path_col].iloc[0])) if len(df) else "",
        what=f"rows of {table.name}",
        split_file=split_file,
        label_names=names,
    )


@hookimpl
def register_datasets(register):
    register(FOLDER_INFO, load_folder)
    register(CSV_INFO, load_csv)
