"""The CLI as a user meets it: exit codes, messages naming the fix, listing, cache commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dermbench.cli import parse_kv, parse_value


def dermbench(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermbench", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_unknown_model_lists_valid_names_and_fails():
    r = dermbench("run", "--model", "dinov3-b", "--task", "probe", "--dataset", "ph2")
    assert r.returncode == 2
    assert "unknown model 'dinov3-b'" in r.stderr and "random-vit" in r.stderr
    assert "Traceback" not in r.stderr
    r = dermbench("run", "--model", "dinov3-b", "--task", "probe", "--dataset", "ph2", "--debug")
    assert r.returncode == 2 and "unknown model 'dinov3-b'" in r.stderr.splitlines()[-1]
    assert "Traceback (most recent call last)" in r.stderr and "plugins.py" in r.stderr


def test_unknown_task_and_dataset_fail_with_the_valid_list():
    r = dermbench("run", "--model", "random-vit", "--task", "knn", "--dataset", "dermsynth")
    assert r.returncode == 2 and "unknown task 'knn'" in r.stderr and "retrieval" in r.stderr
    r = dermbench("run", "--model", "random-vit", "--task", "probe", "--dataset", "ph3")
    assert r.returncode == 2 and "Did you mean ph2" in r.stderr


def test_missing_data_root_says_where_files_are_expected(tmp_path):
    r = dermbench("run", "--model", "random-vit", "--task", "probe", "--dataset", "ph2", "--out", str(tmp_path),
                  "--quiet")
    assert r.returncode == 1
    assert "--data-root" in (r.stdout + r.stderr) or "--data-root" in _errors(tmp_path)


def _errors(out) -> str:
    return "\n".join(json.loads(p.read_text())["error"] for p in out.rglob("*.error.json"))


def test_bad_task_option_is_refused_before_any_work():
    r = dermbench("run", "--model", "random-vit", "--task", "retrieval", "--task-opt", "kk=3")
    assert r.returncode == 2 and "has an option 'kk'" in r.stderr and "retrieval: " in r.stderr


def test_list_models_json_carries_license_and_commercial_flag():
    r = dermbench("list", "models", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["dinov2-b"]["license"] == "Apache-2.0" and rows["dinov2-b"]["commercial"] == "yes"
    r2 = dermbench("list", "models", "--json", "--commercial-only")
    assert all(row["commercial"] == "yes" for row in json.loads(r2.stdout))


def test_plugins_listing_shows_hooks_and_versions():
    r = dermbench("plugins", "--json")
    d = json.loads(r.stdout)
    rows = {p["name"]: p for p in d["plugins"]}
    assert rows["tasks-probe"]["hooks"] == ["register_tasks"] and rows["tasks-probe"]["version"] == "0.1.0"
    assert d["errors"] == []


def test_cache_ls_and_clear(tmp_path):
    cache = tmp_path / "cache"
    r = dermbench("run", "--model", "random-vit", "--task", "retrieval", "--dataset", "dermsynth",
                  "--dataset-opt", "n=16", "--dataset-opt", "size=48", "--n-boot", "50", "--out", str(tmp_path / "o"),
                  "--cache-dir", str(cache), "--quiet")
    assert r.returncode == 0, r.stderr
    ls = dermbench("cache", "ls", "--cache-dir", str(cache))
    assert "random-vit" in ls.stdout and "dermsynth" in ls.stdout
    cl = dermbench("cache", "clear", "--cache-dir", str(cache), "--model", "random-vit")
    assert "removed 2 feature entries" in cl.stdout  # train + test split
    assert not list((cache / "features").rglob("*.npz"))


@pytest.mark.parametrize("raw,val", [("3", 3), ("0.5", 0.5), ("true", True), ("none", None), ("[1,2]", [1, 2]),
                                     ("vit_b", "vit_b")])
def test_option_values_are_typed(raw, val):
    assert parse_value(raw) == val
    assert parse_kv([f"a={raw}"], "--x") == {"a": val}


def test_demo_command_runs_and_prints_the_compact_leaderboard(tmp_path):
    env = {**__import__("os").environ, "DERMBENCH_CACHE": str(tmp_path / "cache")}
    r = dermbench("demo", "--models", "random-vit", "--n", "24", "--task", "retrieval,probe", "--out",
                  str(tmp_path / "demo"), env=env)
    assert r.returncode == 0, r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("| random-vit |")]
    assert table and "probe/dermsynth auroc_macro" in r.stdout
    md = (tmp_path / "demo" / "leaderboard" / "leaderboard.md").read_text()
    assert "Retrieval · DermSynth · macro F1" in md and (tmp_path / "demo" / "leaderboard" / "leaderboard.html").exists()


def test_data_root_per_dataset_and_seed_parsing(tmp_path):
    """--data-root PATH applies to every dataset, --data-root NAME=PATH to one (repeatable); seeds are checked."""
    from dermbench.api import DermbenchError
    from dermbench.cli import parse_data_roots, parse_seeds
    from dermbench.runner import RunOptions

    root, roots = parse_data_roots([str(tmp_path), "ph2=/data/ph2", "ham10000=~/ham"])
    assert root == tmp_path and roots["ph2"] == Path("/data/ph2") and str(roots["ham10000"]).endswith("/ham")
    o = RunOptions(data_root=root, data_roots=roots)
    assert o.root_for("ph2") == Path("/data/ph2") and o.root_for("isic2018") == tmp_path
    odd = tmp_path / "a=b"  # an existing folder whose name holds '=' stays a plain root
    odd.mkdir()
    assert parse_data_roots([str(odd)]) == (odd, {})
    with pytest.raises(DermbenchError, match="unknown dataset 'ph3'"):
        parse_data_roots(["ph3=/x"])
    with pytest.raises(DermbenchError, match="given twice"):
        parse_data_roots(["/a", "/b"])
    assert parse_seeds("0, 2,1") == [0, 2, 1]
    for bad, msg in (("abc", "not an integer"), ("", "is empty"), ("-1", "negative"), ("1,1", "repeats")):
        with pytest.raises(DermbenchError, match=msg):
            parse_seeds(bad)
