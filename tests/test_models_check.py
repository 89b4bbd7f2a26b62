"""check_model: runs a model on dermsynth images and catches metadata that lies."""

from __future__ import annotations

import types
from dataclasses import replace

import torch

import models_util  # noqa: F401  (HF_HUB_OFFLINE)

from dermbench import hookimpl
from dermbench.check import check_model, format_report
from dermbench.plugins import register_plugin, unregister_plugin

torch.set_num_threads(2)


def test_check_random_vit_on_dermsynth():
    r = check_model("random-vit", n_images=2)
    assert r["ok"], format_report(r)
    assert r["images"] == "dermsynth" and r["embed_shape"] == [2, 384]
    assert r["patch_shapes"] == [[1, 384, 14, 14], [1, 384, 14, 14]]
    assert r["weights_id"] == "random:0" and r["img_per_s"] > 0


def test_check_reports_lies_and_missing_weights(monkeypatch, tmp_path):
    from dermbench_plugins.models.timm_models import SPECS, load_timm

    info, spec = SPECS["random-vit"]
    liar = replace(info, name="liar-vit", embed_dim=768, patch_size=8, license="unknown")

    def load(weights=None, device="cpu", **opts):
        bb = load_timm(info, spec, device=device, **opts)
        bb.info = liar
        return bb

    plugin = types.SimpleNamespace(register_models=hookimpl(lambda register: register(liar, load)))
    register_plugin(plugin, name="test-liar")
    try:
        r = check_model("liar-vit", n_images=2)
    finally:
        unregister_plugin("test-liar")
    failed = {c["check"]: c["detail"] for c in r["checks"] if not c["ok"]}
    assert not r["ok"]
    assert "(2, 384) vs (N, 768)" in failed["embed shape == (N, ModelInfo.embed_dim)"]
    assert "vs grid 28x28" in failed["patch_tokens -> (N, D, h, w)"]
    assert "metadata: license declared" in failed
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    r = check_model("dinov2-s")
    assert not r["ok"] and "DERMBENCH_WEIGHTS_DINOV2_S" in r["checks"][-1]["detail"]
    assert "FAIL] load" in format_report(r)


def test_model_plugins_import_without_heavy_libraries():
    """Registration must stay instant: importing the model plugins and building the registry pulls in
    none of torch / timm / open_clip / transformers."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, DERMBENCH_LOAD_PLUGINS="models-timm,models-panderm,models-openclip,models-hf")
    code = (
        "import sys\n"
        "import dermbench_plugins.models.timm_models, dermbench_plugins.models.panderm\n"
        "import dermbench_plugins.models.openclip_models, dermbench_plugins.models.hf_models\n"
        "from dermbench.plugins import registry\n"
        "assert {'dinov2-b', 'panderm-l', 'clip-b16', 'medsiglip'} <= set(registry().models)\n"
        "print(sorted(m for m in ('torch', 'timm', 'open_clip', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- tasks


def _runtime_plugin(name: str, **hooks):
    plugin = types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})
    register_plugin(plugin, name=name)


def test_check_task_runs_retrieval_on_small_dermsynth():
    from dermbench.check import check_task

    r = check_task("retrieval", n=24)
    assert r["ok"], format_report(r)
    assert r["model"] == "random-vit" and r["dataset"] == "dermsynth"
    assert r["split_sizes"] == {"train": 12, "test": 12}
    assert set(r["metrics"]) == {"auroc_macro", "f1_macro", "accuracy", "balanced_accuracy", "ece", "brier"}
    assert 0.0 <= r["metrics"]["auroc_macro"] <= 1.0 and 0.0 <= r["metrics"]["ece"] <= 1.0


class _BadTask:
    """Declares an option the constructor lacks, and returns one id short, NaN scores, no y_pred."""

    def __init__(self, k: int = 1, forgotten: int = 2):
        self.k = k

    def run(self, ctx):
        import numpy as np

        from dermbench.api import TaskOutput

        test = ctx.split("test")
        scores = np.full((len(test), 6), 1 / 6)
        scores[0, 0] = np.nan
        return TaskOutput({"ids": test.ids[:-1], "y_true": test.labels, "scores": scores},
                          ["auroc_macro", "f1_macro", "no_such_metric"], test)


class _CrashingTask:
    def __init__(self):
        pass

    def run(self, ctx):
        return {"a": 1}["b"]  # a plugin bug: KeyError deep inside run


class _SplitNameTask:
    """The classic SDK misuse: a split name where a Split is expected."""

    def run(self, ctx):
        return ctx.features("train")


def _register_bad_tasks(register):
    from dermbench.api import TaskInfo

    metrics = ("auroc_macro", "f1_macro")
    register(TaskInfo(name="bad-task", description="returns malformed output", metrics=metrics,
                      primary_metric="auroc_macro", defaults={"k": 1}), _BadTask)
    register(TaskInfo(name="crashing-task", description="raises", metrics=metrics, primary_metric="auroc_macro"),
             _CrashingTask)
    register(TaskInfo(name="split-name-task", description="misuses ctx.features", metrics=metrics,
                      primary_metric="auroc_macro"), _SplitNameTask)


def test_check_task_names_each_malformed_output_and_its_fix():
    from dermbench.check import check_task

    _runtime_plugin("test-bad-tasks", register_tasks=_register_bad_tasks)
    try:
        r = check_task("bad-task", n=24)
    finally:
        unregister_plugin("test-bad-tasks")
    assert not r["ok"]
    failed = {c["check"]: c for c in r["checks"] if not c["ok"]}
    warned = {c["check"]: c for c in r["checks"] if c.get("warn")}
    assert "['forgotten']" in warned["options: every constructor parameter is in TaskInfo.defaults"]["fix"]
    assert failed["predictions['ids'] == split.ids (same samples, same order)"]["detail"] == \
        "11 ids, split test has 12"
    rows = failed["every prediction array has len(split) = 12 rows"]
    assert "ids:11" in rows["detail"] and "['ids']" in rows["fix"]
    assert failed["no NaN/inf in the scored predictions"]["detail"] == "scores (1 values)"
    assert "unknown metric 'no_such_metric'" in failed["output metrics are known"]["fix"]
    assert failed["prediction keys each metric needs are present"]["fix"] == "f1_macro needs predictions['y_pred']"
    assert not any(c["check"].startswith("scored with") for c in r["checks"])  # malformed output is never scored
    passed = {c["check"] for c in r["checks"] if c["ok"]}
    assert {"metadata: metrics declared and known", "y_true == the split's labels"} <= passed


def test_check_task_failure_is_one_line_unless_debug(monkeypatch):
    from dermbench.check import check_task

    _runtime_plugin("test-bad-tasks", register_tasks=_register_bad_tasks)
    try:
        monkeypatch.delenv("DERMBENCH_DEBUG", raising=False)
        quiet = check_task("crashing-task", n=24)
        monkeypatch.setenv("DERMBENCH_DEBUG", "1")
        loud = check_task("crashing-task", n=24)
    finally:
        unregister_plugin("test-bad-tasks")
    row = [c for c in quiet["checks"] if c["check"].startswith("run on")][0]
    assert not quiet["ok"] and row["detail"] == "KeyError: 'b'" and "DERMBENCH_DEBUG=1" in row["fix"]
    assert quiet["tracebacks"] == []
    assert len(loud["tracebacks"]) == 1
    assert "Traceback" in loud["tracebacks"][0] and "in run" in loud["tracebacks"][0]


# ---------------------------------------------------------------------------------------------- datasets


def _register_bad_dataset(register):
    from PIL import Image

    from dermbench.api import Dataset, DatasetInfo, Sample

    info = DatasetInfo(name="bad-ds", fields=frozenset({"labels", "masks", "sex"}), label_names=("a", "b"),
                       license="CC0-1.0", needs_root=False)

    def load(root, split_seed=0):
        import numpy as np

        img = lambda: Image.new("RGB", (32, 24), (200, 120, 90))  # noqa: E731
        grey = lambda: np.full((24, 32), 128, np.uint8)  # noqa: E731  (not binary)
        samples = [Sample(f"s{i}", img, label=i % 3, mask=grey if i % 2 else None, meta={"site": "x"})
                   for i in range(6)]
        return Dataset(info, samples, {"train": [0, 1, 2, 3], "test": [3, 4, 5], "val": []}, label_names=["a", "b"])

    register(info, load)


def test_check_dataset_names_field_mask_and_split_problems():
    from dermbench.check import check_dataset

    _runtime_plugin("test-bad-ds", register_datasets=_register_bad_dataset)
    try:
        r = check_dataset("bad-ds")
    finally:
        unregister_plugin("test-bad-ds")
    failed = {c["check"]: c for c in r["checks"] if not c["ok"]}
    assert not r["ok"] and r["n"] == 6
    assert "bad: ['s2', 's5']" in failed["labels: every sample has an int label in [0, len(label_names))"]["detail"]
    assert failed["masks: every sample has one"]["detail"] == "3 without"
    assert "expected {0,1} or {0,255}" in failed["masks: first 4 readable, binary, image-sized, non-empty"]["detail"]
    assert failed["sex: samples carry meta['sex']"]["detail"] == "0/6"
    assert "'val': 0" in failed["splits: at least one, none empty"]["detail"]
    assert failed["splits: disjoint"]["detail"] == "s3 in train and test"


def test_check_dataset_on_real_ph2(shared_data):
    from dermbench.check import check_dataset

    r = check_dataset("ph2-seg", data_root=shared_data / "ph2")
    assert r["ok"], format_report(r)
    assert r["n"] == 45 and sum(r["splits"].values()) == 45 and r["skipped"] == {"missing_image": 155}
    assert r["class_counts"] == {"common nevus": 15, "atypical nevus": 15, "melanoma": 15}


def test_cli_plugins_check_dataset_without_root_says_how(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "dermbench"
    p = subprocess.run([str(exe), "plugins", "check", "ph2"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, COLUMNS="250"), cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "--data-root given" in p.stdout and "pass --data-root PATH" in p.stdout and "FAILED" in p.stdout
    q = subprocess.run([str(exe), "plugins", "check", "no-such-thing"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert q.returncode == 2 and "no model, task or dataset is called 'no-such-thing'" in q.stderr


def test_run_prints_a_task_traceback_only_with_debug(monkeypatch, capsys, tmp_path):
    from dermbench import runner

    _runtime_plugin("test-bad-tasks", register_tasks=_register_bad_tasks)
    try:
        outs = []
        for debug in ("", "1"):
            monkeypatch.setenv("DERMBENCH_DEBUG", debug)
            opts = runner.RunOptions(out=tmp_path / f"res{debug}", dataset_opts={"n": 24}, n_boot=10)
            summary = runner.run(["random-vit"], ["crashing-task"], ["dermsynth"], opts, quiet=True)
            assert [msg for _, msg in summary.failed] == ["KeyError: 'b'"]
            outs.append(capsys.readouterr().err)
    finally:
        unregister_plugin("test-bad-tasks")
    assert "Traceback" not in outs[0]
    assert "Traceback" in outs[1] and "return {\"a\": 1}[\"b\"]" in outs[1]


def test_check_task_names_the_fix_for_a_split_name_passed_to_features():
    from dermbench.check import check_task

    _runtime_plugin("test-bad-tasks", register_tasks=_register_bad_tasks)
    try:
        r = check_task("split-name-task", n=24)
    finally:
        unregister_plugin("test-bad-tasks")
    (row,) = [c for c in r["checks"] if c["check"].startswith("run on")]
    assert not row["ok"] and "expects a Split" in row["detail"] and "pass ctx.split('train')" in row["detail"]
    assert "traceback" not in row["fix"]  # a DermbenchError is already the message: no --debug hint


def test_check_task_refuses_unknown_options_before_running():
    from dermbench.check import check_task

    r = check_task("retrieval", task_opts={"kk": 3})
    (row,) = [c for c in r["checks"] if c["check"] == "task options valid"]
    assert not r["ok"] and "has no option(s) ['kk']" in row["detail"] and "k=5" in row["detail"]
    assert not any(c["check"].startswith("run on") for c in r["checks"])


def test_every_first_party_task_passes_the_metadata_checks():
    """No false alarms: the built-in tasks' TaskInfo, metric names and options pass (warnings allowed)."""
    from dermbench.check import _Report, check_task_info
    from dermbench.plugins import registry

    tasks = {n: e for n, e in registry().tasks.items() if e.plugin.startswith("tasks-")}
    assert {"retrieval", "probe", "segmentation", "fairness", "captioning", "federated"} <= set(tasks)
    for name, e in tasks.items():
        r = _Report("task", name, e.plugin, False)
        check_task_info(e.info, e.obj, r)
        assert r.done()["ok"], [c for c in r.out["checks"] if not c["ok"]]


def test_embedded_datasets_pass_the_dataset_checks():
    from dermbench.check import check_dataset

    for name in ("dermsynth", "dermsynth-severity"):
        r = check_dataset(name, dataset_opts={"n": 60})
        assert r["ok"], format_report(r)
        assert r["n"] == 60 and r["splits"] == {"train": 30, "test": 30}
