"""Per-group plots of fairness records: one panel per (dataset, attribute), one line per model, 95% CIs.

Built from stored result records only (``extra["attributes"]`` written by the fairness task), like every
leaderboard file. matplotlib is imported inside the function.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from dermbench_plugins.tasks.fairness.stats import _natural


def _get(rec: Any, key: str) -> Any:
    return rec.get(key) if isinstance(rec, dict) else getattr(rec, key)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_")


def fairness_series(records: Iterable[Any], metric: str = "auto", task: str = "fairness"
                    ) -> dict[tuple[str, str], dict[str, Any]]:
    """{(dataset, attribute): {"metric", "groups": [...], "sizes": {group: n}, "too_small": {group: status},
    "models": {model: {group: (value, ci_low, ci_high)}}}} from the records' ``extra["attributes"]``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: (_get(r, "dataset"), _get(r, "model"), _get(r, "seed"))):
        if _get(rec, "task") != task:
            continue
        attrs = (_get(rec, "extra") or {}).get("attributes") or {}
        for attr, tab in attrs.items():
            s = out.setdefault((_get(rec, "dataset"), attr), {"groups": [], "sizes": {}, "too_small": {}, "models": {}})
            model = _get(rec, "model")
            if model in s["models"]:
                continue  # lowest seed first, as in the leaderboard
            vals: dict[str, tuple[float | None, float | None, float | None]] = {}
            name = metric if metric != "auto" else _auto_metric(tab)
            s.setdefault("metric", name)
            for g, info in (tab.get("groups") or {}).items():
                s["sizes"][g] = info.get("n")
                m = (info.get("metrics") or {}).get(name)
                if info.get("status") != "scored" or m is None:
                    s["too_small"][g] = info.get("status", "")
                    continue
                if g not in s["groups"]:
                    s["groups"].append(g)
                vals[g] = (m.get("value"), m.get("ci_low"), m.get("ci_high"))
            s["models"][model] = vals
    for s in out.values():
        s["groups"].sort(key=_natural)
    return out


def _auto_metric(tab: dict[str, Any]) -> str:
    """AUROC for classification bases, else the first per-group metric (Dice for segmentation)."""
    names: list[str] = []
    for info in (tab.get("groups") or {}).values():
        names += [k for k in (info.get("metrics") or {}) if k not in names]
    return "auroc_macro" if "auroc_macro" in names or not names else names[0]


def fairness_plot(records: Iterable[Any], out_dir: Path, metric: str = "auto", task: str = "fairness"
                  ) -> list[Path]:
    """Write ``fairness_<dataset>_<attribute>.{png,svg}``: per-group ``metric`` with 95% CIs, one line per model.

    ``metric='auto'``: AUROC for classification bases, Dice (the first per-group metric) for segmentation.
    Groups below the minimum size are not plotted (they are named in the subtitle). Returns the files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matplotlib.rcParams["svg.hashsalt"] = "dermbench"
    out = Path(out_dir)
    files: list[Path] = []
    series = fairness_series(records, metric, task)
    for (dataset, attr), s in sorted(series.items()):
        groups, models = s["groups"], sorted(s["models"])
        if not groups or not models:
            continue
        out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(groups) + 2.5), 3.4))
        x = np.arange(len(groups), dtype=float)
        width = 0.25 / max(1, len(models) - 1) if len(models) > 1 else 0.0
        for j, model in enumerate(models):
            vals = s["models"][model]
            v = np.array([_num(vals.get(g, (None,))[0]) for g in groups])
            lo = np.array([_num(vals.get(g, (None, None))[1]) for g in groups])
            hi = np.array([_num(vals.get(g, (None, None, None))[2]) for g in groups])
            xs = x + (j - (len(models) - 1) / 2) * width
            err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
            ax.errorbar(xs, v, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=model, lw=1.4)
        ax.set_xticks(x, [f"{g}\n(n={s['sizes'].get(g)})" for g in groups], fontsize=8)
        ax.set_xlabel(attr)
        ax.set_ylabel(s.get("metric", metric))
        ax.grid(axis="y", alpha=0.3)
        small = ", ".join(f"{g} (n={s['sizes'].get(g)})" for g in sorted(s["too_small"], key=_natural))
        title = f"{task} on {dataset}: {s.get('metric', metric)} per {attr} group (95% CI)"
        if small:
            title += f"\nnot scored (too small): {small}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, loc="best")
        stem = f"fairness_{_slug(dataset)}_{_slug(attr)}"
        for ext in ("png", "svg"):
            p = out / f"{stem}.{ext}"
            fig.savefig(p, dpi=110, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
            files.append(p)
        plt.close(fig)
    return files


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)
