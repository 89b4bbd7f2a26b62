"""Versioned result records: one JSON file per (model, task, dataset, seed, config), written atomically.

A record holds the scored metrics with CIs, the per-sample predictions they were computed from (so any
statistic can be recomputed and any two models compared on identical resamples later), and provenance.
Leaderboards are rebuilt from these files only.

Identity: a record names its model, task, dataset and seed, the hash of its split and ``config_hash`` — the
hash of everything that changes its numbers except the training seed (``config`` shows exactly what was
hashed). Its path ``<out>/<dataset>/<task>/<model>/seed<seed>-<config_hash[:12]>.json`` is injective (names are
kept when plain, otherwise encoded with a hash suffix) and contained in ``<out>``; a rerun with other options
writes alongside the old record instead of replacing it. Schema 1.0 records (``seed<N>.json``) are still read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dermbench.api import DermbenchError

SCHEMA_VERSION = "2.0"
#: schema versions this code reads; 1.0 records (no model name in the config hash, path ``seed<N>.json``) are
#: read as legacy records: shown, never reused by ``run`` (their identity is incomplete)
READABLE_SCHEMAS = ("1.0", "2.0")
LEGACY_SCHEMAS = ("1.0",)
#: length of the config-hash prefix in record file names
PATH_HASH_LEN = 12

_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_RECORD_NAME = re.compile(r"^seed(-?\d+)(?:-([0-9a-f]+))?\.json$")


@dataclass
class ResultRecord:
    model: str
    task: str
    dataset: str
    seed: int
    config: dict[str, Any]  # exactly what config_hash hashes: everything that changes numbers but the seed
    config_hash: str
    metrics: dict[str, dict[str, Any]]  # metric -> {value, ci_low, ci_high, ci_method, n_boot, n, ...}
    predictions: dict[str, Any]  # ids, y_true, scores, y_pred, per-sample arrays (lists)
    split: dict[str, Any]  # name, hash, n, sizes, source
    model_info: dict[str, Any]  # license, commercial_use, trained_on, embed_dim, weights_id, ...
    dataset_info: dict[str, Any]  # license, aliases, skipped counts, ...
    provenance: dict[str, Any]  # versions, git hash, plugins, device, execution options, timings
    extra: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.model, self.task, self.dataset, self.seed)

    @property
    def legacy(self) -> bool:
        """A schema-1.0 record: readable, but its config hash does not cover the model name or plugins."""
        return self.schema_version in LEGACY_SCHEMAS

    @property
    def split_hash(self) -> str:
        return str(self.split.get("hash") or "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> "ResultRecord":
        problems = record_problems(d)
        if problems:
            raise DermbenchError(
                f"{source}: not a valid dermbench result record: {'; '.join(problems)}. "
                "`dermbench run` moves such a file aside and recomputes the cell."
            )
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in known}
        for k in ("config", "model_info", "dataset_info", "provenance", "extra"):
            kwargs.setdefault(k, {})
        kwargs.setdefault("config_hash", "")
        return cls(**kwargs)


def record_problems(d: Any) -> list[str]:
    """What is wrong with a parsed record (empty when it is well formed): schema, identity and shapes."""
    if not isinstance(d, dict):
        return [f"top level is a {type(d).__name__}, expected an object"]
    ver = d.get("schema_version")
    if ver not in READABLE_SCHEMAS:
        return [f"result schema version {ver!r} is not readable by this dermbench (reads "
                f"{', '.join(READABLE_SCHEMAS)}); upgrade dermbench or re-run the cell with --overwrite always"]
    out = []
    missing = [k for k in ("model", "task", "dataset", "seed", "metrics", "predictions", "split") if k not in d]
    if ver not in LEGACY_SCHEMAS:
        missing += [k for k in ("config", "config_hash") if k not in d]
    if missing:
        return [f"lacks {missing}; the file is not a complete dermbench record"]
    for k in ("model", "task", "dataset"):
        if not isinstance(d[k], str) or not d[k]:
            out.append(f"{k} is {d[k]!r}, expected a non-empty string")
    if not isinstance(d["seed"], int) or isinstance(d["seed"], bool):
        out.append(f"seed is {d['seed']!r}, expected an integer")
    if ver not in LEGACY_SCHEMAS and (not isinstance(d["config_hash"], str) or not d["config_hash"]):
        out.append(f"config_hash is {d['config_hash']!r}, expected a non-empty string")
    for k in ("config", "model_info", "dataset_info", "provenance", "extra"):
        if k in d and not isinstance(d[k], dict):
            out.append(f"{k} is a {type(d[k]).__name__}, expected an object")
    split = d["split"]
    if not isinstance(split, dict):
        out.append(f"split is a {type(split).__name__}, expected an object")
    elif ver not in LEGACY_SCHEMAS and not isinstance(split.get("hash"), str):
        out.append("split has no hash")
    metrics = d["metrics"]
    if not isinstance(metrics, dict):
        out.append(f"metrics is a {type(metrics).__name__}, expected an object")
    else:
        for name, m in metrics.items():
            if not isinstance(m, dict):
                out.append(f"metric {name!r} is a {type(m).__name__}, expected an object with 'value'")
                continue
            v = m.get("value")
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                out.append(f"metric {name!r} value {v!r} is not a number")
    preds = d["predictions"]
    if not isinstance(preds, dict):
        out.append(f"predictions is a {type(preds).__name__}, expected an object of per-sample arrays")
    else:
        ids = preds.get("ids")
        if not isinstance(ids, list):
            out.append("predictions has no 'ids' list")
        else:
            bad = {k: len(v) for k, v in preds.items() if isinstance(v, list) and len(v) != len(ids)}
            if bad:
                out.append(f"predictions arrays differ in length from ids ({len(ids)}): {bad}")
            if isinstance(split, dict) and isinstance(split.get("n"), int) and split["n"] != len(ids):
                out.append(f"split n={split['n']} but predictions hold {len(ids)} ids")
    return out


# --------------------------------------------------------------------------------------------------
# Names and paths


def check_name(name: Any, what: str = "name") -> str:
    """A model/task/dataset name that is safe to derive file names from, or a DermbenchError saying why not."""
    if not isinstance(name, str) or not name.strip():
        raise DermbenchError(f"{what} {name!r} is empty; give it a non-empty name")
    bad = [c for c in name if c in "/\\\0" or ord(c) < 32 or ord(c) == 127]
    if bad or name in (".", "..") or name != name.strip():
        raise DermbenchError(
            f"{what} {name!r} cannot be used: names must not be '.'/'..', contain '/', '\\', control characters "
            "or surrounding spaces (they would escape or confuse the results and cache folders). Rename it."
        )
    return name


def encode_name(name: str) -> str:
    """A file-name component for ``name``: itself when plain, else a readable stem plus a hash of the name.

    Injective: plain names never contain '~', encoded ones always do, and the hash tells encoded names apart.
    """
    check_name(name)
    if _PLAIN.match(name) and len(name) <= 100:
        return name
    stem = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)[:60].lstrip(".") or "_"
    return f"{stem}~{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def _contained(out: Path, path: Path) -> Path:
    root = Path(out).resolve()
    full = path.resolve()
    if full != root and root not in full.parents:
        raise DermbenchError(f"record path {full} would lie outside the results folder {root}")
    return path


def cell_dir(out: Path, model: str, task: str, dataset: str) -> Path:
    """``<out>/<dataset>/<task>/<model>``: the folder holding every record of one cell."""
    return _contained(out, Path(out) / encode_name(dataset) / encode_name(task) / encode_name(model))


def record_path(out: Path, model: str, task: str, dataset: str, seed: int, config_hash: str | None = None) -> Path:
    """``<out>/<dataset>/<task>/<model>/seed<seed>-<config_hash[:12]>.json`` (without a hash: the legacy path)."""
    name = f"seed{int(seed)}" + (f"-{_hash_part(config_hash)}" if config_hash is not None else "") + ".json"
    return _contained(out, cell_dir(out, model, task, dataset) / name)


def _hash_part(config_hash: str) -> str:
    h = str(config_hash)[:PATH_HASH_LEN]
    if not re.fullmatch(r"[0-9a-f]+", h):
        raise DermbenchError(f"config hash {config_hash!r} is not hexadecimal")
    return h


def artifacts_dir(out: Path, model: str, task: str, dataset: str, seed: int, config_hash: str | None = None) -> Path:
    return record_path(out, model, task, dataset, seed, config_hash).with_suffix("")  # .../seed0-<hash>/


def is_record_file(p: Path) -> bool:
    return bool(_RECORD_NAME.match(p.name))


def _safe(name: str) -> str:  # kept for old callers; encode_name is the injective form
    return encode_name(name)


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
    """Write ``rec`` atomically at its identity path; returns the path."""
    path = record_path(out, rec.model, rec.task, rec.dataset, rec.seed, rec.config_hash or None)
    d = rec.to_dict()
    problems = record_problems(json.loads(json.dumps(_jsonable(d), allow_nan=False)))
    if problems and not rec.legacy:
        raise DermbenchError(f"refusing to write a malformed record for {rec.key}: {'; '.join(problems)}")
    atomic_write_text(path, json.dumps(_jsonable(d), indent=1, allow_nan=False))
    return path


def read_record(path: Path) -> ResultRecord:
    try:
        d = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DermbenchError(f"{path}: not valid JSON ({e}); the file is truncated or not a record") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DermbenchError(f"{path}: cannot read ({e})") from e
    return ResultRecord.from_dict(d, source=str(path))


def move_aside(path: Path, why: str = "bad") -> Path:
    """Rename a bad record to ``<name>.<why>-<timestamp>`` (kept for inspection, no longer read as a record)."""
    dest = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, dest)
    return dest


def iter_record_paths(results_dir: Path) -> Iterator[Path]:
    root = Path(results_dir)
    if not root.exists():
        return iter(())
    return iter(sorted(p for p in root.rglob("seed*.json") if is_record_file(p) and p.is_file()))


def load_records(results_dir: Path, *, strict: bool = False) -> list[ResultRecord]:
    """Every readable record under ``results_dir``; unreadable ones are reported (or raised if strict)."""
    recs, bad = scan_records(results_dir)
    for p, why in bad:
        if strict:
            raise DermbenchError(why if why.startswith(str(p)) else f"{p}: {why}")
        print(f"warning: skipping {why}", file=sys.stderr)
    return recs


def find_record(results_dir: Path, model: str, task: str, dataset: str, seed: int | None = None,
                config_hash: str | None = None) -> ResultRecord:
    """The record of one cell (lowest seed when ``seed`` is None), with a clear error when absent or ambiguous.

    Records of the cell made with different configurations are never mixed: when several exist and
    ``config_hash`` does not choose one, the error lists them.
    """
    recs = [r for r in scan_records(results_dir)[0] if (r.model, r.task, r.dataset) == (model, task, dataset)]
    if seed is not None:
        recs = [r for r in recs if r.seed == seed]
    if config_hash:
        recs = [r for r in recs if r.config_hash.startswith(config_hash)]
    if not recs:
        raise DermbenchError(
            f"no result for model={model!r} task={task!r} dataset={dataset!r}"
            f"{'' if seed is None else f' seed={seed}'}{'' if not config_hash else f' config={config_hash}'} under "
            f"{results_dir}; run `dermbench run --model {model} --task {task} --dataset {dataset} "
            f"--out {results_dir}` first"
        )
    low = min(r.seed for r in recs)
    recs = [r for r in recs if r.seed == low]
    hashes = sorted({r.config_hash for r in recs})
    if len(hashes) > 1:
        raise DermbenchError(
            f"{len(hashes)} records of model={model!r} task={task!r} dataset={dataset!r} seed={low} were made with "
            f"different configurations (config hashes {', '.join(h[:PATH_HASH_LEN] for h in hashes)}); they are "
            "never mixed. Choose one by its config hash, or move the others out of the results folder."
        )
    return recs[0]


def config_key_without_model(rec: ResultRecord) -> str:
    """Hash of a record's config without its model-specific parts: two models' records with equal keys were
    run with the same task, protocol, dataset, options and statistics (the condition for comparing them)."""
    from dermbench.api import stable_hash

    cfg = {k: v for k, v in rec.config.items() if k not in ("model", "weights", "model_opts")}
    plugins = dict(cfg.get("plugins") or {})
    plugins.pop("model", None)
    cfg["plugins"] = plugins
    return stable_hash(cfg)


def _jsonable(x: Any) -> Any:
    """numpy/torch scalars and arrays to plain JSON; NaN/inf become None (JSON has no NaN)."""
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


def plugin_provenance(kind: str, name: str) -> dict[str, str]:
    """The plugin that registered a model/task/dataset: entry-point name, distribution and version.

    Part of config hashes and feature-cache keys, so upgrading a plugin never reuses its stale numbers.
    """
    from dermbench import plugins

    reg = plugins.registry()
    table = {"model": reg.models, "task": reg.tasks, "dataset": reg.datasets}[kind]
    entry = table.get(name)
    if entry is None:
        return {"plugin": "?", "dist": "?", "version": "?"}
    meta = plugins.pm_meta.get(entry.plugin, {})
    return {"plugin": entry.plugin, "dist": str(meta.get("dist", "?")), "version": str(meta.get("version", "?"))}


# --------------------------------------------------------------------------------------------------
# Scanning


def scan_records(results_dir: Path) -> tuple[list[ResultRecord], list[tuple[Path, str]]]:
    """Valid records under ``results_dir`` and ``(path, reason)`` for every unreadable, truncated or malformed
    one. Never raises on a bad file: callers list the bad ones (leaderboard output, run's recompute)."""
    good: list[ResultRecord] = []
    bad: list[tuple[Path, str]] = []
    for p in iter_record_paths(results_dir):
        try:
            good.append(read_record(p))
        except DermbenchError as e:
            bad.append((p, str(e)))
        except Exception as e:  # anything else a damaged file can raise
            bad.append((p, f"{p}: {type(e).__name__}: {e}"))
    return good, bad
