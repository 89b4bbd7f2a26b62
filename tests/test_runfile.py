"""Run files (`dermbench run --config FILE`): parsing, validation and conflicts with flags."""

from pathlib import Path

import pytest

from dermbench import runfile
from dermbench.api import DermbenchError

SUITES = Path(__file__).resolve().parents[1] / "suites"


def _write(tmp_path, text):
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    return p


def test_shipped_suites_parse_and_translate():
    names = sorted(p.stem for p in SUITES.glob("*.yaml"))
    assert {"demo", "lite", "dermino-paper"} <= set(names)
    for p in SUITES.glob("*.yaml"):
        data, digest = runfile.load(p)
        vals = runfile.to_cli_values(data)
        assert vals["model"] and len(digest) == 64


def test_translation_matches_flag_spelling(tmp_path):
    p = _write(tmp_path, """
models: [random-vit, dermino-random]
tasks: retrieval,probe
datasets: [ph2]
seeds: [0, 1]
data_root: {ph2: /data/ph2, ham10000: /data/ham}
task_opts: {probe: {epochs: 10, solver: adam}, retrieval: {k: 7}}
dataset_opts: {n: 200, include: [a, b]}
n_boot: 500
skip_bad_images: true
""")
    data, digest = runfile.load(p)
    v = runfile.to_cli_values(data)
    assert v["model"] == "random-vit,dermino-random"
    assert v["task"] == "retrieval,probe"
    assert v["seed"] == "0,1"
    assert v["data_root"] == ["ph2=/data/ph2", "ham10000=/data/ham"]
    assert sorted(v["task_opt"]) == ["probe.epochs=10", "probe.solver=adam", "retrieval.k=7"]
    assert v["dataset_opt"] == ["n=200", 'include=["a", "b"]']
    assert v["n_boot"] == 500 and v["skip_bad_images"] is True
    # the hash is of the file's bytes: editing the file changes it
    p.write_text(p.read_text() + "\n# edited\n")
    assert runfile.load(p)[1] != digest


@pytest.mark.parametrize("text, needle", [
    ("models: [a]\nmodel_optz: {x: 1}\n", "unknown key(s) ['model_optz']"),
    ("models: [a]\nn_boot: many\n", "'n_boot' must be an integer"),
    ("models: [a]\ntask_opts: {probe: 3}\n", "'task_opts' must be a mapping task: {option: value}"),
    ("tasks: [probe]\n", "'models:' is required"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("models: [a\n", "not valid YAML"),
])
def test_bad_run_files_name_the_key(tmp_path, text, needle):
    with pytest.raises(DermbenchError) as e:
        runfile.load(_write(tmp_path, text))
    assert needle in str(e.value) and "grid.yaml" in str(e.value)


def test_missing_run_file_points_at_suites(tmp_path):
    with pytest.raises(DermbenchError, match="suites/"):
        runfile.load(tmp_path / "nope.yaml")


def test_conflicting_flag_is_an_error_equal_flag_is_not(tmp_path):
    p = tmp_path / "g.yaml"
    file_vals = {"n_boot": 500, "model": "random-vit"}
    merged = runfile.merge(p, file_vals, {"n_boot": 1000, "model": None, "device": "cpu"}, explicit=set())
    assert merged["n_boot"] == 500 and merged["device"] == "cpu"
    assert runfile.merge(p, file_vals, {"n_boot": 500}, explicit={"n_boot"})["n_boot"] == 500
    with pytest.raises(DermbenchError, match="--n-boot 1000 conflicts with 'n_boot' = 500"):
        runfile.merge(p, file_vals, {"n_boot": 1000}, explicit={"n_boot"})
