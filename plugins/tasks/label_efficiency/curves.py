"""Label-efficiency curves: a frozen-feature classifier trained on seeded subsets of the training labels.

Why: foundation models differ most when labels are scarce (Gröger et al.: self-supervised features need
about half the labels). ``probe`` and ``retrieval`` take ``train_fraction`` (a float or a list) or ``shots``
(K per class, an int or a list) with ``draws`` repeated draws, and put the curve into the record's ``extra``:
one cell = one (model, task, dataset, seed) record, so the runner's contract is unchanged. The record's own
predictions (scored with bootstrap CIs like any cell) are those of the largest setting, draw 0.

Design
------
* **Subsets depend on (training split hash, draw index) only** -- never on the model or the task -- so every
  model sees identical labelled images. Within a draw, each class is permuted once and a setting takes the
  first ``k_c`` images of that permutation: subsets of one draw are **nested** (the 10% subset contains the
  1% one), which makes curves smooth and paired across settings. The cell seed (``--seed``) changes the
  classifier's initialisation only: neither the subsets nor the bootstrap resamples.
* Stratified: ``k_c = max(1, round(fraction * n_c))`` (every training class keeps at least one labelled image,
  so a classifier exists at 1%) or ``k_c = min(K, n_c)`` for ``shots``. The x axis is the number of labels
  actually used.
* Per setting the curve holds, for every metric: the mean over draws, the draw SD, a 95% t-interval over
  draws (the spread due to *which* labels were drawn) and a 95% bootstrap CI of the draw-averaged metric
  (the test-set sampling spread: the record's own resamples, ``api.resamples_for`` -- test split hash, the
  fixed ``BOOTSTRAP_SEED``, within classes -- shared by all models and all training seeds).
* ``labels_needed`` reads "labels needed to reach X" off the curve: linear interpolation between the two
  settings bracketing X, on the mean curve and on each draw's curve (draws are nested, so each draw has a
  curve), reporting the spread across draws.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from dermbench.api import N_BOOT, DermbenchError, Split, stable_hash

CURVE_KEY = "label_efficiency"


# --------------------------------------------------------------------------------------------------
# settings and subsets


def parse_settings(train_fraction: Any, shots: Any, task: str) -> list[tuple[str, float]]:
    """[(kind, value)] sorted ascending; [] when neither option is set (the task's plain behaviour)."""
    if train_fraction is not None and shots is not None:
        raise DermbenchError(
            f"task {task!r}: give train_fraction or shots, not both (got train_fraction={train_fraction!r}, "
            f"shots={shots!r})"
        )
    if train_fraction is None and shots is None:
        return []
    kind, raw = ("fraction", train_fraction) if train_fraction is not None else ("shots", shots)
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    if not values:
        raise DermbenchError(f"task {task!r}: {kind} list is empty; e.g. train_fraction=[0.01,0.1,1.0]")
    out: list[float] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DermbenchError(f"task {task!r}: {kind} value {v!r} is not a number") from None
        if kind == "fraction" and not 0.0 < f <= 1.0:
            raise DermbenchError(f"task {task!r}: train_fraction {v!r} must be in (0, 1], e.g. 0.1 for 10% of labels")
        if kind == "shots" and (f < 1 or not f.is_integer()):
            raise DermbenchError(f"task {task!r}: shots {v!r} must be a positive integer (labelled images per class)")
        out.append(f)
    return [(kind, v) for v in sorted(set(out))]


def draw_seed(split_hash: str, draw: int) -> int:
    """Seed of draw ``draw`` from the training split's content hash (never from the model)."""
    digest = hashlib.sha256(f"label-efficiency\0{split_hash}\0{int(draw)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def class_orders(y: Any, split_hash: str, draw: int) -> dict[int, Any]:
    """Per class, the positions of its samples in the seeded order of this draw."""
    import numpy as np

    y = np.asarray(y)
    rng = np.random.default_rng(draw_seed(split_hash, draw))
    return {int(c): rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}


def subset(orders: dict[int, Any], kind: str, value: float) -> Any:
    """Sorted positions of the labelled subset for one setting (a prefix of each class order: nested)."""
    import numpy as np

    parts = []
    for c in sorted(orders):
        idx = orders[c]
        k = min(int(value), len(idx)) if kind == "shots" else max(1, int(round(value * len(idx))))
        parts.append(idx[:k])
    return np.sort(np.concatenate(parts))


def draw_subset(y: Any, split_hash: str, draw: int, kind: str, value: float) -> Any:
    """Convenience: the subset of one (draw, setting)."""
    return subset(class_orders(y, split_hash, draw), kind, value)


# --------------------------------------------------------------------------------------------------
# the curve


def _t95(k: int) -> float:
    if k < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, k - 1))


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_curve(
    train: Split,
    test: Split,
    y_train: Any,
    fit_predict: Callable[[Any], tuple[Any, Any]],
    settings: list[tuple[str, float]],
    *,
    draws: int,
    metrics: Sequence[str],
    n_boot: int,
    y_test: Any,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[dict[str, Any], tuple[Any, Any]]:
    """Fit/predict every (setting, draw); returns (curve dict for ``extra``, (scores, y_pred) of the primary).

    ``fit_predict(train_positions)`` trains on those positions of the training split and returns
    ``(scores (n_test, C), y_pred (n_test,))`` on the test split.
    """
    import numpy as np

    from dermbench import api

    if draws < 1:
        raise DermbenchError(f"draws must be >= 1, got {draws}")
    n_tr = len(y_train)
    orders = [class_orders(y_train, train.hash, d) for d in range(draws)]
    # issue 17.5: the resamples every scorer of this test split uses (split hash + fixed bootstrap seed,
    # stratified by class), never the training seed -- so curves of different seeds and models are paired
    idx, _ = api.resamples_for({"ids": test.ids, "y_true": y_test}, split_hash=test.hash, n_boot=n_boot)
    points: list[dict[str, Any]] = []
    primary: tuple[Any, Any] | None = None
    for si, (kind, value) in enumerate(settings):
        subsets = [subset(o, kind, value) for o in orders]
        # a setting that uses the whole training split is the same for every draw: fit once
        whole = all(len(s) == n_tr for s in subsets)
        n_draws = 1 if whole else draws
        vals = {m: [] for m in metrics}
        reps = {m: [] for m in metrics}
        for d in range(n_draws):
            scores, y_pred = fit_predict(subsets[d])
            pred = {"ids": test.ids, "y_true": y_test, "scores": scores, "y_pred": y_pred}
            for m in metrics:
                try:
                    vals[m].append(api.point(pred, m))
                except api.UndefinedMetric:
                    vals[m].append(float("nan"))
                reps[m].append(api.replicates(pred, m, idx))
            if si == len(settings) - 1 and d == 0:
                primary = (scores, y_pred)
        ids = train.ids
        row: dict[str, Any] = {
            "kind": kind, "value": value, "n_labels": [int(len(subsets[d])) for d in range(n_draws)],
            # which images were labelled, as a short hash per draw: equal across models by construction
            "subset_hashes": [stable_hash([ids[i] for i in subsets[d]], 12) for d in range(n_draws)],
            "n_labels_mean": float(np.mean([len(subsets[d]) for d in range(n_draws)])), "draws": n_draws,
            "metrics": {},
        }
        for m in metrics:
            v = np.asarray(vals[m], dtype=float)
            fin = v[np.isfinite(v)]
            mean = float(fin.mean()) if fin.size else float("nan")
            sd = float(fin.std(ddof=1)) if fin.size > 1 else 0.0
            half = _t95(fin.size) * sd / math.sqrt(fin.size) if fin.size > 1 else float("nan")
            R = np.nanmean(np.vstack(reps[m]), axis=0) if fin.size else np.full(n_boot, np.nan)
            R = R[np.isfinite(R)]
            lo, hi = (np.quantile(R, [0.025, 0.975]) if R.size else (float("nan"), float("nan")))
            row["metrics"][m] = {
                "mean": _clean(mean), "sd": _clean(sd), "per_draw": [_clean(x) for x in v.tolist()],
                "draw_ci_low": _clean(mean - half), "draw_ci_high": _clean(mean + half),
                "boot_ci_low": _clean(float(lo)), "boot_ci_high": _clean(float(hi)),
            }
        points.append(row)
        first = row["metrics"][metrics[0]]
        log(f"{kind}={value:g}: n_labels={row['n_labels_mean']:.0f} {metrics[0]}="
            + ("n/a" if first["mean"] is None else f"{first['mean']:.3f} (sd {first['sd']:.3f} over {n_draws} draws)"))
    assert primary is not None
    curve = {
        "kind": settings[0][0], "draws": draws, "n_train_total": int(n_tr), "metrics": list(metrics),
        "points": points, "primary_setting": {"kind": settings[-1][0], "value": settings[-1][1], "draw": 0},
        "subset_seed": "sha256(training split hash, draw index): identical subsets for every model; nested",
        "train_split_hash": train.hash, "n_boot": n_boot,
    }
    return curve, primary


# --------------------------------------------------------------------------------------------------
# reading the curve


def _interp_cross(xs: Sequence[float], ys: Sequence[float | None], target: float,
                  higher_is_better: bool) -> float | None:
    """First x where the piecewise-linear curve reaches ``target`` (None if it never does)."""
    prev = None
    for x, y in zip(xs, ys):
        if y is None or not math.isfinite(y):
            continue
        reached = y >= target if higher_is_better else y <= target
        if reached:
            if prev is None:
                return float(x)
            (x0, y0) = prev
            if y == y0:
                return float(x)
            return float(x0 + (target - y0) * (x - x0) / (y - y0))
        prev = (x, y)
    return None


def labels_needed(curve: dict[str, Any], target: float, metric: str | None = None) -> dict[str, Any]:
    """Labels needed to reach ``target`` on ``metric``, interpolated on the mean curve and per draw.

    Returns {"target", "metric", "n_labels" (mean curve; None if never reached), "per_draw" (None where a draw
    never reaches it), "draw_min", "draw_max", "draws_reaching"}.
    """
    from dermbench import api

    metric = metric or curve["metrics"][0]
    hib = api.get_metric(metric).higher_is_better
    pts = curve["points"]
    xs = [p["n_labels_mean"] for p in pts]
    mean_curve = [p["metrics"][metric]["mean"] for p in pts]
    out: dict[str, Any] = {"target": float(target), "metric": metric,
                           "n_labels": _interp_cross(xs, mean_curve, target, hib)}
    draws = max(p["draws"] for p in pts)
    per = []
    for d in range(draws):
        xd = [p["n_labels"][min(d, p["draws"] - 1)] for p in pts]
        yd = [p["metrics"][metric]["per_draw"][min(d, p["draws"] - 1)] for p in pts]
        per.append(_interp_cross(xd, yd, target, hib))
    got = [v for v in per if v is not None]
    out.update(per_draw=per, draws_reaching=len(got), draw_min=min(got) if got else None,
               draw_max=max(got) if got else None)
    return out


def default_targets(curve: dict[str, Any], rel: Iterable[float] = (0.95,)) -> list[dict[str, Any]]:
    """"Labels needed" at a share of the largest setting's mean (e.g. 95% of full-data AUROC)."""
    metric = curve["metrics"][0]
    top = curve["points"][-1]["metrics"][metric]["mean"]
    out = []
    for r in rel:
        if top is None:
            continue
        res = labels_needed(curve, r * top, metric)
        res["relative_to_largest"] = r
        out.append(res)
    return out


# --------------------------------------------------------------------------------------------------
# plot across models


def _get(rec: Any, key: str) -> Any:
    return rec.get(key) if isinstance(rec, dict) else getattr(rec, key)


def label_efficiency_plot(records: Iterable[Any], out_dir: Path | str, metric: str | None = None) -> list[Path]:
    """One PNG per (task, dataset) comparing models' label-efficiency curves (mean over draws, with the
    95% draw interval as a band and the bootstrap CI as error bars). Records without a curve are ignored.

    ``records``: ResultRecord objects or their dicts (``dermbench.results.load_records``). Returns the files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str, str], list[Any]] = {}
    for r in records:
        extra = _get(r, "extra") or {}
        if CURVE_KEY not in extra:
            continue
        groups.setdefault((_get(r, "task"), _get(r, "dataset"), extra[CURVE_KEY]["kind"]), []).append(r)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for (task, dataset, kind), recs in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        m_used = metric
        for r in sorted(recs, key=lambda r: (_get(r, "model"), _get(r, "seed"))):
            curve = _get(r, "extra")[CURVE_KEY]
            m = metric or curve["metrics"][0]
            if m not in curve["metrics"]:
                continue
            m_used = m
            xs = [p["n_labels_mean"] for p in curve["points"]]
            ms = [p["metrics"][m] for p in curve["points"]]
            ys = [v["mean"] if v["mean"] is not None else float("nan") for v in ms]
            lab = _get(r, "model") + (f" (seed {_get(r, 'seed')})" if _get(r, "seed") else "")
            line = ax.plot(xs, ys, marker="o", ms=3.5, label=lab)[0]
            lo = [v["draw_ci_low"] if v["draw_ci_low"] is not None else y for v, y in zip(ms, ys)]
            hi = [v["draw_ci_high"] if v["draw_ci_high"] is not None else y for v, y in zip(ms, ys)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            yerr = [[max(0.0, y - (v["boot_ci_low"] if v["boot_ci_low"] is not None else y)) for v, y in zip(ms, ys)],
                    [max(0.0, (v["boot_ci_high"] if v["boot_ci_high"] is not None else y) - y) for v, y in zip(ms, ys)]]
            ax.errorbar(xs, ys, yerr=yerr, fmt="none", ecolor=line.get_color(), alpha=0.6, capsize=2, lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="labelled training images" + (" (K per class)" if kind == "shots" else ""),
               ylabel=m_used or "metric",
               title=f"{task} on {dataset}: label efficiency\nband: 95% over draws; bars: 95% bootstrap CI")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"label_efficiency_{_slug(task)}_{_slug(dataset)}_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


#: options every label-efficiency-capable task adds to its TaskInfo.defaults
#: (curve_boot None: the run's --n-boot)
CURVE_DEFAULTS = {"train_fraction": None, "shots": None, "draws": 5, "curve_boot": None, "reach": None}


def curve_output(ctx: Any, train: Split, test: Split, ytr: Any, yte: Any, fit_predict: Callable[[Any], tuple[Any, Any]],
                 settings: list[tuple[str, float]], *, draws: int, n_boot: int | None, metrics: Sequence[str],
                 reach: Any = None) -> tuple[dict[str, Any], Any, Any]:
    """Run the curve for a task and build the ``extra`` entry (curve + labels needed); returns
    (extra entry, primary scores, primary predictions). ``reach``: absolute targets of the first metric
    (a number or a list) read off the curve besides the default 95%-of-largest-setting target."""
    targets = [] if reach is None else (list(reach) if isinstance(reach, (list, tuple)) else [reach])
    try:
        targets = [float(t) for t in targets]
    except (TypeError, ValueError):
        raise DermbenchError(
            f"reach={reach!r} must be a number or a list of numbers (targets of {metrics[0]})"
        ) from None
    n_boot = int(n_boot) if n_boot is not None else int(getattr(ctx, "n_boot", N_BOOT))
    curve, (scores, y_pred) = run_curve(train, test, ytr, fit_predict, settings, draws=int(draws), metrics=metrics,
                                        n_boot=n_boot, y_test=yte, log=ctx.log)
    curve["labels_needed"] = default_targets(curve) + [labels_needed(curve, t) for t in targets]
    return curve, scores, y_pred
