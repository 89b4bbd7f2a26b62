"""The ``dermbench`` command line. Heavy libraries are imported inside commands so ``--help`` stays instant."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from dermbench.api import DermbenchError
from dermbench.defaults import CI_METHOD, N_BOOT


class _Group(TyperGroup):
    """The top-level group: plugin commands are imported only when one is run or its own help is asked for.

    ``dermbench --help`` lists them from :mod:`dermbench.command_index` and is rendered by plain click (the rich
    renderer alone took ~0.1 s), so it imports no plugin module; sub-command help keeps Typer's rich layout."""

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        cmd = super().get_command(ctx, name)
        if cmd is None:
            _add_plugin_commands(self)
            cmd = super().get_command(ctx, name)
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(super().list_commands(ctx))
        return names + [c["name"] for c in _plugin_listing(self) if c["name"] not in names]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        click.Command.format_help(self, ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listing = _plugin_listing(self)
        from_plugins = {c["name"] for c in listing}
        core = [(n, self.commands[n]) for n in super().list_commands(ctx)
                if n not in from_plugins and not self.commands[n].hidden]
        extra = [(c["name"], click.Command(c["name"], help=c["help"], short_help=c["short_help"]), c["plugin"])
                 for c in listing if not c["hidden"] and c["name"] not in dict(core)]
        width = max((len(n) for n, *_ in core + extra), default=0)
        with formatter.section("Commands"):  # first sentence in full (wrapped), names aligned across sections
            formatter.write_dl([(n.ljust(width), c.get_short_help_str(200)) for n, c in core])
        if extra:
            with formatter.section("Commands from plugins"):
                formatter.write_dl([(n.ljust(width), f"{c.get_short_help_str(200)} [plugin {p}]")
                                    for n, c, p in extra])


_plugin_rows: list[dict[str, Any]] | None = None  # plugin commands added to `app` in this process


def _add_plugin_commands(group: click.Group) -> list[dict[str, Any]]:
    """Import plugins and let them add commands (once per process); refresh the on-disk listing.

    A plugin command may not take a core command's name: it is left out with a warning instead of silently
    replacing ``run`` or ``leaderboard``."""
    global _plugin_rows
    from dermbench import command_index, plugins

    if _plugin_rows is not None:
        return _plugin_rows
    core = set(group.commands)
    n_cmds, n_groups = len(app.registered_commands), len(app.registered_groups)
    errors = [[e.plugin, e.error] for e in plugins.add_commands(app)]
    rows = []
    for info in app.registered_commands[n_cmds:] + app.registered_groups[n_groups:]:
        plugin = getattr(info, "dermbench_plugin", "?")
        one = typer.Typer()
        if isinstance(info, typer.models.CommandInfo):
            one.registered_commands = [info]
        else:
            one.registered_groups = [info]
        built = typer.main.get_group(one).commands
        clash = sorted(core & set(built))
        if clash:
            errors.append([plugin, f"command {clash[0]!r} is a core command; rename it"])
            (app.registered_commands if info in app.registered_commands else app.registered_groups).remove(info)
            continue
        for name, cmd in built.items():
            group.commands[name] = cmd
            rows.append({"name": name, "help": cmd.help or "", "short_help": cmd.short_help, "hidden": cmd.hidden,
                         "plugin": plugin, "files": list(getattr(info, "dermbench_files", []))})
    _warn(errors)
    if not plugins.load_errors():  # a plugin that failed to import may add commands once fixed: keep no index
        command_index.write(rows, errors, [f for r in rows for f in r["files"]])
    _plugin_rows = rows
    return rows


def _warn(errors: list[list[str]]) -> None:
    for plugin, error in errors:
        print(f"warning: plugin {plugin!r} failed to add commands: {error}", file=sys.stderr)


def _plugin_listing(group: click.Group) -> list[dict[str, Any]]:
    """Plugin commands for the help listing: from the index while it is valid, else by loading plugins."""
    from dermbench import command_index, plugins

    if _plugin_rows is None and plugins._pm is None:  # nothing imported yet: the index is enough
        index = command_index.read()
        if index is not None:
            _warn(index.get("errors", []))
            return index["commands"]
    return _add_plugin_commands(group)


app = typer.Typer(
    name="dermbench",
    cls=_Group,
    help="Compare vision foundation models on dermatology, with bootstrap CIs and paired tests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    suggest_commands=False,  # click already suggests close names; both made "Did you mean 'run'?" appear twice
)
plugins_app = typer.Typer(help="List installed plugins, or check one.", invoke_without_command=True)
cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
app.add_typer(cache_app, name="cache")


def _console():
    from rich.console import Console

    c = Console(stderr=False)
    if not c.is_terminal:  # piped output: don't fold tables to 80 columns
        c = Console(stderr=False, width=max(c.width, 200))
    return c


def parse_value(v: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'a,b' stays a string; JSON lists/objects are parsed."""
    import json

    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        pass
    if v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
    return v


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise DermbenchError(f"{what} {it!r} must look like key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def route_task_opts(raw: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """``task.key=value`` targets one task; a bare ``key=value`` goes to every planned task that has that option."""
    from dermbench import plugins

    reg = plugins.registry()
    out: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        if "." in k:
            t, key = k.split(".", 1)
            reg.task(t)
            if t not in tasks:
                raise DermbenchError(
                    f"--task-opt {k}: task {t!r} is not in this run (tasks: {', '.join(tasks) or '-'}); "
                    "drop the option or add the task with --task"
                )
            out.setdefault(t, {})[key] = v
            continue
        targets = [t for t in tasks if k in reg.task(t).info.defaults]
        if not targets:
            raise DermbenchError(
                f"--task-opt {k}: none of the tasks {tasks} has an option {k!r}; "
                + "; ".join(f"{t}: {', '.join(sorted(reg.task(t).info.defaults)) or '-'}" for t in tasks)
            )
        for t in targets:
            out.setdefault(t, {})[k] = v
    return out


@app.command()
def run(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model name(s), comma-separated (or models: in --config)"),
    task: str = typer.Option("all", "--task", "-t", help="task name(s), comma-separated, or 'all'"),
    dataset: str = typer.Option("dermsynth", "--dataset", "-d", help="dataset name(s), comma-separated"),
    data_root: list[str] = typer.Option([], "--data-root",
                                        help="folder holding the datasets' files, or DATASET=PATH (repeatable)"),
    seed: str = typer.Option("0", "--seed", help="seed, or several comma-separated (one record each)"),
    protocol: str = typer.Option("default", "--protocol",
                                 help="named protocol preset of the tasks' options (e.g. dermino, panderm)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    overwrite: str = typer.Option("missing", "--overwrite",
                                  help="never: keep any record; missing: run absent or stale cells; always: rerun all"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="results directory"),
    weights: list[str] = typer.Option([], "--weights", help="PATH for a single model, or MODEL=PATH"),
    task_opt: list[str] = typer.Option([], "--task-opt", help="task option key=value or task.key=value"),
    dataset_opt: list[str] = typer.Option([], "--dataset-opt", help="dataset loader option key=value"),
    model_opt: list[str] = typer.Option([], "--model-opt", help="model loader option key=value"),
    split_seed: int = typer.Option(0, "--split-seed", help="seed of the seeded 50/50 split where no official one exists"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="feature cache (default $DERMBENCH_CACHE or ~/.cache/dermbench)"),
    batch_size: int = typer.Option(32, "--batch-size"),
    n_boot: int = typer.Option(N_BOOT, "--n-boot", help="bootstrap replicates"),
    ci: str = typer.Option(CI_METHOD, "--ci", help="percentile | bca | paper (the DermINO μ ± v, labelled)"),
    commercial_only: bool = typer.Option(False, "--commercial-only", help="only models/datasets licensed for commercial use"),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="skip unreadable images (counted in provenance)"),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: run a deterministic 1/n of the planned cells "
                                        "(with --extract-only: extract 1/n of every split's images)"),
    extract_only: bool = typer.Option(False, "--extract-only",
                                      help="only fill the feature cache (Slurm array step before the tasks)"),
    extract_workers: Optional[int] = typer.Option(None, "--extract-workers",
                                                  help="image-decoding worker processes (default: 0 on CPU, "
                                                       "free cores on CUDA)"),
    amp: Optional[str] = typer.Option(None, "--amp", help="bf16 | fp16 autocast for feature extraction on GPUs"),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels-last layout for extraction"),
    train_fraction: Optional[str] = typer.Option(None, "--train-fraction",
                                                 help="alias of --task-opt train_fraction=... (label-efficiency "
                                                      "curve: fractions of the training labels, e.g. 0.01,0.1,1)"),
    shots: Optional[str] = typer.Option(None, "--shots",
                                        help="alias of --task-opt shots=... (labelled images per class, e.g. 1,5,10)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML run file (e.g. suites/lite.yaml): its keys stand for the flags; "
                                               "a flag also given must agree with it"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list planned / reused / skipped cells and the estimated "
                                                          "time; loads no model, writes nothing"),
    debug: bool = typer.Option(False, "--debug", help="full tracebacks of failed cells and errors (or "
                                                      "DERMBENCH_DEBUG=1); they are always kept in <cell>.error.json"),
) -> None:
    """Run models x tasks x datasets; finished cells are skipped, results are written as JSON records."""
    import json

    from dermbench import runner

    if debug:
        from dermbench.check import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"

    run_file = None
    if config is not None:
        from click.core import ParameterSource

        from dermbench import runfile

        data, sha = runfile.load(config)
        explicit = {k for k in ctx.params
                    if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
        merged = runfile.merge(config, runfile.to_cli_values(data), ctx.params, explicit)
        _check_run_file_roots(config, data)
        model, task, dataset, seed, data_root = (merged[k] for k in ("model", "task", "dataset", "seed", "data_root"))
        out, device, overwrite, weights = (merged[k] for k in ("out", "device", "overwrite", "weights"))
        task_opt, dataset_opt, model_opt = (merged[k] for k in ("task_opt", "dataset_opt", "model_opt"))
        split_seed, cache_dir, batch_size, n_boot, ci, protocol = (
            merged[k] for k in ("split_seed", "cache_dir", "batch_size", "n_boot", "ci", "protocol"))
        commercial_only, skip_bad_images, shard = (merged[k] for k in ("commercial_only", "skip_bad_images", "shard"))
        run_file = {"path": str(Path(config).resolve()), "sha256": sha}
    if not model:
        raise DermbenchError("no model given: pass --model NAME[,NAME...] (see `dermbench list models`), or "
                             "--config FILE whose models: lists them")
    models = runner.split_names(model)
    tasks = runner.split_names(task)
    datasets = runner.split_names(dataset)
    seeds = parse_seeds(seed)
    wmap: dict[str, str] = {}
    for w in weights:
        if "=" in w and not Path(w).exists():
            k, v = w.split("=", 1)
            wmap[k] = v
        elif len(models) == 1:
            wmap[models[0]] = w
        else:
            raise DermbenchError("with several models, pass --weights MODEL=PATH")
    root, roots = parse_data_roots(data_root)
    shard_t = None
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
            assert 1 <= i <= n
        except (ValueError, AssertionError):
            raise DermbenchError(f"--shard {shard!r} must look like i/n with 1 <= i <= n, e.g. 2/4") from None
        shard_t = (i, n)
    p = runner.plan(models, tasks, datasets, seeds, commercial_only)  # validates names first
    task_names = sorted({c.task for c in p.cells} | {c.task for c, _ in p.skipped})
    for flag, value, cast in (("train_fraction", train_fraction, float), ("shots", shots, int)):
        if value:
            try:
                vals = [cast(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise DermbenchError(f"--{flag.replace('_', '-')} {value!r}: expected comma-separated numbers") from None
            task_opt = [*task_opt, f"{flag}={json.dumps(vals if len(vals) > 1 else vals[0])}"]
    opts = runner.RunOptions(
        out=out, data_root=root, data_roots=roots, seeds=seeds, device=device, overwrite=overwrite,
        task_params=route_task_opts(parse_kv(task_opt, "--task-opt"), task_names),
        dataset_opts=parse_kv(dataset_opt, "--dataset-opt"), model_opts=parse_kv(model_opt, "--model-opt"),
        weights=wmap, cache_dir=cache_dir, batch_size=batch_size, n_boot=n_boot, ci=ci, split_seed=split_seed,
        commercial_only=commercial_only, skip_bad_images=skip_bad_images, shard=shard_t, protocol=protocol,
        extract_only=extract_only, extract_workers=extract_workers, amp=amp, channels_last=channels_last,
        run_file=run_file,
    )
    runner.validate_run(p, opts)  # every option checked before any dataset is loaded or feature extracted
    if dry_run:
        for line in runner.dry_run(p, opts).lines():
            print(line)
        return
    console = None if quiet else _console()
    try:
        summary = runner.execute(p, opts, console=console, quiet=quiet)
    except KeyboardInterrupt:
        print("interrupted; completed cells are kept, rerun the same command to resume", file=sys.stderr)
        raise typer.Exit(130) from None
    if not quiet and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_summary(console, summary, out)
    if summary.failed:
        raise typer.Exit(1)


def _check_run_file_roots(path: Path, data: dict) -> None:
    """A run file's data_root must exist before anything runs (naming the key, the path and the fix)."""
    roots = data.get("data_root")
    items = [("data_root", roots)] if isinstance(roots, str) else [(f"data_root.{k}", v) for k, v in (roots or {}).items()]
    for key, value in items:
        if not Path(value).expanduser().exists():
            raise DermbenchError(f"run file {path}: {key} = {value!r} does not exist; fix the path in the run file "
                                 "(relative paths are taken from the current directory)")


def parse_seeds(value: str) -> list[int]:
    """``--seed 0,1,2`` as integers; anything else is a clear error (never a traceback, never a no-op)."""
    from dermbench import runner

    items = runner.split_names(value or "")
    if not items:
        raise DermbenchError(f"--seed {value!r} is empty: pass a seed such as --seed 0 (or several: --seed 0,1,2)")
    seeds = []
    for it in items:
        try:
            s = int(it)
        except ValueError:
            raise DermbenchError(f"--seed {it!r} is not an integer: pass e.g. --seed 0 or --seed 0,1,2") from None
        if s < 0:
            raise DermbenchError(f"--seed {s} is negative: seeds are integers >= 0")
        seeds.append(s)
    if len(set(seeds)) != len(seeds):
        raise DermbenchError(f"--seed {value!r} repeats a seed")
    return seeds


def parse_data_roots(values: list[str]) -> tuple[Optional[Path], dict[str, Path]]:
    """``--data-root PATH`` (every dataset) and ``--data-root DATASET=PATH`` (one dataset), repeatable."""
    from dermbench import plugins

    root: Optional[Path] = None
    roots: dict[str, Path] = {}
    for v in values or []:
        if not v.strip():
            raise DermbenchError("--data-root is empty: pass a folder, or DATASET=FOLDER")
        name, eq, path = v.partition("=")
        if eq and not Path(v).expanduser().exists():
            plugins.registry().dataset(name.strip())  # unknown names list the valid ones
            if name.strip() in roots:
                raise DermbenchError(f"--data-root {name.strip()}=... given twice")
            roots[name.strip()] = Path(path).expanduser()
            continue
        if root is not None:
            raise DermbenchError(
                f"--data-root given twice ({root} and {v}); use DATASET=PATH to give each dataset its folder")
        root = Path(v).expanduser()
    return root, roots


def _print_summary(console, summary, out: Path) -> None:
    from rich.table import Table

    from dermbench.results import read_record

    paths = [p for _, p in summary.done + summary.reused]
    if paths:
        t = Table(title=f"results ({len(summary.done)} new, {len(summary.reused)} reused) in {out}")
        for col in ("model", "task", "dataset", "metric", "value", "95% CI"):
            t.add_column(col)
        from dermbench import plugins

        reg = plugins.registry()
        for p in paths:
            rec = read_record(p)
            tinfo = reg.tasks[rec.task].info if rec.task in reg.tasks else None
            shown = [tinfo.primary_metric] if tinfo and tinfo.primary_metric else list(rec.metrics)[:1]
            shown += [m for m in ("f1_macro", "jaccard") if m in rec.metrics and m not in shown]
            for name in shown:
                m = rec.metrics.get(name, {})
                v, lo, hi = m.get("value"), m.get("ci_low"), m.get("ci_high")
                t.add_row(rec.model, rec.task, rec.dataset, name, "n/a" if v is None else f"{v:.3f}",
                          "n/a" if lo is None else f"[{lo:.3f}, {hi:.3f}]")
        console.print(t)
    if summary.skipped:
        console.print(f"[yellow]{len(summary.skipped)} cell(s) skipped[/] (reasons above)")
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} cell(s) failed:[/]")
        by_msg: dict[str, list] = {}
        for cell, msg in summary.failed:  # one message once, with the cells it stopped
            by_msg.setdefault(msg, []).append(cell)
        said = set(getattr(summary, "unavailable", {}).values())
        for msg, cells in by_msg.items():
            why = "its model could not be loaded (message above)" if msg in said else msg
            console.print(f"  {', '.join(f'{c.model}×{c.task}×{c.dataset}' for c in cells)}: {why}", highlight=False)


@app.command("list")
def list_cmd(
    kind: str = typer.Argument(..., help="models | tasks | datasets"),
    commercial_only: bool = typer.Option(False, "--commercial-only"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List registered models, tasks or datasets with their metadata (licence included)."""
    from dermbench import plugins

    reg = plugins.registry()
    tables = {"models": reg.models, "tasks": reg.tasks, "datasets": reg.datasets}
    if kind not in tables:
        raise DermbenchError(f"unknown kind {kind!r}: use models, tasks or datasets")
    rows = []
    for name in sorted(tables[kind]):
        info = tables[kind][name].info
        if commercial_only and not getattr(info, "commercial_use", True):
            continue
        rows.append({**info.as_row(), "plugin": tables[kind][name].plugin})
    if as_json:
        import json

        print(json.dumps(rows, indent=1))
        return
    _table(rows, f"{len(rows)} {kind}")
    _report_plugin_errors(reg)


def _table(rows: list[dict], title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    cols = list(rows[0]) if rows else ["name"]
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(r.get(c, "")) for c in cols])
    _console().print(t)


def _report_plugin_errors(reg) -> None:
    if reg.errors:
        c = _console()
        for e in reg.errors:
            c.print(f"[red]plugin {e.plugin!r} failed at {e.stage}:[/] {e.error}" + (f" — {e.hint}" if e.hint else ""),
                    highlight=False)
            from dermbench.check import debug_enabled

            if debug_enabled() and getattr(e, "traceback", ""):  # DERMBENCH_DEBUG=1
                print(e.traceback, file=sys.stderr)


@plugins_app.callback()
def plugins_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Installed plugins, their versions, hooks and what they registered (failures included)."""
    if ctx.invoked_subcommand is not None:
        return
    from dermbench import plugins

    rows = plugins.plugin_rows()
    reg = plugins.registry()
    if as_json:
        import json

        print(json.dumps({"plugins": rows, "errors": [e.__dict__ for e in reg.errors]}, indent=1, default=str))
        return
    _table(
        [
            {"plugin": r["name"], "dist": r["dist"], "version": r["version"], "hooks": ", ".join(r["hooks"]),
             "registered": "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registered"].items())}
            for r in rows
        ],
        f"{len(rows)} plugins",
    )
    _report_plugin_errors(reg)


@plugins_app.command("check")
def plugins_check(
    name: str = typer.Argument(..., help="a model, task or dataset name"),
    kind: Optional[str] = typer.Option(None, "--kind", help="model | task | dataset (when a name is several)"),
    n_images: int = typer.Option(4, "--n-images", help="images a model runs on / a dataset decodes"),
    weights: Optional[str] = typer.Option(None, "--weights"),
    model: Optional[str] = typer.Option(None, "--model", help="task: backbone to run it with (default random-vit)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="task: dataset to run it on (default dermsynth)"),
    n: Optional[int] = typer.Option(None, "--n", help="task: dermsynth images (default 48)"),
    task_opt: Optional[list[str]] = typer.Option(None, "--task-opt", help="task: key=value option"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="dataset: folder holding its files"),
    dataset_opt: Optional[list[str]] = typer.Option(None, "--dataset-opt", help="dataset: key=value loader option"),
    debug: bool = typer.Option(False, "--debug", help="full tracebacks of plugin failures (or DERMBENCH_DEBUG=1)"),
) -> None:
    """Check a plugin's model (load, shapes, metadata), task (a run on small dermsynth with a random backbone,
    output keys/lengths/metrics) or dataset (load, counts, declared fields, masks, splits)."""
    from dermbench import check

    reports = check.check(
        name, kind=kind, debug=debug, n_images=n_images, weights=weights, model=model, dataset=dataset, n=n,
        task_opts=parse_kv(task_opt, "--task-opt"), data_root=data_root, dataset_opts=parse_kv(dataset_opt, "--dataset-opt"),
    )
    for report in reports:
        _table(check.report_rows(report), f"plugins check {report['kind']} {name}")
        for tb in report.get("tracebacks", []):
            print(tb, file=sys.stderr)
    if not all(r.get("ok", False) for r in reports):
        raise typer.Exit(1)


@cache_app.command("ls")
def cache_ls(cache_dir: Optional[Path] = typer.Option(None, "--cache-dir")) -> None:
    """List cached feature entries."""
    from dermbench.features import FeatureStore

    store = FeatureStore(cache_dir)
    rows = [
        {"model": e.get("model"), "dataset": e.get("dataset"), "split": e.get("split"), "kind": e.get("kind"),
         "layers": e.get("layers"), "n": e.get("n"), "shape": e.get("shapes"), "MB": round(e.get("bytes", 0) / 1e6, 2)}
        for e in store.entries()
    ]
    _table(rows, f"{len(rows)} feature entries in {store.dir}")


@cache_app.command("clear")
def cache_clear(
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    model: Optional[str] = typer.Option(None, "--model"),
    dataset: Optional[str] = typer.Option(None, "--dataset"),
) -> None:
    """Delete cached features (all, or one model's / dataset's)."""
    from dermbench.features import FeatureStore

    n = FeatureStore(cache_dir).clear(model=model, dataset=dataset)
    print(f"removed {n} feature entries")


@app.command()
def leaderboard(
    results: list[Path] = typer.Option([Path("results")], "--results", "-r",
                                       help="results folder; repeat to merge folders from several machines"),
    task: Optional[str] = typer.Option(None, "--task"),
    dataset: Optional[str] = typer.Option(None, "--dataset"),
    model: Optional[str] = typer.Option(None, "--model"),
    fmt: str = typer.Option("md", "--format", help="md,csv,json,html (comma-separated)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write files here (e.g. leaderboards/); nothing is written elsewhere"),
    ci: str = typer.Option(CI_METHOD, "--ci"),
    correction: str = typer.Option("holm", "--correction", help="holm | bh | none (one family per column)"),
    commercial_only: bool = typer.Option(False, "--commercial-only"),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", help="bootstrap replicates (default: the records' own)"),
    references: Optional[Path] = typer.Option(None, "--references", help="published-numbers table (JSON); default: "
                                              "the one shipped with dermbench"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="exit 0 even when some records are unreadable"),
) -> None:
    """Boards from stored result records only: main (one primary metric per task and dataset), detail,
    calibration and fairness boards, rank intervals, paired tests vs the best (one Holm family per column)."""
    from dermbench import leaderboard as lb
    from dermbench.runner import split_names

    res = lb.build_leaderboard(
        list(results),
        tasks=split_names(task) if task else None,
        datasets=split_names(dataset) if dataset else None,
        models=split_names(model) if model else None,
        formats=tuple(split_names(fmt)), out=out, ci=ci, correction=correction,
        commercial_only=commercial_only, plots=plots, n_boot=n_boot, references=references,
    )
    print(res["table"])
    for f in res.get("files", []):
        print(f"wrote {f}")
    if res["problems"] and not allow_missing:
        print(f"error: {len(res['problems'])} unreadable or malformed record(s) were left out (listed in the "
              "board's 'Left out / unreadable' section): re-run those cells or delete the files, or pass "
              "--allow-missing to accept a board without them", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def compare(
    model_a: str = typer.Argument(...),
    model_b: str = typer.Argument(...),
    task: str = typer.Option(..., "--task"),
    dataset: str = typer.Option(..., "--dataset"),
    results: list[Path] = typer.Option([Path("results")], "--results", "-r", help="repeatable"),
    metric: Optional[str] = typer.Option(None, "--metric"),
    test: str = typer.Option("bootstrap", "--test", help="bootstrap | paper-ttest (anti-conservative, labelled)"),
    ci: str = typer.Option(CI_METHOD, "--ci"),
    seed: Optional[int] = typer.Option(None, "--seed", help="compare this training seed only (default: seed means)"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="exit 0 even when some records are unreadable"),
) -> None:
    """Paired comparison of two models on identical bootstrap resamples (seed means when several seeds)."""
    import json

    from dermbench import leaderboard as lb

    res = lb.compare(list(results), model_a, model_b, task=task, dataset=dataset, metric=metric, test=test, ci=ci,
                     seed=seed)
    print(json.dumps(res, indent=1, default=str))
    if res["problems"] and not allow_missing:
        print(f"error: {len(res['problems'])} unreadable or malformed record(s) under the results folders (listed in "
              "'problems'); pass --allow-missing to accept", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def audit(
    dataset: str = typer.Option(..., "--dataset", "-d", help="datasets to audit, comma-separated"),
    data_root: list[str] = typer.Option([], "--data-root", help="PATH, or DATASET=PATH (repeatable)"),
    pretrain: list[str] = typer.Option([], "--pretrain", help="NAME=FOLDER of pretraining images (NAME: the model "
                                                             "name the leaderboard matches), repeatable"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="add an embedding-similarity pass with this backbone"),
    out: Path = typer.Option(Path("results/audit"), "--out", "-o", help="writes audit.json, audit.md, contact_sheet.png"),
    max_distance: int = typer.Option(4, "--max-distance", help="pHash Hamming distance (of 64 bits) for a candidate"),
    pixel_tol: float = typer.Option(0.03, "--pixel-tol", help="24x24 thumbnail mean |diff| (of 255) confirming it"),
    sim_threshold: float = typer.Option(0.95, "--sim-threshold", help="embedding cosine similarity for a pair"),
    min_size: int = typer.Option(32, "--min-size", help="refuse images smaller than this (pHash grid is 32 px)"),
    allow_mixed_modes: bool = typer.Option(False, "--allow-mixed-modes", help="compare greyscale with colour sets"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="feature cache for the embedding pass"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Leakage audit: near-duplicate images within datasets (train vs test), across datasets, and vs pretraining."""
    from dermbench import audit as audit_mod

    root, roots = parse_data_roots(data_root)
    pre = {}
    for v in pretrain:
        name, eq, folder = v.partition("=")
        if not eq or not name.strip() or not folder.strip():
            raise DermbenchError(f"--pretrain {v!r}: expected NAME=FOLDER (e.g. dermino=/data/pretrain_images)")
        pre[name.strip()] = Path(folder).expanduser()
    audit_mod.main([d.strip() for d in dataset.split(",") if d.strip()], data_root=root, data_roots=roots,
                   pretrain=pre, model=model, out=out, cache_dir=cache_dir, device=device, console=_console(),
                   max_distance=max_distance, pixel_tol=pixel_tol, sim_threshold=sim_threshold, min_side=min_size,
                   allow_mixed_modes=allow_mixed_modes)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="results, leaderboard and demo.log (third-party "
                                                                    "library messages) go here"),
    models: str = typer.Option("auto", "--model", "-m", help="model name(s), comma-separated; 'auto': every model "
                                                             "whose weights exist here, plus dermino"),
    models_old: Optional[str] = typer.Option(None, "--models", hidden=True, help="old name of --model"),
    n: int = typer.Option(400, "--n", help="dermsynth images"),
    task: str = typer.Option("all", "--task", "-t", help="task name(s), comma-separated, or 'all'"),
    publish: Optional[Path] = typer.Option(None, "--publish", help="also write md/csv/json/html + plots here"),
    n_boot: int = typer.Option(N_BOOT, "--n-boot", help="bootstrap replicates (more give the paired tests finer p-values)"),
) -> None:
    """The main job: all offline-runnable models x all tasks on dermsynth, then the leaderboard."""
    from dermbench.demo import run_demo

    models = models_old or models
    raise typer.Exit(run_demo(out, models=models, n=n, tasks=task, publish=publish, console=_console(),
                              n_boot=n_boot))


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, standalone_mode=True)
    except DermbenchError as e:
        from dermbench.check import debug_enabled

        if debug_enabled():
            import traceback

            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
