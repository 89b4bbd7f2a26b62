"""DermaMNIST (MedMNIST v2; HAM10000 resized): 7 classes from a ``.npz`` file, official train/val/test.

Read with ``numpy.load`` directly: keys ``{train,val,test}_images`` (uint8, (N, H, W, 3) or (N, H, W)) and
``{train,val,test}_labels`` ((N, 1) or (N,)). Any image size and any N are accepted: unlike medmnist's own
class, there is no assertion on the official sample counts, so subsets and ``dermamnist_{64,128,224}.npz`` work.
Images stay in the file and are decoded per sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError
from dermbench.api import Row, as_root, build_dataset, dataset_options, describe_dir, find_file

CLASSES = (
    "actinic keratoses and intraepithelial carcinoma",
    "basal cell carcinoma",
    "benign keratosis-like lesions",
    "dermatofibroma",
    "melanoma",
    "melanocytic nevi",
    "vascular lesions",
)
HOW_TO = (
    "Download dermamnist.npz (28 px) or dermamnist_{64,128,224}.npz from MedMNIST (https://medmnist.com, Zenodo "
    "doi:10.5281/zenodo.10519652) into a folder and pass it as --data-root (--dataset-opt size=224 picks a size)."
)
INFO = DatasetInfo(
    name="dermamnist",
    description="DermaMNIST (HAM10000 at 28-224 px), 7 classes, official train/val/test",
    fields=frozenset({"labels"}),
    label_names=CLASSES,
    license="CC BY-NC 4.0",
    commercial_use=False,
    citation="J. Yang et al., 'MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image "
    "classification', Scientific Data 10, 41 (2023); P. Tschandl et al., Sci. Data 5, 180161 (2018).",
    how_to_obtain=HOW_TO,
    official_split=True,
    aliases=("dermamnist", "ham10000"),
)

_ARRAYS: dict[tuple[str, str], Any] = {}


class NpzImage:
    """A picklable lazy image: (npz file, key, index) -> PIL image; arrays are cached per process."""

    def __init__(self, path: str, key: str, index: int) -> None:
        self.path, self.key, self.index = path, key, index

    def __call__(self):
        import numpy as np
        from PIL import Image

        k = (self.path, self.key)
        if k not in _ARRAYS:
            with np.load(self.path) as z:
                _ARRAYS[k] = z[self.key]
        arr = _ARRAYS[k][self.index]
        return Image.fromarray(arr).convert("RGB")

    def __repr__(self) -> str:
        return f"{Path(self.path).name}[{self.key}][{self.index}]"


@dataset_options
def load_dermamnist(
    root: Any, *, size: Any = None, skip_bad_images: bool = False, split_seed: int = 0, **_: Any
) -> Dataset:
    """DermaMNIST from ``dermamnist.npz`` / ``dermamnist_<size>.npz``; official splits."""
    import numpy as np

    root = as_root(root, INFO.name, HOW_TO)
    if size in (None, ""):
        names = ["dermamnist.npz", "dermamnist_28.npz", "dermamnist_64.npz", "dermamnist_128.npz", "dermamnist_224.npz"]
    else:
        s = str(size).strip()
        names = ["dermamnist.npz", "dermamnist_28.npz"] if s == "28" else [f"dermamnist_{s}.npz"]
    path = find_file(root, names)
    if path is None:
        raise DermbenchError(
            f"dermamnist: cannot find {' or '.join(names)} under {root}. Found: {describe_dir(root)}. {HOW_TO}"
        )
    try:
        z = np.load(path)
    except Exception as e:
        raise DermbenchError(f"dermamnist: cannot read {path} as a .npz archive: {e}") from None
    rows = []
    with z:
        parts = [p for p in ("train", "val", "test") if f"{p}_images" in z.files]
        if not parts:
            raise DermbenchError(
                f"dermamnist: {path} has keys {z.files}; expected train_images/train_labels, val_..., test_..."
            )
        shape = None
        for part in parts:
            if f"{part}_labels" not in z.files:
                raise DermbenchError(f"dermamnist: {path} has {part}_images but no {part}_labels; keys: {z.files}")
            imgs, labels = z[f"{part}_images"], np.asarray(z[f"{part}_labels"]).reshape(-1)
            if imgs.ndim not in (3, 4) or imgs.dtype != np.uint8 or len(imgs) != len(labels):
                raise DermbenchError(
                    f"dermamnist: {path}: {part}_images is {imgs.dtype}{tuple(imgs.shape)} with {len(labels)} labels; "
                    "expected uint8 (N, H, W[, 3]) and N labels"
                )
            shape = imgs.shape[1:]
            for i, y in enumerate(labels.tolist()):
                if y not in range(len(CLASSES)):
                    raise DermbenchError(f"dermamnist: {path}: {part}_labels[{i}] = {y} is not a class index 0-6")
                rows.append(
                    Row(
                        id=f"{part}/{i}",
                        image=NpzImage(str(path), f"{part}_images", i),  # type: ignore[arg-type]
                        label=int(y),
                        split=part,
                        meta={"fitzpatrick": None},
                    )
                )
    ds = build_dataset(
        INFO,
        rows,
        root=root,
        skip_bad_images=False,
        split_seed=split_seed,
        official=f"{path.name} keys {', '.join(parts)}",
        what=f"arrays in {path.name}",
    )
    # same ids at another size are different pixels: keep their features and split hashes apart
    ds.content_fingerprint = f"{path.name}:{path.stat().st_size}:{shape}"
    return ds


@hookimpl
def register_datasets(register):
    register(INFO, load_dermamnist)
