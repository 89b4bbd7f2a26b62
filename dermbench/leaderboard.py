"""Leaderboards and paired comparisons built from stored result records only.

Why recompute from records: every record keeps its per-sample predictions and split hash, so the
leaderboard redraws the very same bootstrap resamples (``stats.bootstrap_indices(split_hash, seed, n)``)
for every model of a column. That makes the paired test "is this model different from the best?" valid
even for records produced months apart, and lets the table use any CI method after the fact.

Table semantics (documented in every output's notes):

* one row per model, one column per (task, dataset, metric): point estimate [CI];
* **bold**: best point estimate of the column (direction from the metric: ECE/Brier lower is better);
* ``≈``: not significantly different from the column's best (paired bootstrap test on identical resamples,
  p-values of all best-vs-other comparisons of the table adjusted together, Holm by default, alpha 0.05);
  ``†``: no paired test possible (the model was scored on another split or seed than the best);
* mean rank over the columns a model has, and a 95% rank interval: the mean rank recomputed on each
  bootstrap replicate (models ranked within each column on that replicate), 2.5/97.5 percentiles;
* license (``*`` = non-commercial) and a train/test overlap flag: the model's declared ``trained_on``
  contains the evaluated dataset's name or one of its aliases (case- and punctuation-insensitive).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from dermbench import stats
from dermbench.api import DermbenchError

ALPHA = 0.05
FORMATS = ("md", "csv", "json", "html")
TIE_MARK = "≈"
UNPAIRED_MARK = "†"
OVERLAP_MARK = "⚠"


# --------------------------------------------------------------------------------------------------
# Model of the table


@dataclass
class Entry:
    """One model's result in one column."""

    model: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    seed: int
    split_hash: str
    n: int
    n_boot: int
    note: str = ""
    best: bool = False
    p: float | None = None  # paired test vs the column's best (raw)
    p_adj: float | None = None
    tie: bool = False  # not significantly different from the best
    unpaired: bool = False
    rank: float | None = None
    seed_mean: float | None = None  # over all seeds' stored values, when a cell was run with several seeds
    seed_sd: float | None = None
    n_seeds: int = 1
    reps: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Column:
    task: str
    dataset: str
    metric: str
    higher_is_better: bool
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.dataset}/{self.metric}"

    @property
    def best(self) -> list[str]:
        return [m for m, e in self.entries.items() if e.best]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def overlap(model_info: dict[str, Any], dataset: str, dataset_info: dict[str, Any]) -> list[str]:
    """Names in the model's declared training data that denote the evaluated dataset."""
    targets = {_norm(dataset), *(_norm(a) for a in dataset_info.get("aliases", []) or [])}
    targets.discard("")
    return [t for t in (model_info.get("trained_on") or []) if _norm(t) in targets]


# --------------------------------------------------------------------------------------------------
# Building


def _records(results_dir: Path, tasks, datasets, models, commercial_only: bool) -> tuple[list[Any], dict]:
    from dermbench.results import load_records

    recs = load_records(Path(results_dir))
    if not recs:
        raise DermbenchError(
            f"no result records under {results_dir}; run `dermbench run ... --out {results_dir}` first "
            "(records are <out>/<dataset>/<task>/<model>/seed<N>.json)"
        )
    sel = []
    for r in recs:
        if tasks and r.task not in tasks or datasets and r.dataset not in datasets or models and r.model not in models:
            continue
        if commercial_only and not r.model_info.get("commercial_use", False):
            continue
        sel.append(r)
    if not sel:
        raise DermbenchError(
            f"no record under {results_dir} matches tasks={tasks} datasets={datasets} models={models}"
            f"{' commercial_only' if commercial_only else ''}; available: "
            f"models {sorted({r.model for r in recs})}, tasks {sorted({r.task for r in recs})}, "
            f"datasets {sorted({r.dataset for r in recs})}"
        )
    # one record per (model, task, dataset): the lowest seed, so that columns pair on the same seed; the
    # stored values of every seed are kept for the mean ± SD over seeds
    best: dict[tuple[str, str, str], Any] = {}
    by_seed: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for r in sorted(sel, key=lambda r: r.seed):
        best.setdefault((r.model, r.task, r.dataset), r)
        by_seed.setdefault((r.model, r.task, r.dataset), {})[r.seed] = r.metrics
    return list(best.values()), by_seed


def _n_boot(rec: Any, metric: str) -> int:
    m = rec.metrics.get(metric) or {}
    return int(m.get("n_boot") or rec.config.get("n_boot") or 1000)


def _strata(rec: Any) -> Any:
    """Strata used when the record was scored (the runner stores them as predictions['strata'] if any)."""
    return rec.predictions.get("strata")


def _score_entry(rec: Any, metric: str, ci: str, prepared: Any) -> Entry:
    n_boot = _n_boot(rec, metric)
    split_hash = str(rec.split.get("hash", ""))
    n = prepared.n
    e = Entry(rec.model, None, None, None, rec.seed, split_hash, n, n_boot)
    try:
        idx, _ = stats.resamples_for(prepared, split_hash=split_hash, n_boot=n_boot,
                                     strata=_strata(rec) if _strata(rec) is not None else "auto")
        sc = stats.evaluate(prepared, metric, idx, ci=ci, alpha=ALPHA)
        res, reps = sc.summary, sc.replicates
        if sc.value is None:
            raise stats.UndefinedMetric(res["note"])
    except stats.UndefinedMetric as err:
        e.note = str(err)
        return e
    except DermbenchError as err:  # bad predictions in one record: reported in the cell, the table goes on
        e.note = f"cannot score: {err}"
        return e
    e.value, e.ci_low, e.ci_high, e.note, e.reps = res["value"], res["ci_low"], res["ci_high"], res["note"], reps
    stored = (rec.metrics.get(metric) or {}).get("value")
    if stored is not None and abs(float(stored) - e.value) > 1e-9:
        e.note = "; ".join(filter(None, [e.note, f"record stored {stored:.6g}; re-scored by this dermbench as {e.value:.6g}"]))
    return e


def _stored_entry(rec: Any, metric: str) -> Entry:
    """A metric dermbench.stats does not know: the record's own value and CI, no paired test."""
    d = rec.metrics.get(metric) or {}
    e = Entry(rec.model, d.get("value"), d.get("ci_low"), d.get("ci_high"), rec.seed, str(rec.split.get("hash", "")),
              int(d.get("n") or 0), int(d.get("n_boot") or 0))
    e.note = (f"{metric!r} is not registered in dermbench.stats here: stored value and CI "
              f"({d.get('ci_method', '?')}) shown, not re-scored, no paired test")
    e.unpaired = True
    return e


def _build(records: list[Any], ci: str, correction: str, seed_metrics: dict | None = None) -> tuple[list[Column], dict[str, Any]]:
    by_col: dict[tuple[str, str, str], Column] = {}
    seed_metrics = seed_metrics or {}
    for rec in sorted(records, key=lambda r: (r.task, r.dataset, r.model)):
        prepared = stats.prepare(rec.predictions)
        for metric in rec.metrics:
            try:
                m = stats.get_metric(metric)
            except DermbenchError:
                m = None  # registered by a plugin not loaded here: shown as stored, without a test
            col = by_col.setdefault(
                (rec.task, rec.dataset, metric),
                Column(rec.task, rec.dataset, metric, True if m is None else m.higher_is_better),
            )
            e = col.entries[rec.model] = _score_entry(rec, metric, ci, prepared) if m else _stored_entry(rec, metric)
            vals = [d[metric]["value"] for d in seed_metrics.get((rec.model, rec.task, rec.dataset), {}).values()
                    if (d.get(metric) or {}).get("value") is not None]
            if len(vals) > 1:
                e.n_seeds, e.seed_mean, e.seed_sd = len(vals), float(np.mean(vals)), float(np.std(vals, ddof=1))
    columns = [by_col[k] for k in sorted(by_col, key=_column_order(records))]
    # best per column, paired tests vs the best
    tests: list[tuple[Column, str]] = []
    pvals: list[float] = []
    for col in columns:
        valid = {mname: e for mname, e in col.entries.items() if e.value is not None}
        if not valid:
            continue
        sign = 1.0 if col.higher_is_better else -1.0
        top = max(sign * e.value for e in valid.values())  # type: ignore[operator]
        for e in valid.values():
            e.best = sign * e.value == top  # type: ignore[operator]
        ref = valid[sorted(mname for mname, e in valid.items() if e.best)[0]]
        for mname, e in valid.items():
            if e.best:
                continue
            if e.unpaired or e.reps is None or ref.reps is None:
                e.unpaired = True
                continue
            if (e.split_hash, e.seed, e.n, e.n_boot) != (ref.split_hash, ref.seed, ref.n, ref.n_boot):
                e.unpaired = True
                continue
            res = stats.paired_from_replicates(ref.reps, e.reps, ref.value, e.value)  # type: ignore[arg-type]
            e.p = res["p_value"]
            tests.append((col, mname))
            pvals.append(e.p)
    adj = stats.correct(pvals, correction)
    for (col, mname), pa in zip(tests, adj):
        e = col.entries[mname]
        e.p_adj = pa
        e.tie = pa is not None and pa >= ALPHA
    ranks = _ranks(columns)
    return columns, ranks


def _column_order(records: list[Any]):
    """Columns: task, dataset, then the task's metric order as recorded (primary metric first)."""
    order: dict[tuple[str, str], list[str]] = {}
    for r in records:
        lst = order.setdefault((r.task, r.dataset), [])
        for mname in r.metrics:
            if mname not in lst:
                lst.append(mname)

    def key(k: tuple[str, str, str]) -> tuple[str, str, int]:
        return (k[0], k[1], order[(k[0], k[1])].index(k[2]))

    return key


def _ranks(columns: list[Column]) -> dict[str, dict[str, Any]]:
    """Mean rank per model (1 = best) and its bootstrap interval (replicate-wise mean ranks)."""
    from scipy.stats import rankdata

    models = sorted({m for c in columns for m in c.entries})
    if not models:
        return {}
    B = min((e.n_boot for c in columns for e in c.entries.values() if e.reps is not None), default=0)
    point_ranks = np.full((len(columns), len(models)), np.nan)
    rep_ranks = np.full((len(columns), len(models), B), np.nan) if B else None
    for ci_, col in enumerate(columns):
        sign = -1.0 if col.higher_is_better else 1.0
        vals = np.array([np.nan if (e := col.entries.get(m)) is None or e.value is None else sign * e.value
                         for m in models])
        if np.isfinite(vals).sum() < 2:
            continue  # a column with a single model ranks nothing
        point_ranks[ci_] = rankdata(vals, nan_policy="omit")
        for mi, m in enumerate(models):
            e = col.entries.get(m)
            if e is not None and e.value is not None:
                e.rank = float(point_ranks[ci_, mi])
        if rep_ranks is not None:
            R = np.full((len(models), B), np.nan)
            for mi, m in enumerate(models):
                e = col.entries.get(m)
                if e is not None and e.reps is not None:
                    R[mi] = sign * e.reps[:B]
            rep_ranks[ci_] = rankdata(R, axis=0, nan_policy="omit")
    out: dict[str, dict[str, Any]] = {}
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_rank = np.nanmean(point_ranks, axis=0)
            counts = np.isfinite(point_ranks).sum(axis=0)
            rep_mean = np.nanmean(rep_ranks, axis=0) if rep_ranks is not None else None
    for mi, m in enumerate(models):
        if counts[mi] == 0:
            out[m] = {"mean_rank": None, "rank_low": None, "rank_high": None, "n_columns": 0}
            continue
        lo = hi = None
        if rep_mean is not None and np.isfinite(rep_mean[mi]).any():
            lo, hi = (float(x) for x in np.nanquantile(rep_mean[mi], [ALPHA / 2, 1 - ALPHA / 2]))
        out[m] = {"mean_rank": float(mean_rank[mi]), "rank_low": lo, "rank_high": hi, "n_columns": int(counts[mi])}
    return out


# --------------------------------------------------------------------------------------------------
# Rendering helpers


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _cell_text(e: Entry | None, *, markdown: bool) -> str:
    if e is None:
        return "–"
    if e.value is None:
        return "n/a"
    v = _fmt(e.value)
    if e.best and markdown:
        v = f"**{v}**"
    s = f"{v} [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]"
    if e.tie:
        s += f" {TIE_MARK}"
    if e.unpaired:
        s += f" {UNPAIRED_MARK}"
    if e.n_seeds > 1:
        s += f" (seeds: {_fmt(e.seed_mean)} ± {_fmt(e.seed_sd)}, k={e.n_seeds})"
    return s


def _model_meta(records: list[Any]) -> dict[str, dict[str, Any]]:
    meta: dict[str, dict[str, Any]] = {}
    for r in records:
        d = meta.setdefault(
            r.model,
            {
                "license": r.model_info.get("license", "unknown"),
                "commercial_use": bool(r.model_info.get("commercial_use", False)),
                "weights_id": r.model_info.get("weights_id"),
                "random_init": bool(r.model_info.get("random_init", False)),
                "trained_on": list(r.model_info.get("trained_on") or []),
                "overlap": [],
            },
        )
        for name in overlap(r.model_info, r.dataset, r.dataset_info):
            tag = f"{r.dataset} ({name})" if _norm(name) != _norm(r.dataset) else r.dataset
            if tag not in d["overlap"]:
                d["overlap"].append(tag)
    return meta


def _row_order(models: Iterable[str], ranks: dict[str, dict[str, Any]]) -> list[str]:
    def key(m: str) -> tuple[float, str]:
        r = ranks.get(m, {}).get("mean_rank")
        return (r if r is not None else math.inf, m)

    return sorted(models, key=key)


def _notes(ci: str, correction: str, columns: list[Column], records: list[Any]) -> list[str]:
    n_boot = sorted({e.n_boot for c in columns for e in c.entries.values()})
    seeds = sorted({r.seed for r in records})
    ci_txt = {"percentile": "percentile 95% CI", "bca": "BCa 95% CI",
              "paper": "DermINO's mu ± 1.96·SD of replicates (reproduction option, not a calibrated CI)"}[ci]
    corr = {"holm": "Holm", "bh": "Benjamini–Hochberg", "none": "no correction"}[correction]
    return [
        f"Point estimate [{ci_txt}] from {', '.join(map(str, n_boot))} bootstrap replicates drawn from "
        f"(split hash, seed); seeds used: {', '.join(map(str, seeds))}.",
        "**bold**: best in column. "
        f"{TIE_MARK}: not significantly different from the best (two-sided paired bootstrap test on identical "
        f"resamples, p=(1+#{{|d*-d|>=|d|}})/(1+B), {corr} across all {sum(1 for c in columns for e in c.entries.values() if e.p is not None)} "
        f"comparisons of this table, alpha={ALPHA}). {UNPAIRED_MARK}: no paired test (different split or seed from the best).",
        "Mean rank: over the columns a model has (1 = best; ECE/Brier: lower is better); "
        "[interval]: 2.5–97.5 percentiles of the mean rank over bootstrap replicates.",
        f"License: * = no commercial use. Overlap {OVERLAP_MARK}: the model's declared training data includes the evaluated dataset.",
    ] + _resolution_warning(correction, columns)


def _resolution_warning(correction: str, columns: list[Column]) -> list[str]:
    """Say so when B is too small for any difference to survive the correction (p >= 1/(B+1) by construction)."""
    m = sum(1 for c in columns for e in c.entries.values() if e.p is not None)
    bs = [e.n_boot for c in columns for e in c.entries.values() if e.p is not None]
    if not m or correction == "none":
        return []
    B = min(bs)
    floor = min(1.0, m / (B + 1)) if correction == "holm" else 1 / (B + 1)
    if floor < ALPHA:
        return []
    need = int(m / ALPHA) + 1
    return [
        f"**Resolution warning**: with B={B} replicates the smallest possible p is 1/(B+1), and {m} comparisons "
        f"under {correction} make the smallest adjusted p {floor:.3g} >= alpha={ALPHA}: no difference in this table "
        f"can be declared significant, so {TIE_MARK} carries no information here. Re-run with `--n-boot {need}` or more, "
        "or build a smaller table (--task/--dataset)."
    ]


# --------------------------------------------------------------------------------------------------
# Formats


def _table_rows(columns: list[Column], ranks, meta, models: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "License", "Overlap", "Mean rank [95%]"] + [c.key for c in columns]
    rows = []
    for m in models:
        md = meta[m]
        r = ranks.get(m, {})
        rank_txt = "n/a" if r.get("mean_rank") is None else (
            f"{r['mean_rank']:.2f}" + (f" [{r['rank_low']:.2f}, {r['rank_high']:.2f}]" if r.get("rank_low") is not None else "")
        )
        rows.append(
            [m, md["license"] + ("" if md["commercial_use"] else "*"),
             (OVERLAP_MARK + " " + ", ".join(md["overlap"])) if md["overlap"] else "", rank_txt]
            + [_cell_text(c.entries.get(m), markdown=True) for c in columns]
        )
    return header, rows


def to_markdown(columns, ranks, meta, models, notes) -> str:
    header, rows = _table_rows(columns, ranks, meta, models)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def to_csv(columns, ranks, meta, models) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["model", "license", "commercial_use", "overlap", "mean_rank", "rank_low", "rank_high"]
    for c in columns:
        head += [c.key, f"{c.key}:ci_low", f"{c.key}:ci_high", f"{c.key}:best", f"{c.key}:p_vs_best",
                 f"{c.key}:p_adj", f"{c.key}:not_sig_diff_from_best"]
    w.writerow(head)
    for m in models:
        r = ranks.get(m, {})
        row: list[Any] = [m, meta[m]["license"], meta[m]["commercial_use"], ";".join(meta[m]["overlap"]),
                          r.get("mean_rank"), r.get("rank_low"), r.get("rank_high")]
        for c in columns:
            e = c.entries.get(m)
            row += ([None] * 7 if e is None else [e.value, e.ci_low, e.ci_high, e.best, e.p, e.p_adj, e.tie])
        w.writerow(["" if x is None else x for x in row])
    return buf.getvalue()


def to_json(columns, ranks, meta, models, notes, settings) -> dict[str, Any]:
    return {
        "settings": settings,
        "notes": notes,
        "columns": [
            {"key": c.key, "task": c.task, "dataset": c.dataset, "metric": c.metric,
             "higher_is_better": c.higher_is_better, "best": c.best}
            for c in columns
        ],
        "rows": [
            {
                "model": m,
                **meta[m],
                **ranks.get(m, {}),
                "cells": {
                    c.key: {
                        k: getattr(e, k)
                        for k in ("value", "ci_low", "ci_high", "best", "p", "p_adj", "tie", "unpaired", "rank",
                                  "seed", "split_hash", "n", "n_boot", "n_seeds", "seed_mean", "seed_sd", "note")
                    }
                    for c in columns
                    if (e := c.entries.get(m)) is not None
                },
            }
            for m in models
        ],
    }


_HTML_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}th.asc::after{content:" ▲"}
th.desc::after{content:" ▼"}td.best{font-weight:bold;background:#e8f5e9}td.tie{background:#f5fbf5}
.notes{font-size:12px;color:#555;max-width:70em}img{max-width:100%}
"""

# Sorting: click a header (toggles), or open the page with #sort=<column key> (prefix '-' for descending).
_HTML_JS = """
(function(){
var table=document.getElementById('leaderboard');var heads=table.tHead.rows[0].cells;
function val(td){var v=td.getAttribute('data-v');if(v===null||v===''){return null;}var f=parseFloat(v);return isNaN(f)?v.toLowerCase():f;}
function sortBy(col,desc){var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);
  if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
  var r=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));return desc?-r:r;});
 rows.forEach(function(r){body.appendChild(r);});
 for(var i=0;i<heads.length;i++){heads[i].classList.remove('asc','desc');}
 heads[col].classList.add(desc?'desc':'asc');table.setAttribute('data-sorted',heads[col].getAttribute('data-key')+(desc?':desc':':asc'));}
for(var i=0;i<heads.length;i++){(function(i){heads[i].addEventListener('click',function(){
 sortBy(i,heads[i].classList.contains('asc'));});})(i);}
function fromHash(){var m=/sort=(-?)([^&]+)/.exec(decodeURIComponent(location.hash||''));if(!m)return;
 for(var i=0;i<heads.length;i++){if(heads[i].getAttribute('data-key')===m[2]||String(i)===m[2]){sortBy(i,m[1]==='-');return;}}}
window.addEventListener('hashchange',fromHash);fromHash();
})();
"""


def to_html(columns, ranks, meta, models, notes, settings, images: Sequence[Path] = ()) -> str:
    import base64

    def th(key: str, label: str, title: str = "") -> str:
        t = f' title="{html.escape(title)}"' if title else ""
        return f'<th data-key="{html.escape(key)}"{t}>{html.escape(label)}</th>'

    heads = [th("model", "Model"), th("license", "License", "* = no commercial use"),
             th("overlap", "Overlap", "declared training data includes the evaluated dataset"),
             th("mean_rank", "Mean rank [95%]")]
    for c in columns:
        arrow = "↑" if c.higher_is_better else "↓"
        heads.append(th(c.key, f"{c.task} / {c.dataset} / {c.metric} {arrow}"))
    body = []
    for m in models:
        md, r = meta[m], ranks.get(m, {})
        rank_txt = "n/a" if r.get("mean_rank") is None else f"{r['mean_rank']:.2f}" + (
            f" [{r['rank_low']:.2f}, {r['rank_high']:.2f}]" if r.get("rank_low") is not None else "")
        tds = [
            f'<td data-v="{html.escape(m)}">{html.escape(m)}</td>',
            f'<td data-v="{html.escape(md["license"])}">{html.escape(md["license"] + ("" if md["commercial_use"] else "*"))}</td>',
            f'<td data-v="{len(md["overlap"])}">{html.escape((OVERLAP_MARK + " " + ", ".join(md["overlap"])) if md["overlap"] else "")}</td>',
            f'<td data-v="{"" if r.get("mean_rank") is None else r["mean_rank"]}">{html.escape(rank_txt)}</td>',
        ]
        for c in columns:
            e = c.entries.get(m)
            cls = " ".join(k for k, on in (("best", e is not None and e.best), ("tie", e is not None and e.tie)) if on)
            v = "" if e is None or e.value is None else repr(float(e.value))
            title = "" if e is None else (f"p vs best={_fmt(e.p, 4)}, adjusted={_fmt(e.p_adj, 4)}; " if e.p is not None else "") + e.note
            tds.append(f'<td data-v="{v}" class="{cls}" title="{html.escape(title)}">'
                       f'{html.escape(_cell_text(e, markdown=False))}</td>')
        body.append(f'<tr data-model="{html.escape(m)}">' + "".join(tds) + "</tr>")
    imgs = []
    for p in images:
        data = base64.b64encode(Path(p).read_bytes()).decode()
        imgs.append(f'<figure><img alt="{html.escape(Path(p).stem)}" src="data:image/png;base64,{data}"></figure>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dermbench leaderboard</title>"
        f"<style>{_HTML_CSS}</style></head><body>\n<h1>dermbench leaderboard</h1>\n"
        f"<p class=\"notes\">{html.escape(json.dumps(settings))}</p>\n"
        f"<div style=\"overflow-x:auto\"><table id=\"leaderboard\"><thead><tr>{''.join(heads)}</tr></thead>\n<tbody>\n" + "\n".join(body)
        + "\n</tbody></table></div>\n<ul class=\"notes\">" + "".join(f"<li>{html.escape(n.replace('**', ''))}</li>" for n in notes)
        + "</ul>\n" + "\n".join(imgs) + f"\n<script>{_HTML_JS}</script>\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------------
# Plots


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_")


def make_plots(columns: list[Column], models: list[str], out: Path) -> list[Path]:
    """Per (task, dataset): bar charts with CI whiskers (one panel per metric); a model x column heatmap
    coloured by within-column standing (best = 1, worst = 0; direction-aware) and annotated with values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "dermbench"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    svg_meta = {"Date": None}  # reproducible SVG files

    def save(fig, stem: str) -> None:
        for ext in ("png", "svg"):
            p = out / f"{stem}.{ext}"
            fig.savefig(p, dpi=110, bbox_inches="tight", metadata=svg_meta if ext == "svg" else None)
            files.append(p)
        plt.close(fig)

    groups: dict[tuple[str, str], list[Column]] = {}
    for c in columns:
        groups.setdefault((c.task, c.dataset), []).append(c)
    for (task, dataset), cols in groups.items():
        fig, axes = plt.subplots(1, len(cols), figsize=(max(3.2 * len(cols), 4), 0.45 * len(models) + 1.6),
                                 squeeze=False, sharey=True)
        for ax, c in zip(axes[0], cols):
            ys = np.arange(len(models))
            vals = [c.entries[m].value if m in c.entries and c.entries[m].value is not None else np.nan for m in models]
            lo = [v - c.entries[m].ci_low if m in c.entries and c.entries[m].ci_low is not None else 0 for m, v in zip(models, vals)]
            hi = [c.entries[m].ci_high - v if m in c.entries and c.entries[m].ci_high is not None else 0 for m, v in zip(models, vals)]
            colors = ["#2e7d32" if m in c.entries and c.entries[m].best else
                      "#81c784" if m in c.entries and c.entries[m].tie else "#90a4ae" for m in models]
            ax.barh(ys, np.nan_to_num(vals), xerr=[np.clip(np.nan_to_num(lo), 0, None), np.clip(np.nan_to_num(hi), 0, None)], color=colors,
                    capsize=3, ecolor="#333")
            ax.set_yticks(ys, models)
            ax.set_title(f"{c.metric} {'↑' if c.higher_is_better else '↓'}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
        axes[0][0].invert_yaxis()  # shared y axis: invert once, best-ranked model on top
        fig.suptitle(f"{task} on {dataset} (95% CI; dark: best, light: not sig. different)", fontsize=10, y=1.03)
        save(fig, f"bar_{_slug(task)}_{_slug(dataset)}")
    if columns and models:
        M = np.full((len(models), len(columns)), np.nan)
        G = np.full_like(M, np.nan)
        for j, c in enumerate(columns):
            v = np.array([c.entries[m].value if m in c.entries and c.entries[m].value is not None else np.nan for m in models])
            M[:, j] = v
            if np.isfinite(v).any():
                lo_, hi_ = np.nanmin(v), np.nanmax(v)
                g = (v - lo_) / (hi_ - lo_) if hi_ > lo_ else np.where(np.isfinite(v), 1.0, np.nan)
                G[:, j] = g if c.higher_is_better else 1 - g
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(columns) + 2.5), 0.5 * len(models) + 2.2))
        ax.imshow(np.ma.masked_invalid(G), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(columns)), [f"{c.task}\n{c.dataset}\n{c.metric}" for c in columns], fontsize=7,
                      rotation=60, ha="right")
        ax.set_yticks(range(len(models)), models)
        for i in range(len(models)):
            for j in range(len(columns)):
                if np.isfinite(M[i, j]):
                    ax.text(j, i, f"{M[i, j]:.3f}", ha="center", va="center", fontsize=7,
                            color="white" if G[i, j] < 0.5 else "black")
        ax.set_title("models × tasks (colour: standing within column, 1 = best)", fontsize=10)
        save(fig, "heatmap")
    return files


# --------------------------------------------------------------------------------------------------
# README of a published folder


def _readme(records: list[Any], settings: dict[str, Any], files: list[Path], out: Path) -> str:
    lines = [
        "# dermbench leaderboard",
        "",
        "Generated from stored result records only, by `dermbench leaderboard` "
        f"(settings: `{json.dumps(settings)}`). The published dermsynth board is regenerated with "
        "`make leaderboard` (runs `dermbench demo --out leaderboards/results --publish leaderboards --n-boot 10000`).",
        "",
        "## How each table was produced",
        "",
        "| task | dataset | model | seed | split hash | n test | weights | git | dermbench |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r.task, r.dataset, r.model)):
        prov = r.provenance or {}
        lines.append(
            f"| {r.task} | {r.dataset} | {r.model} | {r.seed} | {r.split.get('hash', '')} | {r.split.get('n', '')} | "
            f"{r.model_info.get('weights_id') or 'n/a'}{' (random init)' if r.model_info.get('random_init') else ''} | "
            f"{str(prov.get('git', 'unknown'))[:12]} | {(prov.get('versions') or {}).get('dermbench', '')} |"
        )
    lines += ["", "## Files", ""] + [f"- `{Path(f).relative_to(out) if Path(f).is_relative_to(out) else f}`" for f in files]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Public API


def build_leaderboard(
    results_dir: Path | str,
    *,
    tasks: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    formats: Sequence[str] = ("md",),
    out: Path | str | None = None,
    ci: str = "percentile",
    correction: str = "holm",
    commercial_only: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Build the leaderboard from records under ``results_dir``; write ``formats`` (+ plots, README) to ``out``.

    Returns ``{"table": <markdown>, "files": [paths written], "data": <the json document>}``.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise DermbenchError(f"unknown leaderboard format(s) {bad}; choose from {', '.join(FORMATS)}")
    if ci not in stats.CI_METHODS:
        raise DermbenchError(f"unknown CI method {ci!r}; choose one of {', '.join(stats.CI_METHODS)}")
    if correction not in ("holm", "bh", "none"):
        raise DermbenchError(f"unknown correction {correction!r}; choose holm, bh or none")
    records, seed_metrics = _records(Path(results_dir), tasks, datasets, models, commercial_only)
    columns, ranks = _build(records, ci, correction, seed_metrics)
    meta = _model_meta(records)
    order = _row_order(meta, ranks)
    notes = _notes(ci, correction, columns, records)
    settings = {"ci": ci, "correction": correction, "alpha": ALPHA, "commercial_only": commercial_only,
                "tasks": list(tasks) if tasks else "all", "datasets": list(datasets) if datasets else "all",
                "models": list(models) if models else "all"}
    table = to_markdown(columns, ranks, meta, order, notes)
    data = to_json(columns, ranks, meta, order, notes, settings)
    files: list[Path] = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plot_files = make_plots(columns, order, out / "plots") if plots else []
        if plots:  # per-group curves for fairness records (one line per model)
            from dermbench_plugins.tasks.fairness.plot import fairness_plot

            plot_files += [Path(f) for f in fairness_plot(records, out / "plots")]
            try:  # label-efficiency curves, when probe/retrieval records carry them
                from dermbench_plugins.tasks.label_efficiency.curves import label_efficiency_plot
            except ImportError:
                label_efficiency_plot = None
            if label_efficiency_plot is not None:
                plot_files += [Path(f) for f in label_efficiency_plot(records, out / "plots")]
        if "md" in formats:
            (out / "leaderboard.md").write_text("# dermbench leaderboard\n\n" + table)
            files.append(out / "leaderboard.md")
        if "csv" in formats:
            (out / "leaderboard.csv").write_text(to_csv(columns, ranks, meta, order))
            files.append(out / "leaderboard.csv")
        if "json" in formats:
            (out / "leaderboard.json").write_text(json.dumps(data, indent=1, allow_nan=False))
            files.append(out / "leaderboard.json")
        if "html" in formats:
            heat = [p for p in plot_files if p.name == "heatmap.png"]
            (out / "leaderboard.html").write_text(to_html(columns, ranks, meta, order, notes, settings, heat))
            files.append(out / "leaderboard.html")
        files += plot_files
        (out / "README.md").write_text(_readme(records, settings, files, out))
        files.append(out / "README.md")
    return {"table": table, "files": [str(f) for f in files], "data": data}


def compare(
    results_dir: Path | str,
    model_a: str,
    model_b: str,
    *,
    task: str,
    dataset: str,
    metric: str | None = None,
    test: str = "bootstrap",
    ci: str = "percentile",
    seed: int | None = None,
    correction: str = "holm",
) -> dict[str, Any]:
    """Paired comparison of two stored records on identical resamples: per metric diff (a - b), its CI and a
    two-sided p-value; with several metrics, p-values are also adjusted together (``correction``)."""
    from dermbench.results import find_record

    ra = find_record(Path(results_dir), model_a, task, dataset, seed)
    rb = find_record(Path(results_dir), model_b, task, dataset, ra.seed if seed is None else seed)
    ha, hb = ra.split.get("hash"), rb.split.get("hash")
    if ha != hb:
        raise DermbenchError(
            f"{model_a} and {model_b} were scored on different splits of {dataset} (split hash {ha} vs {hb}); "
            "a paired comparison needs the same split: re-run both with the same dataset options and --split-seed"
        )
    metrics = [metric] if metric else [m for m in ra.metrics if m in rb.metrics]
    if metric and (metric not in ra.metrics and not metric.startswith("mean:")):
        raise DermbenchError(f"record {model_a}/{task}/{dataset} has no metric {metric!r}; it has {sorted(ra.metrics)}")
    pa, pb = stats.prepare(ra.predictions), stats.prepare(rb.predictions)
    results = []
    for mname in metrics:
        try:
            stats.get_metric(mname)
        except DermbenchError as e:
            if metric:
                raise
            results.append({"metric": mname, "diff": None, "p_value": None, "note": f"not compared: {e}"})
            continue
        try:
            r = stats.paired_test(pa, pb, mname, split_hash=str(ha), seed=ra.seed, n_boot=_n_boot(ra, mname),
                                  test=test, ci=ci, strata=_strata(ra))
        except stats.UndefinedMetric as e:
            r = {"metric": mname, "diff": None, "p_value": None, "note": str(e)}
        results.append(r)
    adj = stats.correct([r.get("p_value") for r in results], correction)
    for r, p in zip(results, adj):
        r["p_adj"] = p
    return {
        "model_a": model_a, "model_b": model_b, "task": task, "dataset": dataset, "seed": ra.seed,
        "split_hash": ha, "test": test, "ci": ci, "correction": correction if len(results) > 1 else "none",
        "comparisons": results,
    }
