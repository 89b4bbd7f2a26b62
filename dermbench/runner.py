"""Plan cells (model x task x dataset), skip the done ones, run the rest, score and record them.

One failing cell (missing weights, a bad file) is recorded and reported; the others go on, and nothing
already computed is lost: records and cache entries are written atomically as soon as they exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from dermbench import plugins
from dermbench.api import Backbone, Dataset, DermbenchError, ModelInfo, Split, TaskInfo, TaskOutput, stable_hash
from dermbench.features import FeatureStore
from dermbench.results import (
    ResultRecord,
    artifacts_dir,
    atomic_write_text,
    provenance,
    read_record,
    record_path,
    write_record,
)

OVERWRITE = ("never", "missing", "always")


@dataclass
class Cell:
    model: str
    task: str
    dataset: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.model} × {self.task} × {self.dataset} (seed {self.seed})"


@dataclass
class Plan:
    cells: list[Cell] = field(default_factory=list)
    skipped: list[tuple[Cell, str]] = field(default_factory=list)  # incompatible, with the reason


@dataclass
class RunSummary:
    done: list[tuple[Cell, Path]] = field(default_factory=list)
    reused: list[tuple[Cell, Path]] = field(default_factory=list)
    skipped: list[tuple[Cell, str]] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    backbone_loads: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class RunOptions:
    out: Path = Path("results")
    data_root: Path | None = None
    seeds: Sequence[int] = (0,)
    device: str = "cpu"
    overwrite: str = "missing"
    task_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> params
    dataset_opts: dict[str, Any] = field(default_factory=dict)
    model_opts: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)  # model -> path
    cache_dir: Path | None = None
    batch_size: int = 32
    n_boot: int = 1000
    ci: str = "percentile"
    split_seed: int = 0
    commercial_only: bool = False
    skip_bad_images: bool = False
    shard: tuple[int, int] | None = None  # (i, n), 1-based i


def split_names(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def plan(models: Sequence[str], tasks: Sequence[str], datasets: Sequence[str], seeds: Sequence[int] = (0,),
         commercial_only: bool = False) -> Plan:
    """Resolve names (unknown ones raise with the valid list) and keep the compatible cells."""
    reg = plugins.registry()
    model_infos = [reg.model(m).info for m in models]
    dataset_infos = [reg.dataset(d).info for d in datasets]
    p = Plan()
    if list(tasks) == ["all"]:
        task_names = [t for t in sorted(reg.tasks) if reg.tasks[t].info.in_all]
        left_out = [t for t in sorted(reg.tasks) if not reg.tasks[t].info.in_all]
        for mi in model_infos:
            for di in dataset_infos:
                for t in left_out:
                    p.skipped.append((Cell(mi.name, t, di.name, seeds[0]),
                                      f"task {t!r} is not part of --task all (expensive): name it explicitly"))
    else:
        task_names = list(tasks)
    task_infos = [reg.task(t).info for t in task_names]
    for mi in model_infos:
        for di in dataset_infos:
            for ti in task_infos:
                for seed in seeds:
                    cell = Cell(mi.name, ti.name, di.name, seed)
                    if commercial_only and not mi.commercial_use:
                        p.skipped.append((cell, f"model {mi.name!r} is not licensed for commercial use ({mi.license})"))
                        continue
                    if commercial_only and not di.commercial_use:
                        p.skipped.append((cell, f"dataset {di.name!r} is not licensed for commercial use ({di.license})"))
                        continue
                    why = ti.incompatibility(mi, di)
                    if why:
                        p.skipped.append((cell, why))
                    else:
                        p.cells.append(cell)
    return p


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """A deterministic 1/n of the cells: by a stable hash of the cell, so shards stay balanced and fixed."""
    if shard is None:
        return cells
    i, n = shard
    return [c for c in cells if int(stable_hash([c.model, c.task, c.dataset, c.seed], 8), 16) % n == i - 1]


def task_params(info: TaskInfo, given: dict[str, Any]) -> dict[str, Any]:
    params = dict(info.defaults)
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise DermbenchError(
            f"task {info.name!r} has no option(s) {unknown}; its options are "
            f"{', '.join(f'{k}={v!r}' for k, v in sorted(params.items())) or '(none)'}"
        )
    params.update(given)
    return params


def _weights_spec(path: str | None) -> str:
    """A cheap identity for --weights (path, size, mtime) used in the config hash; the content hash is recorded."""
    if not path:
        return "default"
    p = Path(path)
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return str(path)


class CellContext:
    """The TaskContext the runner hands a task (see dermbench.api.TaskContext)."""

    def __init__(self, runner: "Runner", model: str, dataset: Dataset, seed: int, params: dict[str, Any], out_dir: Path):
        self._runner = runner
        self.model_name = model
        self.model_info: ModelInfo = plugins.registry().model(model).info
        self.dataset = dataset
        self.seed = seed
        self.device = runner.opts.device
        self.params = params
        self.out_dir = out_dir
        self.ci = runner.opts.ci
        self.n_boot = runner.opts.n_boot  # tasks reporting their own secondary CIs use the run's setting

    def split(self, name: str) -> Split:
        return self.dataset.split(name)

    def load_dataset(self, name: str) -> Dataset:
        """Another registered dataset, loaded with the run's --data-root/options (e.g. one FL site per dataset)."""
        return self._runner.dataset(name)

    def backbone(self) -> Backbone:
        return self._runner.backbone(self.model_name)

    def features(self, split: Split):
        bb = self.backbone()
        with self.progress(f"features {self.model_name} / {split.dataset.name}:{split.name}", len(split)) as adv:
            return self._runner.store.embeddings(bb, split, device=self.device, progress=adv)

    def patch_features(self, split: Split, layers: Sequence[int]):
        bb = self.backbone()
        with self.progress(f"patch maps {self.model_name} / {split.dataset.name}:{split.name}", len(split)) as adv:
            return self._runner.store.patch_tokens(bb, split, layers, device=self.device, progress=adv)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        with self._runner.progress(description, total) as adv:
            yield adv

    def log(self, message: str) -> None:
        self._runner.log(f"  {message}")


class Runner:
    def __init__(self, opts: RunOptions, console: Any = None, quiet: bool = False):
        self.opts = opts
        self.store = FeatureStore(opts.cache_dir, batch_size=opts.batch_size)
        self.console = console
        self.quiet = quiet
        self._backbones: dict[str, Backbone] = {}
        self._datasets: dict[str, Dataset] = {}
        self.summary = RunSummary()

    # ------------------------------------------------------------------ output helpers
    def log(self, msg: str) -> None:
        if self.quiet:
            return
        if self.console is not None:
            self.console.print(msg, highlight=False)
        else:
            print(msg)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self.quiet or self.console is None:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=self.console, transient=True) as prog:
            tid = prog.add_task(description, total=total)
            yield lambda n=1: prog.advance(tid, n)

    # ------------------------------------------------------------------ resources
    def backbone(self, model: str) -> Backbone:
        if model not in self._backbones:
            # one model in memory at a time: features are cached, so old backbones are no longer needed
            self._backbones.clear()
            entry = plugins.registry().model(model)
            kwargs: dict[str, Any] = dict(self.opts.model_opts)
            if self.opts.weights.get(model):
                kwargs["weights"] = self.opts.weights[model]
            kwargs.setdefault("device", self.opts.device)
            t0 = time.perf_counter()
            bb = entry.obj(**kwargs)
            bb = bb.to(self.opts.device) if hasattr(bb, "to") else bb
            self.summary.backbone_loads += 1
            self.log(f"  loaded {model} ({bb.weights_id}) in {time.perf_counter() - t0:.1f}s")
            self._backbones[model] = bb
        return self._backbones[model]

    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            entry = plugins.registry().dataset(name)
            info = entry.info
            root = self.opts.data_root
            if info.needs_root and root is None:
                raise DermbenchError(
                    f"dataset {name!r} reads files from disk: pass --data-root PATH. {info.how_to_obtain}".strip()
                )
            if info.needs_root and not Path(root).exists():
                raise DermbenchError(f"--data-root {root} does not exist. {info.how_to_obtain}".strip())
            kwargs = dict(self.opts.dataset_opts)
            kwargs.setdefault("split_seed", self.opts.split_seed)
            if self.opts.skip_bad_images:
                kwargs["skip_bad_images"] = True
            ds = entry.obj(root, **kwargs)
            self._datasets[name] = ds
        return self._datasets[name]

    # ------------------------------------------------------------------ main loop
    def config_for(self, cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "task": cell.task,
            "params": params,
            "dataset_opts": self.opts.dataset_opts,
            "model_opts": self.opts.model_opts,
            "weights": _weights_spec(self.opts.weights.get(cell.model)),
            "split_seed": self.opts.split_seed,
            "n_boot": self.opts.n_boot,
            "ci": self.opts.ci,
            "skip_bad_images": self.opts.skip_bad_images,
        }

    def run(self, p: Plan) -> RunSummary:
        from dermbench import distributed as ddp

        s = self.summary
        p = self.refine(p)
        for cell, why in p.skipped:
            s.skipped.append((cell, why))
            self.log(f"[yellow]skip[/] {cell.label}: {why}" if self.console else f"skip {cell.label}: {why}")
        reg = plugins.registry()
        todo: list[tuple[Cell, dict, dict, str]] = []
        if ddp.rank() == 0:
            for cell in shard_cells(p.cells, self.opts.shard):
                try:
                    tinfo = reg.task(cell.task).info
                    params = task_params(tinfo, self.opts.task_params.get(cell.task, {}))
                except DermbenchError as e:
                    s.failed.append((cell, str(e)))
                    continue
                config = self.config_for(cell, params)
                chash = stable_hash(config)
                done = self._done_path(cell, chash)
                if done is not None:
                    s.reused.append((cell, done))
                    self.log(f"done already: {cell.label} ({done})")
                    continue
                todo.append((cell, params, config, chash))
        if ddp.is_active():
            todo = ddp.broadcast(todo)
            self._preextract([c for c, *_ in todo])
            if ddp.rank() != 0:
                return s
        for cell, params, config, chash in todo:
            self._run_one(cell, reg.task(cell.task).info, params, config, chash)
        return s

    def refine(self, p: Plan) -> Plan:
        """Re-check compatibility against what each dataset really holds once loaded.

        Generic datasets (``folder``, ``csv``) only know their fields (masks, captions, groups) after reading
        the user's files; their loaded ``Dataset.info`` is the truth. A dataset that fails to load keeps its
        cells, which then fail with the loader's message.
        """
        reg = plugins.registry()
        names = {c.dataset for c in p.cells} | {c.dataset for c, _ in p.skipped}
        loaded: dict[str, Any] = {}
        for name in sorted(names):
            if reg.dataset(name).info.needs_root and self.opts.data_root is None:
                continue
            try:
                info = self.dataset(name).info
            except Exception:
                continue
            if info != reg.dataset(name).info:
                loaded[name] = info
        if not loaded:
            return p
        out = Plan()
        for cell in p.cells + [c for c, _ in p.skipped]:
            why_old = next((w for c, w in p.skipped if c is cell), None)
            if cell.dataset not in loaded or (why_old and "commercial" in why_old):
                (out.skipped.append((cell, why_old)) if why_old else out.cells.append(cell))
                continue
            why = reg.task(cell.task).info.incompatibility(reg.model(cell.model).info, loaded[cell.dataset])
            (out.skipped.append((cell, why)) if why else out.cells.append(cell))
        return out

    def _done_path(self, cell: Cell, chash: str) -> Path | None:
        """The record of this cell if it counts as done under the overwrite policy."""
        path = record_path(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed)
        if not path.exists() or self.opts.overwrite == "always":
            return None
        old = _try_read(path)
        if self.opts.overwrite == "never" or (old is not None and old.config_hash == chash):
            return path
        return None

    def _run_one(self, cell: Cell, tinfo: TaskInfo, params: dict, config: dict, chash: str) -> None:
        s = self.summary
        claim = Claim(record_path(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed).with_suffix(".claim"))
        holder = claim.acquire()
        if holder is not None:
            s.skipped.append((cell, f"claimed by {holder}"))
            self.log(f"busy: {cell.label} is being run by {holder}")
            return
        t_cell = time.perf_counter()
        try:
            if self.opts.overwrite != "always":
                done = self._done_path(cell, chash)  # another shard may have finished it meanwhile
                if done is not None:
                    s.reused.append((cell, done))
                    return
            self.log(f"[bold]run[/] {cell.label}" if self.console else f"run {cell.label}")
            rec = self.run_cell(cell, tinfo, params, config, chash)
            rec.provenance["timings"]["cell_seconds"] = round(time.perf_counter() - t_cell, 3)
            path = write_record(self.opts.out, rec)
            s.done.append((cell, path))
            prim = tinfo.primary_metric or (tinfo.metrics[0] if tinfo.metrics else None)
            if prim and prim in rec.metrics:
                m = rec.metrics[prim]
                self.log(f"  {prim} = {_fmt(m.get('value'))} [{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # isolation: one failing cell never stops the others
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, DermbenchError) else str(e)
            s.failed.append((cell, msg))
            self._write_error(cell, msg, traceback.format_exc())
            self.log(f"[red]FAILED[/] {cell.label}: {msg}" if self.console else f"FAILED {cell.label}: {msg}")
        finally:
            claim.release()

    def _preextract(self, cells: list[Cell]) -> None:
        """All ranks extract the embeddings of every (model, dataset) split the cells need, together."""
        reg = plugins.registry()
        seen: set[tuple[str, str]] = set()
        for cell in cells:
            if (cell.model, cell.dataset) in seen or "cls" not in reg.task(cell.task).info.capabilities:
                continue
            seen.add((cell.model, cell.dataset))
            try:
                ds = self.dataset(cell.dataset)
                bb = self.backbone(cell.model)
            except Exception as e:  # the cell itself will fail with the message on rank 0
                self.log(f"  pre-extraction of {cell.model}/{cell.dataset} skipped: {e}")
                continue
            for name in sorted(ds.splits):
                with self.progress(f"features {cell.model} / {cell.dataset}:{name}", len(ds.splits[name])) as adv:
                    self.store.embeddings(bb, ds.split(name), device=self.opts.device, progress=adv)

    def run_cell(self, cell: Cell, tinfo: TaskInfo, params: dict[str, Any], config: dict, chash: str) -> ResultRecord:
        from dermbench import stats

        reg = plugins.registry()
        dataset = self.dataset(cell.dataset)
        out_dir = artifacts_dir(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed)
        ctx = CellContext(self, cell.model, dataset, cell.seed, params, out_dir)
        task = reg.task(cell.task).obj(**params)
        _seed_everything(cell.seed)
        hits0, miss0, fwd0 = self.store.stats.hits, self.store.stats.misses, self.store.stats.images_forwarded
        t0 = time.perf_counter()
        output: TaskOutput = task.run(ctx)
        t_task = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = stats.score(
            output.predictions, output.metrics, split_hash=output.split.hash,  # fixed bootstrap seed (17.5)
            n_boot=self.opts.n_boot, ci=self.opts.ci, strata=output.strata if output.strata is not None else "auto",
        )
        t_stats = time.perf_counter() - t1
        if output.strata is not None:  # stored so later comparisons redraw the same stratified resamples
            output.predictions["strata"] = [int(v) if hasattr(v, "__int__") else v for v in output.strata]
        bb = self._backbones.get(cell.model)
        minfo = reg.model(cell.model).info
        return ResultRecord(
            model=cell.model, task=cell.task, dataset=cell.dataset, seed=cell.seed,
            config=config, config_hash=chash, metrics=metrics, predictions=output.predictions,
            split={
                "name": output.split.name,
                "hash": output.split.hash,
                "n": len(output.split),
                "sizes": {k: len(v) for k, v in dataset.splits.items()},
                "source": dataset.split_source,
            },
            model_info={
                "name": minfo.name, "family": minfo.family, "source": minfo.source, "embed_dim": minfo.embed_dim,
                "license": minfo.license, "commercial_use": minfo.commercial_use, "trained_on": list(minfo.trained_on),
                "weights_id": bb.weights_id if bb is not None else None, "random_init": minfo.random_init,
                "preprocess": minfo.preprocess.key(),
            },
            dataset_info={
                "name": dataset.info.name, "license": dataset.info.license,
                "commercial_use": dataset.info.commercial_use, "aliases": list(dataset.info.aliases),
                "label_names": list(dataset.label_names or dataset.info.label_names), "skipped": dataset.skipped,
                "root": str(dataset.root) if dataset.root else None,
            },
            provenance={
                **provenance(self.opts.device),
                "seed": cell.seed,
                "split_seed": self.opts.split_seed,
                "timings": {"task_seconds": round(t_task, 3), "stats_seconds": round(t_stats, 3)},
                "feature_cache": {
                    "hits": self.store.stats.hits - hits0,
                    "misses": self.store.stats.misses - miss0,
                    "images_forwarded": self.store.stats.images_forwarded - fwd0,
                },
            },
            extra=output.extra,
            artifacts=[str(a) for a in output.artifacts],
        )

    def _write_error(self, cell: Cell, msg: str, tb: str) -> None:
        path = record_path(self.opts.out, cell.model, cell.task, cell.dataset, cell.seed).with_suffix(".error.json")
        try:
            atomic_write_text(path, json.dumps({"cell": cell.__dict__, "error": msg, "traceback": tb,
                                                "time": time.time()}, indent=1))
        except OSError:
            pass


class Claim:
    """An exclusive claim file so two shards never run the same cell at once.

    Created with O_EXCL; a claim whose process is gone (same host) or older than DERMBENCH_CLAIM_TTL seconds
    (default 24 h, other hosts) is stale and taken over, so a crashed shard's cells are picked up on rerun.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.owned = False

    def _stale(self, info: dict) -> bool:
        import socket

        ttl = float(os.environ.get("DERMBENCH_CLAIM_TTL", 24 * 3600))
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                return False
            return False
        return time.time() - float(info.get("time", 0)) > ttl

    def acquire(self) -> str | None:
        """None when the claim is ours; otherwise 'host:pid' of the live holder."""
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    info = {}
                if info and not self._stale(info):
                    return f"{info.get('host')}:{info.get('pid')}"
                if not info and time.time() - self.path.stat().st_mtime < 5:  # being written right now
                    time.sleep(0.2)
                    continue
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, f)
            self.owned = True
            return None
        return "unknown (claim file keeps changing)"

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False


def _try_read(path: Path) -> ResultRecord | None:
    try:
        return read_record(path)
    except DermbenchError:
        return None


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def run(models: Sequence[str], tasks: Sequence[str], datasets: Sequence[str], opts: RunOptions | None = None,
        console: Any = None, quiet: bool = False) -> RunSummary:
    """Programmatic entry point (the CLI calls this)."""
    opts = opts or RunOptions()
    if opts.overwrite not in OVERWRITE:
        raise DermbenchError(f"--overwrite must be one of {OVERWRITE}, got {opts.overwrite!r}")
    p = plan(models, tasks, datasets, opts.seeds, opts.commercial_only)
    return execute(p, opts, console=console, quiet=quiet)


def execute(p: Plan, opts: RunOptions, console: Any = None, quiet: bool = False) -> RunSummary:
    """Run a plan; under torchrun, all ranks extract features together and rank 0 runs the tasks."""
    from dermbench import distributed as ddp

    opts.device = ddp.init_from_env(opts.device)
    r = Runner(opts, console=console if ddp.rank() == 0 else None, quiet=quiet or ddp.rank() != 0)
    os.makedirs(opts.out, exist_ok=True)
    try:
        return r.run(p)
    finally:
        ddp.shutdown()
