"""MED-Node (Giotis et al. 2015): 70 melanoma and 100 naevus clinical images, one folder per class.

Layout as downloaded: ``complete_mednode_dataset/melanoma/*.jpg`` and ``complete_mednode_dataset/naevus/*.jpg``;
the label is the parent folder. No official split: seeded stratified 50/50.
"""

from __future__ import annotations

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
    find_file,
    index_files,
)

CLASSES = ("naevus", "melanoma")
LAYOUT = "complete_mednode_dataset/melanoma/*.jpg and complete_mednode_dataset/naevus/*.jpg"
HOW_TO = (
    "Download complete_mednode_dataset.zip from https://www.cs.rug.nl/~imaging/databases/melanoma_naevi/, unzip it "
    f"and pass the folder as --data-root. Expected layout: {LAYOUT}."
)
INFO = DatasetInfo(
    name="mednode",
    description="MED-Node clinical images, melanoma vs naevus",
    fields=frozenset({"labels"}),
    label_names=CLASSES,
    license="research use (University of Groningen); no licence file",
    commercial_use=False,
    citation="I. Giotis, N. Molders, S. Land, M. Biehl, M. F. Jonkman, N. Petkov, 'MED-NODE: A computer-assisted "
    "melanoma diagnosis system using non-dermoscopic images', Expert Systems with Applications 42 (2015) 6578-6585.",
    how_to_obtain=HOW_TO,
    aliases=("mednode",),
)


@dataset_options
def load_mednode(
    root: Any, *, split_seed: int = 0, skip_bad_images: bool = False, split_file: str | None = None, **_: Any
) -> Dataset:
    """MED-Node, melanoma (1) vs naevus (0)."""
    root = as_root(root, INFO.name, HOW_TO)
    mel = find_file(root, ["melanoma"], want_dir=True)
    nev = find_file(root, ["naevus", "nevus"], want_dir=True)
    if mel is None or nev is None:
        raise DermbenchError(
            f"mednode: cannot find the melanoma/ and naevus/ folders under {root}. Expected layout: {LAYOUT}. "
            f"Found in {root}: {describe_dir(root)}"
        )
    rows = []
    for label, folder in enumerate((nev, mel)):
        for stem, path in sorted(index_files(folder, IMAGE_EXTS).items()):
            rows.append(Row(id=f"{CLASSES[label]}/{stem}", image=path, label=label, meta={"fitzpatrick": None}))
    return build_dataset(
        INFO,
        rows,
        root=root,
        split_seed=split_seed,
        skip_bad_images=skip_bad_images,
        expected_image=str(mel / "<image>.jpg"),
        what="images",
        split_file=split_file,
    )


@hookimpl
def register_datasets(register):
    register(INFO, load_mednode)
