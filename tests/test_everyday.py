"""Everyday use (issue 19): weights resolved once per model, run files, --dry-run, variant routing, one line per
skip reason, progress lines in logs, one cache variable, the demo's quiet stderr."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dermbench import hookimpl, plugins, runner
from dermbench.api import DermbenchError
from dermbench.results import read_record

SYNTH = {"n": 24, "size": 64}


class LoadCount:
    """random-vit under another name whose loader calls are counted (a real model, no mock)."""

    loads = 0

    @hookimpl
    def register_models(self, register):
        from dataclasses import replace

        base = plugins.registry().models["random-vit"]

        info = replace(base.info, name="loadcount-vit", weights_env="")

        def load(**kw):
            LoadCount.loads += 1
            bb = base.obj(**kw)
            bb.info = info  # features are cached under the registered name
            return bb

        register(info, load)


@pytest.fixture
def loadcount():
    plugins.registry()
    plugins.register_plugin(LoadCount(), name="loadcount")
    LoadCount.loads = 0
    yield LoadCount
    plugins.unregister_plugin("loadcount")


@pytest.fixture
def no_checkpoint(tmp_path, monkeypatch):
    """An empty dermbench cache: no DermINO demo checkpoint can be found."""
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("DERMBENCH_WEIGHTS_DERMINO", raising=False)


def _opts(tmp_path, **kw):
    return runner.RunOptions(out=tmp_path / "results", cache_dir=tmp_path / "cache", dataset_opts=dict(SYNTH),
                             n_boot=200, **kw)


def test_weights_resolved_once_per_model_before_any_cell(tmp_path, loadcount, no_checkpoint, capsys):
    s = runner.run(["dermino", "loadcount-vit"], ["retrieval", "probe"], ["dermsynth"], _opts(tmp_path))
    out = capsys.readouterr().out
    assert sorted(c.task for c, _ in s.done) == ["probe", "retrieval"]
    assert loadcount.loads == 1  # one loader call serves both cells
    assert sorted(c.task for c, _ in s.failed if c.model == "dermino") == ["probe", "retrieval"]
    # the missing weights are said once, with the command that creates them
    assert out.count("cannot run dermino") == 1 and out.count("no DermINO weights") == 1
    assert "dermbench pretrain --preset demo" in out
    assert list(s.unavailable) == ["dermino"] and "no DermINO weights" in s.unavailable["dermino"]
    assert "FAILED" not in out


def test_nothing_runnable_stops_before_loading_any_dataset(tmp_path, no_checkpoint):
    opts = _opts(tmp_path)
    p = runner.plan(["dermino"], ["all"], ["dermsynth"])
    r = runner.Runner(opts, quiet=True)
    s = r.run(p)
    assert s.failed and not s.done and r._datasets == {}  # no dataset was synthesised or read
    assert len({msg for _, msg in s.failed}) == 1


def _grid(tmp_path, **extra) -> Path:
    text = ("models: [loadcount-vit]\ntasks: [retrieval]\ndatasets: [dermsynth]\n"
            "dataset_opts: {n: 24, size: 64}\n"
            f"out: {tmp_path / 'results'}\ncache_dir: {tmp_path / 'cache'}\nn_boot: 200\n")
    text += "".join(f"{k}: {v}\n" for k, v in extra.items())
    f = tmp_path / "grid.yaml"
    f.write_text(text)
    return f


def test_run_file_runs_the_same_grid_as_flags_and_records_its_hash(tmp_path, loadcount):
    from dermbench.cli import app

    grid = _grid(tmp_path)
    r = CliRunner().invoke(app, ["run", "--config", str(grid)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    [rec_path] = (tmp_path / "results").rglob("seed0-*.json")
    rec = read_record(rec_path)
    assert rec.provenance["run_file"] == {"path": str(grid.resolve()),
                                          "sha256": hashlib.sha256(grid.read_bytes()).hexdigest()}
    # the equivalent flags name the same cell (same config hash: the run file is not hashed) -> reused
    r2 = CliRunner().invoke(app, ["run", "--model", "loadcount-vit", "--task", "retrieval", "--dataset", "dermsynth",
                                  "--dataset-opt", "n=24", "--dataset-opt", "size=64", "--n-boot", "200",
                                  "--out", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")])
    assert r2.exit_code == 0 and "(0 new, 1 reused)" in r2.output, r2.output
    # a flag that agrees with the run file is fine; one that contradicts it is an error naming both
    r3 = CliRunner().invoke(app, ["run", "--config", str(grid), "--n-boot", "200"])
    assert r3.exit_code == 0, r3.output
    r4 = CliRunner().invoke(app, ["run", "--config", str(grid), "--n-boot", "500"])
    assert isinstance(r4.exception, DermbenchError)
    assert "--n-boot 500" in str(r4.exception) and "n_boot" in str(r4.exception) and str(grid) in str(r4.exception)


@pytest.mark.parametrize("extra, expect", [
    ({"data_root": "/no/such/folder"}, "data_root = '/no/such/folder' does not exist"),
    ({"n_bootstrap": 5}, "unknown key(s) ['n_bootstrap']"),
    ({"batch_size": "big"}, "'batch_size' must be an integer"),
])
def test_bad_run_files_name_the_key_and_the_fix(tmp_path, extra, expect):
    from dermbench.cli import app

    r = CliRunner().invoke(app, ["run", "--config", str(_grid(tmp_path, **extra))])
    assert isinstance(r.exception, DermbenchError) and expect in str(r.exception), repr(r.exception)


def test_no_model_anywhere_is_one_clear_error():
    from dermbench.cli import app

    r = CliRunner().invoke(app, ["run", "--task", "probe"])
    assert isinstance(r.exception, DermbenchError) and "--model" in str(r.exception) and "--config" in str(r.exception)


def test_dry_run_plans_estimates_and_loads_no_model(tmp_path, loadcount):
    opts = _opts(tmp_path)
    p = runner.plan(["loadcount-vit"], ["retrieval", "probe", "zeroshot"], ["dermsynth"])
    d = runner.dry_run(p, opts)
    assert loadcount.loads == 0 and not (tmp_path / "results").exists()  # no model loaded, nothing written
    assert [c.task for c, _ in d.planned] == ["retrieval", "probe"] and [c.task for c, _ in d.skipped] == ["zeroshot"]
    assert d.extraction_s > 0 and any("loadcount-vit" in g and "not measured" in g for g in d.guesses)
    text = "\n".join(d.lines())
    assert "planned 2 cell(s), reused 0, skipped 1" in text and "estimated time" in text

    runner.run(["loadcount-vit"], ["retrieval"], ["dermsynth"], opts, quiet=True)
    rates = runner.read_throughput(opts.cache_dir)
    assert rates.get("loadcount-vit@cpu", 0) > 0  # measured while extracting
    d2 = runner.dry_run(runner.plan(["loadcount-vit"], ["retrieval", "probe"], ["dermsynth"]), opts)
    assert [c.task for c, _ in d2.reused] == ["retrieval"] and [c.task for c, _ in d2.planned] == ["probe"]
    assert d2.extraction_s == 0  # features are cached now
    assert not any("loadcount-vit" in g for g in d2.guesses)
    assert any(g.startswith("probe ") for g in d2.guesses)  # probe never ran here: a labelled default

    # a task measured on this machine (in another results folder) is estimated from that, extraction excluded
    (rec,) = (tmp_path / "results").glob("dermsynth/retrieval/loadcount-vit/seed0-*.json")
    timings = json.loads(rec.read_text())["provenance"]["timings"]
    assert 0 <= timings["extract_seconds"] <= timings["task_seconds"]
    measured = runner.read_task_time(opts.cache_dir, "retrieval", "dermsynth", "cpu")
    assert measured == pytest.approx(timings["task_seconds"] - timings["extract_seconds"] + timings["stats_seconds"],
                                     abs=2e-3)
    other = runner.dry_run(runner.plan(["loadcount-vit"], ["retrieval"], ["dermsynth"]),
                           replace(opts, out=tmp_path / "elsewhere"))
    assert not other.guesses and other.task_s == pytest.approx(measured)


def test_dry_run_on_unknown_names_is_an_error_listing_valid_ones():
    with pytest.raises(DermbenchError, match="unknown model 'nosuchmodel'"):
        runner.plan(["nosuchmodel"], ["probe"], ["dermsynth"])


def test_masks_of_a_variant_are_used_by_the_main_name_and_skips_are_one_line_per_reason():
    p = runner.plan(["random-vit"], ["segmentation", "probe"], ["ph2"])
    assert {(c.task, c.dataset) for c in p.cells} == {("segmentation", "ph2-seg"), ("probe", "ph2")}
    assert len(p.notes) == 1 and "'ph2-seg'" in p.notes[0] and "masks" in p.notes[0]
    # the variant reads the folder given for its main dataset
    opts = runner.RunOptions(data_roots={"ph2": Path("/data/PH2")})
    assert opts.root_for("ph2-seg") == Path("/data/PH2") and opts.root_for("ham10000") is None

    p_all = runner.plan(["random-vit", "dermino-random"], ["all"], ["dermsynth"])
    lines = runner.summarize_skips(p_all.skipped)
    reasons = {why.replace("'", "") for _, why in p_all.skipped}
    assert len(lines) < len(p_all.skipped) and len(lines) <= 3
    left_out = [ln for ln in lines if "not part of --task all" in ln]
    assert len(left_out) == 1 and all(t in left_out[0] for t in ("finetune", "robustness", "transfer"))
    assert reasons  # every skipped cell is covered by some line
    assert sum(int(ln.split()[1]) for ln in lines) == len(p_all.skipped)
    # one model on one dataset: every left-out task and its reason in ONE line
    [line] = runner.summarize_skips(runner.plan(["random-vit"], ["all"], ["ph2"]).skipped)
    assert "captioning — dataset ph2 has no captions" in line and "zeroshot — model random-vit lacks text" in line
    left_out = {t.strip() for part in line.split(";") for t in part.split("—")[0].split(":")[-1].split(",")}
    assert "finetune" in left_out and "segmentation" not in left_out  # segmentation went to ph2-seg


def test_line_progress_reports_rate_and_eta_every_interval():
    from dermbench.progress import LineProgress

    t = [0.0]
    lines: list[str] = []
    lp = LineProgress("features m / d:train", 100, unit="img", every=10, write=lines.append, clock=lambda: t[0])
    for _ in range(100):
        t[0] += 0.5
        lp.advance(1)
    assert len(lines) == 5  # 50 s of work, one line per 10 s
    assert lines[0] == "features m / d:train: 20/100 (20%), 2.0 img/s, ETA 40s"


def test_dermbench_home_is_a_deprecated_alias_of_dermbench_cache(tmp_path, monkeypatch):
    from dermbench import features, splits, weights

    monkeypatch.delenv("DERMBENCH_CACHE", raising=False)
    monkeypatch.setenv("DERMBENCH_HOME", str(tmp_path / "home"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert weights.cache_dir() == features.default_cache_dir() == splits.cache_dir() == tmp_path / "home"
    assert any("DERMBENCH_HOME is deprecated" in str(x.message) for x in w)
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    assert features.default_cache_dir() == tmp_path / "cache"  # the new name wins


def test_demo_sends_third_party_stderr_to_its_log(tmp_path, capfd):
    from dermbench.demo import third_party_output_to

    log = tmp_path / "demo.log"
    with third_party_output_to(log):
        os.write(2, b"Flower: DEPRECATED FEATURE banner\n")
        # a worker process (Ray, Flower) inherits the redirected stderr too
        subprocess.run([sys.executable, "-c", "import warnings; warnings.warn('ray FutureWarning', FutureWarning)"],
                       check=True)
        print("our own line")
    os.write(2, b"after\n")
    captured = capfd.readouterr()
    assert "banner" not in captured.err and "FutureWarning" not in captured.err and "after" in captured.err
    assert "our own line" in captured.out
    text = log.read_text()
    assert "DEPRECATED FEATURE banner" in text and "FutureWarning: ray FutureWarning" in text
