"""Federated task on Flower: real simulation runs, a real loopback deployment, and the bad-input behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermbench.api import Dataset, DatasetInfo, DermbenchError, Sample
from dermbench_plugins.tasks.federated import train as fl_train
from dermbench_plugins.tasks.federated import INFO, plan_clients, run_config, simulate, site_arrays

needs_flower = pytest.mark.skipif(not INFO.available, reason="flwr[simulation] not installed")

HAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000"
SCHED = dict(rounds=2, local_epochs=2, lr=1e-2, batch_size=8, seed=3)


def _params(**kw):
    p = dict(INFO.defaults)
    p.update(kw)
    return p


# ------------------------------------------------------------------------------------------ fast checks


def test_local_training_matches_torch_adam_with_cosine():
    """The numpy trainer the clients run is torch's Adam + CosineAnnealingLR, step for step."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    w0 = fl_train.init_weights(12, 3, 0)
    w, loss = fl_train.local_train(w0, x, y, epochs=4, lr=1e-2, batch_size=40, seed=0, server_round=1)
    head = torch.nn.Linear(12, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor(w0["weight"]))
        head.bias.copy_(torch.tensor(w0["bias"]))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    X, Y = torch.tensor(x).double(), torch.tensor(y)
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(X), Y).backward()
        opt.step()
        sched.step()
    assert np.abs(w["weight"] - w0["weight"]).max() > 1e-2  # it did train
    np.testing.assert_allclose(w["weight"], head.weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(w["bias"], head.bias.detach().numpy(), atol=1e-6)
    assert 0.5 < loss < 3.0
    # FedProx's proximal term (mu/2)||w - w_global||^2 holds the local model near the global one
    w_prox, _ = fl_train.local_train(w0, x, y, epochs=4, lr=1e-2, batch_size=40, seed=0, server_round=1,
                                     proximal_mu=50.0)
    moved = lambda w: float(np.linalg.norm(w["weight"] - w0["weight"]))  # noqa: E731
    assert moved(w_prox) < 0.9 * moved(w)


def test_listed_unavailable_with_install_hint_without_flower():
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('flwr', 'ray'): raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())  # importing Flower now fails, as when it is not installed\n"
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] in ('flwr', 'ray') else real(n, *a)\n"
        "from dermbench_plugins.tasks import federated as f\n"
        "print(f.INFO.available, f.INFO.unavailable_reason, f.INFO.incompatibility(None, None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False ")
    assert "pip install 'dermbench[fl]'" in out.stdout
    assert "task 'federated' unavailable" in out.stdout


def test_dataset_without_sites_is_skipped_or_refused():
    from dermbench import runner

    p = runner.plan(["random-vit"], ["federated"], ["ph2"])
    assert not p.cells and "site" in p.skipped[0][1]
    info = DatasetInfo(name="nosite", fields=frozenset({"labels", "site"}))
    ds = Dataset(info, [Sample(id=f"s{i}", image="x.png", label=i % 2, meta={}) for i in range(4)],
                 {"train": [0, 1, 2, 3]})
    with pytest.raises(DermbenchError, match=r"nosite:train has no acquisition site.*Sample.meta\['site'\]"):
        site_arrays(ds.split("train"))


def test_sites_with_one_class_or_no_samples_get_a_recorded_status():
    tr = np.array(["a", "a", "b", "b", "mono", "mono"], dtype=object)
    y = np.array([0, 1, 1, 0, 2, 2])
    te = np.array(["a", "b", "mono", "test-only"], dtype=object)
    clients, rec = plan_clients(tr, y, te, "exclude")
    assert clients == ["a", "b"]
    assert rec["mono"]["status"].startswith("excluded: a single class (2)")
    assert rec["test-only"]["status"].startswith("excluded: no training samples")
    assert rec["test-only"]["n_test"] == 1 and rec["a"]["n_train"] == 2
    clients, rec = plan_clients(tr, y, te, "include")
    assert clients == ["a", "b", "mono"] and rec["mono"]["status"] == "client (single class)"
    with pytest.raises(DermbenchError, match=r"at least two participating sites.*mono: excluded: a single class"):
        plan_clients(tr[[0, 1, 4, 5]], y[[0, 1, 4, 5]], te, "exclude")
    with pytest.raises(DermbenchError, match="strategy='fedsgd' is unknown"):
        run_config(_params(strategy="fedsgd"), seed=0, dim=4, n_classes=2, n_clients=2, out_dir=Path("."))


# ------------------------------------------------------------------------------------------ Flower runs


@needs_flower
def test_fedavg_of_identical_clients_equals_centralised_training(tmp_path):
    """Three sites holding the same data: Flower's FedAvg must reproduce centralised training on one copy."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 16)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    x[np.arange(30), y] += 2.0  # learnable signal
    for i in range(3):
        np.savez(tmp_path / f"client-{i}.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6],
                 site=np.array(f"site{i}"))
    import psutil

    # fraction_fit 2/3: Flower samples two of the three sites per round (the mean of identical updates)
    p = _params(rounds=SCHED["rounds"], local_epochs=2, lr=SCHED["lr"], batch_size=SCHED["batch_size"],
                fraction_fit=0.67)
    cfg = run_config(p, seed=SCHED["seed"], dim=16, n_classes=3, n_clients=3, out_dir=tmp_path / "out",
                     data_dir=tmp_path)
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    summary = simulate(cfg, 3)
    _, alive = psutil.wait_procs([c for c in psutil.Process().children(recursive=True) if c.pid not in before],
                                 timeout=30)
    assert not alive, f"Ray processes left running after the simulation: {alive}"
    init = fl_train.init_weights(16, 3, SCHED["seed"])
    central = fl_train.train_rounds(x, y, init, **{**SCHED, "local_epochs": 2})
    assert np.abs(central["weight"] - init["weight"]).max() > 0.05  # training moved the weights
    np.testing.assert_allclose(summary["weights"]["weight"], central["weight"], atol=1e-5)
    np.testing.assert_allclose(summary["weights"]["bias"], central["bias"], atol=1e-5)
    train_rounds = [r for r in summary["rounds"] if r["phase"] == "train"]
    assert [(r["asked"], len(r["ok"])) for r in train_rounds] == [(2, 2), (2, 2)]
    evals = [r for r in summary["rounds"] if r["phase"] == "evaluate"]
    assert [sorted(o["site"] for o in r["ok"]) for r in evals] == [["site0", "site1", "site2"]] * 2
    assert summary["strategy"] == "FedAvg" and not any(r["failed"] or r["no_reply"] for r in summary["rounds"])
    saved = json.loads((tmp_path / "out" / "server.json").read_text())
    assert saved["rounds"] == summary["rounds"]


def _run(tmp_path, dataset, params, data_root=None, dataset_opts=None):
    from dermbench import runner
    from dermbench.results import read_record

    opts = runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "c", data_root=data_root,
                             dataset_opts=dataset_opts or {}, n_boot=200, task_params={"federated": params})
    s = runner.run(["random-vit"], ["federated"], [dataset], opts, quiet=True)
    assert not s.failed, s.failed
    return read_record(s.done[0][1])


@needs_flower
@pytest.mark.slow
def test_dermsynth_sites_federation_with_a_failing_client(tmp_path, monkeypatch):
    """dermsynth clinics through the runner (n=32: clinic-D has one training image, so one class, and is left
    out); clinic-B's client raises in round 1 and the round goes on with the others."""
    monkeypatch.setenv("DERMBENCH_FL_FAULT", "raise:clinic-B:1")
    rec = _run(tmp_path, "dermsynth", {"rounds": 2}, dataset_opts={"n": 32, "size": 64})
    e = rec.extra
    assert e["clients"] == ["clinic-A", "clinic-B", "clinic-C"] and e["strategy"] == "FedAvg"
    assert list(e["excluded_sites"]) == ["clinic-D"]
    assert e["excluded_sites"]["clinic-D"].startswith("excluded: a single class")
    r1, r2 = [r for r in e["rounds"] if r["phase"] == "train"]
    assert sorted(o["site"] for o in r1["ok"]) == ["clinic-A", "clinic-C"]
    assert len(r1["failed"]) == 1 and "injected failure of site 'clinic-B' in round 1" in r1["failed"][0]["reason"]
    assert r1["failed"][0]["site"] in ("clinic-B", "(site not known yet)")
    assert sorted(o["site"] for o in r2["ok"]) == ["clinic-A", "clinic-B", "clinic-C"] and not r2["failed"]
    assert [(f["round"], f["phase"]) for f in e["failures"]] == [(1, "train")]
    # pooled metrics with CIs over every test sample (clinic-D's too), per-site metrics, bounds
    au = rec.metrics["auroc_macro"]
    assert 0.0 <= au["ci_low"] <= au["value"] <= au["ci_high"] <= 1.0 and au["n"] == len(rec.predictions["ids"]) == 16
    assert sum(v["n_test"] for v in e["per_site"].values()) == 16
    assert e["per_site"]["clinic-D"]["n_test"] == 4 and e["per_site"]["clinic-D"]["local_only"] is None
    for site in e["clients"]:
        for regime in ("federated", "centralised", "local_only"):
            assert set(e["per_site"][site][regime]) == {"auroc_macro", "f1_macro"}, (site, regime)
    cen = e["bounds"]["centralised"]
    assert cen["federated_minus_centralised"]["auroc_macro"]["diff"] == pytest.approx(
        au["value"] - cen["metrics"]["auroc_macro"]["value"])
    loc = e["bounds"]["local_only"]
    assert (loc["n_scored"], loc["n_left_out"]) == (12, 4)
    assert loc["federated_minus_local"]["auroc_macro"]["diff"] == pytest.approx(
        loc["federated_on_same_samples"]["auroc_macro"]["value"] - loc["metrics"]["auroc_macro"]["value"])
    assert Path(rec.artifacts[0]).exists()


@needs_flower
@pytest.mark.slow
def test_loopback_deployment_on_ham10000_sites_survives_a_dying_client(tmp_path, monkeypatch):
    """Real deployment: SuperLink + one SuperNode per HAM10000 site as processes on 127.0.0.1; the
    vidir_modern client process dies in round 1; the others are aggregated; nothing is left running."""
    import psutil

    if not HAM.exists():
        pytest.skip(f"{HAM} missing")
    monkeypatch.setenv("DERMBENCH_FL_FAULT", "exit:vidir_modern:1")
    rec = _run(tmp_path, "ham10000", {"engine": "loopback", "rounds": 1, "round_timeout": 20.0,
                                      "fraction_evaluate": 0.0}, data_root=HAM)
    e = rec.extra
    assert e["engine"] == "loopback"
    assert e["clients"] == ["rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias"]
    (r1,) = [r for r in e["rounds"] if r["phase"] == "train"]
    assert r1["asked"] == 4 and sorted(o["site"] for o in r1["ok"]) == ["rosendahl", "vidir_molemax", "vienna_dias"]
    assert e["failures"] and e["failures"][0]["reason"].startswith("no reply within 20.0s")
    assert e["sites"]["vienna_dias"]["n_test"] == 0 and "vienna_dias" not in e["per_site"]
    assert rec.metrics["auroc_macro"]["n"] == 37 and rec.metrics["auroc_macro"]["value"] is not None
    dep = e["deployment"]
    assert dep["superlink"].startswith("127.0.0.1:") and len(dep["supernodes"]) == 4
    assert len(dep["pids"]) >= 5 and dep["alive_after_stop"] == []
    for pid in dep["pids"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_each_dataset_is_a_site_real_ph2_and_ham10000(tmp_path, shared_data):
    """DermINO's setting: whole datasets as clients (real PH2 binary + real HAM10000 as melanoma vs rest)."""
    from dataclasses import replace

    from dermbench import plugins, runner
    from dermbench.results import read_record
    from dermbench_plugins.tasks.federated import datasets_as_sites

    reg = plugins.registry()
    ph2 = reg.dataset("ph2-binary").obj(shared_data / "ph2")
    ham = reg.dataset("ham10000").obj(shared_data / "ham10000")
    with pytest.raises(DermbenchError, match="share one label space"):
        datasets_as_sites([ph2, ham], "train", "test")  # 2 vs 7 classes

    mel = ham.label_names.index("mel")
    ham_mel = replace(ham, samples=[replace(s, label=int(s.label == mel)) for s in ham.samples],
                      label_names=["other", "melanoma"],
                      info=replace(ham.info, name="ham10000-mel", label_names=("other", "melanoma")))
    merged, rec = datasets_as_sites([ph2, ham_mel], "train", "test")
    assert rec["sites"] == ["ph2-binary", "ham10000-mel"] and rec["label_names_differ"]
    assert {s.meta["site"] for s in merged.samples} == {"ph2-binary", "ham10000-mel"}
    assert len(merged.split("test")) == len(ph2.split("test")) + len(ham.split("test"))

    # end to end through the runner and Flower; the second dataset (another root) is handed to the runner loaded
    opts = runner.RunOptions(out=tmp_path / "r", cache_dir=tmp_path / "c", data_root=shared_data / "ph2", n_boot=100,
                             task_params={"federated-datasets": {"site_datasets": "ham10000-mel",
                                                                 "single_class_sites": "include"}})
    r = runner.Runner(opts, quiet=True)
    r._datasets["ham10000-mel"] = ham_mel
    s = r.run(runner.plan(["random-vit"], ["federated-datasets"], ["ph2-binary"]))
    assert s.ok and len(s.done) == 1, s.failed
    out = read_record(s.done[0][1])
    assert out.extra["clients_are"] == "datasets" and sorted(out.extra["clients"]) == ["ham10000-mel", "ph2-binary"]
    assert len(out.predictions["ids"]) == len(merged.split("test"))
