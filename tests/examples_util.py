"""The example plugin packages of examples/, installed once per test session the way an outside author
installs them: built from a copy (no build/ or egg-info left in the repo), not editable, into one target
folder that the tests put on PYTHONPATH of fresh ``dermbench`` processes. The shared virtualenv is untouched."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: package folder -> import name
PACKAGES = {
    "dermbench-colour-hist": "dermbench_colour_hist",
    "dermbench-example-task": "dermbench_prototype",
    "dermbench-example-dataset": "dermbench_lesion_manifest",
}
BIN = Path(sys.executable).parent


@functools.lru_cache(maxsize=None)
def installed_examples() -> Path:
    """The site folder holding all three examples (one pip call per session)."""
    base = Path(tempfile.mkdtemp(prefix="dermbench-examples-"))
    atexit.register(shutil.rmtree, base, True)
    srcs = []
    for folder in PACKAGES:
        src = base / "src" / folder
        shutil.copytree(EXAMPLES / folder, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        srcs.append(str(src))
    target = base / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--target", str(target), *srcs],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return target


def env(site: Path, tmp: Path) -> dict[str, str]:
    """A fresh process's environment: the examples importable, an isolated cache, every plugin loaded."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(site) + os.pathsep + e.get("PYTHONPATH", "")
    e["HF_HUB_OFFLINE"] = "1"
    e["DERMBENCH_CACHE"] = str(tmp / "cache")
    e["COLUMNS"] = "250"  # rich tables unfolded
    e.pop("DERMBENCH_LOAD_PLUGINS", None)
    e.pop("DERMBENCH_DEBUG", None)
    return e


def dermbench(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dermbench"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def python(code: str, env: dict[str, str], cwd: Path, timeout: int = 600) -> str:
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def records(results: Path, task: str | None = None) -> list[dict]:
    """Every result record under ``results`` (whatever the path layout), optionally of one task."""
    import json

    out = []
    for p in sorted(results.rglob("*.json")):
        if p.name.endswith(".error.json"):
            continue
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(rec, dict) and "metrics" in rec and (task is None or rec.get("task") == task):
            out.append(rec)
    return out


RUN_MODELS = ("random-vit", "colour-hist")
RUN_TASKS = ("prototype", "retrieval")


@functools.lru_cache(maxsize=None)
def example_run() -> dict:
    """One `dermbench run` per session shared by the model and task example tests: both example-or-not models
    (random-vit, the colour-hist example) x the example task and retrieval on 36 dermsynth images."""
    site = installed_examples()
    tmp = Path(tempfile.mkdtemp(prefix="dermbench-example-run-"))
    atexit.register(shutil.rmtree, tmp, True)
    e = env(site, tmp)
    res = tmp / "results"
    p = dermbench(["run", "--model", ",".join(RUN_MODELS), "--task", ",".join(RUN_TASKS), "--dataset", "dermsynth",
                   "--dataset-opt", "n=36", "--out", str(res), "--n-boot", "200", "--quiet"], e, tmp)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"site": site, "tmp": tmp, "env": e, "results": res}
