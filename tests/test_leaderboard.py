"""Leaderboard boards and compare, built from result records written through dermbench.results.

Records hold simulated per-sample predictions of four models (a strong one, a near-copy of it, a weak one,
a non-commercial one trained on the evaluated data); every number on the boards is recomputed from them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from dermbench import leaderboard as lb
from dermbench import stats
from dermbench.api import DermbenchError
from dermbench.report import references as refs
from dermbench.results import ResultRecord, write_record

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N, C = 240, 3
SPLIT = "splithash0001"
CFG = "c0ffee0001"
MODELS = {  # name: (separation of the logits, license, commercial, trained_on)
    "strong": (2.0, "apache-2.0", True, ("imagenet",)),
    "strong-twin": (1.97, "apache-2.0", True, ()),
    "weak": (0.3, "mit", True, ()),
    "derm-nc": (1.0, "cc-by-nc-4.0", False, ("ISIC-2019", "Derm Synth")),
}


def _preds(sep: float, seed: int, y: np.ndarray, shared: np.ndarray) -> dict:
    rng = np.random.default_rng(seed)
    logits = 0.7 * shared + 0.3 * rng.normal(size=(N, C))  # shared noise: models err on the same images
    logits[np.arange(N), y] += sep
    s = np.exp(logits)
    s /= s.sum(axis=1, keepdims=True)
    dice = np.clip(0.5 + 0.15 * sep + 0.1 * rng.normal(size=N), 0, 1)
    return {"ids": [f"syn{i:04d}" for i in range(N)], "y_true": y, "scores": s, "y_pred": s.argmax(1), "dice": dice}


def _write(out: Path, model: str, task: str, preds: dict, metrics: list[str], split_hash: str = SPLIT, seed: int = 0,
           config_hash: str = CFG, extra: dict | None = None):
    sep, lic, com, trained = MODELS.get(model, (1.0, "mit", True, ()))
    keys = ["ids", "y_true", "scores", "y_pred"] if task in ("probe", "fairness") else ["ids", "dice"]
    p = {k: preds[k] for k in keys}
    rec = ResultRecord(
        model=model, task=task, dataset="dermsynth", seed=seed, config={"n_boot": 300}, config_hash=config_hash,
        metrics=stats.score(p, [m for m in metrics if "@" not in m], split_hash=split_hash, n_boot=300),
        predictions=p, split={"name": "test", "hash": split_hash, "n": N},
        model_info={"license": lic, "commercial_use": com, "trained_on": list(trained), "weights_id": f"w-{model}",
                    "params": 86_000_000},
        dataset_info={"name": "dermsynth", "aliases": ["derm-synth"]}, provenance={"git": "abc", "versions": {}},
        extra=extra or {},
    )
    for m in metrics:
        if "@" in m:
            rec.metrics[m] = {"value": 0.05, "ci_low": 0.0, "ci_high": 0.2, "n_boot": 300, "n": N}
    return write_record(out, rec)


FAIR_EXTRA = {"attributes": {"sex": {
    "scored": ["female", "male"],
    "groups": {"female": {"n": 120, "status": "scored", "metrics": {"auroc_macro": {"value": 0.9, "ci_low": 0.85, "ci_high": 0.94}}},
               "male": {"n": 120, "status": "scored", "metrics": {"auroc_macro": {"value": 0.88, "ci_low": 0.83, "ci_high": 0.92}}}},
    "gaps": {"auroc_macro": {"value": 0.02, "ci_low": 0.0, "ci_high": 0.09, "ci_method": "projection", "p_value": 0.6}},
    "worst": {"auroc_macro": {"value": 0.88, "ci_low": 0.82, "ci_high": 0.93, "group": "male"}},
    "equalized_odds": {"value": 0.05, "ci_low": 0.0, "ci_high": 0.15}}}}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    out = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, N)
    shared = rng.normal(size=(N, C))
    preds = {}
    for k, m in enumerate(MODELS):
        preds[m] = _preds(MODELS[m][0], 100 + k, y, shared)
        _write(out, m, "probe", preds[m], ["auroc_macro", "accuracy", "ece"])
        _write(out, m, "segmentation", preds[m], ["dice"])
        # the fairness task re-reports probe's metrics: it must not become a duplicate main column
        _write(out, m, "fairness", preds[m], ["auroc_macro", "accuracy", "gap:auroc_macro@sex"], extra=FAIR_EXTRA)
    return out, preds


def _col(data: dict, board: str, key: str) -> dict:
    return next(c for c in data[board] if c["key"] == key)


def test_main_board_one_primary_column_per_task_and_dataset(results) -> None:
    out, preds = results
    res = lb.build_leaderboard(out, formats=("md",), plots=False)
    data = res["data"]
    # one column per (task, dataset): probe AUROC and segmentation Dice; fairness is its own board, not a duplicate
    assert [c["key"] for c in data["columns"]] == ["probe/dermsynth/auroc_macro", "segmentation/dermsynth/dice"]
    assert [c["label"] for c in data["columns"]] == ["Probe · DermSynth · AUROC", "Segmentation · DermSynth · Dice"]
    rows = {r["model"]: r for r in data["rows"]}
    auc = "probe/dermsynth/auroc_macro"
    sk = {m: roc_auc_score(p["y_true"], p["scores"], multi_class="ovr") for m, p in preds.items()}
    for m in preds:
        assert rows[m]["cells"][auc]["value"] == pytest.approx(sk[m], abs=1e-12)
    best = max(sk, key=sk.get)
    twin = "strong" if best == "strong-twin" else "strong-twin"
    assert data["columns"][0]["best"] == [best]
    assert rows[twin]["cells"][auc]["ns"] is True and rows["weak"]["cells"][auc]["ns"] is False
    # one Holm family per column: the column's own p-values, adjusted together; family size shown
    for c in data["columns"]:
        ps = [(m, rows[m]["cells"][c["key"]]["p"]) for m in MODELS if rows[m]["cells"][c["key"]]["p"] is not None]
        assert c["family_size"] == len(ps) == 3
        for (m, _), a in zip(ps, stats.correct([p for _, p in ps], "holm")):
            assert rows[m]["cells"][c["key"]]["p_adj"] == pytest.approx(a)
        assert c["min_p"] == pytest.approx(1 / 301) and c["min_p_adj"] == pytest.approx(3 / 301)
    # overall rank = mean of the per-column ranks (direction-aware), with intervals and P(rank 1)
    for m in MODELS:
        ranks = []
        for c in data["columns"]:
            vals = [rows[x]["cells"][c["key"]]["value"] for x in MODELS]
            ranks.append(rankdata([-v for v in vals])[list(MODELS).index(m)])
        assert rows[m]["mean_rank"] == pytest.approx(np.mean(ranks))
        assert rows[m]["rank_low"] <= rows[m]["mean_rank"] + 1e-9 <= rows[m]["rank_high"] + 2e-9
    assert sum(rows[m]["p_rank1"] for m in MODELS) == pytest.approx(1.0)
    assert sum(rows[m]["cells"][auc]["p_rank1"] for m in MODELS) <= 1.0 + 1e-9
    assert rows["weak"]["cells"][auc]["rank"] == 4 and rows["weak"]["cells"][auc]["p_rank1"] == 0
    # detail board per task; calibration board with Brier ranked and ECE not ranked
    assert [c["metric"] for c in data["detail"] if c["task"] == "probe"] == ["auroc_macro", "accuracy", "ece"]
    cal = {c["metric"]: c for c in data["calibration"]}
    assert set(cal) == {"brier", "log_loss", "ece"} and cal["brier"]["ranked"] and not cal["ece"]["ranked"]
    assert cal["brier"]["cells"]["weak"]["value"] == pytest.approx(stats.point(preds["weak"], "brier"))
    assert cal["ece"]["cells"]["weak"]["rank"] is None and cal["brier"]["cells"]["weak"]["rank"] is not None
    # fairness board: per-group values, gap with interval and p, never "best"
    fr = [r for r in data["fairness"] if r["model"] == "strong"][0]
    assert fr["attribute"] == "sex" and fr["gap"] == 0.02 and fr["gap_ci_method"] == "projection"
    assert "best" not in fr
    md = res["table"]
    assert "| Model | Params | Licence | Overlap | Overall rank [95%] | Probe · DermSynth · AUROC ↑" in md
    line = {ln.split("|")[1].strip(): ln for ln in md.split("## Detail")[0].splitlines() if ln.startswith("| ")}
    assert re.search(r"\*\*0\.\d{3}\*\* \[0\.\d{3}, 0\.\d{3}\]", line[best])
    assert lb.NS_MARK in line[twin] and lb.NS_MARK not in line["weak"] and "≈" not in md
    assert "cc-by-nc-4.0*" in line["derm-nc"] and "⚠ dermsynth" in line["derm-nc"] and "86M" in line["strong"]
    assert "Holm families (one per column)" in md and "does NOT mean equivalent" in md


def test_files_and_unreadable_records_are_listed_and_exit_nonzero(results, tmp_path) -> None:
    from typer.testing import CliRunner

    from dermbench.cli import app

    out, preds = results
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    p = next((bad / "dermsynth" / "probe" / "weak").glob("seed0*.json"))
    p.write_text(p.read_text()[:500])  # truncated
    wrong = next((bad / "dermsynth" / "segmentation" / "weak").glob("seed0*.json"))
    d = json.loads(wrong.read_text())
    d["predictions"]["dice"] = d["predictions"]["dice"][:10]  # predictions truncated: lengths differ from ids
    wrong.write_text(json.dumps(d))
    target = tmp_path / "lb"
    res = lb.build_leaderboard(bad, formats=("md", "csv", "json", "html"), out=target, plots=True)
    assert {Path(x["path"]).name for x in res["problems"]} == {p.name, wrong.name}
    names = {Path(f).name for f in res["files"]}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.html", "README.md", "heatmap.png",
            "bar_dermsynth.png"} <= names
    for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.html", "README.md"):
        text = (target / f).read_text()
        assert p.name in text and wrong.name in text, f  # listed in every output file, not only on stderr
    assert "not valid JSON" in (target / "leaderboard.md").read_text()
    rows = {r["model"]: r for r in json.loads((target / "leaderboard.json").read_text())["rows"]}
    assert "probe/dermsynth/auroc_macro" not in rows["weak"]["cells"]  # never a wrong number for the broken record
    page = (target / "leaderboard.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.split("<script>")[1]
    assert sorted(x.name for x in target.iterdir()) == ["README.md", "leaderboard.csv", "leaderboard.html",
                                                         "leaderboard.json", "leaderboard.md", "plots"]
    runner = CliRunner()
    r1 = runner.invoke(app, ["leaderboard", "--results", str(bad), "--no-plots"])
    assert r1.exit_code == 1 and "--allow-missing" in r1.output
    r2 = runner.invoke(app, ["leaderboard", "--results", str(bad), "--no-plots", "--allow-missing"])
    assert r2.exit_code == 0, r2.output
    assert runner.invoke(app, ["leaderboard", "--results", str(out), "--no-plots"]).exit_code == 0


def test_filters_and_clear_errors(results, tmp_path) -> None:
    out, _ = results
    res = lb.build_leaderboard(out, tasks=["probe"], commercial_only=True, plots=False)
    assert {r["model"] for r in res["data"]["rows"]} == {"strong", "strong-twin", "weak"}
    assert all(c["task"] == "probe" for c in res["data"]["columns"])
    with pytest.raises(DermbenchError, match="no record .* matches"):
        lb.build_leaderboard(out, datasets=["ham10000"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DermbenchError, match="no result records under"):
        lb.build_leaderboard(tmp_path / "empty")
    with pytest.raises(DermbenchError, match="does not exist"):
        lb.build_leaderboard(tmp_path / "nowhere")
    with pytest.raises(DermbenchError, match="unknown leaderboard format"):
        lb.build_leaderboard(out, formats=("pdf",))


def test_seeds_pool_only_identical_configs_and_other_splits_are_marked(results, tmp_path) -> None:
    out, preds = results
    other = tmp_path / "seeds"
    shutil.copytree(out, other)
    rng = np.random.default_rng(7)
    for seed in (1, 2):  # two more training seeds of weak's configuration: slightly different probes
        p = dict(preds["weak"])
        s = p["scores"] * np.exp(0.3 * rng.normal(size=p["scores"].shape))
        p["scores"] = s / s.sum(1, keepdims=True)
        p["y_pred"] = p["scores"].argmax(1)
        _write(other, "weak", "probe", p, ["auroc_macro"], seed=seed)
    _write(other, "weak", "probe", preds["weak"], ["auroc_macro"], seed=5, config_hash="bbbb0002")  # other options
    for f in (other / "dermsynth" / "probe" / "derm-nc").glob(f"seed0-{CFG}*.json"):
        f.unlink()
    _write(other, "derm-nc", "probe", preds["derm-nc"], ["auroc_macro"], seed=0, split_hash="anothersplit",
           config_hash="dddd0004")  # derm-nc now exists only on another split
    res = lb.build_leaderboard(other, tasks=["probe"], plots=False)
    data = res["data"]
    cell = next(r for r in data["rows"] if r["model"] == "weak")["cells"]["probe/dermsynth/auroc_macro"]
    assert cell["n_seeds"] == 3 and cell["seeds"] == [0, 1, 2] and cell["config_hash"] == CFG
    vals = [roc_auc_score(preds["weak"]["y_true"], preds["weak"]["scores"], multi_class="ovr")]
    assert cell["seed_mean"] == pytest.approx(cell["value"]) and cell["seed_sd"] > 0
    assert cell["ci_low"] < cell["value"] < cell["ci_high"] and cell["p"] is not None
    assert abs(cell["value"] - vals[0]) < 0.05
    assert "k=3" in res["table"] and "two-level" in cell["note"]
    left = [x for x in res["left_out"] if x["record"].startswith("weak/probe")]
    assert len(left) == 1 and "bbbb0002" in left[0]["reason"] and "seeds [5]" in left[0]["record"]
    assert "pooled only with identical config and split hashes" in left[0]["reason"]
    nc = next(r for r in data["rows"] if r["model"] == "derm-nc")["cells"]["probe/dermsynth/auroc_macro"]
    assert nc["unpaired"] is True and nc["p"] is None and nc["split_hash"] == "anothersplit"
    assert "no paired test" in nc["note"] and lb.UNPAIRED_MARK in res["table"]


def test_results_folders_merge_with_dedupe_and_conflicts(results, tmp_path) -> None:
    out, preds = results
    a, b = tmp_path / "machineA", tmp_path / "machineB"
    for m in ("strong", "weak"):
        _write(a, m, "probe", preds[m], ["auroc_macro"])
    for m in ("strong", "strong-twin"):
        _write(b, m, "probe", preds[m], ["auroc_macro"])  # strong: the identical record again
    conflict = dict(preds["weak"], scores=preds["weak"]["scores"][::-1].copy())
    _write(b, "weak", "probe", conflict, ["auroc_macro"])  # same identity, different numbers
    res = lb.build_leaderboard([a, b], tasks=["probe"], plots=False)
    rows = {r["model"]: r for r in res["data"]["rows"]}
    assert set(rows) == {"strong", "weak", "strong-twin"}
    srcs = rows["strong"]["cells"]["probe/dermsynth/auroc_macro"]["sources"]
    assert len(srcs) == 2 and any("machineA" in s for s in srcs) and any("machineB" in s for s in srcs)
    assert any("conflicts with" in x["reason"] and x["record"].startswith("weak/probe") for x in res["left_out"])
    want = roc_auc_score(preds["weak"]["y_true"], preds["weak"]["scores"], multi_class="ovr")
    assert rows["weak"]["cells"]["probe/dermsynth/auroc_macro"]["value"] == pytest.approx(want)


def test_model_name_with_slash_or_dotdot_is_left_out_and_nothing_escapes_out(results, tmp_path) -> None:
    out, preds = results
    d = tmp_path / "names"
    path = _write(d, "strong", "probe", preds["strong"], ["auroc_macro"])
    rec = json.loads(path.read_text())
    for i, evil in enumerate(("a/b", "../../evil")):
        rec["model"] = evil
        q = path.with_name(f"seed{i + 1}-{CFG}.json")
        q.write_text(json.dumps(rec))
    target = tmp_path / "boards" / "lb"
    res = lb.build_leaderboard(d, out=target, formats=("md", "html"), plots=True)
    bad = [x for x in res["left_out"] if "not a valid dermbench name" in x["reason"]]
    assert len(bad) == 2 and "'a/b'" in bad[0]["reason"] + bad[1]["reason"]
    assert {r["model"] for r in res["data"]["rows"]} == {"strong"}
    assert sorted(p.name for p in (tmp_path / "boards").iterdir()) == ["lb"]
    assert not list(tmp_path.glob("evil*")) and not list(tmp_path.parent.glob("evil*"))


def test_compare_equals_paired_test_and_refuses_other_split(results, tmp_path) -> None:
    out, preds = results
    res = lb.compare(out, "strong", "weak", task="probe", dataset="dermsynth")
    assert [c["metric"] for c in res["comparisons"]] == ["auroc_macro", "accuracy", "ece"]
    direct = stats.paired_test(preds["strong"], preds["weak"], "auroc_macro", split_hash=SPLIT, n_boot=300)
    got = res["comparisons"][0]
    for k in ("diff", "ci_low", "ci_high", "p_value"):
        assert got[k] == pytest.approx(direct[k])
    assert got["p_value"] == pytest.approx(1 / 301) and got["p_adj"] == pytest.approx(3 / 301)
    tt = lb.compare(out, "strong", "strong-twin", task="probe", dataset="dermsynth", metric="auroc_macro",
                    test="paper-ttest")
    assert "ANTI-CONSERVATIVE" in tt["comparisons"][0]["label"]
    other = tmp_path / "other"
    _write(other, "strong", "probe", preds["strong"], ["auroc_macro"])
    _write(other, "weak", "probe", preds["weak"], ["auroc_macro"], split_hash="anothersplit")
    with pytest.raises(DermbenchError, match="different splits"):
        lb.compare(other, "strong", "weak", task="probe", dataset="dermsynth")
    with pytest.raises(DermbenchError, match="no result for model='nobody'"):
        lb.compare(out, "nobody", "weak", task="probe", dataset="dermsynth")


def test_metric_unknown_to_stats_is_shown_as_stored(results, tmp_path) -> None:
    out, preds = results
    other = tmp_path / "custom"
    for m in ("strong", "weak"):
        path = _write(other, m, "probe", preds[m], ["auroc_macro"])
        rec = json.loads(path.read_text())
        rec["metrics"]["plugin_metric"] = {"value": 0.5 if m == "weak" else 0.7, "ci_low": 0.4, "ci_high": 0.8,
                                           "ci_method": "percentile", "n_boot": 300, "n": N}
        path.write_text(json.dumps(rec))
    data = lb.build_leaderboard(other, tasks=["probe"], plots=False)["data"]
    det = _col(data, "detail", "probe/dermsynth/plugin_metric")["cells"]
    assert det["strong"]["value"] == 0.7 and det["strong"]["best"] is True and "not re-scored" in det["strong"]["note"]
    assert det["weak"]["unpaired"] is True and det["weak"]["p"] is None


def test_reference_numbers_and_reproduction_verdict(results, tmp_path) -> None:
    out, preds = results
    shipped = refs.load()
    assert shipped["version"] and isinstance(shipped["entries"], list)
    auc = roc_auc_score(preds["strong"]["y_true"], preds["strong"]["scores"], multi_class="ovr")
    table = {"version": "test-1", "entries": [
        {"model": "strong", "task": "probe", "dataset": "dermsynth", "split": "test", "n": N, "metric": "auroc_macro",
         "value": round(auc, 3), "source": "fixture: inside"},
        {"model": "weak", "task": "probe", "dataset": "dermsynth", "split": "official 80/20", "n": N,
         "metric": "auroc_macro", "value": 0.99, "ci_low": 0.98, "ci_high": 0.995, "source": "fixture: outside"},
        {"model": "ghost", "task": "probe", "dataset": "dermsynth", "split": "test", "n": N, "metric": "auroc_macro",
         "value": 0.5, "source": "fixture: absent"},
    ]}
    f = tmp_path / "refs.json"
    f.write_text(json.dumps(table))
    res = lb.build_leaderboard(out, tasks=["probe"], plots=False, references=f)
    rows = {r["source"]: r for r in res["data"]["references"]["rows"]}
    assert rows["fixture: inside"]["verdict"] == "reproduced"
    assert rows["fixture: outside"]["verdict"] == "not reproduced" and "above" in rows["fixture: outside"]["why"]
    assert "official 80/20" in rows["fixture: outside"]["why"]  # the split differs from the board's: said so
    assert rows["fixture: absent"]["verdict"] == "not measured"
    assert "## Published reference numbers" in res["table"] and "test-1" == res["data"]["references"]["version"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"entries": [{"model": "x"}]}))
    with pytest.raises(DermbenchError, match=r"entry #0: missing \['task'"):
        refs.load(bad)


def test_shipped_reference_table_names_registered_models_datasets_metrics_and_a_source() -> None:
    from dermbench.plugins import registry

    reg = registry()
    doc = refs.load()
    assert doc["version"] != "unversioned" and len(doc["entries"]) >= 20
    for i, e in enumerate(doc["entries"]):
        where = f"entry #{i} ({e['model']}, {e['dataset']}, {e['metric']})"
        assert e["model"] in reg.models, f"{where}: model not registered"
        assert e["dataset"] in reg.datasets, f"{where}: dataset not registered"
        assert e["task"] in reg.tasks and e["metric"] in reg.tasks[e["task"]].info.metrics, where
        # a citation that can be opened again: repository@40-hex commit:path, or a URL; plus the split it used
        assert re.search(r"@[0-9a-f]{40}:\S+|https?://\S+", e["source"]), f"{where}: source is not a pinned citation"
        assert e["split"].strip(), where
        assert 0.0 <= e["value"] <= 1.0, where
        if e.get("ci_low") is not None:
            assert e["ci_low"] <= e["value"] <= e["ci_high"], f"{where}: value outside its own published CI"
    # Each (model, dataset, source) reports the same test set size for all its metrics.
    sizes: dict[tuple[str, str, str], set[int]] = {}
    for e in doc["entries"]:
        sizes.setdefault((e["model"], e["dataset"], e["source"].split(",")[0]), set()).add(e["n"])
    assert all(len(s) == 1 for s in sizes.values()), sizes
    # The verdict on a shipped row: a measured CI around it reproduces it, one entirely below does not.
    e = next(x for x in doc["entries"] if x["model"] == "panderm-l" and x["metric"] == "auroc_macro")
    assert refs.verdict(e, {"value": e["value"], "ci_low": e["value"] - 0.01, "ci_high": e["value"] + 0.01})[0] == "reproduced"
    short, why = refs.verdict(e, {"value": 0.5, "ci_low": 0.45, "ci_high": 0.55})
    assert short == "not reproduced" and "above" in why


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian `chromium` not installed (apt-get install -y chromium)")
def test_html_sorts_filters_and_renders_columns_in_headless_chromium(results, tmp_path) -> None:
    out, preds = results
    sk = {m: roc_auc_score(p["y_true"], p["scores"], multi_class="ovr") for m, p in preds.items()}
    lb.build_leaderboard(out, formats=("html",), out=tmp_path / "lb", plots=False)
    page = (tmp_path / "lb" / "leaderboard.html").resolve()

    def geometry(fragment: str) -> dict:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1600,900", f"--user-data-dir={tmp_path / ('profile' + str(abs(hash(fragment))))}",
               "--virtual-time-budget=3000", "--dump-dom", page.as_uri() + "#" + fragment + "&selftest"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr[-2000:]
        m = re.search(r'<pre id="selftest-out">(.*?)</pre>', r.stdout, re.S)
        assert m and m.group(1), r.stdout[-2000:]
        return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    g = geometry("tab=main")
    labels_ = [h["label"].strip() for h in g["headers"]]
    assert labels_[:5] == ["Model", "Params", "Licence", "Overlap", "Overall rank"]
    assert labels_[5:] == ["Probe · DermSynth · AUROC ↑", "Segmentation · DermSynth · Dice ↑"]
    xs = [h["x"] for h in g["headers"]]
    assert xs == sorted(xs) and all(h["w"] > 20 for h in g["headers"])  # laid out left to right, visible
    assert len(g["rows"]) == 4
    s = geometry("sort=-probe/dermsynth/auroc_macro")
    assert s["sorted"] == "probe/dermsynth/auroc_macro:desc"
    ys = sorted(s["rows"], key=lambda r: r["y"])
    assert [r["model"] for r in ys] == sorted(sk, key=sk.get, reverse=True)  # rendered order on screen
    f = geometry("licence=commercial&task=probe")
    assert {r["model"] for r in f["rows"]} == {"strong", "strong-twin", "weak"}  # derm-nc row hidden
    assert [h["label"].strip() for h in f["headers"]][5:] == ["Probe · DermSynth · AUROC ↑"]  # segmentation hidden
    d = geometry("tab=detail")
    assert d["tab"] == "detail" and d["visible_tables"] == 2  # probe and segmentation detail tables
