"""Leaderboards and paired comparisons built from stored result records only.

Why recompute from records: every record keeps its per-sample predictions and split hash, so the board redraws
the very same bootstrap resamples (``stats.resamples_for``: split hash, the fixed bootstrap seed, within-class
strata) for every model and every training seed of a column. Paired tests and rank intervals are then valid
even for records produced months apart on different machines.

Boards (documented in every output's notes, see docs/statistics.md):

* **main**: one column per (task, dataset) holding that task's primary metric, header ``Task · Dataset ·
  Metric``; model columns: parameters, licence (commercial use), train/test overlap evidence; overall rank =
  mean of the per-column ranks, with a 95% rank interval and P(rank 1) from the same bootstrap replicates;
* **detail**: one table per task with every (non-fairness) metric;
* **calibration**: Brier score (headline, ranked), log-loss, and binned ECE (shown, not ranked: biased upward
  at small n);
* **fairness**: per attribute, per-group values with CIs, the gap with a projection interval (valid at a true
  gap of 0) and its permutation p-value, worst group, equalized odds; gaps are never marked "best".

Testing: in each column, every model is compared with the column's best by the paired bootstrap test on
identical resamples; the p-values of one column form one Holm family (its size and the smallest attainable
p for B are shown). "n.s." = not shown to differ from the best (not "equivalent"). ``†``: no paired test
(another split). Several training seeds of one configuration are pooled: seed mean with a two-level
(test sample x seed) interval, and mean ± SD over seeds. Records are pooled only when their config hash and
split hash agree; everything left out is listed with the reason, as is every unreadable record.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from dermbench import stats
from dermbench.api import DermbenchError
from dermbench.defaults import ALPHA, N_BOOT
from dermbench.report import labels

FORMATS = ("md", "csv", "json", "html")
NS_MARK = "n.s."
TIE_MARK = NS_MARK  # deprecated name (was "≈", which read as "equivalent")
UNPAIRED_MARK = "†"
OVERLAP_MARK = "⚠"
CALIBRATION_METRICS = ("brier", "log_loss", "ece")
CALIBRATION_HEADLINE = "brier"


class IncompleteResults(DermbenchError):
    """Unreadable or malformed records were found (the board lists them); raised by the CLI unless
    ``--allow-missing``."""


# --------------------------------------------------------------------------------------------------
# Model of the table


@dataclass
class Entry:
    """One model's result in one column (pooled over the training seeds of one configuration)."""

    model: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    split_hash: str
    config_hash: str
    n: int
    n_boot: int
    seeds: list[int] = field(default_factory=list)
    seed_mean: float | None = None
    seed_sd: float | None = None
    note: str = ""
    sources: list[str] = field(default_factory=list)
    best: bool = False
    p: float | None = None
    p_adj: float | None = None
    ns: bool = False
    unpaired: bool = False
    stored_only: bool = False
    n_excluded: int = 0
    rank: float | None = None
    rank_low: float | None = None
    rank_high: float | None = None
    p_rank1: float | None = None
    reps: np.ndarray | None = field(default=None, repr=False)
    valid: np.ndarray | None = field(default=None, repr=False)
    pool: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def tie(self) -> bool:  # old name of ``ns``
        return self.ns


@dataclass
class Column:
    board: str  # main | detail | calibration
    task: str
    dataset: str
    metric: str
    higher_is_better: bool
    ranked: bool = True
    entries: dict[str, Entry] = field(default_factory=dict)
    family_size: int = 0
    min_p: float | None = None
    min_p_adj: float | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.task}/{self.dataset}/{self.metric}"

    @property
    def label(self) -> str:
        return labels.column(self.task, self.dataset, self.metric)

    @property
    def best(self) -> list[str]:
        return [m for m, e in self.entries.items() if e.best]


@dataclass
class Group:
    """The records of one (model, task, dataset) that are pooled: same config hash and split hash."""

    model: str
    task: str
    dataset: str
    config_hash: str
    split_hash: str
    records: list[Any]
    sources: dict[int, list[str]]  # seed -> where the record came from


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def overlap(model_info: dict[str, Any], dataset: str, dataset_info: dict[str, Any]) -> list[str]:
    """Names in the model's declared training data that denote the evaluated dataset."""
    targets = {_norm(dataset), *(_norm(a) for a in dataset_info.get("aliases", []) or [])}
    targets.discard("")
    return [t for t in (model_info.get("trained_on") or []) if _norm(t) in targets]


def _audit_overlap(meta: dict[str, dict[str, Any]], groups: list[Any], dirs: Sequence[Path | str]) -> None:
    """Pixel-level evidence from ``dermbench audit`` (``<results>/audit/audit.json``, issue 18) in the overlap column.

    Near-duplicates of test images in the model's pretraining folder give ``ph2 (audit: 3 test near-duplicates)``;
    an audit that found none turns a name-only declaration into ``ph2 (declared; audit: none found)``. Without an
    audit the declared-by-name flag stays as it is (the weaker evidence).
    """
    from dermbench.audit import overlap_evidence

    ev: dict[tuple[str, str], dict[str, Any]] = {}
    for d in dirs:
        ev.update(overlap_evidence(Path(d) / "audit"))
    for g in groups:
        e = ev.get((g.model, g.dataset)) or ev.get((g.model, g.dataset.split(":", 1)[0]))
        if not e or g.model not in meta:
            continue
        tags = meta[g.model]["overlap"]
        declared = [t for t in tags if t == g.dataset or t.startswith(g.dataset + " (")]
        if e["test_pairs"]:
            new = f"{g.dataset} (audit: {e['test_pairs']} test near-duplicates)"
        elif declared:
            new = f"{g.dataset} (declared; audit: none found)"
        else:
            continue
        meta[g.model]["overlap"] = [t for t in tags if t not in declared] + ([new] if new not in tags else [])


# --------------------------------------------------------------------------------------------------
# Gathering records from one or more results folders


def _pred_digest(rec: Any) -> str:
    return hashlib.sha256(json.dumps(rec.predictions, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return f"empty name {name!r}"
    if "/" in name or "\\" in name or ".." in name or "\0" in name:
        return f"name {name!r} contains '/', '\\\\' or '..'"
    return None


def _source(d: Path, rec: Any) -> str:
    """Where a record lives, for provenance: the results folder and the record's path inside it."""
    from dermbench import results as R

    try:
        p = R.record_path(d, rec.model, rec.task, rec.dataset, rec.seed, rec.config_hash or None)
        if not p.exists():
            p = R.record_path(d, rec.model, rec.task, rec.dataset, rec.seed)
        return str(p) if p.exists() else str(d)
    except Exception:
        return str(d)


def _mtime(src: str) -> float:
    try:
        return Path(src).stat().st_mtime
    except OSError:
        return 0.0


def gather(
    results_dirs: Sequence[Path | str],
    *,
    tasks: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    commercial_only: bool = False,
) -> tuple[list[Group], list[dict[str, str]], list[dict[str, str]]]:
    """(pooled groups, left-out records with the reason, unreadable records with the reason).

    Identical records found in several folders (same model, task, dataset, seed, config and split hash and
    the same predictions) count once, with every source kept as provenance; the same identity with different
    predictions is a conflict and the later copy is left out. Several configurations or splits of one
    (model, task, dataset) are never pooled: the one with the most seeds is shown, the others are listed.
    """
    from dermbench.results import scan_records

    dirs = [Path(d) for d in results_dirs]
    if not dirs:
        raise DermbenchError("no results folder given; pass --results DIR (repeatable)")
    problems: list[dict[str, str]] = []
    left_out: list[dict[str, str]] = []
    seen: dict[tuple, tuple[str, Any, list[str]]] = {}
    total = 0
    for d in dirs:
        if not d.is_dir():
            raise DermbenchError(f"results folder {d} does not exist (or is not a folder); pass the --out of a run")
        good, bad = scan_records(d)
        total += len(good) + len(bad)
        for p, why in bad:
            problems.append({"path": str(p), "reason": why,
                             "fix": "re-run that cell (`dermbench run` recomputes it), or delete the file"})
        for rec in good:
            src = _source(d, rec)
            bad_name = next((f"{k} {w}" for k in ("model", "task", "dataset")
                             if (w := _name_problem(getattr(rec, k))) is not None), None)
            where = f"{rec.model}/{rec.task}/{rec.dataset} seed {rec.seed}"
            if bad_name:
                left_out.append({"record": where, "source": src,
                                 "reason": f"{bad_name}: not a valid dermbench name; rename it in the plugin and re-run"})
                continue
            ident = (rec.model, rec.task, rec.dataset, rec.seed, rec.config_hash, str(rec.split.get("hash", "")))
            dig = _pred_digest(rec)
            if ident in seen:
                dig0, _, srcs = seen[ident]
                if dig0 == dig:
                    srcs.append(src)
                else:
                    left_out.append({"record": where, "source": src,
                                     "reason": f"conflicts with {srcs[0]}: same model, task, dataset, seed, config "
                                               "and split hash but different predictions; keep one of the two"})
                continue
            seen[ident] = (dig, rec, [src])
    if total == 0:
        raise DermbenchError(
            f"no result records under {', '.join(map(str, dirs))}; run `dermbench run ... --out DIR` first "
            "(records are <out>/<dataset>/<task>/<model>/seed<N>-<config hash>.json)"
        )
    recs = [(r, srcs) for _, r, srcs in seen.values()]
    sel = []
    for r, srcs in recs:
        if tasks and r.task not in tasks or datasets and r.dataset not in datasets or models and r.model not in models:
            continue
        if commercial_only and not r.model_info.get("commercial_use", False):
            continue
        sel.append((r, srcs))
    if not sel and recs:
        raise DermbenchError(
            f"no record under {', '.join(map(str, dirs))} matches tasks={list(tasks or [])} "
            f"datasets={list(datasets or [])} models={list(models or [])}{' commercial_only' if commercial_only else ''}; "
            f"available: models {sorted({r.model for r, _ in recs})}, tasks {sorted({r.task for r, _ in recs})}, "
            f"datasets {sorted({r.dataset for r, _ in recs})}"
        )
    cells: dict[tuple[str, str, str], dict[tuple[str, str], list]] = {}
    for r, srcs in sel:
        sub = cells.setdefault((r.model, r.task, r.dataset), {})
        sub.setdefault((r.config_hash, str(r.split.get("hash", ""))), []).append((r, srcs))
    groups = []
    for (model, task, dataset), subs in sorted(cells.items()):
        def pref(k: tuple[str, str]) -> tuple[int, bool, float, str]:
            """Most seeds, then current schema over legacy, then the newest file."""
            newest = max((_mtime(s) for _, ss in subs[k] for s in ss), default=0.0)
            return (len({r.seed for r, _ in subs[k]}), not any(getattr(r, "legacy", False) for r, _ in subs[k]),
                    newest, k[0])

        keep = max(subs, key=pref)
        for k, items in subs.items():
            if k == keep:
                continue
            left_out.append({
                "record": f"{model}/{task}/{dataset} seeds {sorted(r.seed for r, _ in items)}",
                "source": ", ".join(sorted({s for _, ss in items for s in ss})),
                "reason": (f"config hash {k[0][:12] or '?'} / split hash {k[1][:12] or '?'} differs from the pooled "
                           f"records' config {keep[0][:12] or '?'} / split {keep[1][:12] or '?'} (seeds "
                           f"{sorted(r.seed for r, _ in subs[keep])}); records are pooled only with identical config "
                           "and split hashes -- move one configuration to another results folder to board it"),
            })
        items = sorted(subs[keep], key=lambda t: t[0].seed)
        groups.append(Group(model, task, dataset, keep[0], keep[1], [r for r, _ in items],
                            {r.seed: srcs for r, srcs in items}))
    return groups, left_out, problems


# --------------------------------------------------------------------------------------------------
# Scoring groups on shared resamples


class _Scorer:
    """Caches prepared predictions and resamples (one matrix per split hash, n, strata and B)."""

    def __init__(self, n_boot: int, ci: str):
        self.n_boot, self.ci = n_boot, ci
        self._prep: dict[int, Any] = {}
        self._rs: dict[tuple, Any] = {}

    def prepared(self, rec: Any) -> Any:
        k = id(rec)
        if k not in self._prep:
            self._prep[k] = stats.prepare(rec.predictions)
        return self._prep[k]

    def resamples(self, rec: Any, prep: Any) -> Any:
        strata = rec.predictions.get("strata")
        arr, label = stats._resolve_strata(prep, strata if strata is not None else "auto")
        sk = "none" if arr is None else hashlib.sha256(np.asarray(arr).astype(str).tobytes()).hexdigest()[:16]
        key = (str(rec.split.get("hash", "")), prep.n, sk)
        if key not in self._rs:
            self._rs[key] = stats.Resamples.draw(key[0], stats.BOOTSTRAP_SEED, prep.n, self.n_boot, arr)
        return self._rs[key]

    def entry(self, g: Group, metric: str) -> Entry | None:
        """The pooled entry of a group for one metric (None when no seed's record has the metric)."""
        recs = [r for r in g.records if metric in r.metrics or metric in CALIBRATION_METRICS]
        if not recs:
            return None
        sources = sorted({s for r in recs for s in g.sources.get(r.seed, [])})
        e = Entry(g.model, None, None, None, g.split_hash, g.config_hash, 0, self.n_boot,
                  seeds=[r.seed for r in recs], sources=sources)
        try:
            m = stats.get_metric(metric)
        except DermbenchError:
            m = None
        if m is None:  # a plugin metric not registered here: the stored value, no test
            d = recs[0].metrics.get(metric) or {}
            e.value, e.ci_low, e.ci_high = d.get("value"), d.get("ci_low"), d.get("ci_high")
            e.n, e.stored_only, e.unpaired = int(d.get("n") or 0), True, True
            e.note = (f"{metric!r} is not registered in dermbench.stats here: stored value and CI "
                      f"({d.get('ci_method', '?')}) shown, not re-scored, no paired test")
            return e
        values, reps, valids, notes = [], [], [], []
        for r in recs:
            try:
                prep = self.prepared(r)
                sc = stats.evaluate(prep, metric, self.resamples(r, prep), ci=self.ci, alpha=ALPHA)
            except DermbenchError as err:
                e.note = f"cannot score seed {r.seed}: {err}"
                return e
            if sc.value is None:
                e.note = sc.summary.get("note", "undefined")
                return e
            e.n = prep.n
            values.append(sc.value)
            reps.append(sc.replicates)
            valids.append(sc.valid)
            if sc.summary.get("note"):
                notes.append(sc.summary["note"])
            stored = (r.metrics.get(metric) or {}).get("value")
            if stored is not None and abs(float(stored) - sc.value) > 1e-9:
                notes.append(f"seed {r.seed}: record stored {stored:.6g}; re-scored as {sc.value:.6g}")
            if len(recs) == 1:
                e.value, e.ci_low, e.ci_high = sc.value, sc.summary["ci_low"], sc.summary["ci_high"]
        valid = np.logical_and.reduce(valids)
        if len(recs) > 1:
            R = np.where(np.stack(valids), np.stack(reps), np.nan)
            pooled = stats.pool_seeds(values, np.nan_to_num(R, nan=np.nanmean(R)),
                                      key=f"{g.model}|{g.task}|{g.dataset}|{g.config_hash}")
            e.value, e.ci_low, e.ci_high = pooled["value"], pooled["ci_low"], pooled["ci_high"]
            e.seed_mean, e.seed_sd = pooled["value"], pooled["sd"]
            e.reps = pooled["replicates"]
            e.pool = pooled
            notes.insert(0, f"seed mean of {len(recs)} seeds; two-level (test sample x seed) interval")
        else:
            e.reps = reps[0]
        e.valid = valid
        e.n_excluded = int((~valid).sum())
        e.note = "; ".join(dict.fromkeys(notes))
        return e


# --------------------------------------------------------------------------------------------------
# Columns


def _task_info(task: str) -> Any:
    try:
        from dermbench import plugins

        reg = plugins.registry()
        return reg.tasks[task].info if task in reg.tasks else None
    except Exception:  # a broken plugin must not take the board down
        return None


def _is_fairness(name: str) -> bool:
    return name.startswith(("gap:", "worst:", "eod@")) and "@" in name


def _is_fairness_task(g: Group) -> bool:
    return any(_is_fairness(m) for r in g.records for m in r.metrics)


def _primary(task: str, groups: list[Group]) -> str | None:
    info = _task_info(task)
    have = [m for g in groups for r in g.records for m in r.metrics]
    if info is not None and info.primary_metric and info.primary_metric in have:
        return info.primary_metric
    return have[0] if have else None


def _has_probabilities(g: Group) -> bool:
    r = g.records[0]
    s = r.predictions.get("scores")
    return "y_true" in r.predictions and isinstance(s, list) and bool(s) and isinstance(s[0], list)


def _build_columns(groups: list[Group], scorer: _Scorer) -> tuple[list[Column], list[Column], list[Column], list[str]]:
    by_td: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        if not _is_fairness_task(g):
            by_td.setdefault((g.task, g.dataset), []).append(g)
    main, detail, calib, notes = [], [], [], []
    seen_fingerprints: dict[tuple, str] = {}
    for (task, dataset), gs in sorted(by_td.items()):
        prim = _primary(task, gs)
        metrics = list(dict.fromkeys(m for g in gs for r in g.records for m in r.metrics if not _is_fairness(m)))
        for metric in metrics:
            try:
                hib = stats.get_metric(metric).higher_is_better
            except DermbenchError:
                hib = True
            col = Column("detail", task, dataset, metric, hib)
            for g in gs:
                e = scorer.entry(g, metric)
                if e is not None:
                    col.entries[g.model] = e
                else:
                    notes.append(f"{g.model}/{task}/{dataset} has no {metric!r} (its metrics: "
                                 f"{', '.join(sorted(g.records[0].metrics))}): '–' in {col.label}; re-run it with "
                                 "this dermbench to get the full metric set")
            detail.append(col)
            if metric == prim:
                fp = (dataset, metric, tuple(sorted((m, _pred_digest(g.records[0])) for g in gs for m in [g.model])))
                if fp in seen_fingerprints:  # the same predictions re-reported by another task: no duplicate column
                    notes.append(f"{col.label} duplicates {seen_fingerprints[fp]} (identical predictions): not repeated")
                    continue
                seen_fingerprints[fp] = col.label
                mcol = Column("main", task, dataset, metric, hib, entries=dict(col.entries))
                main.append(mcol)
        prob = [g for g in gs if _has_probabilities(g)]
        cfp = (dataset, tuple(sorted((g.model, _pred_digest(g.records[0])) for g in prob)))
        if prob and cfp in seen_fingerprints:
            notes.append(f"calibration of {labels.task(task)} · {labels.dataset(dataset)} duplicates "
                         f"{seen_fingerprints[cfp]} (identical predictions): not repeated")
        elif prob:
            seen_fingerprints[cfp] = f"{labels.task(task)} · {labels.dataset(dataset)}"
            for metric in CALIBRATION_METRICS:
                col = Column("calibration", task, dataset, metric, False, ranked=metric == CALIBRATION_HEADLINE)
                if metric == "ece":
                    col.note = "binned ECE is biased upward at small n; shown, not ranked (Brier is the headline)"
                for g in prob:
                    e = scorer.entry(g, metric)
                    if e is not None:
                        col.entries[g.model] = e
                calib.append(col)
    return main, detail, calib, notes


def _test_column(col: Column, correction: str) -> None:
    """Best (direction-aware), paired tests vs the best, one Holm family per column."""
    valid = {m: e for m, e in col.entries.items() if e.value is not None}
    if not valid or not col.ranked:  # unranked (binned ECE): values only, no best, no tests
        return
    sign = 1.0 if col.higher_is_better else -1.0
    top = max(sign * e.value for e in valid.values())  # type: ignore[operator]
    for e in valid.values():
        e.best = sign * e.value == top  # type: ignore[operator]
    ref = valid[sorted(m for m, e in valid.items() if e.best)[0]]
    tests: list[Entry] = []
    for e in valid.values():
        if e.best:
            continue
        if e.stored_only or e.reps is None or ref.reps is None or ref.stored_only:
            e.unpaired = True
            continue
        if (e.split_hash, e.n, e.n_boot) != (ref.split_hash, ref.n, ref.n_boot):
            e.unpaired = True
            e.note = "; ".join(filter(None, [e.note, f"scored on split {e.split_hash[:12]}, the best on "
                                              f"{ref.split_hash[:12]}: no paired test (re-run on the same split)"]))
            continue
        ok = np.ones(ref.reps.shape, bool)
        if ref.valid is not None:
            ok &= ref.valid
        if e.valid is not None:
            ok &= e.valid
        try:
            if ref.pool is not None or e.pool is not None:  # several training seeds: two-level test
                res = stats.paired_seed_test(_as_pool(ref), _as_pool(e))
                res["n_excluded"] = 0
            else:
                res = stats.paired_from_replicates(ref.reps, e.reps, ref.value, e.value, exclude=~ok)  # type: ignore[arg-type]
        except stats.UndefinedMetric as err:
            e.unpaired = True
            e.note = "; ".join(filter(None, [e.note, str(err)]))
            continue
        e.p = res["p_value"]
        e.n_excluded = res["n_excluded"]
        tests.append(e)
    adj = stats.correct([e.p for e in tests], correction)
    for e, pa in zip(tests, adj):
        e.p_adj = pa
        e.ns = pa is not None and pa >= ALPHA
    col.family_size = len(tests)
    if tests:
        B = min(e.n_boot for e in tests)
        col.min_p = 1.0 / (B + 1)
        col.min_p_adj = min(1.0, len(tests) / (B + 1)) if correction in ("holm", "bonferroni") else col.min_p


def _as_pool(e: Entry) -> dict[str, Any]:
    if e.pool is not None:
        return e.pool
    reps = np.where(e.valid, e.reps, np.nan) if e.valid is not None else e.reps
    return {"value": e.value, "test_part": reps, "seed_var": 0.0, "k": 1}


def _rank_column(col: Column) -> np.ndarray | None:
    """Point ranks, rank intervals and P(rank 1) from the replicates; returns (models x B) replicate ranks."""
    from scipy.stats import rankdata

    ents = [(m, e) for m, e in col.entries.items() if e.value is not None]
    if len(ents) < 2 or not col.ranked:
        return None
    sign = -1.0 if col.higher_is_better else 1.0
    pr = rankdata([sign * e.value for _, e in ents])  # type: ignore[operator]
    for (m, e), r in zip(ents, pr):
        e.rank = float(r)
    if any(e.reps is None for _, e in ents):
        return None
    B = min(e.reps.shape[0] for _, e in ents)  # type: ignore[union-attr]
    R = np.stack([sign * np.where(e.valid[:B] if e.valid is not None else True, e.reps[:B], np.nan)  # type: ignore[index]
                  for _, e in ents])
    RR = rankdata(R, axis=0, nan_policy="omit")
    for (m, e), row in zip(ents, RR):
        fin = row[np.isfinite(row)]
        if fin.size:
            e.rank_low, e.rank_high = (float(x) for x in np.quantile(fin, [ALPHA / 2, 1 - ALPHA / 2]))
            e.p_rank1 = float(np.mean(fin == 1.0))
    return RR


def _overall(main: list[Column]) -> dict[str, dict[str, Any]]:
    """Mean of per-column ranks (1 = best), its bootstrap interval and P(overall rank 1)."""
    models = sorted({m for c in main for m in c.entries})
    if not models:
        return {}
    point = np.full((len(main), len(models)), np.nan)
    reps_list = []
    for ci_, c in enumerate(main):
        for mi, m in enumerate(models):
            e = c.entries.get(m)
            if e is not None and e.rank is not None:
                point[ci_, mi] = e.rank
    B = None
    for c in main:
        if getattr(c, "_rep_ranks", None) is not None:
            b = c._rep_ranks.shape[1]  # type: ignore[attr-defined]
            B = b if B is None else min(B, b)
    if B:
        REP = np.full((len(main), len(models), B), np.nan)
        for ci_, c in enumerate(main):
            rr = getattr(c, "_rep_ranks", None)
            if rr is None:
                continue
            ents = [m for m, e in c.entries.items() if e.value is not None]
            for k, m in enumerate(ents):
                REP[ci_, models.index(m)] = rr[k, :B]
        reps_list = REP
    import warnings

    out: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(point, axis=0)
        counts = np.isfinite(point).sum(axis=0)
        rep_mean = np.nanmean(reps_list, axis=0) if B else None  # (models, B)
    win = None
    if rep_mean is not None:
        best = np.nanmin(rep_mean, axis=0)
        ties = (rep_mean == best[None, :])
        win = (ties / np.maximum(ties.sum(axis=0, keepdims=True), 1)).mean(axis=1)
    for mi, m in enumerate(models):
        if counts[mi] == 0:
            out[m] = {"mean_rank": None, "rank_low": None, "rank_high": None, "p_rank1": None, "n_columns": 0}
            continue
        lo = hi = None
        if rep_mean is not None and np.isfinite(rep_mean[mi]).any():
            lo, hi = (float(x) for x in np.nanquantile(rep_mean[mi], [ALPHA / 2, 1 - ALPHA / 2]))
        out[m] = {"mean_rank": float(mean[mi]), "rank_low": lo, "rank_high": hi,
                  "p_rank1": None if win is None else float(win[mi]), "n_columns": int(counts[mi])}
    return out


# --------------------------------------------------------------------------------------------------
# Fairness board (from the fairness task's per-attribute report, computed on the record's resamples)


def _fairness_rows(groups: list[Group], scorer: "_Scorer | None" = None) -> list[dict[str, Any]]:
    """One row per (model, dataset, attribute, metric). Gap, worst group and EOD intervals are recomputed from
    the record's predictions (projection intervals, valid at a gap of 0) whatever the record's version; the
    permutation p-value and the per-group values come from the fairness task's report."""
    rows = []
    for g in groups:
        if not _is_fairness_task(g):
            continue
        r = g.records[0]
        for attr, tab in sorted(((r.extra or {}).get("attributes") or {}).items()):
            if not isinstance(tab, dict):
                continue
            for metric, gap in (tab.get("gaps") or {}).items():
                worst = dict((tab.get("worst") or {}).get(metric) or {})
                eod = dict(tab.get("equalized_odds") or {}) if metric == "auroc_macro" else None
                gap = dict(gap)
                gap.setdefault("ci_method", "percentile (legacy record: not valid at a gap of 0)")
                if scorer is not None:
                    for name, d in ((f"gap:{metric}@{attr}", gap), (f"worst:{metric}@{attr}", worst),
                                    (f"eod@{attr}", eod)):
                        if d is None:
                            continue
                        try:
                            prep = scorer.prepared(r)
                            sc = stats.evaluate(prep, name, scorer.resamples(r, prep), ci="percentile", alpha=ALPHA)
                        except Exception:  # plugin not loaded here or labels missing: keep the record's numbers
                            continue
                        if sc.value is not None:
                            d.update(value=sc.value, ci_low=sc.summary["ci_low"], ci_high=sc.summary["ci_high"],
                                     ci_method=sc.summary["ci_method"])
                per_group = {name: dict((d.get("metrics") or {}).get(metric) or {}, n=d.get("n"))
                             for name, d in (tab.get("groups") or {}).items() if d.get("status") == "scored"}
                rows.append({
                    "model": g.model, "task": g.task, "dataset": g.dataset, "attribute": attr, "metric": metric,
                    "groups": per_group, "gap": gap.get("value"), "gap_ci": [gap.get("ci_low"), gap.get("ci_high")],
                    "gap_ci_method": gap.get("ci_method"),
                    "p_value": gap.get("p_value"), "p_holm": gap.get("p_holm"),
                    "worst_group": worst.get("group"), "worst": worst.get("value"),
                    "worst_ci": [worst.get("ci_low"), worst.get("ci_high")],
                    "eod": None if eod is None else eod.get("value"),
                    "eod_ci": None if eod is None else [eod.get("ci_low"), eod.get("ci_high")],
                    "seeds": [x.seed for x in g.records],
                })
    return rows


# --------------------------------------------------------------------------------------------------
# Rendering helpers


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.{digits}f}"


def cell_text(e: Entry | None, *, markdown: bool) -> str:
    if e is None:
        return "–"
    if e.value is None:
        return "n/a"
    v = _fmt(e.value)
    if e.best and markdown:
        v = f"**{v}**"
    s = f"{v} [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]"
    if e.ns:
        s += f" {NS_MARK}"
    if e.unpaired:
        s += f" {UNPAIRED_MARK}"
    if e.n_seeds > 1:
        s += f" (seeds: {_fmt(e.seed_mean)} ± {_fmt(e.seed_sd)}, k={e.n_seeds})"
    return s


def _model_meta(groups: list[Group]) -> dict[str, dict[str, Any]]:
    meta: dict[str, dict[str, Any]] = {}
    for g in groups:
        r = g.records[0]
        d = meta.setdefault(g.model, {
            "license": r.model_info.get("license", "unknown"),
            "commercial_use": bool(r.model_info.get("commercial_use", False)),
            "params": r.model_info.get("params") or r.model_info.get("n_params"),
            "weights_id": r.model_info.get("weights_id"),
            "random_init": bool(r.model_info.get("random_init", False)),
            "trained_on": list(r.model_info.get("trained_on") or []),
            "overlap": [],
        })
        for name in overlap(r.model_info, g.dataset, r.dataset_info):
            tag = f"{g.dataset} ({name})" if _norm(name) != _norm(g.dataset) else g.dataset
            if tag not in d["overlap"]:
                d["overlap"].append(tag)
    return meta


def _params_text(p: Any) -> str:
    if not isinstance(p, (int, float)) or p <= 0:
        return "?"
    return f"{p / 1e6:.0f}M" if p >= 1e6 else f"{p / 1e3:.0f}k"


def _row_order(models: Iterable[str], ranks: dict[str, dict[str, Any]]) -> list[str]:
    def key(m: str) -> tuple[float, str]:
        r = ranks.get(m, {}).get("mean_rank")
        return (r if r is not None else math.inf, m)

    return sorted(models, key=key)


def _notes(ci: str, correction: str, cols: list[Column], n_boot: int) -> list[str]:
    ci_txt = {"percentile": "percentile 95% CI", "bca": "BCa 95% CI (guarded)",
              "paper": "DermINO's mu ± 1.96·SD of replicates (reproduction option, not a calibrated CI)"}[ci]
    corr = {"holm": "Holm", "bh": "Benjamini–Hochberg", "none": "no correction"}[correction]
    fam = sorted({c.family_size for c in cols if c.family_size})
    out = [
        f"Point estimate [{ci_txt}] from B={n_boot} bootstrap replicates drawn from (split hash, fixed bootstrap "
        "seed), within classes for classification; all models and training seeds of a split share them.",
        f"**bold**: best in column (direction-aware; ECE/Brier/log-loss: lower is better). {NS_MARK}: not shown to "
        f"differ from the best (two-sided paired bootstrap test, p=(1+#{{|d*-d|>=|d|}})/(1+B), {corr} within each "
        f"column; family sizes {fam or [0]}, smallest attainable p 1/(B+1)={1 / (n_boot + 1):.2g}) -- it does NOT "
        f"mean equivalent. {UNPAIRED_MARK}: no paired test (scored on another split than the best).",
        "Rank: within a column, 1 = best; [interval] = 2.5–97.5 percentiles over bootstrap replicates; P(1) = share "
        "of replicates in which the model ranks first. Overall rank = mean of the main board's per-column ranks.",
        "Several training seeds of one configuration: seed mean with a two-level (test sample × seed) interval, "
        "and mean ± SD over seeds (k = number of seeds).",
        f"Licence: * = no commercial use. Overlap {OVERLAP_MARK}: the model's declared training data includes the "
        "evaluated dataset.",
    ]
    bad = [c for c in cols if c.family_size and c.min_p_adj is not None and c.min_p_adj >= ALPHA]
    if bad:
        need = max(int(c.family_size / ALPHA) + 1 for c in bad)
        out.append(f"**Resolution warning**: in {len(bad)} column(s) the smallest attainable adjusted p is >= "
                   f"{ALPHA} with B={n_boot}: no difference there can be significant. Re-run with --n-boot {need}.")
    return out


# --------------------------------------------------------------------------------------------------
# Text formats


def _rank_text(r: dict[str, Any]) -> str:
    if r.get("mean_rank") is None:
        return "n/a"
    s = f"{r['mean_rank']:.2f}"
    if r.get("rank_low") is not None:
        s += f" [{r['rank_low']:.2f}, {r['rank_high']:.2f}]"
    if r.get("p_rank1") is not None:
        s += f" P(1)={r['p_rank1']:.2f}"
    return s


def _entry_rank_text(e: Entry | None) -> str:
    if e is None or e.rank is None:
        return ""
    s = f"rank {e.rank:g}"
    if e.rank_low is not None:
        s += f" [{e.rank_low:g}, {e.rank_high:g}], P(1)={e.p_rank1:.2f}"
    return s


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _board_md(cols: list[Column], models: list[str], meta, ranks=None, with_meta: bool = False) -> str:
    header = ["Model"]
    if with_meta:
        header += ["Params", "Licence", "Overlap", "Overall rank [95%]"]
    header += [c.label + (" ↑" if c.higher_is_better else " ↓") for c in cols]
    rows = []
    for m in models:
        if not any(m in c.entries for c in cols):
            continue
        md = meta.get(m, {})
        row = [m]
        if with_meta:
            row += [_params_text(md.get("params")), md.get("license", "?") + ("" if md.get("commercial_use") else "*"),
                    (OVERLAP_MARK + " " + ", ".join(md["overlap"])) if md.get("overlap") else "",
                    _rank_text((ranks or {}).get(m, {}))]
        row += [cell_text(c.entries.get(m), markdown=True) for c in cols]
        rows.append(row)
    fam = ", ".join(f"{c.label}: {c.family_size} tests" for c in cols if c.family_size)
    return _md_table(header, rows) + (f"\n\nHolm families (one per column): {fam}." if fam else "")


def _fairness_md(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_No fairness records._"
    header = ["Model", "Dataset", "Attribute", "Metric", "Per group [95% CI] (n)", "Gap [projection 95% CI]",
              "p (no gap, permutation)", "Worst group", "EOD [projection 95% CI]"]
    out = []
    for r in rows:
        groups = "; ".join(f"{g}: {_fmt(d.get('value'))} [{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}] "
                           f"(n={d.get('n')})" for g, d in r["groups"].items())
        eod = "" if r["eod"] is None else f"{_fmt(r['eod'])} [{_fmt(r['eod_ci'][0])}, {_fmt(r['eod_ci'][1])}]"
        out.append([r["model"], labels.dataset(r["dataset"]), r["attribute"], labels.metric(r["metric"]), groups,
                    f"{_fmt(r['gap'])} [{_fmt(r['gap_ci'][0])}, {_fmt(r['gap_ci'][1])}]",
                    _fmt(r["p_value"]), f"{r['worst_group']}: {_fmt(r['worst'])}" if r["worst_group"] else "", eod])
    return _md_table(header, out) + ("\n\nGaps are never ranked or marked best: a small gap can come from a uniformly "
                                     "poor model. Intervals: projection of simultaneous max-t intervals (valid at a "
                                     "true gap of 0); p: permutation test of the group labels.")


def _problems_md(left_out: list[dict[str, str]], problems: list[dict[str, str]]) -> str:
    lines = []
    if problems:
        lines.append(f"### Unreadable or malformed records ({len(problems)}) -- not on the board")
        lines += [f"- `{p['path']}`: {p['reason']} → {p['fix']}" for p in problems]
    if left_out:
        lines.append(f"### Left out ({len(left_out)})")
        lines += [f"- {x['record']} ({x['source']}): {x['reason']}" for x in left_out]
    return "\n".join(lines) if lines else "_Nothing left out; every record was readable._"


def _references_md(rows: list[dict[str, Any]], doc: dict[str, Any] | None) -> str:
    if doc is None:
        return ""
    if not rows:
        return (f"_Reference table {doc.get('version')}: no published numbers for these models/datasets yet "
                "(see dermbench/report/references.json)._")
    header = ["Model", "Task", "Dataset", "Split (source)", "n", "Metric", "Published", "Measured [95% CI]",
              "Verdict", "Source"]
    out = []
    for r in rows:
        pub = _fmt(r["value"]) + (f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r.get("ci_low") is not None else "")
        mea = "–" if r["measured"] is None else f"{_fmt(r['measured'])} [{_fmt(r['measured_ci'][0])}, {_fmt(r['measured_ci'][1])}]"
        out.append([r["model"], r["task"], labels.dataset(r["dataset"]), r["split"], str(r["n"]), labels.metric(r["metric"]),
                    pub, mea, f"{r['verdict']}: {r['why']}", r["source"]])
    return _md_table(header, out)


def to_markdown(boards: dict[str, Any]) -> str:
    parts = ["## Main board (one primary metric per task and dataset)", "",
             _board_md(boards["main"], boards["order"], boards["meta"], boards["ranks"], with_meta=True), ""]
    for task in sorted({c.task for c in boards["detail"]}):
        cols = [c for c in boards["detail"] if c.task == task]
        parts += [f"## Detail: {labels.task(task)}", "", _board_md(cols, boards["order"], boards["meta"]), ""]
    if boards["calibration"]:
        parts += ["## Calibration (Brier is the headline; ECE shown, not ranked)", "",
                  _board_md(boards["calibration"], boards["order"], boards["meta"]), ""]
    parts += ["## Fairness", "", _fairness_md(boards["fairness"]), ""]
    ref = _references_md(boards["references"], boards["reference_doc"])
    if ref:
        parts += ["## Published reference numbers", "", ref, ""]
    parts += ["## Left out / unreadable", "", _problems_md(boards["left_out"], boards["problems"]), "",
              "## Notes", ""] + [f"- {n}" for n in boards["notes"]]
    return "\n".join(parts) + "\n"


def _entry_json(e: Entry) -> dict[str, Any]:
    d = {k: getattr(e, k) for k in ("value", "ci_low", "ci_high", "best", "p", "p_adj", "ns", "unpaired", "rank",
                                     "rank_low", "rank_high", "p_rank1", "split_hash", "config_hash", "n", "n_boot",
                                     "seeds", "seed_mean", "seed_sd", "n_excluded", "sources", "note")}
    d["n_seeds"] = e.n_seeds
    d["seed"] = min(e.seeds) if e.seeds else None
    d["tie"] = e.ns  # old name
    return d


def _col_json(c: Column) -> dict[str, Any]:
    return {"key": c.key, "label": c.label, "board": c.board, "task": c.task, "dataset": c.dataset, "metric": c.metric,
            "higher_is_better": c.higher_is_better, "ranked": c.ranked, "best": c.best, "family_size": c.family_size,
            "min_p": c.min_p, "min_p_adj": c.min_p_adj, "note": c.note}


def to_json(boards: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    main = boards["main"]
    return {
        "settings": settings,
        "notes": boards["notes"],
        "columns": [_col_json(c) for c in main],
        "rows": [
            {"model": m, **boards["meta"][m], **boards["ranks"].get(m, {}),
             "cells": {c.key: _entry_json(e) for c in main if (e := c.entries.get(m)) is not None}}
            for m in boards["order"]
        ],
        "detail": [{**_col_json(c), "cells": {m: _entry_json(e) for m, e in c.entries.items()}} for c in boards["detail"]],
        "calibration": [{**_col_json(c), "cells": {m: _entry_json(e) for m, e in c.entries.items()}}
                        for c in boards["calibration"]],
        "fairness": boards["fairness"],
        "references": {"version": (boards["reference_doc"] or {}).get("version"), "rows": boards["references"]},
        "left_out": boards["left_out"],
        "problems": boards["problems"],
    }


def to_csv(boards: dict[str, Any]) -> str:
    """Long format: one row per (board, column, model)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["board", "task", "dataset", "metric", "label", "model", "value", "ci_low", "ci_high", "best",
                "p_vs_best", "p_holm", "ns_vs_best", "unpaired", "rank", "rank_low", "rank_high", "p_rank1",
                "n_seeds", "seed_sd", "family_size", "split_hash", "config_hash"])
    for c in boards["main"] + boards["detail"] + boards["calibration"]:
        for m in boards["order"]:
            e = c.entries.get(m)
            if e is None:
                continue
            row = [c.board, c.task, c.dataset, c.metric, c.label, m, e.value, e.ci_low, e.ci_high, e.best, e.p,
                   e.p_adj, e.ns, e.unpaired, e.rank, e.rank_low, e.rank_high, e.p_rank1, e.n_seeds, e.seed_sd,
                   c.family_size, e.split_hash, e.config_hash]
            w.writerow(["" if x is None else x for x in row])
    for p in boards["problems"]:
        w.writerow(["unreadable", "", "", "", p["reason"], p["path"]] + [""] * 17)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Plots


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_")[:80] or "x"


def make_plots(columns: list[Column], models: list[str], out: Path) -> list[Path]:
    """Main-board bar charts with CI whiskers (one panel per column of a dataset) and a model x column heatmap
    coloured by within-column standing (1 = best, direction-aware)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "dermbench"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def save(fig, stem: str) -> None:
        for ext in ("png", "svg"):
            p = out / f"{_slug(stem)}.{ext}"
            fig.savefig(p, dpi=110, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
            files.append(p)
        plt.close(fig)

    by_ds: dict[str, list[Column]] = {}
    for c in columns:
        by_ds.setdefault(c.dataset, []).append(c)
    for dataset, cols in by_ds.items():
        fig, axes = plt.subplots(1, len(cols), figsize=(max(3.2 * len(cols), 4), 0.45 * len(models) + 1.6),
                                 squeeze=False, sharey=True)
        ys = np.arange(len(models))
        for ax, c in zip(axes[0], cols):
            ent = [c.entries.get(m) for m in models]
            vals = np.array([np.nan if e is None or e.value is None else e.value for e in ent])
            lo = np.array([0 if e is None or e.ci_low is None or e.value is None else e.value - e.ci_low for e in ent])
            hi = np.array([0 if e is None or e.ci_high is None or e.value is None else e.ci_high - e.value for e in ent])
            colors = ["#2e7d32" if e is not None and e.best else "#81c784" if e is not None and e.ns else "#90a4ae"
                      for e in ent]
            ax.barh(ys, np.nan_to_num(vals), xerr=[np.clip(lo, 0, None), np.clip(hi, 0, None)], color=colors,
                    capsize=3, ecolor="#333")
            ax.set_yticks(ys, models)
            ax.set_title(f"{labels.task(c.task)} · {labels.metric(c.metric)} {'↑' if c.higher_is_better else '↓'}",
                         fontsize=9)
            ax.grid(axis="x", alpha=0.3)
        axes[0][0].invert_yaxis()
        fig.suptitle(f"{labels.dataset(dataset)}: primary metrics (95% CI; dark: best, light: n.s. vs best)",
                     fontsize=10, y=1.03)
        save(fig, f"bar_{dataset}")
    if columns and models:
        M = np.full((len(models), len(columns)), np.nan)
        G = np.full_like(M, np.nan)
        for j, c in enumerate(columns):
            v = np.array([c.entries[m].value if m in c.entries and c.entries[m].value is not None else np.nan
                          for m in models])
            M[:, j] = v
            if np.isfinite(v).any():
                lo_, hi_ = np.nanmin(v), np.nanmax(v)
                g = (v - lo_) / (hi_ - lo_) if hi_ > lo_ else np.where(np.isfinite(v), 1.0, np.nan)
                G[:, j] = g if c.higher_is_better else 1 - g
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(columns) + 2.5), 0.5 * len(models) + 2.2))
        ax.imshow(np.ma.masked_invalid(G), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(columns)), [c.label.replace(" · ", "\n") for c in columns], fontsize=7)
        ax.set_yticks(range(len(models)), models)
        for i in range(len(models)):
            for j in range(len(columns)):
                if np.isfinite(M[i, j]):
                    ax.text(j, i, f"{M[i, j]:.3f}", ha="center", va="center", fontsize=7,
                            color="white" if G[i, j] < 0.5 else "black")
        ax.set_title("main board (colour: standing within column, 1 = best)", fontsize=10)
        save(fig, "heatmap")
    return files


# --------------------------------------------------------------------------------------------------
# README of a published folder


def _readme(boards: dict[str, Any], groups: list[Group], settings: dict[str, Any], files: list[Path], out: Path) -> str:
    lines = [
        "# dermbench leaderboard",
        "",
        "How to read it:",
        "",
        "1. **Main board** (`leaderboard.md` / the HTML's Main tab): one column per task and dataset with that task's "
        "primary metric, value [95% CI]; **bold** = best point estimate, `n.s.` = not shown to differ from the best "
        "(paired test, Holm within the column) -- not \"equivalent\"; `†` = other split, not tested.",
        "2. **Overall rank** = mean of the per-column ranks, with its 95% bootstrap interval and P(rank 1); "
        "overlapping intervals mean the order is not settled.",
        "3. **Detail** and **Calibration** tabs hold every secondary metric (Brier is the calibration headline; ECE is "
        "shown, not ranked); **Fairness** shows per-group values, gaps with intervals valid at 0 and permutation p "
        "(a small gap is never \"best\").",
        "4. Seeds: `(seeds: mean ± SD, k)` cells pool k training seeds with a two-level interval; records are pooled "
        "only with identical config and split hashes.",
        "5. Anything unreadable or left out is listed under **Left out / unreadable** below and in every file; "
        "method details: docs/statistics.md.",
        "",
        "Generated from stored result records only, by `dermbench leaderboard` "
        f"(settings: `{json.dumps(settings)}`). The published dermsynth board is regenerated with `make leaderboard`.",
        "",
        "## Provenance of every cell",
        "",
        "| task | dataset | model | seeds | config hash | split hash | n test | weights | git | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in sorted(groups, key=lambda g: (g.task, g.dataset, g.model)):
        r = g.records[0]
        prov = r.provenance or {}
        srcs = sorted({s for ss in g.sources.values() for s in ss})
        lines.append(
            f"| {g.task} | {g.dataset} | {g.model} | {', '.join(str(x.seed) for x in g.records)} | {g.config_hash[:12]} | "
            f"{g.split_hash} | {r.split.get('n', '')} | {r.model_info.get('weights_id') or 'n/a'}"
            f"{' (random init)' if r.model_info.get('random_init') else ''} | {str(prov.get('git', 'unknown'))[:12]} | "
            f"{'; '.join(srcs)} |"
        )
    lines += ["", "## Left out / unreadable", "", _problems_md(boards["left_out"], boards["problems"])]
    lines += ["", "## Files", ""] + [f"- `{Path(f).relative_to(out) if Path(f).is_relative_to(out) else f}`" for f in files]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Public API


def _default_n_boot(groups: list[Group]) -> int:
    c = Counter()
    for g in groups:
        for r in g.records:
            for m in r.metrics.values():
                if isinstance(m, dict) and isinstance(m.get("n_boot"), int) and m["n_boot"] > 0:
                    c[m["n_boot"]] += 1
                    break
    return c.most_common(1)[0][0] if c else N_BOOT


def build(
    results: Path | str | Sequence[Path | str],
    *,
    tasks: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    ci: str = "percentile",
    correction: str = "holm",
    commercial_only: bool = False,
    n_boot: int | None = None,
    references: Path | str | None = None,
) -> dict[str, Any]:
    """All boards as Python objects (columns with entries, overall ranks, fairness rows, left-out records)."""
    if ci not in stats.CI_METHODS:
        raise DermbenchError(f"unknown CI method {ci!r}; choose one of {', '.join(stats.CI_METHODS)}")
    if correction not in ("holm", "bh", "none"):
        raise DermbenchError(f"unknown correction {correction!r}; choose holm, bh or none")
    if n_boot is not None and n_boot < 1:
        raise DermbenchError(f"--n-boot must be >= 1, got {n_boot}")
    dirs = [results] if isinstance(results, (str, Path)) else list(results)
    groups, left_out, problems = gather(dirs, tasks=tasks, datasets=datasets, models=models,
                                        commercial_only=commercial_only)
    B = n_boot or _default_n_boot(groups)
    scorer = _Scorer(B, ci)
    main, detail, calib, dup_notes = _build_columns(groups, scorer)
    for c in main + detail + calib:
        _test_column(c, correction)
        rr = _rank_column(c)
        if c.board == "main":
            c._rep_ranks = rr  # type: ignore[attr-defined]
    ranks = _overall(main)
    meta = _model_meta(groups)
    _audit_overlap(meta, groups, dirs)
    for m in {m for c in detail + calib for m in c.entries}:
        ranks.setdefault(m, {"mean_rank": None, "rank_low": None, "rank_high": None, "p_rank1": None, "n_columns": 0})
    order = _row_order(meta, ranks)
    ref_doc = None
    ref_rows: list[dict[str, Any]] = []
    from dermbench.report import references as refs

    ref_doc = refs.load(references)
    cells = {(m, c.task, c.dataset, c.metric): {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high}
             for c in detail for m, e in c.entries.items()}
    split_names = {(g.model, g.task, g.dataset): str(g.records[0].split.get("name", "")) for g in groups}
    ref_rows = refs.match(ref_doc, cells, split_names)
    notes = _notes(ci, correction, main + detail + calib, B) + dup_notes
    if problems:
        notes.append(f"**{len(problems)} unreadable or malformed record(s)** were left out; see 'Left out / unreadable'.")
    return {"main": main, "detail": detail, "calibration": calib, "fairness": _fairness_rows(groups, scorer),
            "ranks": ranks, "meta": meta, "order": order, "notes": notes, "left_out": left_out, "problems": problems,
            "references": ref_rows, "reference_doc": ref_doc, "groups": groups, "n_boot": B}


def build_leaderboard(
    results_dir: Path | str | Sequence[Path | str],
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
    n_boot: int | None = None,
    references: Path | str | None = None,
) -> dict[str, Any]:
    """Build the boards from records under ``results_dir`` (one folder or several, merged); write ``formats``
    (+ plots, README) into ``out`` only.

    Returns ``{"table": <markdown>, "files": [paths written], "data": <the json document>, "problems": [...]}``;
    ``problems`` lists unreadable/malformed records (also written into every output file).
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise DermbenchError(f"unknown leaderboard format(s) {bad}; choose from {', '.join(FORMATS)}")
    boards = build(results_dir, tasks=tasks, datasets=datasets, models=models, ci=ci, correction=correction,
                   commercial_only=commercial_only, n_boot=n_boot, references=references)
    dirs = [results_dir] if isinstance(results_dir, (str, Path)) else list(results_dir)
    settings = {"results": [str(d) for d in dirs], "ci": ci, "correction": correction, "alpha": ALPHA,
                "n_boot": boards["n_boot"], "commercial_only": commercial_only,
                "tasks": list(tasks) if tasks else "all", "datasets": list(datasets) if datasets else "all",
                "models": list(models) if models else "all"}
    table = to_markdown(boards)
    data = to_json(boards, settings)
    files: list[Path] = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plot_files: list[Path] = []
        if plots:
            plot_files = make_plots(boards["main"], boards["order"], out / "plots")
            # plugin sections (hook register_report_sections): fairness per-group, label-efficiency curves
            from dermbench.plugins import report_sections

            plot_files += report_sections([r for g in boards["groups"] for r in g.records], out / "plots")
        if "md" in formats:
            (out / "leaderboard.md").write_text("# dermbench leaderboard\n\n" + table)
            files.append(out / "leaderboard.md")
        if "csv" in formats:
            (out / "leaderboard.csv").write_text(to_csv(boards))
            files.append(out / "leaderboard.csv")
        if "json" in formats:
            (out / "leaderboard.json").write_text(json.dumps(data, indent=1, allow_nan=False, default=_json_default))
            files.append(out / "leaderboard.json")
        if "html" in formats:
            from dermbench.report.html import render

            imgs = [p for p in plot_files if p.suffix == ".png"]
            (out / "leaderboard.html").write_text(render(boards, settings, imgs))
            files.append(out / "leaderboard.html")
        files += plot_files
        (out / "README.md").write_text(_readme(boards, boards["groups"], settings, files, out))
        files.append(out / "README.md")
    return {"table": table, "files": [str(f) for f in files], "data": data, "problems": boards["problems"],
            "left_out": boards["left_out"]}


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def compare(
    results_dir: Path | str | Sequence[Path | str],
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
    """Paired comparison of two models' records on identical resamples: per metric diff (a - b), its CI and a
    two-sided p-value, adjusted together across metrics (``correction``). Only records with one config hash and
    split hash per model are pooled (seed means with the two-level bootstrap when several seeds exist);
    ``seed`` restricts both models to that training seed. Left-out records are listed in ``left_out``."""
    if test not in stats.TESTS:
        raise DermbenchError(f"unknown test {test!r}; choose one of {', '.join(stats.TESTS)}")
    dirs = [results_dir] if isinstance(results_dir, (str, Path)) else list(results_dir)
    groups, left_out, problems = gather(dirs, tasks=[task], datasets=[dataset], models=None)
    by_model = {g.model: g for g in groups}
    for m in (model_a, model_b):
        if m not in by_model:
            raise DermbenchError(
                f"no result for model={m!r} task={task!r} dataset={dataset!r} under {', '.join(map(str, dirs))}; run "
                f"`dermbench run --model {m} --task {task} --dataset {dataset} --out {dirs[0]}` first"
            )
    ga, gb = by_model[model_a], by_model[model_b]
    if seed is not None:
        for g in (ga, gb):
            g.records = [r for r in g.records if r.seed == seed]
            if not g.records:
                raise DermbenchError(f"{g.model}/{task}/{dataset} has no record with seed {seed}")
    if ga.split_hash != gb.split_hash:
        raise DermbenchError(
            f"{model_a} and {model_b} were scored on different splits of {dataset} (split hash {ga.split_hash} vs "
            f"{gb.split_hash}); a paired comparison needs the same split: re-run both with the same dataset options "
            "and --split-seed"
        )
    names = [metric] if metric else [m for m in ga.records[0].metrics if m in gb.records[0].metrics]
    if metric and metric not in ga.records[0].metrics and not metric.startswith("mean:"):
        raise DermbenchError(f"record {model_a}/{task}/{dataset} has no metric {metric!r}; it has "
                             f"{sorted(ga.records[0].metrics)}")
    B = _default_n_boot([ga, gb])
    scorer = _Scorer(B, ci)
    results = []
    for mname in names:
        try:
            stats.get_metric(mname)
        except DermbenchError as e:
            if metric:
                raise
            results.append({"metric": mname, "diff": None, "p_value": None, "note": f"not compared: {e}"})
            continue
        ea, eb = scorer.entry(ga, mname), scorer.entry(gb, mname)
        if ea is None or eb is None or ea.value is None or eb.value is None or ea.reps is None or eb.reps is None:
            note = (ea.note if ea is not None and ea.value is None else eb.note if eb is not None else "missing")
            results.append({"metric": mname, "diff": None, "p_value": None, "note": note})
            continue
        ok = np.ones(ea.reps.shape, bool)
        for e in (ea, eb):
            if e.valid is not None:
                ok &= e.valid
        try:
            if ea.pool is not None or eb.pool is not None:
                r = {**stats.paired_seed_test(_as_pool(ea), _as_pool(eb)), "value_a": ea.value, "value_b": eb.value,
                     "label": "two-level (test sample x seed) paired t-test of seed means"}
            else:
                r = stats.paired_from_replicates(ea.reps, eb.reps, ea.value, eb.value, test=test, ci=ci, exclude=~ok)
        except stats.UndefinedMetric as e:
            results.append({"metric": mname, "diff": None, "p_value": None, "note": str(e)})
            continue
        r.update(metric=mname, n=ea.n, higher_is_better=stats.get_metric(mname).higher_is_better,
                 seeds_a=ea.seeds, seeds_b=eb.seeds)
        results.append(r)
    adj = stats.correct([r.get("p_value") for r in results], correction)
    for r, p in zip(results, adj):
        r["p_adj"] = p
    return {
        "model_a": model_a, "model_b": model_b, "task": task, "dataset": dataset,
        "seeds_a": [r.seed for r in ga.records], "seeds_b": [r.seed for r in gb.records],
        "seed": min(r.seed for r in ga.records), "config_hash_a": ga.config_hash, "config_hash_b": gb.config_hash,
        "split_hash": ga.split_hash, "test": test, "ci": ci, "n_boot": B,
        "correction": correction if len(results) > 1 else "none",
        "comparisons": results, "left_out": left_out, "problems": problems,
    }
