"""The spine end to end: plan -> features once -> tasks -> stats -> atomic records -> resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dermbench import hookimpl, plugins, runner
from dermbench.api import DatasetInfo, DermbenchError, ModelInfo, Preprocess, TaskInfo
from dermbench.results import ResultRecord, read_record, record_path, write_record

SYNTH = {"n": 24, "size": 64}


class Counting:
    """A real random-init ViT whose forward passes are counted (no mock: it computes real features)."""

    calls = 0
    images = 0

    def __init__(self, inner):
        self._inner = inner
        self.info = inner.info
        self.weights_id = inner.weights_id
        self.transform = inner.transform

    def embed(self, x):
        Counting.calls += 1
        Counting.images += len(x)
        return self._inner.embed(x)

    def patch_tokens(self, x, layers):
        Counting.calls += 1
        Counting.images += len(x)
        return self._inner.patch_tokens(x, layers)

    def to(self, device):
        self._inner.to(device)
        return self


class CountingPlugin:
    @hookimpl
    def register_models(self, register):
        base = plugins.registry().models["random-vit"]

        def load(**kw):
            return Counting(base.obj(**kw))

        from dataclasses import replace

        register(replace(base.info, name="counting-vit", weights_env=""), load)


@pytest.fixture
def counting():
    plugins.registry()  # build with the first-party plugins first
    plugins.register_plugin(CountingPlugin(), name="counting")
    Counting.calls = Counting.images = 0
    yield Counting
    plugins.unregister_plugin("counting")


def _opts(tmp_path, **kw):
    return runner.RunOptions(out=tmp_path / "results", cache_dir=tmp_path / "cache", dataset_opts=dict(SYNTH),
                             n_boot=200, **kw)


def test_run_writes_records_and_extracts_features_once(tmp_path, counting):
    s = runner.run(["counting-vit"], ["retrieval", "probe"], ["dermsynth"], _opts(tmp_path), quiet=True)
    assert s.ok and len(s.done) == 2, s.failed
    n = SYNTH["n"]
    # train + test go through the backbone exactly once for both tasks
    assert counting.images == n
    for cell, path in s.done:
        rec = read_record(path)
        assert rec.schema_version == "2.0" and rec.config["model"] == "counting-vit"
        m = rec.metrics["auroc_macro"]
        assert m["ci_low"] <= m["value"] <= m["ci_high"] and m["n_boot"] == 200
        assert len(rec.predictions["ids"]) == rec.split["n"] == len(rec.predictions["y_true"])
        assert np.allclose(np.sum(rec.predictions["scores"], axis=1), 1.0)
        assert rec.provenance["seed"] == 0 and rec.provenance["versions"]["torch"]
        assert rec.model_info["weights_id"] == "random:0"
        assert rec.split["hash"] and rec.split["source"]

    # a second identical run recomputes nothing: records reused, no forward pass at all
    counting.images = 0
    s2 = runner.run(["counting-vit"], ["retrieval", "probe"], ["dermsynth"], _opts(tmp_path), quiet=True)
    assert len(s2.reused) == 2 and not s2.done and counting.images == 0

    # records gone but the cache kept: tasks rerun on cached features, still no forward pass
    s3 = runner.run(["counting-vit"], ["retrieval", "probe"], ["dermsynth"],
                    _opts(tmp_path, overwrite="always"), quiet=True)
    assert len(s3.done) == 2 and counting.images == 0


def test_same_seed_same_numbers_other_seed_other_bootstrap(tmp_path, counting):
    a = runner.run(["counting-vit"], ["probe"], ["dermsynth"], _opts(tmp_path / "a"), quiet=True)
    b = runner.run(["counting-vit"], ["probe"], ["dermsynth"], _opts(tmp_path / "b"), quiet=True)
    ra, rb = read_record(a.done[0][1]), read_record(b.done[0][1])
    assert ra.metrics == rb.metrics and ra.predictions == rb.predictions
    c = runner.run(["counting-vit"], ["probe"], ["dermsynth"], _opts(tmp_path / "c", seeds=(1,)), quiet=True)
    rc = read_record(c.done[0][1])
    assert rc.seed == 1 and rc.metrics["auroc_macro"]["ci_low"] != ra.metrics["auroc_macro"]["ci_low"]


def test_config_change_reruns_only_stale_cells(tmp_path, counting):
    runner.run(["counting-vit"], ["retrieval", "probe"], ["dermsynth"], _opts(tmp_path), quiet=True)
    s = runner.run(["counting-vit"], ["retrieval", "probe"], ["dermsynth"],
                   _opts(tmp_path, task_params={"retrieval": {"k": 3}}), quiet=True)
    assert [c.task for c, _ in s.done] == ["retrieval"] and [c.task for c, _ in s.reused] == ["probe"]
    assert read_record(s.done[0][1]).config["params"]["k"] == 3
    never = runner.run(["counting-vit"], ["retrieval"], ["dermsynth"],
                       _opts(tmp_path, overwrite="never", task_params={"retrieval": {"k": 7}}), quiet=True)
    assert len(never.reused) == 1


def test_failing_cell_is_isolated_and_recorded(tmp_path, counting):
    # dinov2-s has no weights offline: its cells fail with the loader's message, the others run
    s = runner.run(["dinov2-s", "counting-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    assert [c.model for c, _ in s.done] == ["counting-vit"]
    assert len(s.failed) == 1 and "dinov2-s" in s.failed[0][1] and "DERMBENCH_WEIGHTS_DINOV2_S" in s.failed[0][1]
    [err] = record_path(tmp_path / "results", "dinov2-s", "retrieval", "dermsynth", 0).parent.glob("seed0-*.error.json")
    assert "no weights" in json.loads(err.read_text())["error"]


def test_unknown_task_option_names_the_valid_ones():
    info = plugins.registry().task("retrieval").info
    with pytest.raises(DermbenchError, match="k=5"):
        runner.task_params(info, {"kk": 3})


def test_incompatible_cells_are_skipped_with_reason():
    class CapOnly:
        @hookimpl
        def register_datasets(self, register):
            register(DatasetInfo(name="captions-only", fields=frozenset({"captions"}), needs_root=False),
                     lambda root, **kw: None)

    plugins.register_plugin(CapOnly(), name="caponly")
    try:
        p = runner.plan(["random-vit"], ["all"], ["captions-only"])
        reasons = dict((c.task, why) for c, why in p.skipped)
        assert "retrieval" in reasons and "has no labels" in reasons["retrieval"]
        assert not [c for c in p.cells if c.task in ("retrieval", "probe")]
    finally:
        plugins.unregister_plugin("caponly")


def test_shards_partition_the_plan():
    p = runner.plan(["random-vit", "dinov2-s", "vit-b"], ["retrieval", "probe"], ["dermsynth"], seeds=(0, 1, 2))
    parts = [runner.shard_cells(p.cells, (i, 3)) for i in (1, 2, 3)]
    keys = [(c.model, c.task, c.seed) for part in parts for c in part]
    assert sorted(keys) == sorted((c.model, c.task, c.seed) for c in p.cells) and len(set(keys)) == len(keys)


def test_record_roundtrip_and_schema_guard(tmp_path):
    rec = ResultRecord(model="m", task="t", dataset="d", seed=0, config={}, config_hash="ab12",
                       metrics={"acc": {"value": float("nan")}}, predictions={"ids": ["a"]}, split={"name": "test", "hash": "h"},
                       model_info={}, dataset_info={}, provenance={})
    p = write_record(tmp_path, rec)
    back = read_record(p)
    assert back.metrics["acc"]["value"] is None  # NaN never reaches JSON silently
    d = json.loads(p.read_text())
    d["schema_version"] = "9.9"
    p.write_text(json.dumps(d))
    with pytest.raises(DermbenchError, match="schema version '9.9'"):
        read_record(p)
    p.write_text("{ torn")
    with pytest.raises(DermbenchError, match="not valid JSON"):
        read_record(p)


def test_knn_vote_fractions_equal_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    from dermbench_plugins.tasks.retrieval import knn_predict

    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(80, 16)), rng.normal(size=(30, 16))
    ytr = rng.integers(0, 4, 80)
    scores, pred = knn_predict(xtr, ytr, xte, k=5, n_cls=4)
    ref = KNeighborsClassifier(5, metric="cosine", algorithm="brute").fit(xtr, ytr)
    assert np.allclose(scores, ref.predict_proba(xte))
    clear = scores.max(1) > np.sort(scores, 1)[:, -2]  # no tie in the vote: both must agree
    assert (pred[clear] == ref.predict(xte)[clear]).all()


def test_linear_probe_learns_separable_data():
    from dermbench_plugins.tasks.probe import train_linear

    import torch

    rng = np.random.default_rng(1)
    centers = rng.normal(scale=3, size=(3, 10))
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(size=(300, 10))
    head = train_linear(x[:200], y[:200], 3, epochs=50, lr=5e-3, batch_size=256, weight_decay=0.0, seed=0)
    acc = (head(torch.as_tensor(x[200:], dtype=torch.float32)).argmax(1).numpy() == y[200:]).mean()
    assert acc > 0.9


def test_killed_run_resumes_without_redoing_or_corrupting(tmp_path):
    """SIGKILL a real `dermbench run` after its first record; the rerun keeps it and finishes the rest."""
    out, cache = tmp_path / "results", tmp_path / "cache"
    cmd = [sys.executable, "-m", "dermbench", "run", "--model", "random-vit", "--task", "retrieval,probe",
           "--dataset", "dermsynth", "--dataset-opt", "n=24", "--dataset-opt", "size=64", "--seed", "0,1,2",
           "--n-boot", "100", "--out", str(out), "--cache-dir", str(cache), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    first = None
    while time.time() < deadline and proc.poll() is None:
        found = sorted(out.rglob("seed*.json")) if out.exists() else []
        if found:
            first = found[0]
            break
        time.sleep(0.05)
    assert first is not None, proc.stderr.read().decode() if proc.poll() is not None else "no record in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    mtime = first.stat().st_mtime_ns
    for p in out.rglob("seed*.json"):
        read_record(p)  # every visible record is complete
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recs = sorted(out.rglob("seed*.json"))
    assert len(recs) == 6, [str(r.relative_to(out)) for r in recs]
    assert first.stat().st_mtime_ns == mtime  # finished cell not redone


def test_generic_csv_fields_are_known_after_loading(tmp_path):
    """A private CSV with a caption column: the registered `csv` info only promises labels; the runner re-plans
    against the loaded dataset, so captioning becomes compatible and masks-needing tasks stay skipped."""
    ds = plugins.registry().dataset("dermsynth").obj(None, n=16, size=32)
    rows = ["path,label,caption"]
    for s in ds.samples:
        s.load_image().save(tmp_path / f"{s.id}.png")
        rows.append(f"{s.id}.png,{ds.label_names[s.label]},\"{s.caption}\"")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    opts = runner.RunOptions(out=tmp_path / "r", data_root=tmp_path, dataset_opts={"csv": "labels.csv", "caption_col": "caption"})
    p = runner.plan(["random-vit"], ["captioning", "segmentation", "retrieval"], ["csv"])
    assert "captioning" in dict((c.task, w) for c, w in p.skipped)  # before loading: only labels are promised
    refined = runner.Runner(opts, quiet=True).refine(p)
    assert {c.task for c in refined.cells} == {"captioning", "retrieval"}
    assert "has no masks" in dict((c.task, w) for c, w in refined.skipped)["segmentation"]


def test_record_counts_the_loaded_backbones_parameters(tmp_path):
    """The leaderboard's Params column comes from the record: the loaded module's parameter count."""
    from dermbench.leaderboard import _params_text

    opts = _opts(tmp_path, model_opts={"depth": 1})
    s = runner.run(["random-vit"], ["retrieval"], ["dermsynth"], opts, quiet=True)
    assert s.ok, s.failed
    rec = read_record(s.done[0][1])
    same = plugins.registry().model("random-vit").obj(depth=1)
    expected = sum(p.numel() for p in same.model.parameters())
    assert rec.model_info["params"] == expected and 1e5 < expected < 2e7  # a 1-block ViT-S/16: ~2M, not ~22M
    assert _params_text(rec.model_info["params"]) == f"{expected / 1e6:.0f}M"
