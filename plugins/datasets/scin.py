"""SCIN (Ward et al. 2024): crowd-sourced images with self-reported sex and skin type, Monk tone, derm labels.

Reads ``scin_cases.csv`` and ``scin_labels.csv`` (the GCS bucket's ``dataset/`` prefix), joined on ``case_id``.
A case has up to three images (``image_{1,2,3}_path``, relative to the bucket root, e.g.
``dataset/images/<id>.png``); every image is a sample and the split keeps each case on one side.

Label: the condition with the highest dermatologist weight in ``weighted_skin_condition_label`` (ties broken
alphabetically). ``scin`` keeps the ten most frequent such conditions in SCIN v1 (listed below, counted once
from the released labels file); cases whose top condition is another, or that no dermatologist could grade,
are excluded and counted in the log. Fitzpatrick: the median of the dermatologists' estimates
(``dermatologist_fitzpatrick_skin_type_label_{1,2,3}``; ``fitzpatrick_source=self`` uses the self-reported
``fitzpatrick_skin_type`` instead). Monk: ``monk_skin_tone_label_us``.
"""

from __future__ import annotations

import ast
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
    dataset_log as log,
    parse_fitzpatrick,
    parse_sex,
    read_csv,
    require_file,
)

#: the ten most frequent top-weighted dermatologist conditions in SCIN v1 (5,033 cases), most frequent first
CONDITIONS = (
    "Eczema",
    "Allergic Contact Dermatitis",
    "Urticaria",
    "Insect Bite",
    "Folliculitis",
    "Drug Rash",
    "Psoriasis",
    "Herpes Simplex",
    "Acute dermatitis, NOS",
    "Acne",
)
LAYOUT = "dataset/scin_cases.csv, dataset/scin_labels.csv, dataset/images/<image id>.png"
HOW_TO = (
    "Copy the public bucket: `gsutil -m cp -r gs://dx-scin-public-data/dataset <folder>/` (see "
    f"github.com/google-research-datasets/scin) and pass <folder> as --data-root. Expected layout: {LAYOUT}."
)
CITATION = (
    "A. Ward, J. Li, J. Wang, et al., 'Creating an Empirical Dermatology Dataset Through Crowdsourcing With Web "
    "Search Advertisements', JAMA Netw Open 2024;7(11):e2446615. doi:10.1001/jamanetworkopen.2024.46615"
)

INFO = DatasetInfo(
    name="scin",
    description="SCIN crowd-sourced images, 10 most frequent dermatologist conditions; sex, Fitzpatrick, Monk",
    fields=frozenset({"labels", "sex", "fitzpatrick", "monk", "groups"}),
    label_names=CONDITIONS,
    license="SCIN Data Use License (attribution; no re-identification)",
    commercial_use=True,
    citation=CITATION,
    how_to_obtain=HOW_TO,
    official_split=False,
    aliases=("scin",),
)


def top_condition(raw: Any, path: Path, line: int) -> str | None:
    """The highest-weighted condition of a ``weighted_skin_condition_label`` dict literal (None if empty)."""
    if is_blank(raw):
        return None
    try:
        d = ast.literal_eval(str(raw))
    except (ValueError, SyntaxError):
        raise DermbenchError(
            f"scin: {path} line {line}, column 'weighted_skin_condition_label': {str(raw)[:60]!r} is not a "
            "dict literal like {'Eczema': 0.5, ...}"
        ) from None
    if not isinstance(d, dict) or not d:
        return None
    return sorted(d.items(), key=lambda kv: (-float(kv[1]), str(kv[0])))[0][0]


def _median_fst(values: list[Any]) -> int | None:
    fs = sorted(f for f in (parse_fitzpatrick(v) for v in values) if f is not None)
    return fs[(len(fs) - 1) // 2] if fs else None


@dataset_options
def load_scin(
    root: Any,
    *,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    split_file: str | None = None,
    fitzpatrick_source: str = "dermatologist",
    **_: Any,
) -> Dataset:
    """SCIN, 10 conditions; one sample per image, split grouped by case."""
    if fitzpatrick_source not in ("dermatologist", "self"):
        raise DermbenchError(f"scin: fitzpatrick_source={fitzpatrick_source!r}; expected dermatologist or self")
    root = as_root(root, INFO.name, HOW_TO)
    cases_p = require_file(root, ["scin_cases.csv"], INFO.name, LAYOUT)
    labels_p = require_file(root, ["scin_labels.csv"], INFO.name, LAYOUT)
    cases = read_csv(
        cases_p,
        INFO.name,
        [
            "case_id",
            "sex_at_birth",
            "fitzpatrick_skin_type",
            "age_group",
            "image_1_path",
            "image_2_path",
            "image_3_path",
        ],
    )
    labels = read_csv(
        labels_p,
        INFO.name,
        [
            "case_id",
            "weighted_skin_condition_label",
            "dermatologist_fitzpatrick_skin_type_label_1",
            "monk_skin_tone_label_us",
        ],
    )
    lab_by_case = {str(r["case_id"]): (i + 2, r) for i, r in enumerate(labels.to_dict("records"))}
    base = cases_p.parent.parent  # image paths are relative to the bucket root ("dataset/images/...")
    by_name = index_files(cases_p.parent, exts=(".png", ".jpg", ".jpeg"))
    body_cols = [c for c in cases.columns if c.startswith("body_parts_")]
    rows: list[Row] = []
    n_cases = {"ungraded": 0, "other_condition": 0, "no_labels_row": 0}
    for rec in cases.to_dict("records"):
        cid = str(rec["case_id"])
        if cid not in lab_by_case:
            n_cases["no_labels_row"] += 1
            continue
        line, lab = lab_by_case[cid]
        cond = top_condition(lab["weighted_skin_condition_label"], labels_p, line)
        if cond is None:
            n_cases["ungraded"] += 1
            continue
        if cond not in CONDITIONS:
            n_cases["other_condition"] += 1
            continue
        derm = _median_fst([lab.get(f"dermatologist_fitzpatrick_skin_type_label_{k}") for k in (1, 2, 3)])
        self_fst = parse_fitzpatrick(rec["fitzpatrick_skin_type"])
        fst = derm if fitzpatrick_source == "dermatologist" else self_fst
        monk = lab.get("monk_skin_tone_label_us")
        meta = {
            "group": cid,
            "case_id": cid,
            "sex": parse_sex(rec["sex_at_birth"]),
            "age": None,
            "age_group": None if is_blank(rec["age_group"]) or rec["age_group"] == "AGE_UNKNOWN" else rec["age_group"],
            "fitzpatrick": fst,
            "fitzpatrick_group": fitzpatrick_group(fst),
            "fitzpatrick_self": self_fst,
            "fitzpatrick_dermatologist": derm,
            "monk": None if is_blank(monk) else int(float(monk)),
            "body_site": ",".join(c[len("body_parts_") :] for c in body_cols if str(rec.get(c)) == "YES") or None,
            "condition": cond,
        }
        for k in (1, 2, 3):
            rel = rec[f"image_{k}_path"]
            if is_blank(rel):
                continue
            rel = str(rel).strip()
            stem = Path(rel).stem
            path = base / rel
            image = path if path.is_file() else by_name.get(stem)
            rows.append(Row(id=stem, image=image, label=CONDITIONS.index(cond), meta=dict(meta, shot=k)))
    log.info("scin: %d cases kept; excluded %s", len({r.meta["group"] for r in rows}), n_cases)
    return build_dataset(
        INFO,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        grouped=True,
        expected_image=str(base / "dataset" / "images" / f"{rows[0].id}.png") if rows else "",
        what="images listed in scin_cases.csv (10 conditions)",
        split_file=split_file,
    )


@hookimpl
def register_datasets(register):
    register(INFO, load_scin)
