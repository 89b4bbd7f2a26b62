"""The public plugin SDK: everything a model, task or dataset plugin needs, and nothing else.

Plugins import only ``dermbench.api`` and ``dermbench.hookimpl`` from dermbench; every other module of the
core is internal and may change without notice (``tests/test_sdk_boundary.py`` enforces this for the
first-party plugins). The SDK holds the types (metadata records, the Backbone/Task/TaskContext protocols,
datasets), backbone base classes, dataset helpers, weights resolution, the metric API, registry look-ups
and the statistical defaults.

Everything here is importable without torch/numpy/pandas: plugin modules import this at registration time,
and `dermbench --help` / `dermbench list` must stay instant. Names that live in heavier core modules are
resolved on first access (module ``__getattr__``, see ``_LAZY``); heavy libraries are imported inside methods.
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

API_VERSION = "2"

#: what each API_VERSION added or changed; old names are never removed, only deprecated with a warning
API_CHANGES = {
    "1": "types: ModelInfo, TaskInfo, DatasetInfo, Preprocess, Backbone, Sample, Split, Dataset, TaskOutput, "
         "Task, TaskContext; DermbenchError, WeightsUnavailable; stable_hash",
    "2": "the SDK is the only way in: backbone base classes (BaseBackbone, TimmBackbone, create_timm, "
         "load_timm_weights), dataset helpers (Row, build_dataset, dataset_options, variant_loader, as_root, "
         "find_file, require_file, index_files, read_csv, parse_* ...), weights resolution (resolve_weights, "
         "HubSource, read_checkpoint, extract_state_dict, load_into, ...), the metric API (Prepared, Metric, "
         "linear_metric, get_metric, score, point, replicates, Resamples, paired_test ...), registry look-ups "
         "(dataset_info, load_dataset, task_info, run_task), parse_options, statistical defaults (N_BOOT, "
         "CI_METHOD, ALPHA, BOOTSTRAP_SEED), validation (info_problems, validate_info, validate_task_output), "
         "hooks register_report_sections and register_demo; "
         "iter_chunks deprecated (DeprecationWarning)",
}

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
            "options": ", ".join(f"{k}={v}" for k, v in self.defaults.items()) or "-",  # --task-opt NAME.key=value
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
    """Deprecated since API 2 (nothing used it): slice ``seq`` yourself."""
    import warnings

    warnings.warn("dermbench.api.iter_chunks is deprecated and will be removed; slice the sequence directly",
                  DeprecationWarning, stacklevel=2)
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


# --------------------------------------------------------------------------------------------------
# Statistical defaults (one place: dermbench/defaults.py)

from dermbench.defaults import ALPHA, BOOTSTRAP_SEED, CI_METHOD, CI_METHODS, N_BOOT  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Registry look-ups: what a plugin may ask of other plugins


def dataset_info(name: str) -> DatasetInfo:
    """The metadata of a registered dataset (``<dataset>:<view>`` views included); unknown names list the valid ones."""
    from dermbench import plugins

    return plugins.registry().dataset(name).info


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> Dataset:
    """Load a registered dataset outside a task cell (pretraining sources, probes). Inside a task use
    ``ctx.load_dataset(name)``, which applies the run's data root and options."""
    from dermbench import plugins

    return plugins.registry().dataset(name).obj(root, **options)


def task_info(name: str) -> TaskInfo:
    """The metadata of a registered task."""
    from dermbench import plugins

    return plugins.registry().task(name).info


def run_task(name: str, ctx: TaskContext, options: Mapping[str, Any] | None = None) -> TaskOutput:
    """Run another registered task in the current cell (a task built on a base task, e.g. fairness over probe).

    ``options`` are validated against the base task's ``TaskInfo.defaults`` like ``--task-opt`` values; one line
    through ``ctx.log`` names the task and the options that differ from its defaults."""
    from dermbench import plugins, runner

    entry = plugins.registry().task(name)
    why = entry.info.incompatibility(ctx.model_info, ctx.dataset.info)
    if why:
        raise DermbenchError(f"task {name!r} cannot run in this cell: {why}")
    params = runner.task_params(entry.info, dict(options or {}))
    changed = {k: v for k, v in params.items() if k not in entry.info.defaults or entry.info.defaults[k] != v}
    ctx.log(f"base task {name}: " + (f"defaults except {changed}" if changed else "its defaults"))
    return entry.obj(**params).run(ctx)


# --------------------------------------------------------------------------------------------------
# Validation: one clear error naming the plugin/task, the field and the fix


def _suggest(value: str, valid: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(value, valid, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _unknown(kind: str, field_name: str, given: Iterable[str], valid: Sequence[str], name: str) -> list[str]:
    return [f"{kind} {name!r}: {field_name} has unknown {v!r}; {_suggest(v, valid)}valid: {', '.join(valid)}"
            for v in sorted(set(given) - set(valid))]


def info_problems(info: Any) -> list[str]:
    """What is wrong with a ModelInfo/TaskInfo/DatasetInfo, one message per field (empty when valid).

    The registry refuses an info with problems (the plugin's other registrations go on), so a typo such as
    ``requires=("label",)`` fails at registration instead of silently making a task incompatible everywhere."""
    kind = type(info).__name__
    name = getattr(info, "name", None)
    if not isinstance(name, str) or not name.strip():
        return [f"{kind}.name must be a non-empty string, got {name!r}"]
    out: list[str] = []
    if isinstance(info, ModelInfo):
        if isinstance(info.embed_dim, bool) or not isinstance(info.embed_dim, int) or info.embed_dim <= 0:
            out.append(f"model {name!r}: embed_dim must be a positive int (the width of Backbone.embed), "
                       f"got {info.embed_dim!r}")
        if info.patch_size is not None and (not isinstance(info.patch_size, int) or info.patch_size <= 0):
            out.append(f"model {name!r}: patch_size must be a positive int or None, got {info.patch_size!r}")
        if not isinstance(info.preprocess, Preprocess):
            out.append(f"model {name!r}: preprocess must be a dermbench.api.Preprocess, "
                       f"got {type(info.preprocess).__name__}")
        out += _unknown("model", "capabilities", info.capabilities, CAPABILITIES, name)
    elif isinstance(info, TaskInfo):
        out += _unknown("task", "requires", info.requires, FIELDS, name)
        out += _unknown("task", "requires_any", info.requires_any, FIELDS, name)
        out += _unknown("task", "capabilities", info.capabilities, CAPABILITIES, name)
        if isinstance(info.metrics, str):
            out.append(f"task {name!r}: metrics must be a tuple of metric names, got the string {info.metrics!r}; "
                       f"write metrics=({info.metrics!r},)")
        elif info.primary_metric and info.metrics and info.primary_metric not in info.metrics:
            out.append(f"task {name!r}: primary_metric {info.primary_metric!r} is not in metrics "
                       f"{list(info.metrics)}; add it to metrics or pick one of them")
        if not isinstance(info.defaults, Mapping):
            out.append(f"task {name!r}: defaults must be a mapping option -> default, got {type(info.defaults).__name__}")
    elif isinstance(info, DatasetInfo):
        out += _unknown("dataset", "fields", info.fields, FIELDS, name)
    else:
        return [f"expected a ModelInfo, TaskInfo or DatasetInfo, got {kind}"]
    if not isinstance(info, TaskInfo):
        lic = getattr(info, "license", None)
        if not isinstance(lic, str) or not lic.strip():
            out.append(f"{kind.replace('Info', '').lower()} {name!r}: license is missing; declare the licence of "
                       "the weights/data (an SPDX id such as 'CC-BY-4.0', or 'unknown' when it truly is)")
    return out


def validate_info(info: Any) -> None:
    """Raise a DermbenchError listing every problem of a ModelInfo/TaskInfo/DatasetInfo (see info_problems)."""
    problems = info_problems(info)
    if problems:
        raise DermbenchError("; ".join(problems))


#: prediction keys that must be finite numbers for every sample (scored values, not group labels)
_FINITE_KEYS = ("y_true", "y_pred", "scores", "dice", "jaccard")


def validate_task_output(output: Any, task: str = "?") -> None:
    """Check what a task returned before it is scored: a TaskOutput whose ``metrics`` are known and whose
    ``predictions`` hold, for each metric, every key it needs with one finite entry per test sample.

    The runner calls this on every cell, so a malformed output is one error naming the task, the key and the
    fix (the cell fails, other cells go on), never a shape error deep in the bootstrap."""
    if not isinstance(output, TaskOutput):
        raise DermbenchError(f"task {task!r} returned {type(output).__name__}, expected dermbench.api.TaskOutput")
    preds = output.predictions
    if not isinstance(preds, dict):
        raise DermbenchError(f"task {task!r}: TaskOutput.predictions must be a dict of per-sample arrays, "
                             f"got {type(preds).__name__}")
    if not isinstance(output.split, Split):
        raise DermbenchError(f"task {task!r}: TaskOutput.split must be the Split the predictions are for "
                             f"(ctx.split('test')), got {type(output.split).__name__}")
    if isinstance(output.metrics, str) or not all(isinstance(m, str) for m in output.metrics):
        raise DermbenchError(f"task {task!r}: TaskOutput.metrics must be a list of metric names, "
                             f"got {output.metrics!r}")
    n = len(output.split)
    if "ids" not in preds:
        raise DermbenchError(f"task {task!r}: predictions have no 'ids'; add predictions['ids'] = split.ids")
    if len(preds["ids"]) != n:
        raise DermbenchError(f"task {task!r}: predictions['ids'] has {len(preds['ids'])} entries but the split "
                             f"{output.split.name!r} has {n} samples; return one prediction per sample of "
                             "TaskOutput.split (or return the subset split you scored)")
    from dermbench import stats

    import numpy as np

    for metric in output.metrics:
        try:
            needs = stats.get_metric(metric).needs
        except DermbenchError as e:
            raise DermbenchError(f"task {task!r}: {e}") from None
        for key in needs:
            if key not in preds:
                raise DermbenchError(f"task {task!r}: metric {metric!r} needs predictions[{key!r}], but the "
                                     f"predictions only have {sorted(preds)}; add it or drop the metric")
            value = preds[key]
            length = len(value) if hasattr(value, "__len__") and not isinstance(value, str) else None
            if length != n:
                raise DermbenchError(f"task {task!r}: predictions[{key!r}] has {length} entries but the split "
                                     f"{output.split.name!r} has {n} samples; return one entry per sample")
            if key not in _FINITE_KEYS and not metric.startswith("mean:"):
                continue  # group labels (NaN = unknown group), captions, ...: the metric's own business
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                continue  # non-numeric per-sample values (captions) are the metric's business
            bad = ~np.isfinite(arr).reshape(n, -1).all(axis=1) if n else np.zeros(0, bool)
            if bad.any():
                ids = [str(preds["ids"][i]) for i in np.flatnonzero(bad)[:5]]
                raise DermbenchError(f"task {task!r}: predictions[{key!r}] has NaN/inf for {int(bad.sum())} of {n} "
                                     f"samples (ids: {', '.join(ids)}); fix the model or task output upstream "
                                     "(e.g. check features and probe training) rather than dropping samples")


# --------------------------------------------------------------------------------------------------
# Metric API


def linear_metric(name: str, needs: tuple[str, ...], features: Callable[..., Any], finalize: Callable[..., Any],
                  *, integer_features: bool = False, **kw: Any) -> Any:
    """Define a metric that is a function of summed per-sample features (means, ratios, confusion counts).

    ``features(prepared, metric_name) -> (n, k)`` per-sample array (column 0 conventionally 1);
    ``finalize(prepared, S) -> (values (B,), classes_used (B,) or None)`` for S = W @ F, the weighted sums for
    B bootstrap weight vectors W. Bootstrap replicates and the jackknife (BCa) come for free. Return it from a
    ``register_metrics`` resolver. ``**kw`` go to :class:`Metric` (``higher_is_better``, ``description``).
    """
    from dermbench import stats

    make = getattr(stats, "linear_metric", None) or stats._linear_metric
    return make(name, needs, features, finalize, integer_features=integer_features, **kw)


# --------------------------------------------------------------------------------------------------
# Names re-exported lazily from internal modules (resolved on first access; internal modules may import
# numpy/torch/pandas, the SDK itself must not). "name": "module" or "module:attribute".

_LAZY: dict[str, str] = {
    # backbone base classes
    **dict.fromkeys(("BaseBackbone", "TimmBackbone", "create_timm", "load_timm_weights", "timm_filter"),
                    "dermbench.backbones"),
    # dataset helpers: files on disk, tables, rows -> Dataset, per-variant registration, options
    **dict.fromkeys(("IMAGE_EXTS", "Row", "as_root", "bad_value", "build_dataset", "dataset_options",
                     "describe_dir", "files_fingerprint", "find_file", "fitzpatrick_group", "image_size",
                     "index_files", "is_blank", "map_labels", "opt_bool", "parse_age", "parse_fitzpatrick",
                     "parse_sex", "read_csv", "require_columns", "require_file", "variant_loader"),
                    "dermbench.datasets_common"),
    "dataset_log": "dermbench.datasets_common:log",
    # split helpers
    **dict.fromkeys(("official_split", "seeded_split"), "dermbench.splits"),
    # weights resolution and checkpoint surgery
    **dict.fromkeys(("HubSource", "ResolvedWeights", "cache_dir", "dinov2_backbone_state_dict", "env_var_for",
                     "extract_state_dict", "file_sha256", "hub_offline", "load_into", "read_checkpoint",
                     "resolve_weights", "select_prefix", "strip_prefixes"), "dermbench.weights"),
    # metric API: prepared predictions, metric objects, scoring, resampling, paired tests
    **dict.fromkeys(("Prepared", "Metric", "METRICS", "ECE_BINS", "UndefinedMetric", "Resamples", "Scored", "bootstrap_indices",
                     "confidence_interval", "correct", "evaluate", "get_metric", "jackknife", "paired_from_replicates",
                     "paired_test", "point", "prepare", "replicates", "resamples_for", "score",
                     "bca_edge", "pool_seeds", "projection_gap_interval", "projection_worst_interval",
                     "simultaneous_intervals"), "dermbench.stats"),
    # key=value option parsing, as the CLI does it (typed values: 1 -> int, 0.5 -> float, a,b -> list)
    "parse_options": "dermbench.cli:parse_kv",
    # progress lines with rate and ETA when stdout is not a terminal (logs, CI)
    **dict.fromkeys(("LineProgress", "is_terminal"), "dermbench.progress"),
}

# clinical generalisation (issue 18): diagnosis vocabulary, dataset views, operating points, near-duplicate audit
_LAZY.update({
    "DatasetVocabulary": "dermbench.vocabulary",
    "VOCABULARY_TERMS": "dermbench.vocabulary:TERMS", "MALIGNANCY_AXIS": "dermbench.vocabulary:AXIS",
    "vocabulary_mapping": "dermbench.vocabulary:mapping_for",
    "register_vocabulary": "dermbench.vocabulary:register_mapping",
    **dict.fromkeys(("apply_view", "view_labels", "VIEWS"), "dermbench.views"),
    **dict.fromkeys(("OP_METRICS", "OP_CURVE_METRICS", "operating_point_names", "THRESHOLD_RULES",
                     "operating_point_metric", "choose_threshold", "out_of_fold",
                     "add_operating_points", "net_benefit", "decision_curve_plot"), "dermbench.operating_points"),
    **dict.fromkeys(("phash", "thumbnail", "hamming", "phash_images", "near_duplicates", "hamming_pairs"),
                    "dermbench.audit"),
})


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'dermbench.api' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
