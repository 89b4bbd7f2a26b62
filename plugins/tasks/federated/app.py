"""The Flower apps of the ``federated`` task (Message API of flwr >= 1.20): one ClientApp, one ServerApp.

The same code runs in Flower's simulation engine (``dermbench_plugins.tasks.federated`` builds the apps with
their configuration in closures) and in a real deployment, where a SuperLink and one SuperNode per site load
the module-level ``server_app`` / ``client_app`` below (see ``.deploy``):

* a **client** (one per site) reads only its own ``.npz`` file of frozen features -- ``x_train, y_train,
  x_test, y_test, site`` -- named by its node config ``data-file`` (deployment: each hospital points its
  SuperNode at its own file) or, in simulation, ``<data-dir>/client-<partition-id>.npz``. It trains the
  linear projection locally (``.train.local_train``) and returns weights plus ``num-examples``; raw
  features, labels and test predictions never leave it. On evaluate it scores the global weights on its
  local test set and returns loss / accuracy / counts only.
* the **server** runs Flower's own strategy (FedAvg by default, see ``STRATEGIES``), wrapped so that every
  round records which sites were asked, which answered and which failed (error reason, or no reply before
  ``round-timeout``). It writes ``global.npz`` (final weights) and ``server.json`` (rounds, history) into
  ``out-dir``.

Fault injection for tests (``fault = "raise:<site>:<round>"`` or ``"exit:<site>:<round>"``) makes that site's
client raise (any engine), or kill its own process (deployment only; in simulation the process is a Ray
actor), in that training round.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as fl_strategy

from dermbench_plugins.tasks.federated import train as fl_train

#: strategy option -> Flower strategy class name (all take FedAvg's sampling arguments)
STRATEGIES = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedavgm": "FedAvgM",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
}

#: run-config keys (deployment: ``flwr run --run-config``; simulation: the closure) and their defaults
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "num-rounds": 2,
    "local-epochs": 2,
    "lr": 2e-4,
    "batch-size": 32,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "strategy": "fedavg",
    "proximal-mu": 0.0,
    "seed": 0,
    "dim": 0,
    "n-classes": 0,
    "n-clients": 0,
    "round-timeout": 600.0,
    "out-dir": "",
    "data-dir": "",
    "fault": "",
}


def _cfg(context: Context, override: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(RUN_CONFIG_DEFAULTS)
    cfg.update({k: v for k, v in dict(context.run_config).items() if k in cfg})
    if override:
        cfg.update(override)
    return cfg


def to_record(w: fl_train.Weights) -> ArrayRecord:
    return ArrayRecord(numpy_ndarrays=[np.asarray(w["weight"]), np.asarray(w["bias"])])


def from_record(rec: ArrayRecord) -> fl_train.Weights:
    weight, bias = rec.to_numpy_ndarrays()
    return {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}


# ------------------------------------------------------------------------------------------------ client


def client_data_file(context: Context, cfg: Mapping[str, Any]) -> Path:
    """This client's own file: node config ``data-file``, else ``<data-dir>/client-<partition-id>.npz``."""
    nc = dict(context.node_config)
    if nc.get("data-file"):
        return Path(str(nc["data-file"]))
    data_dir = nc.get("data-dir") or cfg.get("data-dir")
    if not data_dir or "partition-id" not in nc:
        raise RuntimeError(
            "this SuperNode has no data: start it with --node-config 'data-file=\"/path/client.npz\"' "
            "(written by dermbench_plugins.tasks.federated.write_client_files)"
        )
    return Path(str(data_dir)) / f"client-{int(nc['partition-id'])}.npz"


def load_client_data(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _maybe_fault(cfg: Mapping[str, Any], site: str, server_round: int) -> None:
    spec = str(cfg.get("fault") or "")
    if not spec:
        return
    kind, fsite, fround = spec.split(":", 2)
    if fsite == site and int(fround) == server_round:
        if kind == "exit":
            os._exit(17)  # the client process dies without replying
        raise RuntimeError(f"injected failure of site {site!r} in round {server_round}")


def build_client_app(override: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp; ``override`` (simulation) replaces run-config values such as ``data-dir``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = _cfg(context, override)
        data = load_client_data(client_data_file(context, cfg))
        site = str(data["site"])
        conf = msg.content["config"]
        rnd = int(conf["server-round"])
        _maybe_fault(cfg, site, rnd)
        mu = float(conf.get("proximal-mu", 0.0)) if "proximal-mu" in conf else 0.0
        w, loss = fl_train.local_train(
            from_record(msg.content["arrays"]), data["x_train"], data["y_train"],
            epochs=int(cfg["local-epochs"]), lr=float(cfg["lr"]), batch_size=int(cfg["batch-size"]),
            seed=int(cfg["seed"]), server_round=rnd, proximal_mu=mu,
            schedule=str(cfg.get("lr-schedule", "step")), eta_min=float(cfg.get("eta-min", 0.0)),
        )
        metrics = MetricRecord({"num-examples": int(len(data["y_train"])), "train-loss": float(loss)})
        content = RecordDict({"arrays": to_record(w), "metrics": metrics, "site": ConfigRecord({"site": site})})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = _cfg(context, override)
        data = load_client_data(client_data_file(context, cfg))
        loss, acc = fl_train.evaluate(from_record(msg.content["arrays"]), data["x_test"], data["y_test"])
        n = int(len(data["y_test"]))
        metrics = MetricRecord({"num-examples": n, "eval-loss": 0.0 if n == 0 else loss,
                                "eval-accuracy": 0.0 if n == 0 else acc})
        content = RecordDict({"metrics": metrics, "site": ConfigRecord({"site": str(data["site"])})})
        return Message(content=content, reply_to=msg)

    return app


# ------------------------------------------------------------------------------------------------ server


def _site_of(msg: Message) -> str:
    try:
        return str(msg.content["site"]["site"])
    except Exception:  # error replies carry no content
        return f"node {msg.metadata.src_node_id}"


def recording_strategy(name: str, log: list[dict[str, Any]], **kwargs: Any) -> Any:
    """Flower's strategy ``name`` with a per-round record of asked / answered / failed sites."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    base = getattr(fl_strategy, STRATEGIES[name])

    class Recording(base):  # type: ignore[misc, valid-type]
        def _record(self, phase: str, rnd: int, replies: list[Message]) -> dict[str, Any]:
            sent = self._sent.get((phase, rnd), [])
            got = {m.metadata.src_node_id for m in replies}
            for m in replies:  # learn which node serves which site from any good reply
                if not m.has_error():
                    self._node_site[m.metadata.src_node_id] = _site_of(m)
            name = lambda node: self._node_site.get(node, "(site not known yet)")  # noqa: E731
            entry = {
                "round": rnd, "phase": phase, "asked": len(sent), "ok": [], "failed": [],
                "no_reply": [{"node": str(n), "site": name(n)} for n in sent if n not in got],
            }
            for m in replies:
                node = m.metadata.src_node_id
                if m.has_error():
                    entry["failed"].append({"node": str(node), "site": name(node),
                                            "reason": str(m.error.reason)[-500:]})
                else:
                    mr = next(iter(m.content.metric_records.values()))
                    entry["ok"].append({"site": _site_of(m), **{k: float(v) for k, v in mr.items()}})
            log.append(entry)
            return entry

        def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001
            msgs = list(super().configure_train(server_round, arrays, config, grid))
            self._sent[("train", server_round)] = [m.metadata.dst_node_id for m in msgs]
            return msgs

        def configure_evaluate(self, server_round, arrays, config, grid):  # noqa: ANN001
            msgs = list(super().configure_evaluate(server_round, arrays, config, grid))
            self._sent[("evaluate", server_round)] = [m.metadata.dst_node_id for m in msgs]
            return msgs

        def aggregate_train(self, server_round, replies):  # noqa: ANN001
            # replies arrive in any order; a fixed (site) order makes the float sums, and so the run, repeatable
            replies = sorted(replies, key=lambda m: (m.has_error(), _site_of(m)))
            self._record("train", server_round, replies)
            return super().aggregate_train(server_round, replies)

        def aggregate_evaluate(self, server_round, replies):  # noqa: ANN001
            replies = sorted(replies, key=lambda m: (m.has_error(), _site_of(m)))
            self._record("evaluate", server_round, replies)
            return super().aggregate_evaluate(server_round, replies)

    strat = Recording(**kwargs)
    strat._sent = {}
    strat._node_site = {}
    return strat


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> None:
    """Block until ``n`` SuperNodes are online (Flower's sampler otherwise sizes round 1 on fewer)."""
    end = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"only {len(list(grid.get_node_ids()))} of {n} SuperNodes connected within {timeout}s")
        time.sleep(0.2)


def serve(grid: Grid, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run the configured strategy over ``grid``; write and return the summary (weights in global.npz)."""
    n_clients, dim, n_cls = int(cfg["n-clients"]), int(cfg["dim"]), int(cfg["n-classes"])
    if n_clients < 1 or dim < 1 or n_cls < 2:
        raise ValueError(f"run config needs n-clients >= 1, dim >= 1, n-classes >= 2; got {n_clients}, {dim}, {n_cls}")
    _wait_for_nodes(grid, n_clients, float(cfg["round-timeout"]))
    rng_state = random.getstate()
    random.seed(int(cfg["seed"]))  # Flower samples nodes with the global `random` module
    log: list[dict[str, Any]] = []
    f_train, f_eval = float(cfg["fraction-train"]), float(cfg["fraction-evaluate"])
    kwargs: dict[str, Any] = dict(
        fraction_train=f_train, fraction_evaluate=f_eval,
        # Flower sizes each sample from the nodes online *now* (all of them: _wait_for_nodes above) and
        # blocks until `min_*` nodes are online; minimums of 1 keep a federation going when a site drops out
        min_train_nodes=1, min_evaluate_nodes=1 if f_eval > 0 else 0, min_available_nodes=1,
    )
    if cfg["strategy"] == "fedprox":
        kwargs["proximal_mu"] = float(cfg["proximal-mu"])
    strat = recording_strategy(str(cfg["strategy"]), log, **kwargs)
    init = fl_train.init_weights(dim, n_cls, int(cfg["seed"]), str(cfg.get("init", "uniform")))
    t0 = time.perf_counter()
    try:
        result = strat.start(grid=grid, initial_arrays=to_record(init), num_rounds=int(cfg["num-rounds"]),
                             timeout=float(cfg["round-timeout"]))
    finally:
        random.setstate(rng_state)
    final = from_record(result.arrays) if len(result.arrays) else init
    summary = {
        "strategy": STRATEGIES[str(cfg["strategy"])],
        "rounds": log,
        "train_metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        "evaluate_metrics": {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()},
        "seconds": round(time.perf_counter() - t0, 3),
        "updated": bool(len(result.arrays)),
    }
    out = Path(str(cfg["out-dir"])) if cfg.get("out-dir") else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "global.npz", **final)
        (out / "server.json").write_text(json.dumps(summary, indent=1, default=float))
    summary["weights"] = final
    return summary


def build_server_app(override: Mapping[str, Any] | None = None, sink: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp; in simulation ``sink`` receives the summary (the server runs in the caller's process)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        summary = serve(grid, _cfg(context, override))
        if sink is not None:
            sink.update(summary)

    return app


# what a SuperLink / SuperNode loads in a real deployment (components of the Flower app, see fl_deploy)
client_app = build_client_app()
server_app = build_server_app()
