"""The README's main job: every offline-runnable model x every task on dermsynth, then the leaderboard.

Models are tried in order; one whose weights are not on this machine is dropped with the loader's own
message (never replaced by fake weights). When the DermINO plugin is installed and no checkpoint exists,
its ``demo`` pretraining runs first so that ``dermino`` is a real, self-trained backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dermbench import plugins
from dermbench.api import DermbenchError, WeightsUnavailable

CANDIDATES = ("dermino", "dermino-random", "dinov2-s", "dinov2-b", "vit-b", "resnet50", "random-vit")
#: the demo's only departures from each task's paper protocol, to fit a few minutes on 2 CPU cores
#: (printed at start; the published dermsynth leaderboard states them too)
DEMO_TASK_OPTS: dict[str, dict[str, Any]] = {"captioning": {"epochs": 20}}


def available_models(candidates: Sequence[str] = CANDIDATES, log=print) -> list[str]:
    """The candidates whose weights resolve here (random baselines always do)."""
    reg = plugins.registry()
    out = []
    for name in candidates:
        if name not in reg.models:
            continue
        entry = reg.models[name]
        try:
            entry.obj(device="cpu")
        except WeightsUnavailable as e:
            log(f"demo: leaving out {name}: {str(e).splitlines()[0][:160]}")
            continue
        except DermbenchError as e:
            log(f"demo: leaving out {name}: {e}")
            continue
        out.append(name)
    return out


def ensure_dermino_checkpoint(log=print) -> None:
    """Run the plugins' demo preparation (hook ``register_demo``): ``dermino_model`` pretrains its demo
    checkpoint on dermsynth when none exists yet. Kept under its old name for callers."""
    plugins.prepare_demo(log=log)


def run_demo(out: Path = Path("demo-out"), models: str = "auto", n: int = 400, tasks: str = "all",
             publish: Path | None = None, console: Any = None, n_boot: int = 1000) -> int:
    from dermbench import runner
    from dermbench import leaderboard as lb

    log = (lambda m: console.print(m, highlight=False)) if console is not None else print
    if models == "auto":
        ensure_dermino_checkpoint(log=log)
        names = available_models(log=log)
    else:
        names = runner.split_names(models)
    if not names:
        raise DermbenchError("demo: no model can run offline here (not even random-vit): check `dermbench plugins`")
    log(f"demo: models {', '.join(names)} x tasks {tasks} on dermsynth (n={n}); shortened schedules: "
        + "; ".join(f"{t} {o}" for t, o in DEMO_TASK_OPTS.items()))
    opts = runner.RunOptions(out=Path(out), dataset_opts={"n": n}, n_boot=n_boot,
                             task_params={t: dict(o) for t, o in DEMO_TASK_OPTS.items()
                                          if tasks == "all" or t in runner.split_names(tasks)})
    summary = runner.run(names, runner.split_names(tasks), ["dermsynth"], opts, console=console)
    target = publish or Path(out) / "leaderboard"
    res = lb.build_leaderboard(Path(out), formats=("md", "csv", "json", "html") if publish else ("md", "html"),
                               out=target, plots=publish is not None)
    print(compact_table(res["data"]))
    log(f"full leaderboard (every metric, CIs, paired tests): {target / 'leaderboard.md'} and "
        f"{target / 'leaderboard.html'}")
    return 0 if summary.ok else 1


def compact_table(data: dict[str, Any]) -> str:
    """One column per task (its primary metric): value [95% CI], **best**, ≈ not significantly worse (Holm)."""
    reg = plugins.registry()
    cols = []
    for c in data["columns"]:
        info = reg.tasks[c["task"]].info if c["task"] in reg.tasks else None
        if info is not None and c["metric"] == (info.primary_metric or (info.metrics[0] if info.metrics else None)):
            cols.append(c)
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
            cells.append(f"**{txt}**" if e.get("best") else txt + (" ≈" if e.get("tie") else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
