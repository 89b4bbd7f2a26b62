"""A real Flower deployment on loopback: one SuperLink and one SuperNode per site, as separate processes.

This is the path users take across hospitals, run on one machine: every process listens on 127.0.0.1 only,
on free ports picked at start, with its own ``FLWR_HOME`` (no user config is read or written) and runtime
dependency installation disabled. ``LoopbackFederation`` starts

    flower-superlink --insecure --host 127.0.0.1 --port L
    flower-supernode --insecure --superlink 127.0.0.1:L --host 127.0.0.1 --port N_i \\
                     --node-config 'data-file="<work>/clients/client-<i>.npz"'      # one per site

submits the run with ``flwr run <app-dir> dermbench-loopback --stream`` (``write_app`` writes the Flower app:
a ``pyproject.toml`` whose components are ``dermbench_plugins.tasks.federated.app:server_app`` / ``:client_app`` and
whose ``[tool.flwr.app.config]`` is the run config), reads the ServerApp's ``server.json`` / ``global.npz``
from ``out-dir``, and on exit terminates every process it started together with their children (SuperExec,
``flwr-serverapp``, ``flwr-clientapp``), killing what has not exited after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dermbench.api import DermbenchError

CONNECTION = "dermbench-loopback"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exe(name: str) -> str:
    cand = Path(sys.executable).parent / name
    found = str(cand) if cand.exists() else shutil.which(name)
    if not found:
        raise DermbenchError(f"{name} not found next to {sys.executable} or on PATH: pip install 'dermbench[fl]'")
    return found


def write_app(app_dir: Path, run_config: dict[str, Any]) -> Path:
    """A minimal Flower app directory whose components live in the installed dermbench package."""
    import tomli_w

    app_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "dermbench-federated", "version": "1.0.0", "dependencies": [],
                    "description": "dermbench federated linear projection (generated)", "license": "Apache-2.0"},
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {"app": {
                "publisher": "dermbench",
                "components": {"serverapp": "dermbench_plugins.tasks.federated.app:server_app",
                               "clientapp": "dermbench_plugins.tasks.federated.app:client_app"},
                "config": dict(run_config),
            }},
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return app_dir


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DermbenchError(f"flower-superlink exited with code {proc.returncode}: {_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DermbenchError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout}s: {_tail(log)}")


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class LoopbackFederation:
    """Context manager: SuperLink + one SuperNode per client file on 127.0.0.1; ``run(cfg)`` one Flower run."""

    def __init__(self, client_files: list[Path], work: Path, startup_timeout: float = 120.0):
        self.client_files = [Path(f).resolve() for f in client_files]
        self.work = Path(work)
        self.startup_timeout = startup_timeout
        self.procs: list[subprocess.Popen] = []
        self.started_pids: list[int] = []  # every process seen in our trees (for the clean-shutdown check)
        self.link_port = 0
        self.node_ports: list[int] = []
        self.logs = self.work / "flower-logs"

    # -------------------------------------------------------------------------------------- lifecycle
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLWR_HOME=str(self.work / "flwr-home"), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                   HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        try:
            p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.work,
                                 start_new_session=True)
        finally:
            log.close()
        self.procs.append(p)
        self.started_pids.append(p.pid)
        return p

    def __enter__(self) -> "LoopbackFederation":
        self.logs.mkdir(parents=True, exist_ok=True)
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        self.link_port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.link_port}"\ninsecure = true\n'
        )
        try:
            link = self._spawn("superlink", [
                _exe("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.link_port),
                "--disable-runtime-dependency-installation",
            ])
            _wait_port(self.link_port, link, self.startup_timeout, self.logs / "superlink.log")
            for i, f in enumerate(self.client_files):
                port = free_port()
                self.node_ports.append(port)
                self._spawn(f"supernode-{i}", [
                    _exe("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.link_port}",
                    "--host", "127.0.0.1", "--port", str(port), "--node-config", f'data-file="{f}"',
                ])
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _tree(self) -> list[Any]:
        import psutil

        out = []
        for p in self.procs:
            try:
                root = psutil.Process(p.pid)
                out += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self, grace: float = 10.0) -> None:
        """Terminate every process we started and all their descendants; kill stragglers."""
        import psutil

        tree = self._tree()
        self.started_pids = sorted(set(self.started_pids) | {p.pid for p in tree})
        for p in tree:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for p in self.procs:  # reap our direct children
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []

    def alive_pids(self) -> list[int]:
        """Processes from this federation still running (empty after a clean stop)."""
        import psutil

        alive = []
        for pid in self.started_pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        return alive

    # -------------------------------------------------------------------------------------- one run
    def run(self, cfg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Submit one run (``cfg``: .app run config) and return the server summary with ``weights``."""
        import numpy as np

        out = Path(str(cfg["out-dir"]))
        for name in ("server.json", "global.npz"):
            (out / name).unlink(missing_ok=True)
        app = write_app(self.work / "flower-app", cfg)
        self.started_pids += [p.pid for p in self._tree()]
        limit = timeout or float(cfg["round-timeout"]) * 2 * int(cfg["num-rounds"]) + 300
        log = self.logs / "flwr-run.log"
        with open(log, "wb") as fh:
            try:
                r = subprocess.run([_exe("flwr"), "run", str(app), CONNECTION, "--stream"], stdout=fh,
                                   stderr=subprocess.STDOUT, env=self.env(), cwd=self.work, timeout=limit)
            except subprocess.TimeoutExpired:
                raise DermbenchError(f"flwr run did not finish within {limit:.0f}s; log: {_tail(log)}") from None
        self.started_pids += [p.pid for p in self._tree()]
        if not (out / "server.json").exists():
            raise DermbenchError(
                f"the Flower run ended (flwr exit code {r.returncode}) without a ServerApp result in {out}; "
                f"flwr run log: {_tail(log)}\nsuperlink log: {_tail(self.logs / 'superlink.log')}"
            )
        summary = json.loads((out / "server.json").read_text())
        with np.load(out / "global.npz") as z:
            summary["weights"] = {"weight": z["weight"], "bias": z["bias"]}
        summary["deployment"] = {"superlink": f"127.0.0.1:{self.link_port}",
                                 "supernodes": [f"127.0.0.1:{p}" for p in self.node_ports],
                                 "logs": str(self.logs)}
        return summary
