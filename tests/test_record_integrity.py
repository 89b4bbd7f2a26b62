"""Issue 15 fault-injection cases, one test each: a result can never be credited to the wrong model, protocol
or place, bad input is refused before any work, and a damaged record is repaired by a rerun.

Real runs (random-init ViT on a tiny dermsynth), real files and real processes; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dermbench import hookimpl, plugins, runner
from dermbench.api import DermbenchError
from dermbench.results import (
    SCHEMA_VERSION,
    encode_name,
    read_record,
    record_path,
    scan_records,
)

SYNTH = {"n": 16, "size": 32}


def _opts(tmp_path: Path, **kw) -> runner.RunOptions:
    kw.setdefault("dataset_opts", dict(SYNTH))
    kw.setdefault("n_boot", 50)
    return runner.RunOptions(out=tmp_path / "results", cache_dir=tmp_path / "cache", **kw)


class NamedCopies:
    """random-vit registered under names that collided on disk before (a_b, a?b) and one with NaN features."""

    @hookimpl
    def register_models(self, register):
        base = plugins.registry().models["random-vit"]
        for name in ("a_b", "a?b"):
            register(replace(base.info, name=name, weights_env=""), base.obj)

        def load_nan(**kw):
            bb = base.obj(**kw)
            real = bb.embed

            def embed(x):
                out = real(x)
                out[0, 0] = float("nan")  # one broken row, as diverged weights give
                return out

            bb.embed = embed
            return bb

        register(replace(base.info, name="nan-vit", weights_env=""), load_nan)
        register(replace(base.info, name=".."), base.obj)  # would escape --out: refused at registration
        register(replace(base.info, name="x/y"), base.obj)


@pytest.fixture
def copies():
    plugins.registry()
    plugins.register_plugin(NamedCopies(), name="named-copies")
    yield
    plugins.unregister_plugin("named-copies")


def _records(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("seed*.json") if not p.name.endswith(".error.json"))


# ------------------------------------------------------------------------------------------------ 15.1


def test_15_1_names_are_injective_contained_and_escaping_ones_refused(tmp_path, copies):
    names = ["a_b", "a?b", "a b", "a+b", "A_b"]
    encoded = [encode_name(n) for n in names]
    assert len(set(encoded)) == len(names) and encoded[0] == "a_b"
    paths = {record_path(tmp_path, n, "probe", "ph2", 0, "ab" * 6) for n in names}
    assert len(paths) == len(names) and all(tmp_path in p.parents for p in paths)
    for bad in ("..", ".", "", "x/y", "a\0b", "a\nb"):
        with pytest.raises(DermbenchError, match="cannot be used|is empty"):
            record_path(tmp_path, bad, "probe", "ph2", 0, "ab" * 6)
    reg = plugins.registry()
    assert ".." not in reg.models and "x/y" not in reg.models
    errs = [e for e in reg.errors if e.plugin == "named-copies"]
    assert len(errs) == 2 and all("cannot be used" in e.error and e.stage == "register_models" for e in errs)


def test_15_1_a_record_is_reused_only_by_its_own_cell(tmp_path, copies):
    o = _opts(tmp_path)
    s = runner.run(["a_b", "a?b"], ["retrieval"], ["dermsynth"], o, quiet=True)
    assert s.ok and len(s.done) == 2, s.failed
    recs = {read_record(p).model: (p, read_record(p)) for _, p in s.done}
    assert set(recs) == {"a_b", "a?b"} and recs["a_b"][0] != recs["a?b"][0]
    assert recs["a_b"][1].config["model"] == "a_b" and recs["a_b"][1].config_hash != recs["a?b"][1].config_hash
    # plant a_b's record where a?b's belongs (what the old folder collision did): it is not taken for a?b's
    (p_ab, _), (p_q, _) = recs["a_b"], recs["a?b"]
    p_q.write_text(p_ab.read_text())
    s2 = runner.run(["a?b"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    assert len(s2.done) == 1 and not s2.reused
    assert "holds model='a_b'" in s2.repaired[0][1]
    assert read_record(p_q).model == "a?b" and list(p_q.parent.glob(p_q.name + ".mismatch-*"))


# ------------------------------------------------------------------------------------------------ 15.2


def test_15_2_rerun_with_other_options_writes_alongside(tmp_path):
    first = runner.run(["random-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    p5 = first.done[0][1]
    m5 = p5.stat().st_mtime_ns
    other = runner.run(["random-vit"], ["retrieval"], ["dermsynth"],
                       _opts(tmp_path, task_params={"retrieval": {"k": 3}}), quiet=True)
    p3 = other.done[0][1]
    assert p3 != p5 and p5.stat().st_mtime_ns == m5  # the k=5 record stays, addressable by its config hash
    r5, r3 = read_record(p5), read_record(p3)
    assert (r5.config["params"]["k"], r3.config["params"]["k"]) == (5, 3)
    assert p5.name == f"seed0-{r5.config_hash[:12]}.json" and r5.split_hash == r3.split_hash
    again = runner.run(["random-vit"], ["retrieval"], ["dermsynth"],
                       _opts(tmp_path, overwrite="always", task_params={"retrieval": {"k": 3}}), quiet=True)
    assert again.done[0][1] == p3 and p5.stat().st_mtime_ns == m5 and len(_records(tmp_path / "results")) == 2


# ------------------------------------------------------------------------------------------------ 15.3


@pytest.mark.parametrize("change,match", [
    (dict(task_params={"probe": {"epochs": -1}}), r"epochs=-1 is out of range: it must be >= 1"),
    (dict(task_params={"retrieval": {"k": -1}}), r"k=-1 is out of range"),
    (dict(task_params={"retrieval": {"k": "abc"}}), r"k='abc' is not an integer"),
    (dict(task_params={"probe": {"batch_size": 0}}), r"batch_size=0 is out of range"),
    (dict(task_params={"probe": {"epochs": 2.5}}), r"epochs=2.5 is not an integer"),
    (dict(task_params={"segmentation": {"epochs": 3}}), r"not in this run"),
    (dict(n_boot=0), r"--n-boot must be an integer >= 1"),
    (dict(ci="foo"), r"--ci 'foo' is not a CI method"),
    (dict(protocol="nope"), r"--protocol 'nope' is known to none of the tasks.*known protocols: default"),
    (dict(dataset_opts={"nn": 3}), r"dataset .dermsynth. has no option\(s\) \[.nn.\]; it accepts n, size"),
])
def test_15_3_invalid_options_are_refused_before_any_work(tmp_path, change, match):
    with pytest.raises(DermbenchError, match=match):
        runner.run(["random-vit"], ["retrieval", "probe"], ["dermsynth"], _opts(tmp_path, **change), quiet=True)
    assert not (tmp_path / "cache" / "features").exists()  # nothing was extracted


def test_15_3_nan_features_fail_naming_model_and_split(tmp_path, copies):
    s = runner.run(["nan-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    assert not s.done and len(s.failed) == 1
    msg = s.failed[0][1]
    assert "nan-vit" in msg and "dermsynth:train" in msg and "NaN/Inf in 1 of 8 row(s)" in msg
    assert not _records(tmp_path / "results")  # no plausible-looking AUROC 0.5 record


def test_15_3_protocol_preset_applies_under_user_options_and_is_recorded(tmp_path):
    info = plugins.registry().task("retrieval").info
    known = sorted(info.protocols)
    if not known:
        pytest.skip("no protocol preset registered for retrieval yet")
    name = known[0]
    params = runner.resolve_task_params(info, {"k": 7}, name)
    assert params["k"] == 7 and all(params[k] == v for k, v in info.protocols[name].items() if k != "k")


# ------------------------------------------------------------------------------------------------ 15.4


def test_15_4_malformed_and_truncated_records_are_listed_and_recomputed(tmp_path):
    s = runner.run(["random-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    path = s.done[0][1]
    good = json.loads(path.read_text())
    out = tmp_path / "results"
    cases = {
        "wrong shape": {**good, "metrics": [0.5, 0.6]},
        "ragged predictions": {**good, "predictions": {**good["predictions"], "y_true": [0, 1]}},
        "no identity": {k: v for k, v in good.items() if k != "model"},
    }
    for why, body in cases.items():
        path.write_text(json.dumps(body))
        recs, bad = scan_records(out)  # never raises
        assert not recs and len(bad) == 1 and bad[0][0] == path, why
    path.write_text(path.read_text()[:200])  # truncated by a full disk
    recs, bad = scan_records(out)
    assert not recs and "not valid JSON" in bad[0][1]
    s2 = runner.run(["random-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    assert s2.ok and len(s2.done) == 1 and "record unreadable" in s2.repaired[0][1]
    assert read_record(path).metrics == good["metrics"]  # recomputed bit-identically
    assert len(list(path.parent.glob(path.name + ".bad-*"))) == 1  # the bad file is kept aside, not deleted


def test_legacy_schema_1_record_is_read_but_not_reused(tmp_path):
    s = runner.run(["random-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    d = json.loads(s.done[0][1].read_text())
    d["schema_version"] = "1.0"
    d["config_hash"] = "0123abcd"
    legacy = record_path(tmp_path / "results", "random-vit", "retrieval", "dermsynth", 0)
    assert legacy.name == "seed0.json"
    legacy.write_text(json.dumps(d))
    s.done[0][1].unlink()
    recs, bad = scan_records(tmp_path / "results")
    assert not bad and len(recs) == 1 and recs[0].legacy and SCHEMA_VERSION == "2.0"
    s2 = runner.run(["random-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    assert len(s2.done) == 1 and legacy.exists()


# ------------------------------------------------------------------------------------------------ 15.5


def test_15_5_claims_expire_by_pid_pid_reuse_and_age(tmp_path, monkeypatch):
    import socket

    host = socket.gethostname()
    me = os.getpid()
    start = runner.process_start_time(me)
    assert start is not None
    claim = runner.Claim(tmp_path / "c.claim")
    live = {"host": host, "pid": me, "start": start, "time": time.time()}
    assert claim.stale_reason(live) is None
    assert "belongs to another process" in claim.stale_reason({**live, "start": str(int(start) + 1)})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert "is gone" in claim.stale_reason({**live, "pid": dead.pid})
    monkeypatch.setenv("DERMBENCH_CLAIM_TTL", "60")
    assert "old" in claim.stale_reason({**live, "time": time.time() - 120})
    assert "old" in claim.stale_reason({**live, "host": "elsewhere", "time": time.time() - 120})
    # a claim held by a live, unrelated process (PID reused) no longer blocks the cell
    (tmp_path / "c.claim").write_text(json.dumps({**live, "pid": 1, "start": "-1"}))
    assert claim.acquire() is None and claim.owned
    claim.release()
    other = runner.Claim(tmp_path / "c.claim")
    (tmp_path / "c.claim").write_text(json.dumps(live))
    assert other.acquire() == f"{host}:{me}"  # a genuinely live holder keeps its claim


# ------------------------------------------------------------------------------------------------ 15.6


def _folder_dataset(root: Path, n_per_class: int = 6) -> list[Path]:
    ds = plugins.registry().dataset("dermsynth").obj(None, n=4 * n_per_class, size=32)
    files = []
    for s in ds.samples:
        d = root / ds.label_names[s.label]
        d.mkdir(parents=True, exist_ok=True)
        files.append(d / f"{s.id}.png")
        s.load_image().save(files[-1])
    return files


def test_15_6_skip_bad_images_works_on_first_try_after_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))  # split files live in the cache
    root = tmp_path / "imgs"
    files = _folder_dataset(root)
    files[3].write_bytes(files[3].read_bytes()[:60])  # truncated download
    first = runner.run(["random-vit"], ["retrieval"], ["folder"], _opts(tmp_path, data_root=root, dataset_opts={}),
                       quiet=True)
    assert first.failed and "--skip-bad-images" in first.failed[0][1] and files[3].name in first.failed[0][1]
    second = runner.run(["random-vit"], ["retrieval"], ["folder"],
                        _opts(tmp_path, data_root=root, dataset_opts={}, skip_bad_images=True), quiet=True)
    assert second.ok and len(second.done) == 1, second.failed
    rec = read_record(second.done[0][1])
    assert rec.dataset_info["skipped"] == {"bad_image": 1} and sum(rec.split["sizes"].values()) == len(files) - 1


# ------------------------------------------------------------------------------------------------ 15.7


def test_15_7_reads_never_escape_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    files = _folder_dataset(root / "imgs", n_per_class=4)
    outside = tmp_path / "secret.png"
    outside.write_bytes(files[0].read_bytes())
    rows = ["path,label"] + [f"{f.relative_to(root)},{f.parent.name}" for f in files]
    load_csv = plugins.registry().dataset("csv").obj
    (root / "a.csv").write_text("\n".join(rows + [f"../secret.png,{files[0].parent.name}"]) + "\n")
    with pytest.raises(DermbenchError, match=r"secret\.png.*outside the data root.*allow_outside_root=true"):
        load_csv(root, csv="a.csv")
    (root / "b.csv").write_text("\n".join(rows + [f"{outside},{files[0].parent.name}"]) + "\n")  # absolute
    with pytest.raises(DermbenchError, match="outside the data root"):
        load_csv(root, csv="b.csv")
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    (root / "imgs" / "linkdir").symlink_to(elsewhere)  # climbing out through a linked folder
    (root / "c.csv").write_text("\n".join(rows + [f"imgs/linkdir/../../secret.png,{files[0].parent.name}"]) + "\n")
    with pytest.raises(DermbenchError, match="outside the data root"):
        load_csv(root, csv="c.csv")
    ds = load_csv(root, csv="a.csv", allow_outside_root="true")  # explicit opt-in
    assert len(ds) == len(files) + 1
    (root / "imgs" / "link.png").symlink_to(outside)  # a link the root's owner placed: followed
    (root / "d.csv").write_text("\n".join(rows + [f"imgs/link.png,{files[0].parent.name}"]) + "\n")
    assert len(load_csv(root, csv="d.csv")) == len(files) + 1
    # a derived name never reaches the file system
    with pytest.raises(DermbenchError, match=r"'\.\./\.\./x' cannot be used"):
        plugins.registry().dataset("folder").obj(root / "imgs", name="../../x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("*seed0*.json"))


# ------------------------------------------------------------------------------------------------ 15.8


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DERMBENCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dermbench", "run", *args, "--out", str(tmp_path / "out"),
                           "--dataset-opt", "n=16", "--dataset-opt", "size=32", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args,match", [
    (("--model", "random-vit", "--seed", "abc"), "--seed 'abc' is not an integer"),
    (("--model", "random-vit", "--seed", ""), "--seed '' is empty"),
    (("--model", "", "--task", "retrieval"), "no model given"),
    (("--model", "random-vit", "--task", "retrieval", "--task-opt", "probe.epochs=3"), "task 'probe' is not in this run"),
    (("--model", "random-vit", "--task", "retrieval", "--n-boot", "0"), "--n-boot must be an integer >= 1"),
    (("--model", "random-vit", "--task", "retrieval", "--ci", "foo"), "not a CI method"),
])
def test_15_8_bad_command_lines_fail_clearly_before_any_work(tmp_path, args, match):
    r = _cli(*args, tmp_path=tmp_path)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "cache" / "features").exists()


def test_15_8_ctrl_c_says_what_is_kept_and_exits_130(tmp_path):
    env = {**os.environ, "DERMBENCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dermbench", "run", "--model", "random-vit", "--task", "retrieval", "--dataset",
         "dermsynth", "--dataset-opt", "n=400", "--dataset-opt", "size=64", "--out", str(tmp_path / "out"), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "cache").rglob("*")):  # extraction has started
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; completed cells are kept, rerun the same command to resume" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ 16.6


def test_16_6_plugin_versions_are_in_the_config_hash_and_the_feature_key(tmp_path):
    s = runner.run(["random-vit"], ["retrieval"], ["dermsynth"], _opts(tmp_path), quiet=True)
    rec = read_record(s.done[0][1])
    plug = rec.config["plugins"]
    assert plug["model"]["plugin"] == "models-timm" and plug["task"]["plugin"] == "tasks-retrieval"
    assert plug["dataset"]["dist"] == "dermbench" and plug["dataset"]["version"]
    assert rec.provenance["plugins"] == plug and "device" in rec.provenance["execution"]
    assert "device" not in rec.config and "cache_dir" not in json.dumps(rec.config)
    r = runner.Runner(_opts(tmp_path), quiet=True)
    bb = r.backbone("random-vit")
    key = r.store.key(bb, r.dataset("dermsynth").split("test"), "embed")
    assert key["plugins"]["model"]["plugin"] == "models-timm"
    assert np.isfinite(rec.metrics["auroc_macro"]["value"])
