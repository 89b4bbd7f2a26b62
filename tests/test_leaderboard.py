"""Leaderboard and compare, built from result records written through dermbench.results.

Records hold simulated per-sample predictions of four models (a strong one, a near-copy of it, a weak one,
a non-commercial one trained on the evaluated data); every number in the tables is recomputed from them.
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
from dermbench.results import ResultRecord, write_record

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N, C = 240, 3
SPLIT = "splithash0001"
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


def _write(out: Path, model: str, task: str, preds: dict, metrics: list[str], split_hash: str = SPLIT, seed: int = 0):
    sep, lic, com, trained = MODELS[model]
    p = {k: preds[k] for k in (["ids", "y_true", "scores", "y_pred"] if task == "probe" else ["ids", "dice"])}
    rec = ResultRecord(
        model=model, task=task, dataset="dermsynth", seed=seed, config={"n_boot": 300}, config_hash="x",
        metrics=stats.score(p, metrics, split_hash=split_hash, seed=seed, n_boot=300),
        predictions=p, split={"name": "test", "hash": split_hash, "n": N},
        model_info={"license": lic, "commercial_use": com, "trained_on": list(trained), "weights_id": f"w-{model}"},
        dataset_info={"name": "dermsynth", "aliases": ["derm-synth"]}, provenance={"git": "abc", "versions": {}},
    )
    return write_record(out, rec)


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
    return out, preds


def test_table_values_best_ties_and_ranks(results) -> None:
    out, preds = results
    res = lb.build_leaderboard(out, formats=("md",), plots=False)
    data = res["data"]
    rows = {r["model"]: r for r in data["rows"]}
    # values equal scikit-learn on the stored predictions
    sk = {m: roc_auc_score(p["y_true"], p["scores"], multi_class="ovr") for m, p in preds.items()}
    for m in preds:
        assert rows[m]["cells"]["probe/dermsynth/auroc_macro"]["value"] == pytest.approx(sk[m], abs=1e-12)
    cols = {c["key"]: c for c in data["columns"]}
    best = max(sk, key=sk.get)
    assert best in ("strong", "strong-twin") and cols["probe/dermsynth/auroc_macro"]["best"] == [best]
    assert cols["probe/dermsynth/ece"]["higher_is_better"] is False
    # the twin is not distinguishable from the best, the weak model is
    auc = "probe/dermsynth/auroc_macro"
    twin = "strong" if best == "strong-twin" else "strong-twin"
    assert rows[twin]["cells"][auc]["tie"] is True and rows[best]["cells"][auc]["best"] is True
    assert rows["weak"]["cells"][auc]["tie"] is False and rows["weak"]["cells"][auc]["p_adj"] < 0.05
    # Holm across all best-vs-other comparisons of the table
    raw = [(m, k, c["p"]) for m, r in rows.items() for k, c in r["cells"].items() if c["p"] is not None]
    adj = stats.correct([p for *_, p in raw], "holm")
    for (m, k, _), a in zip(raw, adj):
        assert rows[m]["cells"][k]["p_adj"] == pytest.approx(a)
    assert len(raw) == 3 * 4  # 4 columns x 3 non-best models
    # mean rank = mean over columns of within-column ranks (direction-aware)
    for m in MODELS:
        ranks = []
        for c in data["columns"]:
            sign = -1 if c["higher_is_better"] else 1
            vals = [sign * rows[x]["cells"][c["key"]]["value"] for x in MODELS]
            ranks.append(rankdata(vals)[list(MODELS).index(m)])
        assert rows[m]["mean_rank"] == pytest.approx(np.mean(ranks))
        assert rows[m]["rank_low"] <= rows[m]["mean_rank"] + 1e-9 and rows[m]["rank_high"] >= rows[m]["mean_rank"] - 1e-9
    assert [r["model"] for r in data["rows"]][0] in ("strong", "strong-twin")  # rows ordered by mean rank
    # markdown: best bold, tie marker, license star, overlap flag
    md = res["table"]
    line = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert re.search(r"\*\*0\.\d{3}\*\* \[0\.\d{3}, 0\.\d{3}\]", line[best])
    assert lb.TIE_MARK in line[twin] and lb.TIE_MARK not in line["weak"]
    assert "cc-by-nc-4.0*" in line["derm-nc"] and "⚠ dermsynth" in line["derm-nc"]
    assert "⚠" not in line["strong"]
    assert "Holm" in md


def test_files_csv_json_html_plots_and_readme(results, tmp_path) -> None:
    out, _ = results
    res = lb.build_leaderboard(out, formats=("md", "csv", "json", "html"), out=tmp_path / "lb", plots=True)
    names = {Path(f).name for f in res["files"]}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.html", "README.md",
            "heatmap.png", "heatmap.svg", "bar_probe_dermsynth.png", "bar_probe_dermsynth.svg",
            "bar_segmentation_dermsynth.png"} <= names
    from PIL import Image

    with Image.open(tmp_path / "lb" / "plots" / "heatmap.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    assert (tmp_path / "lb" / "plots" / "heatmap.svg").read_text().lstrip().startswith("<?xml")
    rows = list(csv.DictReader((tmp_path / "lb" / "leaderboard.csv").open()))
    assert [r["model"] for r in rows] == [r["model"] for r in res["data"]["rows"]]
    assert float(rows[0]["probe/dermsynth/auroc_macro"]) == pytest.approx(
        res["data"]["rows"][0]["cells"]["probe/dermsynth/auroc_macro"]["value"])
    assert json.loads((tmp_path / "lb" / "leaderboard.json").read_text())["settings"]["correction"] == "holm"
    page = (tmp_path / "lb" / "leaderboard.html").read_text()
    assert "<script>" in page and "data:image/png;base64," in page and "http" not in page.split("<script>")[1]
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "w-strong" in readme and SPLIT in readme and "make leaderboard" in readme


def test_filters_commercial_only_and_errors(results, tmp_path) -> None:
    out, _ = results
    res = lb.build_leaderboard(out, tasks=["probe"], commercial_only=True, plots=False)
    assert {r["model"] for r in res["data"]["rows"]} == {"strong", "strong-twin", "weak"}
    assert all(c["task"] == "probe" for c in res["data"]["columns"])
    with pytest.raises(DermbenchError, match="no record .* matches"):
        lb.build_leaderboard(out, datasets=["ham10000"])
    with pytest.raises(DermbenchError, match="no result records under"):
        lb.build_leaderboard(tmp_path / "empty")
    with pytest.raises(DermbenchError, match="unknown leaderboard format"):
        lb.build_leaderboard(out, formats=("pdf",))


def test_compare_equals_paired_test_and_refuses_other_split(results, tmp_path) -> None:
    out, preds = results
    res = lb.compare(out, "strong", "weak", task="probe", dataset="dermsynth")
    assert [c["metric"] for c in res["comparisons"]] == ["auroc_macro", "accuracy", "ece"]
    direct = stats.paired_test(preds["strong"], preds["weak"], "auroc_macro", split_hash=SPLIT, seed=0, n_boot=300)
    got = res["comparisons"][0]
    for k in ("diff", "ci_low", "ci_high", "p_value"):
        assert got[k] == pytest.approx(direct[k])
    assert got["p_value"] == pytest.approx(1 / 301) and got["p_adj"] == pytest.approx(3 / 301)
    tt = lb.compare(out, "strong", "strong-twin", task="probe", dataset="dermsynth", metric="auroc_macro",
                    test="paper-ttest")
    assert "ANTI-CONSERVATIVE" in tt["comparisons"][0]["label"]
    # a record of another split cannot be paired
    other = tmp_path / "other"
    shutil.copytree(out, other)
    _write(other, "weak", "probe", preds["weak"], ["auroc_macro"], split_hash="anothersplit")
    with pytest.raises(DermbenchError, match="different splits"):
        lb.compare(other, "strong", "weak", task="probe", dataset="dermsynth")
    with pytest.raises(DermbenchError, match="no result for model='nobody'"):
        lb.compare(out, "nobody", "weak", task="probe", dataset="dermsynth")


def test_unpaired_model_is_marked_not_tested(results, tmp_path) -> None:
    out, preds = results
    other = tmp_path / "mixed"
    shutil.copytree(out, other)
    _write(other, "weak", "probe", preds["weak"], ["auroc_macro"], split_hash="anothersplit")
    data = lb.build_leaderboard(other, tasks=["probe"], plots=False)["data"]
    cell = next(r for r in data["rows"] if r["model"] == "weak")["cells"]["probe/dermsynth/auroc_macro"]
    assert cell["unpaired"] is True and cell["p"] is None


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian `chromium` not installed (apt-get install -y chromium)")
def test_html_renders_and_sorts_in_headless_chromium(results, tmp_path) -> None:
    out, preds = results
    sk = {m: roc_auc_score(p["y_true"], p["scores"], multi_class="ovr") for m, p in preds.items()}
    lb.build_leaderboard(out, formats=("html",), out=tmp_path / "lb", plots=False)
    page = (tmp_path / "lb" / "leaderboard.html").resolve()

    def dom(fragment: str) -> str:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / ('profile' + str(abs(hash(fragment))))}",
               "--virtual-time-budget=3000", "--dump-dom", page.as_uri() + fragment]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    def order(d: str) -> list[str]:
        return re.findall(r'<tr data-model="([^"]+)"', d)

    plain = dom("")
    assert 'id="leaderboard"' in plain and len(order(plain)) == 4
    by_auc = dom("#sort=-probe/dermsynth/auroc_macro")
    assert 'data-sorted="probe/dermsynth/auroc_macro:desc"' in by_auc
    assert order(by_auc) == sorted(sk, key=sk.get, reverse=True)
    assert order(plain) != order(by_auc) or order(plain) == sorted(sk, key=sk.get, reverse=True)
    by_name = dom("#sort=model")
    assert order(by_name) == sorted(MODELS)


def test_metric_unknown_to_stats_is_shown_as_stored(results, tmp_path) -> None:
    out, _ = results
    other = tmp_path / "custom"
    shutil.copytree(out, other)
    from dermbench.results import read_record

    for m in ("strong", "weak"):
        path = other / "dermsynth" / "probe" / m / "seed0.json"
        rec = read_record(path)
        rec.metrics["plugin_metric"] = {"value": 0.5 if m == "weak" else 0.7, "ci_low": 0.4, "ci_high": 0.8,
                                        "ci_method": "percentile", "n_boot": 300, "n": N}
        write_record(other, rec)
    data = lb.build_leaderboard(other, tasks=["probe"], plots=False)["data"]
    rows = {r["model"]: r for r in data["rows"]}
    cell = rows["strong"]["cells"]["probe/dermsynth/plugin_metric"]
    assert cell["value"] == 0.7 and cell["best"] is True and cell["p"] is None and "not re-scored" in cell["note"]
    assert rows["weak"]["cells"]["probe/dermsynth/plugin_metric"]["unpaired"] is True


def test_several_seeds_give_mean_and_sd_and_pair_on_lowest_seed(results, tmp_path) -> None:
    out, preds = results
    other = tmp_path / "seeds"
    shutil.copytree(out, other)
    _write(other, "weak", "probe", preds["weak"], ["auroc_macro"], seed=1)
    _write(other, "weak", "probe", preds["weak"], ["auroc_macro"], seed=2)
    data = lb.build_leaderboard(other, tasks=["probe"], plots=False)["data"]
    cell = next(r for r in data["rows"] if r["model"] == "weak")["cells"]["probe/dermsynth/auroc_macro"]
    assert cell["seed"] == 0 and cell["n_seeds"] == 3 and cell["p"] is not None
    assert cell["seed_mean"] == pytest.approx(cell["value"]) and cell["seed_sd"] == pytest.approx(0.0)
    assert "k=3" in lb.build_leaderboard(other, tasks=["probe"], plots=False)["table"]
