"""examples/dermbench-example-task, installed as an outside author would (tests/examples_util.py) and run end
to end: registered through its entry point, `plugins check` passes, `dermbench run` writes records with two
models (random-vit and the example colour-hist model), and its results reach `leaderboard` and `compare`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from examples_util import EXAMPLES, RUN_MODELS, dermbench, example_run, python, records

PKG = EXAMPLES / "dermbench-example-task"
MODELS = RUN_MODELS


@pytest.fixture(scope="module")
def run() -> dict:
    """The session's shared `dermbench run` (examples_util.example_run): random-vit and colour-hist x prototype
    and retrieval on 36 dermsynth images."""
    return example_run()


def test_example_task_registers_through_its_entry_point(run):
    out = python(
        "from dermbench.plugins import registry, plugin_rows\n"
        "e = registry().task('prototype')\n"
        "row = [p for p in plugin_rows() if p['name'] == 'prototype'][0]\n"
        "print(e.plugin, row['dist'], row['version'], ','.join(row['hooks']), e.info.primary_metric,"
        " sorted(e.info.defaults))\n",
        run["env"], run["tmp"])
    assert out.split()[:5] == ["prototype", "dermbench-example-task", "0.1.0", "register_tasks", "auroc_macro"]
    assert "['temperature', 'test_split', 'train_split']" in out


def test_example_task_records(run):
    recs = {r["model"]: r for r in records(run["results"], "prototype")}
    assert sorted(recs) == sorted(MODELS)
    for rec in recs.values():
        pred = rec["predictions"]
        n = len(pred["ids"])
        assert n == 18 and rec["split"]["n"] == 18  # the official test half of 36 images
        scores = np.asarray(pred["scores"])
        assert scores.shape == (18, 6) and np.allclose(scores.sum(1), 1.0)
        assert np.array_equal(np.asarray(pred["y_pred"]), scores.argmax(1))  # softmax keeps the argmax
        auroc = rec["metrics"]["auroc_macro"]
        assert 0.0 <= auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"] <= 1.0
        assert set(rec["metrics"]) == {"auroc_macro", "balanced_accuracy", "accuracy", "f1_macro", "ece", "brier"}
        assert rec["extra"]["n_train"] == 18 and len(rec["extra"]["prototype_cosine"]) == 6
    # both models were scored on the same split: paired comparisons are possible
    assert recs["random-vit"]["split"]["hash"] == recs["colour-hist"]["split"]["hash"]


def test_example_task_in_leaderboard_and_compare(run):
    recs = {r["model"]: r for r in records(run["results"], "prototype")}
    lb = dermbench(["leaderboard", "--results", str(run["results"]), "--format", "md,json", "--out",
                    str(run["tmp"] / "board"), "--no-plots"], run["env"], run["tmp"])
    assert lb.returncode == 0, lb.stdout[-3000:] + lb.stderr[-3000:]
    assert "prototype" in lb.stdout.lower()
    for m in MODELS:
        assert m in lb.stdout
        assert f"{recs[m]['metrics']['auroc_macro']['value']:.3f}" in lb.stdout
    cmp = dermbench(["compare", *MODELS, "--task", "prototype", "--dataset", "dermsynth", "--results",
                     str(run["results"])], run["env"], run["tmp"])
    assert cmp.returncode == 0, cmp.stdout[-3000:] + cmp.stderr[-3000:]
    out = json.loads(cmp.stdout)
    assert (out["task"], out["dataset"], out["model_a"], out["model_b"]) == ("prototype", "dermsynth", *MODELS)
    by_metric = {c["metric"]: c for c in out["comparisons"]}
    assert set(by_metric) == set(recs["random-vit"]["metrics"])
    auroc = by_metric["auroc_macro"]
    a, b = (recs[m]["metrics"]["auroc_macro"]["value"] for m in MODELS)
    assert auroc["value_a"] == pytest.approx(a) and auroc["value_b"] == pytest.approx(b)
    assert auroc["diff"] == pytest.approx(a - b) and auroc["n"] == 18  # paired on the same 18 test images
    assert auroc["ci_low"] <= auroc["diff"] <= auroc["ci_high"] and 0 < auroc["p_value"] <= 1


def test_plugins_check_passes_for_the_example_task(run):
    p = dermbench(["plugins", "check", "prototype", "--n", "36"], run["env"], run["tmp"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "run on 36 dermsynth images" in p.stdout and "OK" in p.stdout


class _Ctx:
    """The two TaskContext members the prototype task uses, over fixed features (unit test of the arithmetic)."""

    def __init__(self, dataset, feats):
        self.dataset, self._feats = dataset, feats

    def split(self, name):
        return self.dataset.split(name)

    def features(self, split):
        return self._feats[np.asarray(split.indices)]

    def log(self, message):
        pass


def test_prototype_arithmetic_by_hand():
    from dermbench.api import Dataset, DatasetInfo, Sample

    sys.path.insert(0, str(PKG / "src"))
    try:
        from dermbench_prototype import Prototype
    finally:
        sys.path.remove(str(PKG / "src"))
    info = DatasetInfo(name="toy", label_names=("a", "b"), needs_root=False)
    samples = [Sample(f"s{i}", image=f"s{i}.png", label=y) for i, y in enumerate([0, 0, 1, 1, 0, 1])]
    ds = Dataset(info, samples, {"train": [0, 1, 2, 3], "test": [4, 5]}, label_names=["a", "b"])
    feats = np.array([[2, 0], [1, 1], [0, 3], [-1, 1], [1, 0.2], [0, 1]], dtype=np.float32)
    out = Prototype(temperature=0.5).run(_Ctx(ds, feats))
    # SimpleShot CL2N by hand: centre on the training mean, unit-normalise, class means re-normalised
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    centred = unit(feats.astype(np.float64) - feats[:4].mean(axis=0))
    p0, p1 = unit(centred[[0, 1]].mean(axis=0)), unit(centred[[2, 3]].mean(axis=0))
    sims = np.stack([centred[4:] @ p0, centred[4:] @ p1], 1)
    expected = np.exp(sims / 0.5) / np.exp(sims / 0.5).sum(1, keepdims=True)
    assert np.allclose(out.predictions["scores"], expected)
    assert out.predictions["y_pred"].tolist() == [0, 1] and out.predictions["ids"] == ["s4", "s5"]
    assert out.predictions["y_true"].tolist() == [0, 1] and out.split.name == "test"
    assert out.extra["prototype_cosine"][0][1] == pytest.approx(float(p0 @ p1), abs=1e-4)


def test_prototype_refuses_bad_options_and_missing_classes():
    from dermbench.api import Dataset, DatasetInfo, DermbenchError, Sample

    sys.path.insert(0, str(PKG / "src"))
    try:
        from dermbench_prototype import Prototype
    finally:
        sys.path.remove(str(PKG / "src"))
    with pytest.raises(DermbenchError, match=r"temperature=0 must be > 0, e.g. --task-opt prototype.temperature"):
        Prototype(temperature=0)
    info = DatasetInfo(name="toy", label_names=("a", "b"), needs_root=False)
    samples = [Sample(f"s{i}", image=f"s{i}.png", label=y) for i, y in enumerate([0, 0, 1])]
    ds = Dataset(info, samples, {"train": [0, 1], "test": [2]}, label_names=["a", "b"])
    with pytest.raises(DermbenchError, match=r"no training image of class\(es\) \['b'\] in toy:train"):
        Prototype().run(_Ctx(ds, np.eye(3, 2, dtype=np.float32)))
