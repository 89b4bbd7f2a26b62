"""Public types of the plugin contract: metadata records, the Backbone and Task protocols, datasets.

Everything here is importable without torch: plugin modules import this at registration time, and
`dermbench --help` / `dermbench list` must stay instant. Heavy libraries are imported inside methods.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

API_VERSION = "1"

#: capabilities a model may declare
CAPABILITIES = ("cls", "patch_tokens", "text")
#: fields a dataset may declare (and a task may require)
FIELDS = ("labels", "masks", "captions", "fitzpatrick", "monk", "sex", "age", "site", "groups")


class DermbenchError(Exception):
    """An error meant for the user: the message names the file/column/value and the fix."""


class WeightsUnavailable(DermbenchError):
    """Weights could not be found locally and the hub is unreachable or gated."""


# --------------------------------------------------------------------------------------------------
# Preprocessing as data


@dataclass(frozen=True)
class Preprocess:
    """A model's own eval preprocessing, described as data so that it can be hashed into cache keys.

    ``resize`` is the shorter-side resize before the centre crop (None: resize straight to ``crop``);
    ``resize_mode='squash'`` resizes both sides to ``crop`` without keeping the aspect ratio (SigLIP).
    """

    crop: int = 224
    resize: int | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    resize_mode: str = "shorter"  # shorter | squash
    note: str = ""

    def key(self) -> str:
        d = asdict(self)
        d.pop("note")
        return json.dumps(d, sort_keys=True)

    def build(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        from torchvision import transforms as T

        interp = getattr(T.InterpolationMode, self.interpolation.upper())
        ops: list[Any] = [T.Lambda(_to_rgb)]
        if self.resize_mode == "squash":
            ops.append(T.Resize((self.crop, self.crop), interpolation=interp))
        else:
            ops.append(T.Resize(self.resize or self.crop, interpolation=interp))
            ops.append(T.CenterCrop(self.crop))
        ops += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(ops)


def _to_rgb(img: "Image.Image") -> "Image.Image":
    return img if img.mode == "RGB" else img.convert("RGB")


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
OPENAI_CLIP = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))


# --------------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True)
class ModelInfo:
    """Everything the core and the leaderboard need to know about a backbone, declared, never guessed."""

    name: str
    family: str
    source: str  # timm | open_clip | hf | torchvision | custom
    embed_dim: int
    preprocess: Preprocess
    patch_size: int | None = None
    capabilities: frozenset[str] = frozenset({"cls"})
    weights: tuple[str, ...] = ()  # hub ids / urls / file names, in order of preference
    license: str = "unknown"
    commercial_use: bool = False
    trained_on: tuple[str, ...] = ()  # dataset names (dermbench names where they exist)
    citation: str = ""
    description: str = ""
    embed_note: str = ""  # which feature `embed` returns (CLS, pooled, ...) and why
    weights_env: str = ""  # DERMBENCH_WEIGHTS_<NAME>, filled in by the registry when empty
    random_init: bool = False  # a baseline that never has trained weights

    @property
    def image_size(self) -> int:
        return self.preprocess.crop

    def as_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "source": self.source,
            "dim": self.embed_dim,
            "patch": self.patch_size or "-",
            "size": self.image_size,
            "caps": ",".join(sorted(self.capabilities)),
            "license": self.license,
            "commercial": "yes" if self.commercial_use else "no",
            "trained_on": ",".join(self.trained_on) or "-",
        }


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset (one task variant of it). ``fields`` says what samples carry; tasks check it."""

    name: str
    description: str = ""
    fields: frozenset[str] = frozenset({"labels"})
    label_names: tuple[str, ...] = ()
    license: str = "unknown"
    commercial_use: bool = False
    citation: str = ""
    how_to_obtain: str = ""
    needs_root: bool = True  # False for embedded datasets (dermsynth)
    official_split: bool = False
    aliases: tuple[str, ...] = ()  # other dataset names meaning the same data (for train/test overlap flags)

    def as_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": len(self.label_names) or "-",
            "fields": ",".join(sorted(self.fields)),
            "license": self.license,
            "commercial": "yes" if self.commercial_use else "no",
            "split": "official" if self.official_split else "seeded 50/50",
        }


@dataclass(frozen=True)
class TaskInfo:
    """A protocol. ``requires`` are dataset fields, ``capabilities`` model capabilities it needs."""

    name: str
    description: str = ""
    requires: frozenset[str] = frozenset({"labels"})
    capabilities: frozenset[str] = frozenset({"cls"})
    requires_any: frozenset[str] = frozenset()  # at least one of these dataset fields (e.g. sensitive attributes)
    metrics: tuple[str, ...] = ()
    primary_metric: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    available: bool = True
    unavailable_reason: str = ""
    in_all: bool = True  # False: `--task all` leaves it out (expensive protocols such as end-to-end fine-tuning)
    #: declarative checks of task options, applied by the runner before any work: ``{"epochs": (1, None)}`` is an
    #: inclusive numeric range (None: unbounded; list-valued options are checked element-wise),
    #: ``{"solver": frozenset({"sgd", "adam"})}`` a set of allowed values. Types always follow ``defaults``.
    option_ranges: Mapping[str, Any] = field(default_factory=dict)
    #: named protocol presets (``--protocol NAME``): option overrides applied over ``defaults`` (user
    #: ``--task-opt`` values win), e.g. ``{"dermino": {"solver": "adam"}}``. "default" means no override.
    protocols: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "needs": ",".join(sorted(self.requires)) or "-",
            "model caps": ",".join(sorted(self.capabilities)) or "-",
            "metrics": ",".join(self.metrics),
            "available": "yes" if self.available else f"no: {self.unavailable_reason}",
        }

    def incompatibility(self, model: ModelInfo | None, dataset: DatasetInfo | None) -> str | None:
        """Why this task cannot run on (model, dataset), or None when it can."""
        if not self.available:
            return f"task {self.name!r} unavailable: {self.unavailable_reason}"
        if dataset is not None:
            missing = set(self.requires) - set(dataset.fields)
            if missing:
                return f"dataset {dataset.name!r} has no {', '.join(sorted(missing))} (task {self.name!r} needs them)"
            if self.requires_any and not set(self.requires_any) & set(dataset.fields):
                return (f"dataset {dataset.name!r} has none of {', '.join(sorted(self.requires_any))} "
                        f"(task {self.name!r} needs at least one)")
        if model is not None:
            missing = set(self.capabilities) - set(model.capabilities)
            if missing:
                return f"model {model.name!r} lacks {', '.join(sorted(missing))} (task {self.name!r} needs them)"
        return None


# --------------------------------------------------------------------------------------------------
# Backbone


@runtime_checkable
class Backbone(Protocol):
    """A frozen feature extractor. It never knows which task uses it.

    ``embed`` returns the feature its authors use for probing (documented in ``info.embed_note``);
    ``patch_tokens`` returns one (N, D, h, w) map per requested block index (0-based, negative allowed).
    """

    info: ModelInfo
    weights_id: str  # content hash of the weights, or "random:<seed>" for random init
    transform: Callable[["Image.Image"], "torch.Tensor"]

    def embed(self, images: "torch.Tensor") -> "torch.Tensor": ...

    def patch_tokens(self, images: "torch.Tensor", layers: Sequence[int]) -> list["torch.Tensor"]: ...

    def to(self, device: str) -> "Backbone": ...


# --------------------------------------------------------------------------------------------------
# Datasets


@dataclass
class Sample:
    """One image with whatever annotations the dataset has. Images and masks load lazily."""

    id: str
    image: str | Path | Callable[[], "Image.Image"]
    label: int | None = None
    mask: str | Path | Callable[[], "np.ndarray"] | None = None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # fitzpatrick, sex, age, site, group (patient/lesion)

    def load_image(self) -> "Image.Image":
        from PIL import Image

        if callable(self.image):
            return self.image()
        try:
            with Image.open(self.image) as im:
                im.load()
                return im.convert("RGB")
        except FileNotFoundError:
            raise DermbenchError(f"image file missing: {self.image} (sample {self.id})") from None
        except Exception as e:  # PIL raises several types for corrupt files
            raise DermbenchError(
                f"cannot read image {self.image} (sample {self.id}): {e}. "
                "Re-download the file or pass --skip-bad-images to skip unreadable images."
            ) from e

    def load_mask(self) -> "np.ndarray":
        """Binary mask as a bool (H, W) array; 0/1 and 0/255 masks are accepted, anything else refused."""
        import numpy as np
        from PIL import Image

        if self.mask is None:
            raise DermbenchError(f"sample {self.id} has no mask")
        if callable(self.mask):
            arr = np.asarray(self.mask())
        else:
            with Image.open(self.mask) as im:
                arr = np.asarray(im.convert("L") if im.mode not in ("1", "L") else im)
        vals = np.unique(arr)
        if arr.dtype == bool or set(vals.tolist()) <= {0, 1}:
            return arr.astype(bool)
        if set(vals.tolist()) <= {0, 255}:
            return arr == 255
        raise DermbenchError(
            f"mask {self.mask if not callable(self.mask) else self.id} has values {vals[:8].tolist()}; "
            "expected {0,1} or {0,255}. Binarise it (e.g. mask > 127) before use."
        )


@dataclass(frozen=True)
class Split:
    """A named subset of a dataset. ``hash`` identifies its content and drives paired bootstrap indices."""

    dataset: "Dataset"
    name: str
    indices: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def samples(self) -> list[Sample]:
        return [self.dataset.samples[i] for i in self.indices]

    @property
    def labels(self) -> "np.ndarray":
        import numpy as np

        return np.array([self.dataset.samples[i].label for i in self.indices], dtype=np.int64)

    @property
    def ids(self) -> list[str]:
        return [self.dataset.samples[i].id for i in self.indices]

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.dataset.name}\0{self.name}\0".encode())
        for s in self.samples:
            h.update(f"{s.id}\0{s.label}\n".encode())
        h.update(self.dataset.content_fingerprint.encode())
        return h.hexdigest()[:16]


@dataclass
class Dataset:
    """What a dataset loader returns: samples plus named splits (index lists into ``samples``).

    ``split_source`` records where the split came from ("official", "seeded-stratified-50/50 seed=0", ...).
    ``content_fingerprint`` lets generated datasets (dermsynth) make their config part of split hashes.
    ``skipped`` counts entries whose files were absent (metadata complete, image folder partial).
    """

    info: DatasetInfo
    samples: list[Sample]
    splits: dict[str, list[int]]
    label_names: list[str] = field(default_factory=list)
    split_source: str = ""
    content_fingerprint: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    root: str | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DermbenchError(
                f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}"
            )
        return Split(self, name, tuple(self.splits[name]))

    def __len__(self) -> int:
        return len(self.samples)


DatasetLoader = Callable[..., Dataset]  # loader(root, **opts) -> Dataset
ModelLoader = Callable[..., Backbone]  # loader(weights=None, device="cpu", **opts) -> Backbone


# --------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class TaskOutput:
    """What a task returns: per-sample predictions and the metric names to score them with.

    ``predictions`` always has ``ids``; classification adds ``y_true`` (n,), ``scores`` (n, C) and
    ``y_pred`` (n,); per-sample metrics (Dice, caption scores) add one (n,) array each. The runner
    scores them through ``dermbench.stats`` with bootstrap indices drawn from (split hash, seed).
    ``extra`` holds JSON-able task-specific results (curves, per-site numbers); ``artifacts`` files
    written next to the result record.
    """

    predictions: dict[str, Any]
    metrics: list[str]
    split: Split
    extra: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    strata: Any = None  # optional (n,) array for stratified resampling


class Task(Protocol):
    """A task is constructed with its parameters and run once per (model, dataset, seed) cell."""

    info: TaskInfo

    def __init__(self, **params: Any) -> None: ...

    def run(self, ctx: "Any") -> TaskOutput: ...


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class TaskContext(Protocol):
    """What the runner hands a task for one (model, dataset, seed) cell.

    Features come from the content-addressed store: each (model, dataset, split, layers) goes through
    the backbone once per cache, whatever the number of tasks. Only ask for the backbone itself when a
    task truly needs raw forward passes (fine-tuning); that bypasses the cache.
    """

    model_info: ModelInfo
    dataset: Dataset
    seed: int
    device: str
    params: dict[str, Any]  # task parameters after defaults (recorded in the result's config)
    out_dir: Path  # per-cell directory for artifacts (overlays, plots); created on demand
    ci: str  # CI method of the run (percentile | bca | paper)
    n_boot: int  # bootstrap replicates of the run, for CIs a task computes itself (secondary numbers in extra)

    def split(self, name: str) -> Split: ...

    def load_dataset(self, name: str) -> Dataset: ...  # another registered dataset with the run's root/options

    def features(self, split: Split) -> "np.ndarray": ...  # (n, D) float32, from Backbone.embed

    def patch_features(self, split: Split, layers: Sequence[int]) -> list["np.ndarray"]: ...  # [(n, D, h, w)] float16

    def backbone(self) -> Backbone: ...

    def progress(self, description: str, total: int | None = None) -> Any: ...  # rich-progress context manager

    def log(self, message: str) -> None: ...
