"""Run files: a YAML grid that `dermbench run --config FILE` runs exactly as the equivalent flags would.

A run file is only another spelling of the command line, so it is translated into the same values the flags
produce and then goes through the same validation. Keys that the user also passed as flags with a different
value are a conflict (an error naming both), never a silent override. Relative paths are taken relative to the
current directory, as flags are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from dermbench.api import DermbenchError

#: run-file key -> (run() parameter, kind). kinds: names (list or comma string), str, int, bool, path, kv, nested-kv
KEYS: dict[str, tuple[str, str]] = {
    "models": ("model", "names"),
    "tasks": ("task", "names"),
    "datasets": ("dataset", "names"),
    "seeds": ("seed", "names"),
    "data_root": ("data_root", "roots"),
    "out": ("out", "path"),
    "device": ("device", "str"),
    "overwrite": ("overwrite", "str"),
    "weights": ("weights", "map"),
    "task_opts": ("task_opt", "nested"),
    "dataset_opts": ("dataset_opt", "kv"),
    "model_opts": ("model_opt", "kv"),
    "split_seed": ("split_seed", "int"),
    "cache_dir": ("cache_dir", "path"),
    "batch_size": ("batch_size", "int"),
    "n_boot": ("n_boot", "int"),
    "ci": ("ci", "str"),
    "protocol": ("protocol", "str"),
    "commercial_only": ("commercial_only", "bool"),
    "skip_bad_images": ("skip_bad_images", "bool"),
    "shard": ("shard", "str"),
}
#: keys a run file may carry that are documentation only
META_KEYS = ("name", "description", "expected_minutes")


def load(path: Path) -> tuple[dict[str, Any], str]:
    """Parse and validate a run file; returns (mapping of run-file keys, sha256 of the file's bytes)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DermbenchError(f"run file {path} not found; suites shipped with dermbench are in suites/ "
                             "(e.g. --config suites/lite.yaml)")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        raise DermbenchError(f"run file {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DermbenchError(f"run file {path}: the top level must be a mapping of keys such as models:, tasks:")
    unknown = sorted(set(data) - set(KEYS) - set(META_KEYS))
    if unknown:
        raise DermbenchError(f"run file {path}: unknown key(s) {unknown}; valid keys are "
                             f"{', '.join(sorted([*KEYS, *META_KEYS]))}")
    for key, value in data.items():
        if key in KEYS:
            _check_type(path, key, KEYS[key][1], value)
    if "models" not in data:
        raise DermbenchError(f"run file {path}: 'models:' is required (a list of model names)")
    return data, hashlib.sha256(raw).hexdigest()


def _check_type(path: Path, key: str, kind: str, value: Any) -> None:
    ok = {
        "names": isinstance(value, (str, int)) or (isinstance(value, list) and all(isinstance(v, (str, int)) for v in value)),
        "roots": isinstance(value, str) or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())),
        "path": isinstance(value, str),
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "map": isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
        "kv": isinstance(value, dict),
        "nested": isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()),
    }[kind]
    if not ok:
        want = {
            "names": "a list of names (or a comma-separated string)",
            "roots": "a path, or a mapping dataset: path",
            "path": "a path string", "str": "a string", "int": "an integer", "bool": "true or false",
            "map": "a mapping model: path", "kv": "a mapping key: value",
            "nested": "a mapping task: {option: value}",
        }[kind]
        raise DermbenchError(f"run file {path}: {key!r} must be {want}, got {value!r}")


def to_cli_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The run() parameter values the flags would have produced for this run file."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in META_KEYS:
            continue
        param, kind = KEYS[key]
        if kind == "names":
            out[param] = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
        elif kind == "roots":
            out[param] = [value] if isinstance(value, str) else [f"{k}={v}" for k, v in value.items()]
        elif kind == "path":
            out[param] = Path(value)
        elif kind == "map":
            out[param] = [f"{k}={v}" for k, v in value.items()]
        elif kind == "kv":
            out[param] = [f"{k}={_flag_value(v)}" for k, v in value.items()]
        elif kind == "nested":
            out[param] = [f"{t}.{k}={_flag_value(v)}" for t, opts in value.items() for k, v in opts.items()]
        else:
            out[param] = value
    return out


def _flag_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    if v is None:
        return "null"
    return str(v)


def merge(path: Path, file_values: Mapping[str, Any], cli_values: Mapping[str, Any], explicit: set[str]) -> dict[str, Any]:
    """CLI values with the run file's filled in; a flag given explicitly with a different value is a conflict."""
    merged = dict(cli_values)
    inverse = {param: key for key, (param, _) in KEYS.items()}
    for param, value in file_values.items():
        if param in explicit and _norm(cli_values.get(param)) != _norm(value):
            flag = "--" + param.replace("_", "-")
            raise DermbenchError(
                f"{flag} {cli_values.get(param)!r} conflicts with {inverse[param]!r} = {value!r} in run file {path}; "
                "drop the flag or edit the run file"
            )
        merged[param] = value
    return merged


def _norm(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v
