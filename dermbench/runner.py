"""Plan cells (model x task x dataset), skip the done ones, run the rest, score and record them.

One failing cell (missing weights, a bad file) is recorded and reported; the others go on, and nothing
already computed is lost: records and cache entries are written atomically as soon as they exist.

Every option is validated before any work (unknown keys list the valid ones; types follow the task's
``defaults``; ranges come from ``TaskInfo.option_ranges``). A stored record is reused only when its whole
identity matches the cell (model, task, dataset, seed, config hash, split hash); a malformed one is moved
aside and recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from dermbench import defaults, plugins
from dermbench.api import Backbone, Dataset, DermbenchError, ModelInfo, Split, TaskInfo, TaskOutput, stable_hash
from dermbench.features import FeatureStore
from dermbench.results import (
    ResultRecord,
    artifacts_dir,
    atomic_write_text,
    cell_dir,
    check_name,
    move_aside,
    plugin_provenance,
    provenance,
    read_record,
    record_path,
    write_record,
)

OVERWRITE = ("never", "missing", "always")
DEFAULT_PROTOCOL = "default"


@dataclass
class Cell:
    model: str
    task: str
    dataset: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.model} × {self.task} × {self.dataset} (seed {self.seed})"


@dataclass
class Plan:
    cells: list[Cell] = field(default_factory=list)
    skipped: list[tuple[Cell, str]] = field(default_factory=list)  # incompatible, with the reason
    notes: list[str] = field(default_factory=list)  # one-line facts about the plan (e.g. a variant routing)


@dataclass
class RunSummary:
    done: list[tuple[Cell, Path]] = field(default_factory=list)
    reused: list[tuple[Cell, Path]] = field(default_factory=list)
    skipped: list[tuple[Cell, str]] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    repaired: list[tuple[Cell, str]] = field(default_factory=list)  # bad records moved aside (recomputed)
    backbone_loads: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)  # model -> its loader's message (said once, up front)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class RunOptions:
    out: Path = Path("results")
    data_root: Path | None = None  # every dataset's root
    data_roots: dict[str, Path] = field(default_factory=dict)  # dataset -> root (wins over data_root)
    seeds: Sequence[int] = (0,)
    device: str = "cpu"
    overwrite: str = "missing"
    task_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> params
    dataset_opts: dict[str, Any] = field(default_factory=dict)  # key (all datasets) or "dataset.key"
    model_opts: dict[str, Any] = field(default_factory=dict)  # key (all models) or "model.key"
    weights: dict[str, str] = field(default_factory=dict)  # model -> path
    cache_dir: Path | None = None
    batch_size: int = 32
    n_boot: int = defaults.N_BOOT
    ci: str = defaults.CI_METHOD
    split_seed: int = 0
    commercial_only: bool = False
    skip_bad_images: bool = False
    shard: tuple[int, int] | None = None  # (i, n), 1-based i
    protocol: str = DEFAULT_PROTOCOL
    extract_only: bool = False  # fill the feature cache only; with shard: this shard's rows of every split
    extract_workers: int | None = None  # DataLoader decode workers (None: threads on CPU, free cores on CUDA)
    amp: str | None = None  # bf16 | fp16 autocast during extraction (changes features: keyed and hashed)
    channels_last: bool = False  # channels-last input layout during extraction (keyed and hashed)
    run_file: dict[str, str] | None = None  # {"path", "sha256"} of --config (provenance only, never hashed)

    def root_for(self, dataset: str) -> Path | None:
        # a view <dataset>:<view> (dermbench.views) reads its base dataset's files
        base = dataset.split(":", 1)[0]
        # a task variant (ph2-seg) reads its main dataset's folder when only that one was given (--data-root ph2=)
        variant_of = next((k for k in self.data_roots if base.startswith(k + "-")), None)
        root = self.data_roots.get(dataset, self.data_roots.get(base, self.data_roots.get(variant_of or "", self.data_root)))
        return None if root is None else Path(root)


def split_names(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def plan(models: Sequence[str], tasks: Sequence[str], datasets: Sequence[str], seeds: Sequence[int] = (0,),
         commercial_only: bool = False) -> Plan:
    """Resolve names (unknown ones raise with the valid list) and keep the compatible cells."""
    for what, names in (("model", models), ("task", tasks), ("dataset", datasets)):
        if not names:
            raise DermbenchError(f"no {what} given: pass --{what} NAME (see `dermbench list {what}s`)")
        for n in names:
            check_name(n, what)
    if not seeds:
        raise DermbenchError("no seed given: pass --seed N (or several, comma-separated)")
    reg = plugins.registry()
    model_infos = [reg.model(m).info for m in models]
    dataset_infos = [reg.dataset(d).info for d in datasets]
    p = Plan()
    if list(tasks) == ["all"]:
        task_names = [t for t in sorted(reg.tasks) if reg.tasks[t].info.in_all]
        left_out = [t for t in sorted(reg.tasks) if not reg.tasks[t].info.in_all]
        for mi in model_infos:
            for di in dataset_infos:
                for t in left_out:
                    p.skipped.append((Cell(mi.name, t, di.name, seeds[0]),
                                      f"task {t!r} is not part of --task all (expensive): name it explicitly"))
    else:
        task_names = list(tasks)
    # patch-token tasks first: the feature store then fills the pooled embeddings from the same pass
    task_infos = sorted((reg.task(t).info for t in task_names), key=lambda ti: "patch_tokens" not in ti.capabilities)
    for mi in model_infos:
        for di in dataset_infos:
            for ti in task_infos:
                for seed in seeds:
                    cell = Cell(mi.name, ti.name, di.name, seed)
                    if commercial_only and not mi.commercial_use:
                        p.skipped.append((cell, f"model {mi.name!r} is not licensed for commercial use ({mi.license})"))
                        continue
                    if commercial_only and not di.commercial_use:
                        p.skipped.append((cell, f"dataset {di.name!r} is not licensed for commercial use ({di.license})"))
                        continue
                    why = ti.incompatibility(mi, di)
                    variant = _task_variant(ti, mi, di, datasets) if why else None
                    if variant:
                        note = (f"{ti.name} on {di.name!r} runs on its variant {variant!r} "
                                f"(the one that carries {', '.join(sorted(set(ti.requires) - set(di.fields)))})")
                        if note not in p.notes:
                            p.notes.append(note)
                        p.cells.append(Cell(mi.name, ti.name, variant, seed))
                    elif why:
                        p.skipped.append((cell, why))
                    else:
                        p.cells.append(cell)
    return p


def _task_variant(ti: TaskInfo, mi: ModelInfo, di: Any, datasets: Sequence[str]) -> str | None:
    """The registered variant ``<dataset>-<suffix>`` that has the fields a task misses on ``di`` (PH2's masks
    are in ``ph2-seg``), when exactly one exists and the user did not name it in the run already."""
    reg = plugins.registry()
    if not set(ti.requires) - set(di.fields) and not ti.requires_any:
        return None
    found = [n for n in sorted(reg.datasets) if n.startswith(di.name + "-")
             and ti.incompatibility(mi, reg.datasets[n].info) is None]
    return found[0] if len(found) == 1 and found[0] not in datasets else None


def summarize_skips(skipped: Sequence[tuple[Cell, str]]) -> list[str]:
    """One line per reason: the reason with the cell's own names abstracted, then the cells it covers."""
    groups: dict[str, list[Cell]] = {}
    for cell, why in skipped:
        key = (why.replace(f"'{cell.task}'", "<task>").replace(f"'{cell.model}'", "<model>")
               .replace(f"'{cell.dataset}'", "<dataset>"))
        groups.setdefault(key, []).append(cell)
    pairs = {(c.model, c.dataset) for cells in groups.values() for c in cells}
    if len(pairs) == 1 and len(groups) > 1:  # one model on one dataset (`--task all`): the left-out tasks in one line
        (m, d), = pairs
        def short(key: str) -> str:
            for tail in (" (task <task> needs them)", " (task <task> needs at least one)"):
                key = key.replace(tail, "")
            key = key.replace("task <task> is not part of --task all (expensive): name it explicitly",
                              "not in --task all (expensive: name them with --task)")
            return key.replace("<model>", m).replace("<dataset>", d)

        return [f"skip {sum(len(v) for v in groups.values())} task(s) of {m} on {d}: " + "; ".join(
            f"{', '.join(dict.fromkeys(c.task for c in cells))} — {short(key)}" for key, cells in groups.items())]
    lines = []
    for key, cells in groups.items():
        axes = [list(dict.fromkeys(getattr(c, a) for c in cells)) for a in ("model", "task", "dataset")]
        if len({(c.model, c.task, c.dataset) for c in cells}) == len(axes[0]) * len(axes[1]) * len(axes[2]):
            what = " × ".join(v[0] if len(v) == 1 else "{" + ", ".join(v) + "}" for v in axes)
        else:
            what = ", ".join(dict.fromkeys(f"{c.model}×{c.task}×{c.dataset}" for c in cells))
        lines.append(f"skip {len(cells)} cell(s): {what} — {key}")
    return lines


THROUGHPUT_FILE = "throughput.json"


def record_throughput(cache_root: Path, model: str, device: str, images_per_s: float) -> None:
    """Keep the latest measured extraction rate of ``model`` on ``device`` (a best effort: never fails a run)."""
    path = Path(cache_root) / THROUGHPUT_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    data[f"{model}@{str(device).split(':')[0]}"] = {"images_per_s": round(images_per_s, 2), "time": time.time()}
    try:
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except (OSError, DermbenchError):
        pass


TASK_TIMES_FILE = "task_times.json"


def record_task_time(cache_root: Path, task: str, dataset: str, device: str, seconds: float) -> None:
    """Keep the last 9 measured durations of ``task`` on ``dataset`` (feature extraction excluded) for dry runs."""
    path = Path(cache_root) / TASK_TIMES_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        key = f"{task}|{dataset}@{str(device).split(':')[0]}"
        data[key] = [*[float(v) for v in data.get(key, [])][-8:], round(float(seconds), 3)]
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except (OSError, ValueError, TypeError, AttributeError, DermbenchError):
        pass


def read_task_time(cache_root: Path, task: str, dataset: str, device: str) -> float | None:
    """Median measured duration of ``task`` on ``dataset`` on this device kind, else on any dataset, else None."""
    import statistics

    try:
        data = json.loads((Path(cache_root) / TASK_TIMES_FILE).read_text())
        dev = str(device).split(":")[0]
        same = data.get(f"{task}|{dataset}@{dev}")
        if same:
            return float(statistics.median(same))
        other = [float(v) for k, vs in data.items() if k.startswith(f"{task}|") and k.endswith(f"@{dev}") for v in vs]
        return float(statistics.median(other)) if other else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def read_throughput(cache_root: Path) -> dict[str, float]:
    try:
        data = json.loads((Path(cache_root) / THROUGHPUT_FILE).read_text())
        return {k: float(v["images_per_s"]) for k, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """A deterministic 1/n of the cells: by a stable hash of the cell, so shards stay balanced and fixed."""
    if shard is None:
        return cells
    i, n = shard
    return [c for c in cells if int(stable_hash([c.model, c.task, c.dataset, c.seed], 8), 16) % n == i - 1]


# --------------------------------------------------------------------------------------------------
# Options: one model for task, model and dataset options


def coerce_option(owner: str, key: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` (command-line strings arrive as str/int/float/bool), or a
    DermbenchError naming the option, the value and the expected type. A None default accepts anything."""
    if default is None or value is None:
        return value
    what = f"{owner} option {key}={value!r}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).strip().lower() in ("0", "false", "no", "off"):
            return False
        raise DermbenchError(f"{what} is not a boolean (use true or false)")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise DermbenchError(f"{what} is not an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            if isinstance(value, (list, tuple)):  # list-valued integer options (e.g. shots=1,5,10)
                return [coerce_option(owner, key, v, default) for v in value]
            raise DermbenchError(f"{what} is not an integer") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise DermbenchError(f"{what} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, (list, tuple)):
            return [coerce_option(owner, key, v, default) for v in value]
        try:
            return float(str(value).strip())
        except ValueError:
            raise DermbenchError(f"{what} is not a number") from None
    # str/list/dict defaults: kept as given (options such as C=auto|<float> take several types; the task
    # interprets them, and option_ranges can restrict them)
    return value


def check_ranges(owner: str, params: Mapping[str, Any], ranges: Mapping[str, Any]) -> None:
    """Apply ``TaskInfo.option_ranges``-style checks: (lo, hi) inclusive numeric bounds, or a set of values."""
    import math

    for key, rule in ranges.items():
        if key not in params or params[key] is None:
            continue
        values = params[key] if isinstance(params[key], (list, tuple)) else [params[key]]
        for v in values:
            if isinstance(rule, (set, frozenset)):
                if v not in rule:
                    raise DermbenchError(
                        f"{owner} option {key}={v!r} is not one of {sorted(map(str, rule))}")
                continue
            lo, hi = rule
            if not isinstance(v, (int, float)) or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v)):
                raise DermbenchError(f"{owner} option {key}={v!r} must be a number")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                span = (f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"between {lo} and {hi}")
                raise DermbenchError(f"{owner} option {key}={v!r} is out of range: it must be {span}")


def resolve_task_params(info: TaskInfo, given: Mapping[str, Any], protocol: str = DEFAULT_PROTOCOL) -> dict[str, Any]:
    """The task's parameters: ``defaults``, then the protocol preset, then the user's values (which win);
    unknown keys are an error listing the valid ones; types follow the defaults; ranges are checked."""
    params = dict(info.defaults)
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise DermbenchError(
            f"task {info.name!r} has no option(s) {unknown}; its options are "
            f"{', '.join(f'{k}={v!r}' for k, v in sorted(params.items())) or '(none)'}"
        )
    preset = dict((getattr(info, "protocols", None) or {}).get(protocol, {})) if protocol != DEFAULT_PROTOCOL else {}
    bad = sorted(set(preset) - set(params))
    if bad:  # a plugin bug, said plainly
        raise DermbenchError(f"task {info.name!r}: protocol {protocol!r} sets unknown option(s) {bad}")
    for source in (preset, given):
        for k, v in source.items():
            params[k] = coerce_option(f"task {info.name!r}", k, v, info.defaults[k])
    check_ranges(f"task {info.name!r}", params, getattr(info, "option_ranges", None) or {})
    return params


def task_params(info: TaskInfo, given: dict[str, Any]) -> dict[str, Any]:
    """Kept for callers of the old name: ``resolve_task_params`` with the default protocol."""
    return resolve_task_params(info, given)


def _route(opts: Mapping[str, Any], names: Sequence[str], table: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split ``key`` (every one) from ``name.key`` (one registered name) options."""
    common: dict[str, Any] = {}
    targeted: dict[str, dict[str, Any]] = {}
    for k, v in opts.items():
        head, _, rest = str(k).partition(".")
        if rest and head in table:
            targeted.setdefault(head, {})[rest] = v
        else:
            common[k] = v
    return common, targeted


def validate_run(p: Plan, opts: RunOptions) -> dict[str, dict[str, Any]]:
    """Check every run option before any work; returns each planned task's resolved parameters."""
    from dermbench.defaults import CI_METHODS

    reg = plugins.registry()
    if opts.overwrite not in OVERWRITE:
        raise DermbenchError(f"--overwrite must be one of {', '.join(OVERWRITE)}, got {opts.overwrite!r}")
    for name, v, lo in (("--n-boot", opts.n_boot, 1), ("--batch-size", opts.batch_size, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise DermbenchError(f"{name} must be an integer >= {lo}, got {v!r}")
    if opts.ci not in CI_METHODS:
        raise DermbenchError(f"--ci {opts.ci!r} is not a CI method; choose one of {', '.join(CI_METHODS)}")
    for s in opts.seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise DermbenchError(f"--seed {s!r} must be a non-negative integer")
    for name in opts.data_roots:
        reg.dataset(name)  # unknown names list the valid ones
    cells = p.cells + [c for c, _ in p.skipped]
    tasks = sorted({c.task for c in cells})
    unknown = sorted(set(opts.task_params) - set(tasks))
    if unknown:
        raise DermbenchError(
            f"--task-opt given for task(s) {unknown} that are not in this run (tasks: {', '.join(tasks) or '-'}); "
            "drop the option or add the task with --task"
        )
    known_protocols = {DEFAULT_PROTOCOL} | {pr for t in tasks for pr in (getattr(reg.task(t).info, "protocols", None) or {})}
    if opts.protocol not in known_protocols:
        raise DermbenchError(
            f"--protocol {opts.protocol!r} is known to none of the tasks in this run; known protocols: "
            f"{', '.join(sorted(known_protocols))}"
        )
    for what, given, table, names in (("--model-opt", opts.model_opts, reg.models, {c.model for c in cells}),
                                       ("--dataset-opt", opts.dataset_opts, reg.datasets, {c.dataset for c in cells})):
        _, targeted = _route(given, sorted(names), table)
        stray = sorted(set(targeted) - names)
        if stray:
            raise DermbenchError(f"{what} given for {stray}, which are not in this run ({', '.join(sorted(names))})")
    _check_declared_dataset_options(opts, sorted({c.dataset for c in cells}))
    return {t: resolve_task_params(reg.task(t).info, opts.task_params.get(t, {}), opts.protocol) for t in tasks}


def _check_declared_dataset_options(opts: RunOptions, datasets: Sequence[str]) -> None:
    """Dataset options checked against what loaders declare (``loader.accepted_options``, set by
    ``dataset_options`` or by the plugin) before anything is loaded: a targeted key must be accepted by its
    dataset; a bare key by at least one dataset of the run (every one, when the run has a single dataset)."""
    reg = plugins.registry()
    common, targeted = _route(opts.dataset_opts, datasets, reg.datasets)
    declared = {d: getattr(reg.dataset(d).obj, "accepted_options", None) for d in datasets}

    def fail(keys: list[str], d: str) -> None:
        raise DermbenchError(f"dataset {d!r} has no option(s) {keys}; it accepts "
                             f"{', '.join(declared[d]) or 'none'} (--dataset-opt key=value, or {d}.key=value)")

    for d, given in targeted.items():
        if declared.get(d) is not None and set(given) - set(declared[d]):
            fail(sorted(set(given) - set(declared[d])), d)
    if not common or any(declared[d] is None for d in datasets):
        return
    unused = sorted(k for k in common if not any(k in declared[d] for d in datasets))
    if unused:
        if len(datasets) == 1:
            fail(unused, datasets[0])
        raise DermbenchError(
            f"--dataset-opt {unused}: no dataset of this run has such an option ("
            + "; ".join(f"{d}: {', '.join(declared[d]) or '-'}" for d in datasets) + ")")


def _weights_identity(path: str | None, info: ModelInfo) -> str:
    """What the config hash knows of the weights: the content hash of --weights (or of the model's weights
    environment variable), memoised; "default" when the model resolves its own published weights."""
    from dermbench import weights as W

    src = path or (os.environ.get(info.weights_env) if info.weights_env else None)
    if not src:
        return "default"
    p = Path(src).expanduser()
    try:
        return W.dir_hash(p) if p.is_dir() else "sha256:" + W.file_sha256(p)
    except (OSError, DermbenchError):
        return f"unreadable:{p}"  # the cell fails with the loader's message


def check_finite(arrays: Any, what: str) -> None:
    """A DermbenchError when any float array holds NaN/Inf (a NaN feature silently gives chance-level numbers)."""
    import numpy as np

    for i, a in enumerate(arrays if isinstance(arrays, (list, tuple)) else [arrays]):
        a = np.asarray(a)
        if a.dtype.kind not in "fc":
            continue
        a = a.reshape(1) if a.ndim == 0 else a
        # in blocks of ~64 MB: memory-mapped features and patch maps are checked without being held whole
        step = max(1, (64 << 20) // max(1, a[:1].nbytes))
        bad = sum(int((~np.isfinite(a[lo : lo + step])).reshape(len(a[lo : lo + step]), -1).any(axis=1).sum())
                  for lo in range(0, len(a), step))
        if bad:
            raise DermbenchError(
                f"{what}{f' (layer {i})' if isinstance(arrays, (list, tuple)) and len(arrays) > 1 else ''} "
                f"contain NaN/Inf in {bad} of {len(a)} row(s): "
                "the model produced non-finite outputs (broken or diverged weights?). Check the checkpoint with "
                "`dermbench plugins check MODEL --weights PATH`; no result was recorded."
            )


#: prediction keys checked for NaN/Inf (per-sample metric arrays may legitimately hold NaN for undefined cases)
CHECKED_PREDICTIONS = ("scores", "y_pred", "y_true", "y_score", "probs", "logits")


class CellContext:
    """The TaskContext the runner hands a task (see dermbench.api.TaskContext)."""

    def __init__(self, runner: "Runner", model: str, dataset: Dataset, seed: int, params: dict[str, Any], out_dir: Path):
        self._runner = runner
        self.model_name = model
        self.model_info: ModelInfo = plugins.registry().model(model).info
        self.dataset = dataset
        self.seed = seed
        self.device = runner.opts.device
        self.params = params
        self.out_dir = out_dir
        self.ci = runner.opts.ci
        self.n_boot = runner.opts.n_boot  # tasks reporting their own secondary CIs use the run's setting
        self.protocol = runner.opts.protocol

    def split(self, name: str) -> Split:
        return self.dataset.split(name)

    def load_dataset(self, name: str) -> Dataset:
        """Another registered dataset, loaded with the run's --data-root/options (e.g. one FL site per dataset)."""
        return self._runner.dataset(name)

    def backbone(self) -> Backbone:
        return self._runner.backbone(self.model_name)

    def features(self, split: Split):
        _check_split(split, "features")
        bb = self.backbone()
        with self.progress(f"features {self.model_name} / {split.dataset.name}:{split.name}", len(split)) as adv, \
                self._runner.measure(self.model_name):
            x = self._runner.store.embeddings(bb, split, device=self.device, progress=adv)
        check_finite(x, f"features of model {self.model_name!r} on {split.dataset.name}:{split.name}")
        return x

    def patch_features(self, split: Split, layers: Sequence[int]):
        _check_split(split, "patch_features")
        bb = self.backbone()
        with self.progress(f"patch maps {self.model_name} / {split.dataset.name}:{split.name}", len(split)) as adv, \
                self._runner.measure(self.model_name):
            maps = self._runner.store.patch_tokens(bb, split, layers, device=self.device, progress=adv)
        check_finite(list(maps), f"patch features of model {self.model_name!r} on {split.dataset.name}:{split.name}")
        return maps

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        with self._runner.progress(description, total) as adv:
            yield adv

    def log(self, message: str) -> None:
        self._runner.log(f"  {message}")


def _count_params(bb: Any) -> int | None:
    """Parameters of the loaded backbone's torch module (None when it has none, e.g. a hand-crafted plugin)."""
    if bb is None:
        return None
    candidates = []
    if callable(getattr(bb, "_module", None)):
        try:
            candidates.append(bb._module())
        except Exception:  # a base class without a module
            pass
    candidates += [getattr(bb, "model", None), bb]
    for obj in candidates:
        if obj is not None and callable(getattr(obj, "parameters", None)):
            try:
                n = int(sum(p.numel() for p in obj.parameters()))
            except Exception:
                continue
            if n > 0:
                return n
    return None


def _check_split(split: Any, method: str) -> None:
    if not isinstance(split, Split):
        raise DermbenchError(
            f"ctx.{method}() expects a Split, got {type(split).__name__} {split!r}: pass ctx.split({split!r})"
            if isinstance(split, str) else f"ctx.{method}() expects a Split (ctx.split('train')), got {type(split).__name__}"
        )


class Runner:
    def __init__(self, opts: RunOptions, console: Any = None, quiet: bool = False):
        self.opts = opts
        self.store = FeatureStore(opts.cache_dir, batch_size=opts.batch_size, workers=opts.extract_workers,
                                  amp=opts.amp, channels_last=opts.channels_last, log=lambda m: self.log(m))
        self.console = console
        self.quiet = quiet
        self._backbones: dict[str, Backbone] = {}
        self._unavailable: dict[str, str] = {}  # model -> why its loader failed (preflight)
        self._datasets: dict[str, Dataset] = {}
        self.summary = RunSummary()
        self.params: dict[str, dict[str, Any]] = {}
        self._planned_datasets: set[str] = set()

    # ------------------------------------------------------------------ output helpers
    def log(self, msg: str) -> None:
        if self.quiet:
            return
        if self.console is not None:
            self.console.print(msg, highlight=False)
        else:
            print(msg)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.quiet:
            yield lambda n=1: None
            return
        if self.console is None or not getattr(self.console, "is_terminal", False):
            # piped output (CI logs, `| tee`): a plain line every ~10 s with rate and ETA instead of a live bar
            from dermbench.progress import LineProgress

            write = ((lambda m: self.console.print(m, highlight=False, markup=False, emoji=False))
                     if self.console is not None else (lambda m: print(m, flush=True)))
            unit = "img" if description.lstrip().startswith(("features", "patch maps")) else "step"
            yield LineProgress(description.strip(), total, unit=unit, write=write).advance
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=self.console, transient=True) as prog:
            tid = prog.add_task(description, total=total)
            yield lambda n=1: prog.advance(tid, n)

    @contextlib.contextmanager
    def measure(self, model: str) -> Iterator[None]:
        """Time a feature extraction; when images were forwarded, store the model's images/s on this device
        (``<cache>/throughput.json``) for ``dermbench run --dry-run`` estimates."""
        n0, t0 = self.store.stats.images_forwarded, time.perf_counter()
        yield
        n, dt = self.store.stats.images_forwarded - n0, time.perf_counter() - t0
        if n >= 8 and dt > 0:
            record_throughput(self.store.root, model, self.opts.device, n / dt)

    # ------------------------------------------------------------------ options per model / dataset
    def model_kwargs(self, model: str) -> dict[str, Any]:
        common, targeted = _route(self.opts.model_opts, [model], plugins.registry().models)
        return {**common, **targeted.get(model, {})}

    def dataset_kwargs(self, name: str) -> dict[str, Any]:
        common, targeted = _route(self.opts.dataset_opts, [name], plugins.registry().datasets)
        return {**common, **targeted.get(name, {})}

    # ------------------------------------------------------------------ resources
    def backbone(self, model: str) -> Backbone:
        if model in self._unavailable:  # resolved once (preflight): never a second loader call
            raise DermbenchError(self._unavailable[model])
        if model not in self._backbones:
            entry = plugins.registry().model(model)
            kwargs: dict[str, Any] = self.model_kwargs(model)
            if self.opts.weights.get(model):
                kwargs["weights"] = self.opts.weights[model]
            kwargs.setdefault("device", self.opts.device)
            t0 = time.perf_counter()
            try:
                bb = entry.obj(**kwargs)
            except TypeError as e:
                if "unexpected keyword" not in str(e) and "got an unexpected" not in str(e):
                    raise
                given = sorted(set(kwargs) - {"weights", "device"})
                import inspect

                try:
                    named = [n for n, p in inspect.signature(entry.obj).parameters.items()
                             if n not in ("weights", "device") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
                except (TypeError, ValueError):
                    named = []
                raise DermbenchError(
                    f"model {model!r} does not accept the option(s) given with --model-opt {given}: {e}. It accepts "
                    f"{', '.join(named) or 'no named option'}"
                    f"{f' and the keyword arguments of its {entry.info.source} architecture' if named else ''}. "
                    "Drop the option, or prefix it with the model it is meant for (MODEL.key=value)."
                ) from None
            bb = bb.to(self.opts.device) if hasattr(bb, "to") else bb
            self.summary.backbone_loads += 1
            self.log(f"  loaded {model} ({bb.weights_id}) in {time.perf_counter() - t0:.1f}s")
            self._backbones[model] = bb
        return self._backbones[model]

    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            from dermbench import datasets_common

            entry = plugins.registry().dataset(name)
            info = entry.info
            root = self.opts.root_for(name)
            if info.needs_root and root is None:
                raise DermbenchError(
                    f"dataset {name!r} reads files from disk: pass --data-root PATH (or --data-root {name}=PATH). "
                    f"{info.how_to_obtain}".strip()
                )
            if info.needs_root and not Path(root).exists():
                raise DermbenchError(f"--data-root {root} does not exist. {info.how_to_obtain}".strip())
            kwargs = self.dataset_kwargs(name)
            kwargs.setdefault("split_seed", self.opts.split_seed)
            if self.opts.skip_bad_images:
                kwargs["skip_bad_images"] = True
            with datasets_common.option_scope(name, lenient=self._lenient_for(name)):
                ds = entry.obj(root, **kwargs)
            self._datasets[name] = ds
        return self._datasets[name]

    def _lenient_dataset_keys(self) -> frozenset[str]:
        """Bare --dataset-opt keys given to a multi-dataset run: a dataset that does not know one ignores it
        (the run checks that at least one dataset used it); single-dataset runs are strict."""
        common, _ = _route(self.opts.dataset_opts, [], plugins.registry().datasets)
        return frozenset(common) if len(self._planned_datasets) > 1 else frozenset()

    def _lenient_for(self, name: str) -> frozenset[str]:
        """A dataset a task loads itself (ctx.load_dataset) ignores bare options it does not know: they were
        given for the run's own datasets."""
        if self._planned_datasets and name not in self._planned_datasets:
            return frozenset(_route(self.opts.dataset_opts, [], plugins.registry().datasets)[0])
        return self._lenient_dataset_keys()

    # ------------------------------------------------------------------ main loop
    def config_for(self, cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
        """Everything that changes the cell's numbers except its seed: this dict is hashed into config_hash."""
        info = plugins.registry().model(cell.model).info
        return {
            "model": cell.model,
            "weights": _weights_identity(self.opts.weights.get(cell.model), info),
            "model_opts": self.model_kwargs(cell.model),
            "task": cell.task,
            "params": params,
            "protocol": self.opts.protocol,
            "dataset": cell.dataset,
            "dataset_opts": self.dataset_kwargs(cell.dataset),
            "split_seed": self.opts.split_seed,
            "n_boot": self.opts.n_boot,
            "ci": self.opts.ci,
            "bootstrap_seed": defaults.BOOTSTRAP_SEED,
            "plugins": {k: plugin_provenance(k, n) for k, n in
                        (("model", cell.model), ("task", cell.task), ("dataset", cell.dataset))},
            # only when set, so default runs keep their hashes: reduced precision changes the features
            **({"amp": self.opts.amp} if self.opts.amp else {}),
            **({"channels_last": True} if self.opts.channels_last else {}),
        }

    def execution(self) -> dict[str, Any]:
        """How the run executed (recorded under provenance, never hashed)."""
        o = self.opts
        return {"device": o.device, "shard": list(o.shard) if o.shard else None, "cache_dir": str(self.store.root),
                "out": str(o.out), "batch_size": o.batch_size, "skip_bad_images": o.skip_bad_images,
                "overwrite": o.overwrite, "data_root": str(o.root_for("")) if o.root_for("") else None,
                "data_roots": {k: str(v) for k, v in o.data_roots.items()}}

    def run(self, p: Plan) -> RunSummary:
        from dermbench import distributed as ddp

        s = self.summary
        self.params = validate_run(p, self.opts)  # before any dataset is loaded or feature extracted
        self._planned_datasets = {c.dataset for c in p.cells} | {c.dataset for c, _ in p.skipped}
        for note in p.notes:
            self.log(f"note: {note}")
        p = self.preflight(p)  # every model's weights once, before any dataset is loaded
        if not p.cells and s.failed:
            return s  # nothing can run: no dataset loaded, no time spent
        p = self.refine(p)
        self._check_dataset_opts_used()
        if self.opts.extract_only:
            return self._extract_only(p)
        for cell, why in p.skipped:
            s.skipped.append((cell, why))
        for line in summarize_skips(p.skipped):
            self.log(f"[yellow]{line}[/]" if self.console else line)
        reg = plugins.registry()
        todo: list[tuple[Cell, dict, dict, str]] = []
        if ddp.rank() == 0:
            for cell in shard_cells(p.cells, self.opts.shard):
                params = self.params[cell.task]
                config = self.config_for(cell, params)
                chash = stable_hash(config, n=32)
                try:
                    done = self._done_path(cell, chash)
                except Exception as e:  # the dataset does not load: the cell fails with the loader's message
                    msg = str(e) if isinstance(e, DermbenchError) else f"{type(e).__name__}: {e}"
                    s.failed.append((cell, msg))
                    self._write_error(cell, chash, msg, traceback.format_exc())
                    self.log(f"[red]FAILED[/] {cell.label}: {msg}" if self.console else f"FAILED {cell.label}: {msg}")
                    continue
                if done is not None:
                    s.reused.append((cell, done))
                    self.log(f"done already: {cell.label} ({done})")
                    continue
                todo.append((cell, params, config, chash))
        if ddp.is_active():
            todo = ddp.broadcast(todo)
            self._preextract([c for c, *_ in todo])
            if ddp.rank() != 0:
                return s
        order = list(dict.fromkeys(c.model for c, *_ in todo))
        todo.sort(key=lambda t: order.index(t[0].model))  # one model's cells together: its backbone is freed after
        for i, (cell, params, config, chash) in enumerate(todo):
            self._run_one(cell, reg.task(cell.task).info, params, config, chash)
            if i + 1 == len(todo) or todo[i + 1][0].model != cell.model:
                self._backbones.pop(cell.model, None)
        return s

    def preflight(self, p: Plan) -> Plan:
        """Load every model of the plan once, before any dataset is loaded or cell run.

        A model whose weights are missing (or whose loader fails) gets ONE message, and its cells fail at once
        instead of one by one after minutes of work; the other models go on. Only the first model's backbone is
        kept (cells run grouped by model, each freed after its last cell); the others are loaded again when their
        turn comes, so a grid of large models never holds more than one in memory. A model whose
        cells all have a record on disk is not loaded here: the records may be reused without it.
        """
        s = self.summary
        cells = shard_cells(p.cells, self.opts.shard)
        bad: dict[str, str] = {}
        kept = False
        for m in dict.fromkeys(c.model for c in cells):
            mine = [c for c in cells if c.model == m]
            if self.opts.overwrite != "always" and all(self._has_record_file(c) for c in mine):
                continue
            try:
                self.backbone(m)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                bad[m] = str(e) if isinstance(e, DermbenchError) else f"{type(e).__name__}: {e}"
                self._unavailable[m] = s.unavailable[m] = bad[m]
            else:
                if kept:  # one backbone in memory at a time: later models are loaded again for their cells
                    self._backbones.pop(m, None)
                kept = True
        if not bad:
            return p
        keep = []
        for cell in p.cells:
            if cell.model in bad and not (self.opts.overwrite != "always" and self._has_record_file(cell)):
                s.failed.append((cell, bad[cell.model]))
                chash = stable_hash(self.config_for(cell, self.params[cell.task]), n=32)
                self._write_error(cell, chash, bad[cell.model], "")
            else:
                keep.append(cell)
        for m, msg in bad.items():
            n = sum(1 for c, _ in s.failed if c.model == m)
            self.log(f"[red]cannot run {m}[/] ({n} cell(s) not run): {msg}" if self.console
                     else f"cannot run {m} ({n} cell(s) not run): {msg}")
        return Plan(cells=keep, skipped=p.skipped, notes=p.notes)

    def _has_record_file(self, cell: Cell) -> bool:
        d = cell_dir(self.opts.out, cell.model, cell.task, cell.dataset)
        import re

        pat = re.compile(rf"seed{cell.seed}(-[0-9a-f]+)?\.json")  # records only: not .error.json / .claim
        return d.is_dir() and any(pat.fullmatch(f.name) for f in d.iterdir())

    def _check_dataset_opts_used(self) -> None:
        """In a multi-dataset run, a bare --dataset-opt that no loaded dataset accepted is an error."""
        from dermbench import datasets_common

        lenient = self._lenient_dataset_keys()
        if not lenient or not self._datasets:
            return
        ignored = datasets_common.ignored_options()
        loaded = [n for n in self._datasets if n in self._planned_datasets]
        unused = sorted(k for k in lenient if loaded and all(k in ignored.get(n, {}) for n in loaded))
        if unused:
            valid = "; ".join(f"{n}: {', '.join(ignored[n][unused[0]]) or '-'}" for n in loaded if n in ignored)
            raise DermbenchError(f"--dataset-opt {unused}: no dataset of this run has such an option ({valid})")

    def refine(self, p: Plan) -> Plan:
        """Re-check compatibility against what each dataset really holds once loaded.

        Generic datasets (``folder``, ``csv``) only know their fields (masks, captions, groups) after reading
        the user's files; their loaded ``Dataset.info`` is the truth. A dataset that fails to load keeps its
        cells, which then fail with the loader's message.
        """
        from dermbench import datasets_common

        reg = plugins.registry()
        names = {c.dataset for c in p.cells} | {c.dataset for c, _ in p.skipped}
        if not self._planned_datasets:
            self._planned_datasets = set(names)
        loaded: dict[str, Any] = {}
        for name in sorted(names):
            if reg.dataset(name).info.needs_root and self.opts.root_for(name) is None:
                continue
            try:
                info = self.dataset(name).info
            except datasets_common.UnknownDatasetOption:
                raise  # a usage error, reported before any work
            except Exception:
                continue
            if info != reg.dataset(name).info:
                loaded[name] = info
        if not loaded:
            return p
        out = Plan()
        for cell in p.cells + [c for c, _ in p.skipped]:
            why_old = next((w for c, w in p.skipped if c is cell), None)
            if cell.dataset not in loaded or (why_old and "commercial" in why_old):
                (out.skipped.append((cell, why_old)) if why_old else out.cells.append(cell))
                continue
            why = reg.task(cell.task).info.incompatibility(reg.model(cell.model).info, loaded[cell.dataset])
            (out.skipped.append((cell, why)) if why else out.cells.append(cell))
        return out

    def _identity_problem(self, rec: ResultRecord, cell: Cell, chash: str) -> str | None:
        """Why a stored record does not belong to this cell (None when model, task, dataset, seed, config hash
        and split hash all match)."""
        for k in ("model", "task", "dataset", "seed"):
            if getattr(rec, k) != getattr(cell, k):
                return f"it holds {k}={getattr(rec, k)!r}, the cell has {getattr(cell, k)!r}"
        if rec.config_hash != chash:
            return f"its config hash {rec.config_hash[:12]} differs from the cell's {chash[:12]}"
        ds = self.dataset(cell.dataset)
        name, h = rec.split.get("name"), rec.split.get("hash")
        if name not in ds.splits:
            return f"its split {name!r} is not in the dataset as loaded now ({sorted(ds.splits)})"
        now = ds.split(name).hash
        if h != now:
            return f"its split hash {h} differs from the data's now ({now}): the data changed"
        return None

    def _done_path(self, cell: Cell, chash: str) -> Path | None:
        """The record of this cell if it counts as done under the overwrite policy.

        ``missing``: the record at the cell's identity path, if it is readable and its identity matches; a
        malformed one is moved aside (``.bad-<time>``) and recomputed. ``never``: any valid record of the cell,
        whatever its config. ``always``: none.
        """
        if self.opts.overwrite == "always":
            return None
        path = record_path(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed, chash)
        if self.opts.overwrite == "never":
            d = cell_dir(self.opts.out, cell.model, cell.task, cell.dataset)
            for cand in sorted(d.glob(f"seed{cell.seed}*.json"), key=lambda q: q != path):
                rec = _try_read(cand)
                if rec is not None and (rec.model, rec.task, rec.dataset, rec.seed) == (
                        cell.model, cell.task, cell.dataset, cell.seed):
                    if cand != path:
                        self.log(f"  --overwrite never: keeping {cand.name} (made with another config)")
                    return cand
            return None
        if not path.exists():
            return None
        try:
            rec = read_record(path)
        except DermbenchError as e:
            moved = move_aside(path, "bad")
            why = f"record unreadable ({e}); moved to {moved.name}, recomputing"
            self.summary.repaired.append((cell, why))
            self.log(f"  {cell.label}: {why}")
            return None
        problem = self._identity_problem(rec, cell, chash)
        if problem is None:
            return path
        moved = move_aside(path, "mismatch")
        why = f"stored record does not match the cell ({problem}); moved to {moved.name}, recomputing"
        self.summary.repaired.append((cell, why))
        self.log(f"  {cell.label}: {why}")
        return None

    def _run_one(self, cell: Cell, tinfo: TaskInfo, params: dict, config: dict, chash: str) -> None:
        s = self.summary
        path = record_path(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed, chash)
        claim = Claim(path.with_suffix(".claim"))
        holder = claim.acquire()
        if holder is not None:
            s.skipped.append((cell, f"claimed by {holder}"))
            self.log(f"busy: {cell.label} is being run by {holder}")
            return
        t_cell = time.perf_counter()
        try:
            if self.opts.overwrite != "always":
                done = self._done_path(cell, chash)  # another shard may have finished it meanwhile
                if done is not None:
                    s.reused.append((cell, done))
                    return
            self.log(f"[bold]run[/] {cell.label}" if self.console else f"run {cell.label}")
            rec = self.run_cell(cell, tinfo, params, config, chash)
            rec.provenance["timings"]["cell_seconds"] = round(time.perf_counter() - t_cell, 3)
            path = write_record(self.opts.out, rec)
            s.done.append((cell, path))
            prim = tinfo.primary_metric or (tinfo.metrics[0] if tinfo.metrics else None)
            if prim and prim in rec.metrics:
                m = rec.metrics[prim]
                self.log(f"  {prim} = {_fmt(m.get('value'))} [{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # isolation: one failing cell never stops the others
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, DermbenchError) else str(e)
            s.failed.append((cell, msg))
            self._write_error(cell, chash, msg, traceback.format_exc())
            self.log(f"[red]FAILED[/] {cell.label}: {msg}" if self.console else f"FAILED {cell.label}: {msg}")
            import sys

            from dermbench.check import debug_enabled

            if debug_enabled():  # DERMBENCH_DEBUG=1: the full traceback too (always kept in the .error.json)
                print(traceback.format_exc(), file=sys.stderr)
        finally:
            claim.release()

    def _extract_only(self, p: Plan) -> RunSummary:
        """--extract-only: embed every split the planned cells need (and the patch maps of tasks that declare
        ``patch_layers``); with --shard i/n only that shard's rows.

        For array jobs over huge datasets: n tasks each extract a contiguous 1/n of every split's batches into
        the shared feature store; the last to finish merges the parts into the entry that a later
        ``dermbench run`` (same options, no --shard) reads without a forward pass.
        """
        from dermbench import distributed as ddp

        if ddp.is_active() and self.opts.shard:
            raise DermbenchError("--extract-only --shard runs one process per array task: drop torchrun or --shard")
        reg = plugins.registry()
        seen: set[tuple[str, str, tuple[int, ...]]] = set()
        for cell in p.cells:
            entry = reg.task(cell.task)
            wants: list[tuple[int, ...]] = []  # patch maps first: unsharded, their pass also fills the embeddings
            if "patch_tokens" in entry.info.capabilities and callable(getattr(entry.obj, "patch_layers", None)):
                # the task says which layers its run reads (segmentation: TaskClass.patch_layers(backbone))
                wants.append(tuple(entry.obj(**self.params[cell.task]).patch_layers(self.backbone(cell.model))))
            if "cls" in entry.info.capabilities:
                wants.append(())
            for layers in wants:
                if (cell.model, cell.dataset, layers) in seen:
                    continue
                seen.add((cell.model, cell.dataset, layers))
                ds, bb = self.dataset(cell.dataset), self.backbone(cell.model)
                what = f"patch maps {list(layers)}" if layers else "features"
                for name in sorted(ds.splits):
                    split = ds.split(name)
                    with self.progress(f"{what} {cell.model} / {cell.dataset}:{name}", len(split)) as adv:
                        if self.opts.shard and not ddp.is_active():
                            state = self.store.extract_shard(bb, split, self.opts.shard, device=self.opts.device,
                                                             progress=adv, layers=layers or None)
                        else:
                            with self.store.collective():  # under torchrun: all ranks share the batches
                                if layers:
                                    self.store.patch_tokens(bb, split, layers, device=self.opts.device,
                                                            progress=adv)
                                else:
                                    self.store.embeddings(bb, split, device=self.opts.device, progress=adv)
                            state = "done"
                    self.log(f"{what} {cell.model} / {cell.dataset}:{name}"
                             f"{f' shard {self.opts.shard[0]}/{self.opts.shard[1]}' if self.opts.shard else ''}: "
                             f"{state}")
        return self.summary

    def _preextract(self, cells: list[Cell]) -> None:
        """All ranks extract the embeddings of every (model, dataset) split the cells need, together."""
        reg = plugins.registry()
        seen: set[tuple[str, str]] = set()
        for cell in cells:
            if (cell.model, cell.dataset) in seen or "cls" not in reg.task(cell.task).info.capabilities:
                continue
            seen.add((cell.model, cell.dataset))
            try:
                ds = self.dataset(cell.dataset)
                bb = self.backbone(cell.model)
            except Exception as e:  # the cell itself will fail with the message on rank 0
                self.log(f"  pre-extraction of {cell.model}/{cell.dataset} skipped: {e}")
                continue
            for name in sorted(ds.splits):
                with self.progress(f"features {cell.model} / {cell.dataset}:{name}", len(ds.splits[name])) as adv, \
                        self.store.collective():  # all ranks extract together; rank 0 alone later reads
                    self.store.embeddings(bb, ds.split(name), device=self.opts.device, progress=adv)

    def run_cell(self, cell: Cell, tinfo: TaskInfo, params: dict[str, Any], config: dict, chash: str) -> ResultRecord:
        from dermbench import api, stats

        reg = plugins.registry()
        dataset = self.dataset(cell.dataset)
        out_dir = artifacts_dir(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed, chash)
        ctx = CellContext(self, cell.model, dataset, cell.seed, params, out_dir)
        task = reg.task(cell.task).obj(**params)
        _seed_everything(cell.seed)
        hits0, miss0, fwd0 = self.store.stats.hits, self.store.stats.misses, self.store.stats.images_forwarded
        ext0 = self.store.stats.extract_seconds
        t0 = time.perf_counter()
        output: TaskOutput = task.run(ctx)
        t_task = time.perf_counter() - t0
        t_extract = self.store.stats.extract_seconds - ext0
        validate = getattr(api, "validate_task_output", None)
        if callable(validate):
            validate(output, task=cell.task)
        preds = output.predictions if isinstance(output.predictions, dict) else {}
        for key in CHECKED_PREDICTIONS:
            if key in preds and preds[key] is not None:
                try:
                    check_finite(preds[key], f"predictions[{key!r}] of task {cell.task!r} for model "
                                             f"{cell.model!r} on {cell.dataset}:{output.split.name}")
                except (TypeError, ValueError):
                    pass  # non-numeric predictions (captions) are the task's own business
        t1 = time.perf_counter()
        metrics = stats.score(
            output.predictions, output.metrics, split_hash=output.split.hash,  # fixed bootstrap seed (17.5, H4)
            n_boot=self.opts.n_boot, ci=self.opts.ci, strata=output.strata if output.strata is not None else "auto",
        )
        t_stats = time.perf_counter() - t1
        record_task_time(self.store.root, cell.task, cell.dataset, self.opts.device,
                         max(0.0, t_task - t_extract) + t_stats)
        if output.strata is not None:  # stored so later comparisons redraw the same stratified resamples
            output.predictions["strata"] = [int(v) if hasattr(v, "__int__") else v for v in output.strata]
        bb = self._backbones.get(cell.model)
        minfo = reg.model(cell.model).info
        return ResultRecord(
            model=cell.model, task=cell.task, dataset=cell.dataset, seed=cell.seed,
            config=config, config_hash=chash, metrics=metrics, predictions=output.predictions,
            split={
                "name": output.split.name,
                "hash": output.split.hash,
                "n": len(output.split),
                "sizes": {k: len(v) for k, v in dataset.splits.items()},
                "source": dataset.split_source,
            },
            model_info={
                "name": minfo.name, "family": minfo.family, "source": minfo.source, "embed_dim": minfo.embed_dim,
                "license": minfo.license, "commercial_use": minfo.commercial_use, "trained_on": list(minfo.trained_on),
                "weights_id": bb.weights_id if bb is not None else None, "random_init": minfo.random_init,
                "params": _count_params(bb),  # of the loaded module (the leaderboard's Params column)
                # the LOADED backbone's preprocessing (a checkpoint may fix another size than the registry's)
                "preprocess": (getattr(getattr(bb, "info", None), "preprocess", None) or minfo.preprocess).key(),
            },
            dataset_info={
                "name": dataset.info.name, "license": dataset.info.license,
                "commercial_use": dataset.info.commercial_use, "aliases": list(dataset.info.aliases),
                "label_names": list(dataset.label_names or dataset.info.label_names), "skipped": dataset.skipped,
                "root": str(dataset.root) if dataset.root else None,
            },
            provenance={
                **provenance(self.opts.device),
                "seed": cell.seed,
                "split_seed": self.opts.split_seed,
                "protocol": self.opts.protocol,
                "plugins": config["plugins"],
                "execution": self.execution(),
                **({"run_file": dict(self.opts.run_file)} if self.opts.run_file else {}),  # never hashed
                "created": time.time(),
                "timings": {"task_seconds": round(t_task, 3), "stats_seconds": round(t_stats, 3),
                            "extract_seconds": round(t_extract, 3)},  # part of task_seconds
                "feature_cache": {
                    "hits": self.store.stats.hits - hits0,
                    "misses": self.store.stats.misses - miss0,
                    "images_forwarded": self.store.stats.images_forwarded - fwd0,
                },
            },
            extra=output.extra,
            artifacts=[str(a) for a in output.artifacts],
        )

    def _write_error(self, cell: Cell, chash: str | None, msg: str, tb: str) -> None:
        try:
            path = record_path(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed, chash)
            atomic_write_text(path.with_suffix(".error.json"),
                              json.dumps({"cell": cell.__dict__, "config_hash": chash, "error": msg, "traceback": tb,
                                          "time": time.time()}, indent=1))
        except (OSError, DermbenchError):
            pass


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22), or None where unknown.

    Recorded in claims: a live PID whose start time differs is another process that reused the number."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    try:
        return raw[raw.rindex(")") + 2:].split()[19]  # fields after the command name start at field 3
    except (ValueError, IndexError):
        return None


class Claim:
    """An exclusive claim file so two shards never run the same cell at once.

    Created with O_EXCL and holding host, PID, the PID's start time and the creation time. A claim is stale —
    and taken over, so a crashed shard's cells are picked up on rerun — when its process is gone (same host),
    when the PID is alive but started at another time (PID reuse), or when it is older than
    DERMBENCH_CLAIM_TTL seconds (default 24 h; the only test possible for claims of other hosts).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.owned = False

    @staticmethod
    def ttl() -> float:
        try:
            return float(os.environ.get("DERMBENCH_CLAIM_TTL", 24 * 3600))
        except ValueError:
            raise DermbenchError(
                f"DERMBENCH_CLAIM_TTL={os.environ['DERMBENCH_CLAIM_TTL']!r} must be a number of seconds") from None

    def stale_reason(self, info: dict) -> str | None:
        import socket

        try:
            age = time.time() - float(info.get("time", 0))
        except (TypeError, ValueError):
            return "claim has no valid creation time"
        if age > self.ttl():
            return f"claim is {age:.0f}s old (> DERMBENCH_CLAIM_TTL={self.ttl():.0f}s)"
        if info.get("host") != socket.gethostname():
            return None
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            return "claim has no valid pid"
        if pid <= 0:
            return "claim has no valid pid"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} is gone"
        except PermissionError:
            pass  # alive, another user's
        start = info.get("start")
        now = process_start_time(pid)
        if start is not None and now is not None and str(start) != now:
            return f"PID {pid} now belongs to another process (start time {now} != {start})"
        return None

    def acquire(self) -> str | None:
        """None when the claim is ours; otherwise 'host:pid' of the live holder."""
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                    info = {}
                if not isinstance(info, dict):
                    info = {}
                if info and self.stale_reason(info) is None:
                    return f"{info.get('host')}:{info.get('pid')}"
                try:
                    mtime = self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if not info and time.time() - mtime < 5:  # being written right now
                    time.sleep(0.2)
                    continue
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "start": process_start_time(os.getpid()),
                           "time": time.time()}, f)
            self.owned = True
            return None
        return "unknown (claim file keeps changing)"

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False


def _try_read(path: Path) -> ResultRecord | None:
    try:
        return read_record(path)
    except DermbenchError:
        return None


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def run(models: Sequence[str], tasks: Sequence[str], datasets: Sequence[str], opts: RunOptions | None = None,
        console: Any = None, quiet: bool = False) -> RunSummary:
    """Programmatic entry point (the CLI calls this)."""
    opts = opts or RunOptions()
    if opts.overwrite not in OVERWRITE:
        raise DermbenchError(f"--overwrite must be one of {OVERWRITE}, got {opts.overwrite!r}")
    p = plan(models, tasks, datasets, opts.seeds, opts.commercial_only)
    return execute(p, opts, console=console, quiet=quiet)


def execute(p: Plan, opts: RunOptions, console: Any = None, quiet: bool = False) -> RunSummary:
    """Run a plan; under torchrun, all ranks extract features together and rank 0 runs the tasks."""
    from dermbench import distributed as ddp

    validate_run(p, opts)  # usage errors before the process group or any folder exists
    opts.device = ddp.init_from_env(opts.device)
    r = Runner(opts, console=console if ddp.rank() == 0 else None, quiet=quiet or ddp.rank() != 0)
    os.makedirs(opts.out, exist_ok=True)
    try:
        return r.run(p)
    finally:
        ddp.shutdown()


# --------------------------------------------------------------------------------------------------
# --dry-run: what a run would do, and how long it would take, without loading any model

#: images/s guessed for a model never measured here, by embedding width (ViT-S / ViT-B / larger), CPU vs GPU.
#: Rough figures for one image at 224 px; the dry run labels every estimate that uses them as a guess.
DEFAULT_IMAGES_PER_S = {"cpu": ((384, 40.0), (768, 12.0), (10**9, 4.0)),
                        "cuda": ((384, 800.0), (768, 400.0), (10**9, 120.0))}
#: seconds a task spends beyond extraction, when no record of that task exists in --out to measure it from
DEFAULT_TASK_S = 10.0


@dataclass
class DryRun:
    planned: list[tuple[Cell, float]] = field(default_factory=list)  # cell, estimated seconds
    reused: list[tuple[Cell, Path]] = field(default_factory=list)
    skipped: list[tuple[Cell, str]] = field(default_factory=list)
    failing: list[tuple[Cell, str]] = field(default_factory=list)  # would fail now (dataset does not load)
    notes: list[str] = field(default_factory=list)
    guesses: list[str] = field(default_factory=list)  # which rates/durations are defaults, not measurements
    extraction_s: float = 0.0
    task_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.extraction_s + self.task_s

    def lines(self) -> list[str]:
        from dermbench.progress import fmt_seconds

        out = [f"note: {n}" for n in self.notes]
        out.append(f"planned {len(self.planned)} cell(s), reused {len(self.reused)}, skipped {len(self.skipped)}"
                   + (f", would fail {len(self.failing)}" if self.failing else ""))
        for c, est in self.planned:
            out.append(f"  run    {c.label}  ~{fmt_seconds(est)}")
        for c, path in self.reused:
            out.append(f"  reuse  {c.label}  ({path})")
        by_msg: dict[str, list[Cell]] = {}
        for c, msg in self.failing:
            by_msg.setdefault(msg, []).append(c)
        for msg, cells in by_msg.items():
            out.append(f"  fail   {', '.join(f'{c.model}×{c.task}×{c.dataset}' for c in cells)}: {msg}")
        out += ["  " + line for line in summarize_skips(self.skipped)]
        out.append(f"estimated time: ~{fmt_seconds(self.total_s)} (feature extraction ~{fmt_seconds(self.extraction_s)}"
                   f", tasks ~{fmt_seconds(self.task_s)})"
                   + ("; guesses: " + "; ".join(self.guesses) if self.guesses else "; from measurements on this machine"))
        return out


def _guess_rate(info: ModelInfo, device: str) -> float:
    table = DEFAULT_IMAGES_PER_S["cuda" if str(device).startswith("cuda") else "cpu"]
    return next(r for width, r in table if (info.embed_dim or 768) <= width)


def _task_seconds(out: Path, task: str) -> float | None:
    """Median task time (provenance timings) of this task's records under ``out``; None when there are none."""
    import statistics

    secs = []
    for path in sorted(Path(out).glob(f"*/{task}/*/seed*.json"))[:20]:
        try:
            t = json.loads(path.read_text()).get("provenance", {}).get("timings", {})
            secs.append(float(t.get("task_seconds", 0.0)) - float(t.get("extract_seconds", 0.0))
                        + float(t.get("stats_seconds", 0.0)))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return statistics.median(secs) if secs else None


def dry_run(p: Plan, opts: RunOptions) -> DryRun:
    """Planned, reused, skipped cells and an estimated time, without loading any model's weights.

    Datasets are loaded (their file lists, for split hashes and sizes); nothing is written. Extraction time is
    the images of each (model, dataset) not in the feature cache divided by the model's measured images/s on
    this device (``<cache>/throughput.json``, written whenever a run extracts) or a labelled default; task time
    (extraction excluded) is the median of this task's records in --out, else of its last runs on this machine
    (``<cache>/task_times.json``: same dataset first, then any), else a labelled default.
    """
    reg = plugins.registry()
    r = Runner(opts, console=None, quiet=True)
    r.params = validate_run(p, opts)
    r._planned_datasets = {c.dataset for c in p.cells} | {c.dataset for c, _ in p.skipped}
    p = r.refine(p)
    d = DryRun(notes=list(p.notes), skipped=list(p.skipped))
    rates = read_throughput(r.store.root)
    cached = {(e.get("model"), e.get("dataset"), e.get("split_hash"), e.get("kind")) for e in r.store.entries()}
    extracted: set[tuple[str, str, str]] = set()
    task_cache: dict[str, float | None] = {}
    for cell in shard_cells(p.cells, opts.shard):
        try:
            ds = r.dataset(cell.dataset)
        except Exception as e:
            d.failing.append((cell, str(e) if isinstance(e, DermbenchError) else f"{type(e).__name__}: {e}"))
            continue
        chash = stable_hash(r.config_for(cell, r.params[cell.task]), n=32)
        done = _stored_record(r, cell, chash)
        if done is not None:
            d.reused.append((cell, done))
            continue
        est = 0.0
        caps = reg.task(cell.task).info.capabilities
        for kind in [k for k, cap in (("embed", "cls"), ("patch", "patch_tokens")) if cap in caps]:
            if (cell.model, cell.dataset, kind) in extracted:
                continue
            extracted.add((cell.model, cell.dataset, kind))
            if kind == "patch":  # patch-token tasks run first and their pass also stores the pooled embeddings
                extracted.add((cell.model, cell.dataset, "embed"))
            # the splits the task reads: those its options name (train_split=, test_split=), else train + test
            named = {str(v) for v in r.params[cell.task].values() if isinstance(v, str)}
            used = ([n for n in sorted(ds.splits) if n in named]
                    or [n for n in ("train", "test") if n in ds.splits] or sorted(ds.splits))
            todo = sum(len(s) for s in (ds.split(n) for n in used)
                       if (cell.model, cell.dataset, s.hash, kind) not in cached)
            key = f"{cell.model}@{str(opts.device).split(':')[0]}"
            rate = rates.get(key)
            if rate is None:
                rate = _guess_rate(reg.model(cell.model).info, opts.device)
                guess = f"{cell.model} {rate:.0f} img/s (default for its width; not measured here yet)"
                if todo and guess not in d.guesses:
                    d.guesses.append(guess)
            d.extraction_s += todo / rate
            est += todo / rate
        tkey = f"{cell.task}|{cell.dataset}"
        if tkey not in task_cache:
            task_cache[tkey] = (_task_seconds(opts.out, cell.task)
                                or read_task_time(r.store.root, cell.task, cell.dataset, opts.device))
            guess = f"{cell.task} {DEFAULT_TASK_S:.0f}s per cell (never measured here)"
            if task_cache[tkey] is None and guess not in d.guesses:
                d.guesses.append(guess)
        t = task_cache[tkey] if task_cache[tkey] is not None else DEFAULT_TASK_S
        d.task_s += t
        d.planned.append((cell, est + t))
    return d


def _stored_record(r: Runner, cell: Cell, chash: str) -> Path | None:
    """The record a run would reuse for this cell (read-only: a bad record is not moved aside here)."""
    if r.opts.overwrite == "always":
        return None
    path = record_path(r.opts.out, cell.model, cell.task, cell.dataset, cell.seed, chash)
    if r.opts.overwrite == "never":
        d = cell_dir(r.opts.out, cell.model, cell.task, cell.dataset)
        for cand in sorted(d.glob(f"seed{cell.seed}*.json")) if d.is_dir() else []:
            rec = _try_read(cand)
            if rec is not None and (rec.model, rec.task, rec.dataset, rec.seed) == (
                    cell.model, cell.task, cell.dataset, cell.seed):
                return cand
        return None
    rec = _try_read(path) if path.exists() else None
    return path if rec is not None and r._identity_problem(rec, cell, chash) is None else None
