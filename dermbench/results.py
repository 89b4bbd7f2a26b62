"""Versioned result records: one JSON file per (model, task, dataset, seed), written atomically.

A record holds the scored metrics with CIs, the per-sample predictions they were computed from (so any
statistic can be recomputed and any two models compared on identical resamples later), and provenance.
Leaderboards are rebuilt from these files only.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dermbench.api import DermbenchError

SCHEMA_VERSION = "1.0"
#: schema versions this code reads (a migration goes here when the schema changes)
READABLE_SCHEMAS = ("1.0",)


@dataclass
class ResultRecord:
    model: str
    task: str
    dataset: str
    seed: int
    config: dict[str, Any]  # task params + run options that change numbers
    config_hash: str
    metrics: dict[str, dict[str, Any]]  # metric -> {value, ci_low, ci_high, ci_method, n_boot, n, ...}
    predictions: dict[str, Any]  # ids, y_true, scores, y_pred, per-sample arrays (lists)
    split: dict[str, Any]  # name, hash, n_train, n_test, source
    model_info: dict[str, Any]  # license, commercial_use, trained_on, embed_dim, weights_id, ...
    dataset_info: dict[str, Any]  # license, aliases, skipped counts, ...
    provenance: dict[str, Any]  # versions, git hash, device, dtype, timings
    extra: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.model, self.task, self.dataset, self.seed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "ResultRecord":
        ver = d.get("schema_version")
        if ver not in READABLE_SCHEMAS:
            raise DermbenchError(
                f"{source}: result schema version {ver!r} is not readable by this dermbench "
                f"(reads {', '.join(READABLE_SCHEMAS)}); upgrade dermbench or re-run the cell with --overwrite always"
            )
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("model", "task", "dataset", "seed", "metrics", "predictions", "split") if k not in d]
        if missing:
            raise DermbenchError(f"{source}: result record lacks {missing}; the file is not a dermbench record")
        kwargs = {k: v for k, v in d.items() if k in known}
        for k in ("config", "model_info", "dataset_info", "provenance", "extra"):
            kwargs.setdefault(k, {})
        kwargs.setdefault("config_hash", "")
        return cls(**kwargs)


def record_path(out: Path, model: str, task: str, dataset: str, seed: int) -> Path:
    """``<out>/<dataset>/<task>/<model>/seed<seed>.json`` — one obvious place per cell."""
    return Path(out) / _safe(dataset) / _safe(task) / _safe(model) / f"seed{seed}.json"


def artifacts_dir(out: Path, model: str, task: str, dataset: str, seed: int) -> Path:
    return record_path(out, model, task, dataset, seed).with_suffix("")  # .../seed0/


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace: a killed run never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_record(out: Path, rec: ResultRecord) -> Path:
    path = record_path(out, rec.model, rec.task, rec.dataset, rec.seed)
    atomic_write_text(path, json.dumps(_jsonable(rec.to_dict()), indent=1, allow_nan=False))
    return path


def read_record(path: Path) -> ResultRecord:
    try:
        d = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DermbenchError(f"{path}: not valid JSON ({e}); delete it and re-run that cell") from e
    return ResultRecord.from_dict(d, source=str(path))


def iter_record_paths(results_dir: Path) -> Iterator[Path]:
    root = Path(results_dir)
    if not root.exists():
        return iter(())
    return iter(sorted(p for p in root.rglob("seed*.json") if not p.name.startswith(".")))


def load_records(results_dir: Path, *, strict: bool = False) -> list[ResultRecord]:
    """Every readable record under ``results_dir``; unreadable ones are reported (or raised if strict)."""
    out = []
    for p in iter_record_paths(results_dir):
        try:
            out.append(read_record(p))
        except DermbenchError as e:
            if strict:
                raise
            print(f"warning: skipping {e}", file=sys.stderr)
    return out


def find_record(results_dir: Path, model: str, task: str, dataset: str, seed: int | None = None) -> ResultRecord:
    """The record of one cell (lowest seed when ``seed`` is None), with a clear error when absent."""
    base = record_path(results_dir, model, task, dataset, 0).parent
    paths = sorted(base.glob("seed*.json"))
    if seed is not None:
        paths = [p for p in paths if p.name == f"seed{seed}.json"]
    if not paths:
        raise DermbenchError(
            f"no result for model={model!r} task={task!r} dataset={dataset!r}"
            f"{'' if seed is None else f' seed={seed}'} under {results_dir}; run "
            f"`dermbench run --model {model} --task {task} --dataset {dataset} --out {results_dir}` first"
        )
    return read_record(paths[0])


def _jsonable(x: Any) -> Any:
    """numpy/torch scalars and arrays to plain JSON; NaN/inf become None (JSON has no NaN)."""
    import math

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


# --------------------------------------------------------------------------------------------------
# Provenance


def _git_hash() -> str:
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if r.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return r.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"


_PROV_CACHE: dict[str, Any] | None = None


def provenance(device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """Package versions, git hash, platform — computed once per process."""
    global _PROV_CACHE
    if _PROV_CACHE is None:
        from importlib import metadata

        versions = {}
        for pkg in ("dermbench", "torch", "torchvision", "timm", "numpy", "scikit-learn", "open_clip_torch",
                    "transformers", "pluggy"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        _PROV_CACHE = {
            "versions": versions,
            "git": _git_hash(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        }
    return {**_PROV_CACHE, "device": device, "dtype": dtype}
