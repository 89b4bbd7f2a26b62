"""Federated evaluation on Flower: a linear projection on frozen features, trained across sites.

DermINO's privacy-preserving setting: the backbone is frozen, a linear projection is trained locally on
each site (Adam lr 2e-4, cosine, 2 local epochs) and aggregated by Flower's FedAvg for 2 global rounds; the
pooled test predictions of the global model are scored (AUROC / F1 with bootstrap CIs by the runner). The
result also holds, so users see what federation costs:

* ``centralised`` -- the same schedule on the union of the participating sites' training data (upper bound);
* ``local_only``  -- each site trains alone, each test sample is scored by its own site's model (lower bound);
* per-site metrics (with CIs) of all three, paired bootstrap differences, and Flower's per-round record of
  which sites trained / evaluated / failed.

Clients are the sites inside one dataset (``Sample.meta["site"]``: HAM10000's ``dataset`` column, dermsynth's
acquisition sites), or -- task ``federated-datasets``, DermINO's setting -- whole datasets: the cell's dataset
plus ``site_datasets=mednode,fitzpatrick17k-2`` each become one site (every dataset's own train/test split;
they must have the same number of classes, class i meaning the same thing; differing names are recorded).

Privacy boundary. Features come from the feature store (extracted once per model x split, like every task);
the task writes each site's own rows to ``client-<i>.npz`` and each Flower ClientApp opens only its file;
only weights and aggregate metrics cross the wire (see ``.app``). In a real multi-hospital run each site
extracts its own features, writes its own file (``write_client_files``) and starts its own SuperNode.

Engines (``engine`` option):

* ``simulation`` (default) -- Flower's simulation engine (Ray; ``num_cpus=1`` per client, 2 CPUs in all,
  no dashboard, ``num_gpus=0``).
* ``loopback`` -- a real deployment on 127.0.0.1: one ``flower-superlink`` and one ``flower-supernode`` per
  site as separate processes on free ports, the run submitted with ``flwr run``, everything stopped after
  (``.deploy.LoopbackFederation``). Across hospitals the same pieces run with TLS and real addresses
  (flwr 1.41: the SuperLink serves Fleet, Control and runtime APIs on one ``--host/--port``)::

      # coordinating server
      flower-superlink --host 0.0.0.0 --port 9092 --ssl-ca-certfile ca.crt --ssl-certfile server.pem \\
                       --ssl-keyfile server.key --disable-runtime-dependency-installation
      # at every hospital, next to its own feature file (written by write_client_files)
      flower-supernode --superlink link.example.org:9092 --root-certificates ca.crt \\
                       --node-config 'data-file="/data/site-a/client.npz"'
      # submit: app dir from .deploy.write_app(dir, run_config(...)); connection "fl" in
      # $FLWR_HOME/config.toml: [superlink.fl] address = "link.example.org:9092", root-certificates = "ca.crt"
      flwr run <app-dir> fl --stream

Bad input, defined behaviour (recorded in ``extra["sites"]`` / ``extra["excluded_sites"]``):

* a site with no training samples is excluded (its test samples are still scored by the global model);
* a site whose training data has a single class is excluded (``single_class_sites="exclude"``, default) or
  kept (``"include"``); fewer than two participating sites is an error naming the sites and counts;
* a client that fails or dies mid-round: Flower's strategy aggregates the replies it got (the round goes on
  with the remaining clients; a dead process is waited for up to ``round_timeout`` seconds); every failure
  is listed in ``extra["failures"]`` and ``extra["rounds"]``. If no client answers any round, the run fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from dermbench import hookimpl
from dermbench.api import DermbenchError, Split, TaskInfo, TaskOutput, stable_hash
from dermbench_plugins.tasks._shared.classification import CLS_METRICS, check_train_classes, labelled, n_classes, predictions

FL_AVAILABLE = importlib.util.find_spec("flwr") is not None and importlib.util.find_spec("ray") is not None
STRATEGY_NAMES = ("fedavg", "fedprox", "fedavgm", "fedmedian", "fedtrimmedavg", "fedadam", "fedyogi", "fedadagrad")
ENGINES = ("simulation", "loopback")
SITE_METRICS = ("auroc_macro", "f1_macro")

INFO = TaskInfo(
    name="federated",
    description=(
        "Flower federated linear projection across the dataset's sites (FedAvg, 2 rounds x 2 local epochs, "
        "Adam 2e-4 cosine) vs centralised (upper bound) and local-only (lower bound) training; "
        "primary=pooled|site_mean (site_mean: mean of the per-site AUROC/F1 first, per-site numbers in extra)"
    ),
    requires=frozenset({"labels", "site"}),
    capabilities=frozenset({"cls"}),
    metrics=CLS_METRICS,
    primary_metric="auroc_macro",
    defaults={
        "rounds": 2, "local_epochs": 2, "lr": 2e-4, "batch_size": 32,
        "fraction_fit": 1.0, "fraction_evaluate": 1.0, "strategy": "fedavg", "proximal_mu": 0.0,
        "single_class_sites": "exclude", "engine": "simulation", "round_timeout": 600.0,
        "train_split": "train", "test_split": "test", "primary": "pooled",
        "lr_schedule": "step", "eta_min": 0.0, "init": "uniform",
    },
    # primary=site_mean: the mean over sites of the per-site metric first (the DermINO paper reports per dataset)
    # fl-master: CosineAnnealingLR(T_max=2 local epochs, eta_min 1e-6) per epoch, head init N(0, .01)
    protocols={"dermino": {"primary": "site_mean", "lr_schedule": "epoch", "eta_min": 1e-6, "init": "normal"},
               "panderm": {}},
    option_ranges={"rounds": (1, None), "local_epochs": (1, None), "batch_size": (1, None), "lr": (0, None),
                   "fraction_fit": (0, 1), "fraction_evaluate": (0, 1), "proximal_mu": (0, None),
                   "primary": frozenset({"pooled", "site_mean"}), "lr_schedule": frozenset({"step", "epoch"}),
                   "init": frozenset({"uniform", "normal"}), "eta_min": (0, None)},
    available=FL_AVAILABLE,
    unavailable_reason="" if FL_AVAILABLE else "Flower is not installed: pip install 'dermbench[fl]'",
)


#: DermINO's setting: each dataset is one site (named explicitly, so not part of --task all)
INFO_DATASETS = TaskInfo(
    name="federated-datasets",
    description="Flower federation where each dataset is a site: the cell's dataset + site_datasets=a,b "
    "(DermINO: MED-Node, PH2, Fitzpatrick17k-2); otherwise as `federated`",
    requires=frozenset({"labels"}),
    capabilities=INFO.capabilities,
    metrics=INFO.metrics,
    primary_metric=INFO.primary_metric,
    defaults={**INFO.defaults, "site_datasets": ""},
    option_ranges=INFO.option_ranges,
    protocols=INFO.protocols,
    available=INFO.available,
    unavailable_reason=INFO.unavailable_reason,
    in_all=False,
)


def datasets_as_sites(datasets: list[Any], train_split: str, test_split: str) -> tuple[Any, dict[str, Any]]:
    """One Dataset whose samples carry ``meta['site'] = <dataset name>``, ids prefixed by it.

    Its split hashes cover every member, so two models federated over the same datasets stay paired.
    """
    from dataclasses import replace

    from dermbench.api import Dataset, DatasetInfo

    names = [list(d.label_names or d.info.label_names) for d in datasets]
    first = datasets[0]
    for d, nm in zip(datasets[1:], names[1:]):
        if len(nm) != len(names[0]):
            raise DermbenchError(
                f"federated-datasets: {d.name!r} has {len(nm)} classes {nm} but {first.name!r} has "
                f"{len(names[0])} {names[0]}; every site must share one label space (use the binary variants, "
                "e.g. ph2-binary, mednode, fitzpatrick17k-2)")
    samples, splits = [], {train_split: [], test_split: []}
    for d in datasets:
        for sname in (train_split, test_split):
            for i in d.split(sname).indices:
                s = d.samples[i]
                samples.append(replace(s, id=f"{d.name}/{s.id}", meta={**(s.meta or {}), "site": d.name}))
                splits[sname].append(len(samples) - 1)
    fields = set.intersection(*[set(d.info.fields) for d in datasets]) | {"site"}
    info = DatasetInfo(
        name="+".join(d.name for d in datasets), fields=frozenset(fields), label_names=tuple(names[0]),
        license="; ".join(f"{d.name}: {d.info.license}" for d in datasets),
        commercial_use=all(d.info.commercial_use for d in datasets), needs_root=first.info.needs_root,
    )
    merged = Dataset(info=info, samples=samples, splits=splits, label_names=names[0],
                     split_source="; ".join(f"{d.name}: {d.split_source or 'its own split'}" for d in datasets),
                     content_fingerprint="|".join(d.content_fingerprint for d in datasets))
    record = {"sites": [d.name for d in datasets], "label_names": {d.name: nm for d, nm in zip(datasets, names)},
              "label_names_differ": any(nm != names[0] for nm in names[1:])}
    return merged, record


# ------------------------------------------------------------------------------------------------ sites


def site_of(sample: Any) -> str | None:
    v = (sample.meta or {}).get("site")
    return None if v is None or str(v).strip() == "" else str(v)


def site_arrays(split: Split) -> "Any":
    """(n,) array of site names for a split; refuses a split where no sample has a site."""
    import numpy as np

    sites = [site_of(s) for s in split.samples]
    if all(s is None for s in sites):
        raise DermbenchError(
            f"{split.dataset.name}:{split.name} has no acquisition site on any sample (Sample.meta['site']); "
            "the federated task splits clients by site. Use a dataset with sites (e.g. HAM10000's Dataverse "
            "metadata with its 'dataset' column, or dermsynth)"
        )
    return np.array([s if s is not None else "(unknown)" for s in sites], dtype=object)


def plan_clients(train_sites: Any, y_train: Any, test_sites: Any, single_class_sites: str) -> tuple[list[str], dict]:
    """Participating sites (sorted) and a per-site record of counts and why a site was left out."""
    import numpy as np

    if single_class_sites not in ("exclude", "include"):
        raise DermbenchError(f"single_class_sites must be 'exclude' or 'include', got {single_class_sites!r}")
    record: dict[str, dict[str, Any]] = {}
    clients = []
    for site in sorted(set(train_sites.tolist()) | set(test_sites.tolist())):
        ytr = y_train[train_sites == site]
        classes = sorted(int(c) for c in np.unique(ytr))
        rec: dict[str, Any] = {"n_train": int(len(ytr)), "n_test": int(np.sum(test_sites == site)),
                               "train_classes": classes}
        if len(ytr) == 0:
            rec["status"] = "excluded: no training samples (its test samples are scored by the global model)"
        elif len(classes) < 2 and single_class_sites == "exclude":
            rec["status"] = (f"excluded: a single class ({classes[0]}) in its training data "
                             "(single_class_sites='include' keeps it)")
        else:
            rec["status"] = "client" + (" (single class)" if len(classes) < 2 else "")
            clients.append(site)
        record[site] = rec
    if len(clients) < 2:
        raise DermbenchError(
            "federated learning needs at least two participating sites; got "
            + "; ".join(f"{s}: {r['status']} (n_train={r['n_train']})" for s, r in record.items())
            + ". Use a dataset with more sites, or single_class_sites='include'"
        )
    return clients, record


def write_client_files(out_dir: Path, clients: list[str], x_train: Any, y_train: Any, train_sites: Any,
                       x_test: Any, y_test: Any, test_sites: Any) -> list[Path]:
    """One ``client-<i>.npz`` per site holding only that site's rows (what its ClientApp may read)."""
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, site in enumerate(clients):
        tr, te = train_sites == site, test_sites == site
        p = out_dir / f"client-{i}.npz"
        np.savez(p, x_train=np.asarray(x_train[tr], np.float32), y_train=np.asarray(y_train[tr], np.int64),
                 x_test=np.asarray(x_test[te], np.float32), y_test=np.asarray(y_test[te], np.int64),
                 site=np.array(site))
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------------ engines


def run_config(params: dict[str, Any], *, seed: int, dim: int, n_classes: int, n_clients: int, out_dir: Path,
               data_dir: Path | None = None, fault: str = "") -> dict[str, Any]:
    """Flower run config (``.app.RUN_CONFIG_DEFAULTS`` keys) from task parameters."""
    strategy = str(params["strategy"]).lower()
    if strategy not in STRATEGY_NAMES:
        raise DermbenchError(f"federated.strategy={params['strategy']!r} is unknown; choose one of {STRATEGY_NAMES}")
    for key in ("fraction_fit", "fraction_evaluate"):
        if not 0.0 < float(params[key]) <= 1.0 and not (key == "fraction_evaluate" and float(params[key]) == 0):
            raise DermbenchError(f"federated.{key}={params[key]!r} must be in (0, 1]")
    if int(params["rounds"]) < 1 or int(params["local_epochs"]) < 1:
        raise DermbenchError("federated.rounds and federated.local_epochs must be >= 1")
    return {
        "num-rounds": int(params["rounds"]), "local-epochs": int(params["local_epochs"]), "lr": float(params["lr"]),
        "batch-size": int(params["batch_size"]), "fraction-train": float(params["fraction_fit"]),
        "fraction-evaluate": float(params["fraction_evaluate"]), "strategy": strategy,
        "proximal-mu": float(params["proximal_mu"]), "seed": int(seed), "dim": int(dim), "n-classes": int(n_classes),
        "n-clients": int(n_clients), "round-timeout": float(params["round_timeout"]), "out-dir": str(out_dir),
        "data-dir": str(data_dir) if data_dir else "", "fault": fault,
        "lr-schedule": str(params.get("lr_schedule", "step")), "eta-min": float(params.get("eta_min", 0.0)),
        "init": str(params.get("init", "uniform")),
    }


def simulate(cfg: dict[str, Any], n_clients: int) -> dict[str, Any]:
    """Run the federation in Flower's simulation engine; returns the server summary (weights included)."""
    import logging

    from flwr.simulation import run_simulation

    from dermbench_plugins.tasks.federated import app as fl_app

    sink: dict[str, Any] = {}
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": min(2, n_clients), "include_dashboard": False, "logging_level": logging.ERROR,
                      "log_to_driver": False},
    }
    flwr_log = logging.getLogger("flwr")
    level, handler_levels = flwr_log.level, [(h, h.level) for h in flwr_log.handlers]
    try:  # Flower logs every round at INFO/DEBUG; dermbench reports the outcome itself
        flwr_log.setLevel(logging.WARNING)
        for h, _ in handler_levels:
            h.setLevel(logging.WARNING)
        run_simulation(fl_app.build_server_app(cfg, sink), fl_app.build_client_app(cfg), n_clients,
                       backend_config=backend, verbose_logging=False)
    finally:
        flwr_log.setLevel(level)
        for h, lv in handler_levels:
            h.setLevel(lv)
    if not sink:
        raise DermbenchError("the Flower simulation ended without a result from the ServerApp (see the log above)")
    return sink


def loopback(cfg: dict[str, Any], files: list[Path], work: Path) -> dict[str, Any]:
    """Run the federation as a real deployment on 127.0.0.1 (SuperLink + one SuperNode per site)."""
    from dermbench_plugins.tasks.federated.deploy import LoopbackFederation

    with LoopbackFederation(files, work) as fed:
        summary = fed.run(cfg)
    summary["deployment"].update(pids=fed.started_pids, alive_after_stop=fed.alive_pids())
    return summary


# ------------------------------------------------------------------------------------------------ task


def _n_boot(ctx: Any) -> int:
    """Bootstrap size of this run, for the secondary CIs in extra."""
    return int(ctx.n_boot)


class Federated:
    info = INFO

    def __init__(self, rounds=2, local_epochs=2, lr=2e-4, batch_size=32, fraction_fit=1.0, fraction_evaluate=1.0,
                 strategy="fedavg", proximal_mu=0.0, single_class_sites="exclude", engine="simulation",
                 round_timeout=600.0, train_split="train", test_split="test", _fault: str = "",
                 primary: str = "pooled", lr_schedule: str = "step", eta_min: float = 0.0, init: str = "uniform"):
        if primary not in ("pooled", "site_mean"):
            raise DermbenchError(f"federated.primary={primary!r}: choose pooled (all test samples) or site_mean "
                                 "(mean of the per-site metrics, the DermINO paper's per-dataset reporting)")
        self.primary = primary
        if lr_schedule not in ("step", "epoch") or init not in ("uniform", "normal"):
            raise DermbenchError(f"federated lr_schedule={lr_schedule!r} / init={init!r}: choose "
                                 "lr_schedule=step|epoch and init=uniform|normal")
        self.params = dict(rounds=rounds, local_epochs=local_epochs, lr=lr, batch_size=batch_size,
                           fraction_fit=fraction_fit, fraction_evaluate=fraction_evaluate, strategy=strategy,
                           proximal_mu=proximal_mu, single_class_sites=single_class_sites, engine=engine,
                           round_timeout=round_timeout, train_split=train_split, test_split=test_split,
                           lr_schedule=lr_schedule, eta_min=eta_min, init=init)
        if engine not in ENGINES:
            raise DermbenchError(f"federated.engine={engine!r} is unknown; choose one of {ENGINES}")
        self.site_datasets: list[str] = []
        # fault injection for tests: "raise|exit:<site>:<round>" (see .app); also DERMBENCH_FL_FAULT
        self.fault = _fault or os.environ.get("DERMBENCH_FL_FAULT", "")

    def run(self, ctx: Any) -> TaskOutput:
        import numpy as np

        from dermbench_plugins.tasks.federated import train as fl_train

        p = self.params
        get_split, merged_record = ctx.split, None
        if self.site_datasets:
            merged, merged_record = datasets_as_sites(
                [ctx.dataset] + [ctx.load_dataset(n) for n in self.site_datasets], p["train_split"], p["test_split"])
            get_split = merged.split
            if merged_record["label_names_differ"]:
                ctx.log(f"federated-datasets: class names differ across sites {merged_record['label_names']}; "
                        "class i is taken to mean the same thing everywhere")
        train, test = get_split(p["train_split"]), get_split(p["test_split"])
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        str_, ste = site_arrays(train), site_arrays(test)
        clients, site_record = plan_clients(str_, ytr, ste, p["single_class_sites"])
        xtr, xte = ctx.features(train), ctx.features(test)
        seed = int(ctx.seed)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        fl_dir = ctx.out_dir / "flower"
        fl_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="dermbench-fl-") as tmp:
            files = write_client_files(Path(tmp) / "clients", clients, xtr, ytr, str_, xte, yte, ste)
            cfg = run_config(p, seed=seed, dim=xtr.shape[1], n_classes=C, n_clients=len(clients), out_dir=fl_dir,
                             data_dir=Path(tmp) / "clients", fault=self.fault)
            ctx.log(f"federated: {len(clients)} sites {clients} via Flower {p['engine']} ({cfg['strategy']})")
            t0 = time.perf_counter()
            summary = (simulate(cfg, len(clients)) if p["engine"] == "simulation"
                       else loopback(cfg, files, fl_dir / "loopback"))
            t_fl = time.perf_counter() - t0
        failures = [dict(f, round=r["round"], phase=r["phase"]) for r in summary["rounds"] for f in r["failed"]]
        failures += [dict(f, round=r["round"], phase=r["phase"], reason=f"no reply within {p['round_timeout']}s")
                     for r in summary["rounds"] for f in r["no_reply"]]
        if not summary.get("updated"):
            raise DermbenchError(
                "no client returned an update in any round, so there is no federated model; failures: "
                + json.dumps(failures)[:2000]
            )
        w_fed = summary["weights"]

        # baselines with the same schedule and initialisation
        init = fl_train.init_weights(xtr.shape[1], C, seed, str(p["init"]))
        sched = dict(rounds=int(p["rounds"]), local_epochs=int(p["local_epochs"]), lr=float(p["lr"]),
                     batch_size=int(p["batch_size"]), seed=seed, schedule=str(p["lr_schedule"]),
                     eta_min=float(p["eta_min"]))
        part = np.isin(str_, clients)
        w_cen = fl_train.train_rounds(xtr[part], ytr[part], init, **sched)
        s_fed, s_cen = fl_train.predict_proba(w_fed, xte), fl_train.predict_proba(w_cen, xte)
        s_loc = np.full_like(s_fed, np.nan)
        for site in clients:
            m = str_ == site
            w_loc = fl_train.train_rounds(xtr[m], ytr[m], init, **sched)
            s_loc[ste == site] = fl_train.predict_proba(w_loc, xte[ste == site])
        covered = ~np.isnan(s_loc[:, 0])

        preds = {name: predictions(test, yte, s, np.argmax(s, axis=1)) for name, s in
                 (("federated", s_fed), ("centralised", s_cen))}
        for k in preds:
            preds[k]["site"] = ste.tolist()
        n_boot = _n_boot(ctx)
        extra = {
            "engine": p["engine"], "strategy": summary["strategy"], "clients": clients,
            "sites": site_record, "excluded_sites": {s: r["status"] for s, r in site_record.items()
                                                      if not r["status"].startswith("client")},
            "rounds": summary["rounds"], "failures": failures,
            "flower_train_metrics": summary["train_metrics"], "flower_evaluate_metrics": summary["evaluate_metrics"],
            "n_train_participating": int(part.sum()), "n_test": len(test), "flower_seconds": round(t_fl, 3),
            "bounds": self._bounds(test, preds, yte, s_loc, covered, ste, n_boot),
            "per_site": self._per_site(test, yte, ste, {"federated": s_fed, "centralised": s_cen, "local_only": s_loc},
                                       n_boot),
            "deployment": summary.get("deployment"),
            "fault_injected": self.fault or None,
            "clients_are": "datasets" if merged_record else "sites inside the dataset",
            "datasets_as_sites": merged_record,
        }
        np.savez(fl_dir / "weights.npz", federated_weight=w_fed["weight"], federated_bias=w_fed["bias"],
                 centralised_weight=w_cen["weight"], centralised_bias=w_cen["bias"])
        metrics = list(CLS_METRICS)
        if self.primary == "site_mean":  # per-site numbers are in extra["per_site"]; their mean comes first
            metrics = [f"site_mean:{m}" for m in SITE_METRICS] + metrics
        extra["primary"] = self.primary
        return TaskOutput(preds["federated"], metrics, test, extra=extra,
                          artifacts=[str(fl_dir / "weights.npz"), str(fl_dir / "server.json")])

    @staticmethod
    def _bounds(test: Split, preds: dict, yte: Any, s_loc: Any, covered: Any, ste: Any,
                n_boot: int) -> dict[str, Any]:
        """Centralised (upper) and local-only (lower) bounds, scored and paired against the federated model."""
        import numpy as np

        from dermbench import api

        out: dict[str, Any] = {"centralised": {
            "what": "same schedule on the union of the participating sites' training data (upper bound)",
            "metrics": api.score(preds["centralised"], list(CLS_METRICS), split_hash=test.hash,
                                   n_boot=n_boot),
            "federated_minus_centralised": _paired(preds["federated"], preds["centralised"], test.hash, n_boot),
        }}
        idx = np.flatnonzero(covered)
        sub_hash = stable_hash([test.hash, "covered", idx.tolist()])
        ids = [test.ids[i] for i in idx]
        loc = {"ids": ids, "y_true": yte[idx], "scores": s_loc[idx], "y_pred": np.argmax(s_loc[idx], axis=1)}
        fed = {"ids": ids, "y_true": yte[idx], "scores": preds["federated"]["scores"][idx],
               "y_pred": preds["federated"]["y_pred"][idx]}
        out["local_only"] = {
            "what": "each site trains alone with the same schedule; a test sample is scored by its own site's model "
                    "(lower bound); test samples of sites without a local model are left out",
            "n_scored": int(idx.size), "n_left_out": int(len(yte) - idx.size),
            "metrics": api.score(loc, list(CLS_METRICS), split_hash=sub_hash, n_boot=n_boot)
            if idx.size else {},
            "federated_on_same_samples": api.score(fed, list(CLS_METRICS), split_hash=sub_hash,
                                                     n_boot=n_boot) if idx.size else {},
            "federated_minus_local": _paired(fed, loc, sub_hash, n_boot) if idx.size else {},
        }
        return out

    @staticmethod
    def _per_site(test: Split, yte: Any, ste: Any, scores: dict[str, Any], n_boot: int) -> dict:
        """AUROC / F1 with CIs on each site's test samples, for each training regime."""
        import numpy as np

        from dermbench import api

        out: dict[str, Any] = {}
        for site in sorted(set(ste.tolist())):
            idx = np.flatnonzero(ste == site)
            h = stable_hash([test.hash, "site", site])
            ids = [test.ids[i] for i in idx]
            rec: dict[str, Any] = {"n_test": int(idx.size)}
            for name, s in scores.items():
                si = s[idx]
                if np.isnan(si).any():
                    rec[name] = None  # no local model for this site
                    continue
                rec[name] = api.score({"ids": ids, "y_true": yte[idx], "scores": si, "y_pred": np.argmax(si, 1)},
                                        list(SITE_METRICS), split_hash=h, n_boot=n_boot)
            out[site] = rec
        return out


def _paired(a: dict, b: dict, split_hash: str, n_boot: int) -> dict[str, Any]:
    from dermbench import api

    out = {}
    for m in SITE_METRICS:
        try:
            out[m] = api.paired_test(a, b, m, split_hash=split_hash, n_boot=n_boot)
        except DermbenchError as e:  # undefined on this subset (e.g. one class present)
            out[m] = {"diff": None, "note": str(e)}
    return out


class FederatedDatasets(Federated):
    """``federated`` with every dataset a site: the cell's dataset plus ``site_datasets`` (comma-separated)."""

    info = INFO_DATASETS

    def __init__(self, site_datasets: str | list[str] = "", **options: Any):
        super().__init__(**options)
        if isinstance(site_datasets, str):
            site_datasets = [n.strip() for n in site_datasets.split(",") if n.strip()]
        self.site_datasets = list(site_datasets or [])


@hookimpl
def register_tasks(register):
    register(INFO, Federated)
    register(INFO_DATASETS, FederatedDatasets)


def _resolve_metric(name: str):
    """``site_mean:<metric>`` (mean of the per-site values, ``primary=site_mean``)."""
    if not name.startswith("site_mean:"):
        return None
    from dermbench_plugins.tasks.protocols.sites import resolve_metric

    return resolve_metric(name)


@hookimpl
def register_metrics(register):
    register(_resolve_metric)
