"""Subgroup statistics: per-group metrics, gaps, worst group, equalized odds, and tests of gaps.

Why a module of its own: fairness numbers are only trustworthy when every group metric of a bootstrap
replicate comes from the *same* resample of the test split. Then a gap (max - min over groups) has a CI,
and two models' gaps can be compared with a paired test, exactly like any other metric.

How it works
------------
Group labels travel with the predictions as ``predictions["group:<attribute>"]`` (one string per sample,
``None`` where unknown; intersections such as ``fitzpatrick+sex`` hold ``"3|female"``), and the minimum
group size as ``predictions["fairness_min_group_size"]``. Every metric of :mod:`dermbench.stats` is a
function of a multiplicity matrix ``W`` (B, n); group g's metric in replicate b is that function at
``W[b] * [sample in g]``. A replicate therefore draws from the whole split (group sizes vary between
replicates, as they do when a new test set is sampled) and every group is scored on that same draw.

Metric names (resolved by :func:`fairness_metric`, so the runner, the leaderboard and
``api.paired_test`` handle them like built-in metrics):

* ``gap:<metric>@<attr>``   max - min of ``<metric>`` over the scored groups (lower is better);
* ``worst:<metric>@<attr>`` the worst group's value (min for higher-is-better metrics, max for ECE/Brier);
* ``eod@<attr>``            equalized-odds difference. For each class c (binary: the positive class only),
  TPR_c(g) = P(pred=c | y=c, g) and FPR_c(g) = P(pred=c | y!=c, g); EOD_c = max(TPR gap, FPR gap) over the
  groups (Fairlearn's definition); multiclass: macro mean of EOD_c over the classes one-vs-rest.

Groups smaller than the minimum size (on the test split) and samples without the attribute are not scored
(reported as "too small" / "unknown"). A replicate in which any scored group's metric is undefined (e.g.
binary AUROC with one class drawn) is excluded from the CI and counted in ``n_invalid``.

Tests
-----
* :func:`gap_test` -- "is there a gap at all?": a permutation test of H0 "the metric does not depend on the
  group" (group labels exchangeable). Statistic: the gap; p = (1 + #{gap_perm >= gap_obs}) / (1 + n_perm).
  Exact level under H0 (unlike a bootstrap test of a max - min statistic, which is biased away from 0).
* :func:`paired_gap_test` -- "is model A's gap smaller than B's?": the difference of the two gaps on
  identical resamples (same split hash and seed), via ``api.paired_test``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from dermbench import api
from dermbench.api import N_BOOT, DermbenchError

__all__ = [
    "GROUP_PREFIX",
    "MIN_SIZE_KEY",
    "SEP",
    "group_key",
    "metric_name",
    "parse_name",
    "fairness_metric",
    "is_fairness_metric",
    "encode_groups",
    "group_values",
    "group_table",
    "equalized_odds",
    "gap_test",
    "paired_gap_test",
]

GROUP_PREFIX = "group:"
MIN_SIZE_KEY = "fairness_min_group_size"
#: joins the labels of an intersectional group ("3|female")
SEP = "|"
KINDS = ("gap", "worst", "eod")


def group_key(attribute: str) -> str:
    return GROUP_PREFIX + attribute


def metric_name(kind: str, attribute: str, metric: str | None = None) -> str:
    """``gap:auroc_macro@fitzpatrick``, ``worst:ece@sex``, ``eod@age``."""
    if kind == "eod":
        return f"eod@{attribute}"
    if kind not in ("gap", "worst") or not metric:
        raise DermbenchError(f"fairness metric kind {kind!r}: use gap or worst with a metric, or eod")
    return f"{kind}:{metric}@{attribute}"


def parse_name(name: str) -> tuple[str, str | None, str]:
    """(kind, base metric or None, attribute) of a fairness metric name."""
    if "@" not in name:
        raise DermbenchError(f"{name!r} is not a fairness metric (expected gap:<metric>@<attr>, worst:..., eod@<attr>)")
    head, attr = name.rsplit("@", 1)
    if head == "eod":
        return "eod", None, attr
    kind, _, metric = head.partition(":")
    if kind not in ("gap", "worst") or not metric or not attr:
        raise DermbenchError(
            f"bad fairness metric name {name!r}; expected gap:<metric>@<attribute>, worst:<metric>@<attribute> "
            "or eod@<attribute> (e.g. gap:auroc_macro@fitzpatrick)"
        )
    return kind, metric, attr


def is_fairness_metric(name: str) -> bool:
    return name.startswith(("gap:", "worst:", "eod@")) and "@" in name


# --------------------------------------------------------------------------------------------------
# Groups


def encode_groups(labels: Sequence[Any], min_size: int) -> tuple[np.ndarray, list[str], dict[str, int], int]:
    """Codes (n,) (-1: unknown or too small), scored group names (sorted), sizes of every group, #unknown."""
    lab = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in labels]
    sizes: dict[str, int] = {}
    for v in lab:
        if v:
            sizes[v] = sizes.get(v, 0) + 1
    scored = sorted((g for g, c in sizes.items() if c >= min_size), key=_natural)
    pos = {g: i for i, g in enumerate(scored)}
    codes = np.array([pos.get(v, -1) for v in lab], dtype=np.int64)
    sizes = {g: sizes[g] for g in sorted(sizes, key=_natural)}
    return codes, scored, sizes, sum(1 for v in lab if not v)


def _natural(s: str) -> tuple:
    """'<40' < '40-<60' < '>=60'; '2' < '10'; plain strings alphabetically."""
    if s.startswith("<"):
        return (0, _num(s[1:]), s)
    if s.startswith(">"):
        return (2, _num(s.lstrip(">=")), s)
    return (1, _num(s.split("-")[0].split(SEP)[0]), s)


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.inf


def _groups(p: Any, attribute: str, what: str) -> tuple[np.ndarray, list[str], dict[str, int], int, int]:
    key = group_key(attribute)
    ck = ("fair-groups", attribute)
    if ck in p.cache:
        return p.cache[ck]
    if key not in p.raw:
        have = sorted(k[len(GROUP_PREFIX):] for k in p.raw if str(k).startswith(GROUP_PREFIX))
        raise DermbenchError(
            f"metric {what!r} needs predictions[{key!r}] (one group label per sample); these predictions have "
            f"group labels for {have or 'no attribute'} -- run the fairness task with attributes={attribute}"
        )
    labels = list(p.raw[key])
    if len(labels) != p.n:
        raise DermbenchError(f"predictions[{key!r}] has {len(labels)} entries but there are {p.n} ids")
    min_size = int(p.raw.get(MIN_SIZE_KEY, 1) or 1)
    codes, scored, sizes, unknown = encode_groups(labels, min_size)
    p.cache[ck] = (codes, scored, sizes, unknown, min_size)
    return p.cache[ck]


def _check_enough(p: Any, attribute: str, what: str) -> tuple[np.ndarray, list[str]]:
    codes, scored, sizes, unknown, min_size = _groups(p, attribute, what)
    if len(scored) < 2:
        raise api.UndefinedMetric(
            f"{what} is undefined: {attribute} has {len(scored)} group(s) with >= {min_size} test samples "
            f"(group sizes {sizes}, unknown {unknown}); a gap needs two. Lower min_group_size or use more data."
        )
    return codes, scored


def group_values(p: Any, metric: str, W: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """(k, rows) metric of each group g under weights ``W * [code == g]``; NaN where undefined."""
    m = api.get_metric(metric)
    W = np.asarray(W)
    out = np.full((k, W.shape[0]), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):  # a group drawn empty in a replicate: 0/0 -> NaN
        for g in range(k):
            mask = (codes == g).astype(W.dtype)
            out[g] = m.weighted(p, W * mask[None, :])[0]
    return out


# --------------------------------------------------------------------------------------------------
# Equalized odds


def _confusion_features(p: Any, what: str) -> np.ndarray:
    ck = ("fair-eod-F",)
    if ck not in p.cache:
        y, yp = p.array("y_true", what), p.y_pred(what)
        C = max(p.n_classes(what), int(yp.max(initial=0)) + 1, int(y.max(initial=0)) + 1)
        T = np.zeros((p.n, C))
        T[np.arange(p.n), y] = 1.0
        P = np.zeros((p.n, C))
        P[np.arange(p.n), yp] = 1.0
        p.cache[ck] = np.concatenate([np.ones((p.n, 1)), T, P, T * P], axis=1)
    return p.cache[ck]


def _rates(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TPR, FPR (rows, C) from sufficient statistics [n, T(C), P(C), TP(C)]; NaN where undefined."""
    C = (S.shape[1] - 1) // 3
    n, T, P, TP = S[:, :1], S[:, 1 : 1 + C], S[:, 1 + C : 1 + 2 * C], S[:, 1 + 2 * C :]
    neg = n - T
    tpr = np.divide(TP, T, out=np.full_like(T, np.nan), where=T > 0)
    fpr = np.divide(P - TP, neg, out=np.full_like(T, np.nan), where=neg > 0)
    return tpr, fpr


def equalized_odds(p: Any, W: np.ndarray, codes: np.ndarray, k: int, what: str = "eod") -> dict[str, np.ndarray]:
    """Per group TPR/FPR (k, rows, C), per class gaps (rows, C) and the macro EOD (rows,) for weights W."""
    F = _confusion_features(p, what)
    C = (F.shape[1] - 1) // 3
    tprs, fprs = [], []
    Wf = np.asarray(W, dtype=np.float64)
    for g in range(k):
        members = np.flatnonzero(codes == g)
        t, f = _rates(Wf[:, members] @ F[members])
        tprs.append(t)
        fprs.append(f)
    tpr, fpr = np.stack(tprs), np.stack(fprs)  # (k, rows, C)
    classes = [1] if C == 2 else list(range(C))

    def gap(a: np.ndarray) -> np.ndarray:
        ok = np.isfinite(a).sum(axis=0) >= 2
        fin = np.isfinite(a)
        hi, lo = np.where(fin, a, -np.inf).max(axis=0), np.where(fin, a, np.inf).min(axis=0)
        with np.errstate(invalid="ignore"):
            return np.where(ok, hi - lo, np.nan)

    tpr_gap, fpr_gap = gap(tpr[:, :, classes]), gap(fpr[:, :, classes])
    per_class = np.fmax(tpr_gap, fpr_gap)  # NaN only where both are undefined
    used = np.isfinite(per_class).sum(axis=1)
    with np.errstate(all="ignore"):
        eod = np.where(used > 0, np.nansum(per_class, axis=1) / np.maximum(used, 1), np.nan)
    return {"tpr": tpr, "fpr": fpr, "tpr_gap": tpr_gap, "fpr_gap": fpr_gap, "per_class": per_class,
            "eod": eod, "used": used, "classes": np.asarray(classes)}


# --------------------------------------------------------------------------------------------------
# Fairness metrics as api.Metric objects


def _reduce(kind: str, vals: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Gap / worst over groups (axis 0); NaN where any scored group is undefined."""
    bad = ~np.isfinite(vals).all(axis=0)
    v = np.where(np.isfinite(vals), vals, 0.0)
    if kind == "gap":
        r = v.max(axis=0) - v.min(axis=0)
    else:
        r = v.min(axis=0) if higher_is_better else v.max(axis=0)
    return np.where(bad, np.nan, r)


def _jackknife_via_weights(p: Any, weighted: Any) -> tuple[np.ndarray, None]:
    out = np.empty(p.n)
    rows = max(1, (1 << 22) // max(p.n, 1))
    for lo in range(0, p.n, rows):
        hi = min(p.n, lo + rows)
        W = np.ones((hi - lo, p.n), dtype=np.uint8)
        W[np.arange(hi - lo), np.arange(lo, hi)] = 0
        out[lo:hi] = weighted(p, W)[0]
    return out, None


def fairness_metric(name: str) -> api.Metric:
    """A :class:`dermbench.stats.Metric` for ``gap:<m>@<attr>``, ``worst:<m>@<attr>`` or ``eod@<attr>``."""
    kind, base, attr = parse_name(name)
    if kind == "eod":

        def weighted(p: Any, W: np.ndarray) -> tuple[np.ndarray, None]:
            codes, scored = _check_enough(p, attr, name)
            return equalized_odds(p, W, codes, len(scored), name)["eod"], None

        def interval(p: Any, W: np.ndarray, value: float, alpha: float) -> tuple[float, float, str]:
            codes, scored = _check_enough(p, attr, name)
            return eod_interval(p, W, codes, len(scored), alpha)

        return api.Metric(
            name, ("y_true", "y_pred", group_key(attr)), weighted, lambda p: _jackknife_via_weights(p, weighted),
            higher_is_better=False,
            description=f"equalized-odds difference over {attr} groups: max(TPR gap, FPR gap); multiclass: "
            "macro mean over classes one-vs-rest",
            extra={"bca": False, "interval": interval, "interval_name": "projection"},
        )
    bm = api.get_metric(base)  # type: ignore[arg-type]
    if is_fairness_metric(base):  # type: ignore[arg-type]
        raise DermbenchError(f"{name!r}: the base metric of a gap cannot itself be a fairness metric")

    def weighted(p: Any, W: np.ndarray) -> tuple[np.ndarray, None]:
        codes, scored = _check_enough(p, attr, name)
        vals = group_values(p, bm.name, W, codes, len(scored))
        return _reduce(kind, vals, bm.higher_is_better), None

    def interval(p: Any, W: np.ndarray, value: float, alpha: float) -> tuple[float, float, str]:
        codes, scored = _check_enough(p, attr, name)
        k = len(scored)
        pt = group_values(p, bm.name, np.ones((1, p.n), dtype=W.dtype), codes, k)[:, 0]
        R = group_values(p, bm.name, W, codes, k)
        if kind == "gap":
            lo, hi, note = api.projection_gap_interval(pt, R, alpha)
        else:
            lo, hi, note = api.projection_worst_interval(pt, R, higher_is_better=bm.higher_is_better, alpha=alpha)
        if bm.name in _UNIT_METRICS:  # values (and gaps) of these metrics lie in [0, 1]
            lo, hi = max(0.0, lo), min(1.0, hi)
        return lo, hi, note

    return api.Metric(
        name, bm.needs + (group_key(attr),), weighted, lambda p: _jackknife_via_weights(p, weighted),
        higher_is_better=False if kind == "gap" else bm.higher_is_better,
        description=(f"max - min of {bm.name} over {attr} groups" if kind == "gap"
                     else f"worst {attr} group's {bm.name}"),
        extra={"bca": False, "interval": interval, "interval_name": "projection"},
    )


_UNIT_METRICS = ("auroc_macro", "accuracy", "balanced_accuracy", "f1_macro", "ece", "brier", "dice", "jaccard")


def eod_interval(p: Any, W: np.ndarray, codes: np.ndarray, k: int, alpha: float) -> tuple[float, float, str]:
    """Equalized-odds interval valid at 0: simultaneous max-t intervals over every pairwise group difference
    of TPR_c and FPR_c (all classes in one family), projected per class onto max |D| and averaged."""
    ones = np.ones((1, p.n), dtype=np.asarray(W).dtype)
    e0, er = equalized_odds(p, ones, codes, k), equalized_odds(p, W, codes, k)
    cls = e0["classes"]
    i, j = np.triu_indices(k, 1)
    pts, reps, owner = [], [], []
    for ci, c in enumerate(cls):
        for rate in ("tpr", "fpr"):
            a0, ar = e0[rate][:, 0, c], er[rate][:, :, c]  # (k,), (k, B)
            pts.append(a0[i] - a0[j])
            reps.append(ar[i] - ar[j])
            owner += [ci] * i.size
    pt, R, owner_a = np.concatenate(pts), np.concatenate(reps), np.asarray(owner)
    lo, hi, c_ = api.simultaneous_intervals(pt, R, alpha)
    if not math.isfinite(c_):
        return math.nan, math.nan, "too few valid replicates for a projection interval"
    lows, highs = [], []
    for ci in range(len(cls)):
        sel = (owner_a == ci) & np.isfinite(lo) & np.isfinite(hi)
        if not sel.any():
            continue
        l_, h_ = lo[sel], hi[sel]
        low_abs = np.where((l_ <= 0) & (h_ >= 0), 0.0, np.minimum(np.abs(l_), np.abs(h_)))
        lows.append(float(low_abs.max()))
        highs.append(float(np.maximum(np.abs(l_), np.abs(h_)).max()))
    if not lows:
        return math.nan, math.nan, "equalized odds undefined in every class"
    # rates lie in [0, 1], so a rate difference never exceeds 1
    return float(np.mean(lows)), min(1.0, float(np.mean(highs))), (
        f"projection of simultaneous max-t intervals over {pt.size} pairwise TPR/FPR group differences (c={c_:.3g})")


# --------------------------------------------------------------------------------------------------
# Reports


def _ci(reps: np.ndarray, value: float, ci: str, alpha: float) -> dict[str, Any]:
    lo, hi, note = api.confidence_interval(reps, value, method="percentile" if ci == "bca" else ci, alpha=alpha)
    ok = math.isfinite(lo) and math.isfinite(hi)
    bad = int((~np.isfinite(reps)).sum())
    d = {"value": _f(value), "ci_low": lo if ok else None, "ci_high": hi if ok else None, "n_invalid": bad}
    if note:
        d["note"] = note
    return d


def _f(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def group_table(
    predictions: Any,
    attribute: str,
    metrics: Sequence[str],
    *,
    split_hash: str,
    seed: int,
    n_boot: int = N_BOOT,
    strata: Any = None,
    ci: str = "percentile",
    alpha: float = 0.05,
    n_perm: int = 1000,
    eod: bool = True,
) -> dict[str, Any]:
    """Everything about one attribute, JSON-able: per-group metrics with CIs (or "too small"), gaps and worst
    group with CIs and permutation p-values, equalized odds with per-group TPR/FPR. Resamples are the runner's
    (split hash, seed, n_boot, strata), so the numbers agree with the record's ``gap:...`` metrics."""
    p = api.prepare(predictions) if isinstance(predictions, dict) else predictions
    codes, scored, sizes, unknown, min_size = _groups(p, attribute, f"fairness on {attribute}")
    # the record's resamples: (split hash, fixed bootstrap seed, strata) -- never the training seed
    idx, _ = api.resamples_for(p, split_hash=split_hash, n_boot=n_boot, strata="auto" if strata is None else strata)
    W = idx.counts
    ones = np.ones((1, p.n), dtype=W.dtype)
    k = len(scored)
    out: dict[str, Any] = {
        "min_group_size": min_size,
        "unknown": unknown,
        "groups": {g: {"n": c, "status": "scored" if g in scored else f"too small (< {min_size})"}
                   for g, c in sizes.items()},
        "scored": list(scored),
        "gaps": {}, "worst": {},
    }
    if k == 0:
        out["note"] = f"no {attribute} group has >= {min_size} test samples"
        return out
    for metric in metrics:
        m = api.get_metric(metric)
        try:
            pt = group_values(p, metric, ones, codes, k)[:, 0]
        except DermbenchError as e:
            out.setdefault("errors", {})[metric] = str(e)
            continue
        reps = group_values(p, metric, W, codes, k)
        for g, name in enumerate(scored):
            out["groups"][name].setdefault("metrics", {})[metric] = _ci(reps[g], pt[g], ci, alpha)
        if k < 2:
            continue
        for kind, target in (("gap", out["gaps"]), ("worst", out["worst"])):
            v = float(_reduce(kind, pt[:, None], m.higher_is_better)[0])
            if kind == "gap":  # percentile/BCa of a max - min statistic do not cover a gap of 0: projection
                lo_, hi_, note_ = api.projection_gap_interval(pt, reps, alpha)
            else:
                lo_, hi_, note_ = api.projection_worst_interval(pt, reps, higher_is_better=m.higher_is_better,
                                                                alpha=alpha)
            if metric in _UNIT_METRICS:
                lo_, hi_ = max(0.0, lo_), min(1.0, hi_)
            target[metric] = {"value": _f(v), "ci_low": _f(lo_), "ci_high": _f(hi_), "ci_method": "projection",
                              "n_invalid": int((~np.isfinite(_reduce(kind, reps, m.higher_is_better))).sum()),
                              "note": note_}
            target[metric]["name"] = metric_name(kind, attribute, metric)
            if kind == "worst" and math.isfinite(v):
                target[metric]["group"] = scored[int(np.argmin(pt) if m.higher_is_better else np.argmax(pt))]
        if math.isfinite(out["gaps"][metric]["value"] or math.nan) and n_perm > 0:
            out["gaps"][metric].update(gap_test(p, attribute, metric, n_perm=n_perm, seed=seed))
    if eod and k >= 2 and "y_true" in p.raw and ("y_pred" in p.raw or "scores" in p.raw):
        e0 = equalized_odds(p, ones, codes, k)
        er = equalized_odds(p, W, codes, k)
        lo_, hi_, note_ = eod_interval(p, W, codes, k, alpha)
        d = {"value": _f(float(e0["eod"][0])), "ci_low": _f(lo_), "ci_high": _f(hi_), "ci_method": "projection",
             "n_invalid": int((~np.isfinite(er["eod"])).sum()), "note": note_}
        d["name"] = metric_name("eod", attribute)
        d["classes"] = e0["classes"].tolist()
        d["tpr_gap"] = [_f(v) for v in e0["tpr_gap"][0]]
        d["fpr_gap"] = [_f(v) for v in e0["fpr_gap"][0]]
        cls = e0["classes"]
        for g, name in enumerate(scored):
            out["groups"][name]["tpr"] = [_f(v) for v in e0["tpr"][g, 0, cls]]
            out["groups"][name]["fpr"] = [_f(v) for v in e0["fpr"][g, 0, cls]]
        out["equalized_odds"] = d
    return out


# --------------------------------------------------------------------------------------------------
# Tests


def gap_test(predictions: Any, attribute: str, metric: str, *, n_perm: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Permutation test of "no gap": shuffle the group labels of the scored samples ``n_perm`` times.

    Each permutation keeps the group sizes; a permuted group's metric is the base metric under 0/1 weights
    (vectorised over permutations). p = (1 + #{gap_perm >= gap_obs}) / (1 + n_valid). Permutations where
    some group's metric is undefined are dropped (``n_perm_invalid``).
    """
    p = api.prepare(predictions) if isinstance(predictions, dict) else predictions
    codes, scored = _check_enough(p, attribute, f"gap test of {metric} on {attribute}")
    m = api.get_metric(metric)
    k = len(scored)
    ones = np.ones((1, p.n), dtype=np.uint8)
    obs = float(_reduce("gap", group_values(p, metric, ones, codes, k), m.higher_is_better)[0])
    if not math.isfinite(obs):
        raise api.UndefinedMetric(f"gap of {metric} on {attribute} is undefined on the full split")
    members = np.flatnonzero(codes >= 0)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6A9, len(members), int(n_perm)]))
    perm_codes = np.full((n_perm, p.n), -1, dtype=np.int16 if k < 2**15 else np.int64)
    base = codes[members]
    for i in range(n_perm):
        perm_codes[i, members] = rng.permutation(base)
    vals = np.empty((k, n_perm))
    with np.errstate(invalid="ignore", divide="ignore"):
        for g in range(k):
            vals[g] = m.weighted(p, (perm_codes == g).astype(np.uint8))[0]
    null = _reduce("gap", vals, m.higher_is_better)
    ok = np.isfinite(null)
    nv = int(ok.sum())
    pval = (1 + int(np.count_nonzero(null[ok] >= obs - 1e-12))) / (1 + nv)
    return {"p_value": float(pval), "n_perm": int(n_perm), "n_perm_invalid": int(n_perm - nv),
            "test": "permutation test of group labels (H0: no dependence of the metric on the group)"}


def paired_gap_test(
    pred_a: dict[str, Any],
    pred_b: dict[str, Any],
    attribute: str,
    metric: str = "auroc_macro",
    *,
    kind: str = "gap",
    split_hash: str,
    seed: int | None = None,  # ignored: resamples come from (split hash, fixed bootstrap seed)
    n_boot: int = N_BOOT,
    strata: Any = "auto",
    test: str = "bootstrap",
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Is model A's ``kind`` (gap / worst / eod) on ``attribute`` different from model B's?

    Both are computed on identical resamples drawn from (split hash, seed); ``diff`` = A - B (negative: A's
    gap is smaller) with its CI and a two-sided paired bootstrap p-value (see ``api.paired_from_replicates``).
    The two prediction sets must carry the same group labels per sample id and the same minimum group size.
    """
    key = group_key(attribute)
    for nm, pr in (("A", pred_a), ("B", pred_b)):
        if key not in pr:
            raise DermbenchError(f"model {nm}'s predictions have no {key!r}; run the fairness task on both models")
    ga = dict(zip(map(str, pred_a["ids"]), pred_a[key]))
    gb = dict(zip(map(str, pred_b["ids"]), pred_b[key]))
    diff = [i for i in ga if i in gb and ga[i] != gb[i]]
    if diff:
        raise DermbenchError(
            f"the two models' {attribute} groups differ for {len(diff)} samples (e.g. {diff[:3]}); both must come "
            "from the same dataset and fairness options (fitzpatrick grouping, age bins)"
        )
    if pred_a.get(MIN_SIZE_KEY) != pred_b.get(MIN_SIZE_KEY):
        raise DermbenchError(
            f"min_group_size differs ({pred_a.get(MIN_SIZE_KEY)} vs {pred_b.get(MIN_SIZE_KEY)}); re-run one model "
            "with the other's min_group_size so both score the same groups"
        )
    name = metric_name(kind, attribute, None if kind == "eod" else metric)
    return api.paired_test(pred_a, pred_b, name, split_hash=split_hash, n_boot=n_boot,
                             test=test, strata=strata, alpha=alpha)
