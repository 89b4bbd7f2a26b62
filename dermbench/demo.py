"""The README's main job: every offline-runnable model x every task on dermsynth, then the leaderboard.

Models are tried in order; one whose weights are not on this machine is dropped with the loader's own
message (never replaced by fake weights). When the DermINO plugin is installed and no checkpoint exists,
its ``demo`` pretraining runs first so that ``dermino`` is a real, self-trained backbone.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from dermbench import plugins
from dermbench.api import DermbenchError, WeightsUnavailable

CANDIDATES = ("dermino", "dermino-random", "dinov2-s", "dinov2-b", "vit-b", "resnet50", "random-vit")
#: the demo's only departures from each task's paper protocol, to fit a few minutes on 2 CPU cores
#: (printed at start; the published dermsynth leaderboard states them too)
DEMO_TASK_OPTS: dict[str, dict[str, Any]] = {
    "captioning": {"epochs": 20},
    # the task's default (2 rounds x 2 local epochs, lr 2e-4: DermINO's schedule for thousands of images) leaves a
    # head on 200 dermsynth images at chance (AUROC 0.53 vs 0.54 centralised, random-vit); 3 x 10 at lr 1e-2 trains
    # it (0.63 vs 0.67 centralised, measured here) with one round less of Flower overhead
    "federated": {"rounds": 3, "local_epochs": 10, "lr": 1e-2},
}
#: the demo states whether each federated result lies within this AUROC margin of the task's centralised bound
FEDERATED_MARGIN = 0.05


def available_models(candidates: Sequence[str] = CANDIDATES, log=print) -> list[str]:
    """The candidates whose weights resolve here (random baselines always do)."""
    reg = plugins.registry()
    out, missing = [], []
    for name in candidates:
        if name not in reg.models:
            continue
        entry = reg.models[name]
        try:
            entry.obj(device="cpu")
        except WeightsUnavailable:
            missing.append(name)
            continue
        except DermbenchError as e:
            log(f"demo: leaving out {name}: {e}")
            continue
        out.append(name)
    if missing:  # one line for all: each model's own message is one `dermbench plugins check NAME` away
        log(f"demo: left out {len(missing)} model(s) whose weights are not on this machine: {', '.join(missing)} "
            "(`dermbench plugins check NAME` says how to get them)")
    return out


@contextlib.contextmanager
def third_party_output_to(log_file: Path) -> Iterator[Path]:
    """Send everything written to file descriptor 2 (stderr) -- third-party banners, deprecation and
    FutureWarnings, library loggers, Ray/Flower worker output -- to ``log_file`` while the demo runs.

    dermbench's own lines go to stdout through the console, so the terminal keeps only the demo's progress and
    result; a failure's traceback is printed after stderr is restored. Python warnings are shown once each
    (the default filter) in the file.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield log_file
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)


def ensure_dermino_checkpoint(log=print) -> None:
    """Run the plugins' demo preparation (hook ``register_demo``): ``dermino_model`` pretrains its demo
    checkpoint on dermsynth when none exists yet. Kept under its old name for callers."""
    plugins.prepare_demo(log=log)


def run_demo(out: Path = Path("demo-out"), models: str = "auto", n: int = 400, tasks: str = "all",
             publish: Path | None = None, console: Any = None, n_boot: int = 1000) -> int:
    from dermbench import runner
    from dermbench import leaderboard as lb

    log = (lambda m: console.print(m, highlight=False)) if console is not None else print
    log_file = Path(out) / "demo.log"
    with third_party_output_to(log_file):
        if models == "auto":
            ensure_dermino_checkpoint(log=log)
            names = available_models(log=log)
        else:
            names = runner.split_names(models)
        if not names:
            raise DermbenchError("demo: no model can run offline here (not even random-vit): check `dermbench plugins`")
        log(f"demo: models {', '.join(names)} x tasks {tasks} on dermsynth (n={n}); the demo's departures from "
            "the task defaults (to fit a few minutes on 2 CPU cores): "
            + "; ".join(f"{t} {o}" for t, o in DEMO_TASK_OPTS.items()))
        opts = runner.RunOptions(out=Path(out), dataset_opts={"n": n}, n_boot=n_boot,
                                 task_params={t: dict(o) for t, o in DEMO_TASK_OPTS.items()
                                              if tasks == "all" or t in runner.split_names(tasks)})
        summary = runner.run(names, runner.split_names(tasks), ["dermsynth"], opts, console=console)
        target = publish or Path(out) / "leaderboard"
        res = lb.build_leaderboard(Path(out), formats=("md", "csv", "json", "html") if publish else ("md", "html"),
                                   out=target, plots=publish is not None)
    table, legend = compact_table(res["data"], n_boot=n_boot)
    print(table)
    for line in legend + federated_check([p for _, p in summary.done + summary.reused]):
        log(line)
    log(f"full leaderboard (every metric, CIs, paired tests): {target / 'leaderboard.md'} and "
        f"{target / 'leaderboard.html'}; third-party library messages: {log_file}")
    return 0 if summary.ok else 1


def federated_check(paths: Sequence[Path], margin: float = FEDERATED_MARGIN) -> list[str]:
    """One line: do the federated results lie within ``margin`` of the centralised bound the task reports?"""
    from dermbench.results import read_record

    near, far, chance = [], [], []
    for path in paths:
        rec = read_record(path)
        if rec.task != "federated":
            continue
        metric = (rec.extra or {}).get("primary") or "auroc_macro"
        metric = metric if metric in rec.metrics else "auroc_macro"
        try:
            fed, fed_lo = rec.metrics[metric]["value"], rec.metrics[metric]["ci_low"]
            cen = rec.extra["bounds"]["centralised"]["metrics"][metric]["value"]
        except (KeyError, TypeError):
            continue
        what = f"{rec.model} {fed:.3f} vs {cen:.3f}"
        if metric.startswith("auroc") and fed_lo is not None and fed_lo <= 0.5:
            chance.append(what)  # "within the margin" of a bound that is itself at chance means nothing
        else:
            (near if fed >= cen - margin else far).append(what)
    if not (near or far or chance):
        return []
    parts = [f"within for {', '.join(near)}"] if near else []
    parts += [f"NOT within for {', '.join(far)}"] if far else []
    parts += [f"at chance (CI reaches 0.5) for {', '.join(chance)}"] if chance else []
    return [f"federated vs its centralised bound ({metric}, margin {margin}): " + "; ".join(parts)
            + ("" if not (far or chance) else " -- those cells measure an undertrained head, not federated learning")]


def compact_table(data: dict[str, Any], n_boot: int | None = None) -> tuple[str, list[str]]:
    """One column per task (its primary metric): value [95% CI], **best**, "n.s." not significantly worse than the
    best (paired bootstrap, one Holm family per column). Returns the table and its legend lines.

    A column whose smallest attainable Holm-adjusted p is >= 0.05 at this B can show no significant difference,
    so it gets no "n.s." marks at all (the legend says so) rather than marks that cannot mean anything."""
    reg = plugins.registry()
    cols = []
    for c in data["columns"]:
        info = reg.tasks[c["task"]].info if c["task"] in reg.tasks else None
        if info is not None and c["metric"] == (info.primary_metric or (info.metrics[0] if info.metrics else None)):
            cols.append(c)
    unresolvable = {c["key"] for c in cols if c.get("min_p_adj") is not None and c["min_p_adj"] >= 0.05}
    head = ["model", "mean rank"] + [f"{c['task']}/{c['dataset']} {c['metric']}" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in data["rows"]:
        cells = [row["model"], f"{row.get('mean_rank', float('nan')):.2f}" if row.get("mean_rank") is not None else "-"]
        for c in cols:
            e = row["cells"].get(c["key"])
            if not e or e.get("value") is None:
                cells.append("-")
                continue
            txt = f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
            mark = " n.s." if e.get("tie") and c["key"] not in unresolvable else ""
            cells.append(f"**{txt}**" if e.get("best") else txt + mark)
        lines.append("| " + " | ".join(cells) + " |")
    sizes = sorted({int(c["family_size"]) for c in cols if c.get("family_size")})
    legend = []
    if sizes:
        legend.append(
            f"**best**; n.s. = not shown to differ from the best (paired bootstrap on identical resamples, "
            f"Holm within each column: {'/'.join(map(str, sizes))} test(s) per column"
            + (f", smallest attainable adjusted p {max(sizes)}/(B+1) = {max(sizes) / (n_boot + 1):.2g} at B={n_boot}"
               if n_boot else "") + "); unmarked = significantly worse at 0.05.")
    if unresolvable:
        legend.append(f"no n.s. marks in {len(unresolvable)} column(s): at this B no difference there can reach "
                      "p < 0.05 after Holm (raise --n-boot)")
    return "\n".join(lines), legend
