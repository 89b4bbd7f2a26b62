"""Clinical operating points of a binary (or malignant-axis) result, as bootstrap-able metrics.

Why: AUROC says nothing about the point a clinician would use. These metrics answer "how many melanomas does
it catch when it clears 95 % of benign lesions" and "how many benign lesions does it refer to catch 95 % of
melanomas", with the same resamples as every other metric, so they get CIs, paired tests and leaderboard
columns like AUROC does.

Inputs (per-sample arrays in the task's predictions):

* ``op_y`` (0/1; -1 = not on the axis, ignored) and ``op_score`` (higher = more likely positive). Without
  them a two-class result uses ``y_true`` and ``scores[:, 1]``; a multi-class result without them is
  undefined (the task must say which classes are positive, e.g. through the vocabulary's malignancy axis).
* ``op_pred`` (0/1): the decision at a threshold chosen on the training split (:func:`choose_threshold`
  on out-of-fold training scores) and applied unchanged to the test split.

Metric names: ``sens@spec90``, ``sens@spec95`` (best sensitivity with specificity >= 90/95 %, thresholds at
observed scores, no interpolation), ``spec@sens90``, ``spec@sens95``, ``auprc`` (average precision, equal to
scikit-learn's ``average_precision_score``), ``sens@thr`` and ``spec@thr`` (at the training-chosen threshold).
Each is computed for all bootstrap replicates at once from cumulative sums over the samples sorted once by
score (O(B n)), exactly as on the full split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dermbench.api import DermbenchError

#: threshold-free operating points: every binary result can list them (probe, retrieval, transfer)
OP_CURVE_METRICS = ("sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95", "auprc")
OP_METRICS = ("sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95", "auprc", "sens@thr", "spec@thr")
THRESHOLD_RULES = ("youden", "sens90", "sens95", "spec90", "spec95")
_BLOCK_BYTES = 32 << 20


def _binary(p: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(op_y in {0,1,-1}, op_score) from prepared predictions (dermbench.stats.Prepared)."""
    if "op_y" in p.raw:
        y = p.array("op_y", metric).astype(np.int64).reshape(-1)
        s = p.array("op_score", metric).reshape(-1)
        return y, s
    from dermbench import stats

    s = p.scores(metric)
    if s.shape[1] != 2:
        raise stats.UndefinedMetric(
            f"{metric} needs a binary result: this one has {s.shape[1]} classes and no op_y/op_score "
            "(use a <dataset>:malignant or :mel-vs-nev view, or a task that fills op_y/op_score)"
        )
    return p.array("y_true", metric), s[:, 1]


def _curve_plan(p: Any, metric: str) -> dict[str, Any]:
    key = ("op_curve", metric)
    if key in p.cache:
        return p.cache[key]
    y, s = _binary(p, metric)
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])  # last position of each tied score group
    plan = {"order": order, "pos": (y[order] == 1).astype(np.int64), "neg": (y[order] == 0).astype(np.int64),
            "ends": ends}
    p.cache[key] = plan
    return plan


def _rates(plan: dict[str, Any], W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of W: cumulative TP and FP at each distinct threshold (descending), and totals P, N."""
    Wo = np.take(W, plan["order"], axis=1).astype(np.int64)
    TP = np.cumsum(Wo * plan["pos"], axis=1)[:, plan["ends"]]
    FP = np.cumsum(Wo * plan["neg"], axis=1)[:, plan["ends"]]
    return TP, FP, TP[:, -1].astype(float), FP[:, -1].astype(float)


def _blocks(k: int, n: int):
    rows = max(1, min(k, _BLOCK_BYTES // (8 * 3 * max(n, 1))))
    for a in range(0, k, rows):
        yield slice(a, min(k, a + rows))


def _curve_metric(name: str, fn) -> Any:
    from dermbench import stats

    def weighted(p: Any, W: np.ndarray) -> tuple[np.ndarray, None]:
        plan = _curve_plan(p, name)
        out = np.full(W.shape[0], np.nan)
        for sl in _blocks(W.shape[0], p.n):
            TP, FP, P, N = _rates(plan, W[sl])
            ok = (P > 0) & (N > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[sl] = np.where(ok, fn(TP, FP, np.maximum(P, 1)[:, None], np.maximum(N, 1)[:, None]), np.nan)
        return out, None

    def jackknife(p: Any) -> tuple[np.ndarray, None]:
        vals = np.empty(p.n)
        for sl in _blocks(p.n, p.n):
            W = np.ones((sl.stop - sl.start, p.n), dtype=np.int64)
            W[np.arange(sl.stop - sl.start), np.arange(sl.start, sl.stop)] = 0
            vals[sl] = weighted(p, W)[0]
        return vals, None

    return stats.Metric(name, ("y_true", "scores"), weighted, jackknife, higher_is_better=True,
                        description=DESCRIPTIONS[name], reference=REFERENCES.get(name, ""))


def _sens_at_spec(spec: float):
    def f(TP, FP, P, N):
        ok = FP / N <= (1 - spec) + 1e-12  # monotone in the threshold index: a prefix
        cnt = ok.sum(axis=1)
        tpr = TP / P
        pick = np.take_along_axis(tpr, np.maximum(cnt - 1, 0)[:, None], axis=1)[:, 0]
        return np.where(cnt > 0, pick, 0.0)

    return f


def _spec_at_sens(sens: float):
    def f(TP, FP, P, N):
        first = ((TP / P) < sens - 1e-12).sum(axis=1)  # first threshold reaching the sensitivity
        fpr = np.take_along_axis(FP / N, np.minimum(first, FP.shape[1] - 1)[:, None], axis=1)[:, 0]
        return 1.0 - fpr

    return f


def _auprc(TP, FP, P, N):
    R = TP / P
    prec = np.divide(TP, TP + FP, out=np.zeros(TP.shape), where=(TP + FP) > 0)
    dR = np.diff(np.concatenate([np.zeros((R.shape[0], 1)), R], axis=1), axis=1)
    return (dR * prec).sum(axis=1)


DESCRIPTIONS = {
    "sens@spec90": "sensitivity at the threshold with the highest sensitivity whose specificity is >= 90%",
    "sens@spec95": "sensitivity at the threshold with the highest sensitivity whose specificity is >= 95%",
    "spec@sens90": "specificity at the threshold with the highest specificity whose sensitivity is >= 90%",
    "spec@sens95": "specificity at the threshold with the highest specificity whose sensitivity is >= 95%",
    "auprc": "area under the precision-recall curve (average precision, step interpolation)",
    "sens@thr": "sensitivity at the threshold chosen on out-of-fold training scores (op_pred)",
    "spec@thr": "specificity at the threshold chosen on out-of-fold training scores (op_pred)",
}
REFERENCES = {
    "auprc": "sklearn average_precision_score(op_y, op_score)",
    "sens@spec90": "max tpr over sklearn roc_curve(drop_intermediate=False) points with fpr <= 0.10",
    "sens@spec95": "max tpr over sklearn roc_curve(drop_intermediate=False) points with fpr <= 0.05",
    "spec@sens90": "1 - min fpr over sklearn roc_curve(drop_intermediate=False) points with tpr >= 0.90",
    "spec@sens95": "1 - min fpr over sklearn roc_curve(drop_intermediate=False) points with tpr >= 0.95",
}


def _thr_metric(name: str, positive: int) -> Any:
    from dermbench import stats

    def feats(p: Any) -> np.ndarray:
        key = ("op_thr", name)
        if key not in p.cache:
            y, _ = _binary(p, name) if "op_y" in p.raw else (p.array("y_true", name), None)
            if "op_pred" not in p.raw:
                raise stats.UndefinedMetric(f"{name} needs predictions['op_pred'] (decisions at a training-chosen "
                                            "threshold); this task does not produce them")
            d = p.array("op_pred", name).reshape(-1)
            sel = (y == positive).astype(float)
            hit = sel * ((d >= 0.5) == bool(positive))
            p.cache[key] = np.stack([sel, hit], axis=1)
        return p.cache[key]

    def weighted(p: Any, W: np.ndarray) -> tuple[np.ndarray, None]:
        S = W.astype(np.float64) @ feats(p)
        return np.divide(S[:, 1], S[:, 0], out=np.full(W.shape[0], np.nan), where=S[:, 0] > 0), None

    def jackknife(p: Any) -> tuple[np.ndarray, None]:
        F = feats(p)
        S = F.sum(axis=0)[None, :] - F
        return np.divide(S[:, 1], S[:, 0], out=np.full(p.n, np.nan), where=S[:, 0] > 0), None

    return stats.Metric(name, ("op_pred",), weighted, jackknife, higher_is_better=True,
                        description=DESCRIPTIONS[name])


def operating_point_names(n_classes: int) -> list[str]:
    """The threshold-free operating-point metrics a task with ``n_classes`` classes should list (binary only)."""
    return list(OP_CURVE_METRICS) if int(n_classes) == 2 else []


def operating_point_metric(name: str) -> Any:
    """The ``dermbench.stats.Metric`` for an operating-point name, or None (a ``register_metrics`` resolver)."""
    if name not in OP_METRICS:
        return None
    if name == "auprc":
        return _curve_metric(name, _auprc)
    if name.startswith("sens@spec"):
        return _curve_metric(name, _sens_at_spec(int(name[-2:]) / 100))
    if name.startswith("spec@sens"):
        return _curve_metric(name, _spec_at_sens(int(name[-2:]) / 100))
    return _thr_metric(name, 1 if name == "sens@thr" else 0)


# --------------------------------------------------------------------------------------------------
# Choosing the threshold on training data; decision curves


def choose_threshold(y: Any, score: Any, rule: str = "youden", *, where: str = "the training split") -> float:
    """The score threshold (predict positive when score >= threshold) picked by ``rule`` on (y, score).

    ``youden``: max sensitivity + specificity - 1; ``sensXX``: highest threshold with sensitivity >= XX %;
    ``specXX``: lowest threshold with specificity >= XX %. One class in ``y`` is a clear error.
    """
    if rule not in THRESHOLD_RULES:
        raise DermbenchError(f"unknown threshold rule {rule!r}; valid rules: {', '.join(THRESHOLD_RULES)}")
    y = np.asarray(y).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    keep = y >= 0
    y, s = y[keep], s[keep]
    P, N = int((y == 1).sum()), int((y == 0).sum())
    if P == 0 or N == 0:
        raise DermbenchError(
            f"cannot choose an operating threshold on {where}: it has a single class "
            f"({P} positive, {N} negative samples); use a split holding both classes (e.g. more training data "
            "or another --task-opt <task>.threshold_split)"
        )
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    tpr = np.cumsum(yy == 1)[ends] / P
    fpr = np.cumsum(yy == 0)[ends] / N
    thr = ss[ends]
    if rule == "youden":
        j = int(np.argmax(tpr - fpr))
    elif rule.startswith("sens"):
        j = int(np.argmax(tpr >= int(rule[4:]) / 100 - 1e-12))
    else:
        ok = np.flatnonzero(fpr <= 1 - int(rule[4:]) / 100 + 1e-12)
        j = int(ok[-1]) if ok.size else 0
    return float(thr[j])


def net_benefit(y: Any, prob: Any, thresholds: Any) -> dict[str, np.ndarray]:
    """Decision-curve net benefit (Vickers & Elkin 2006): TP/n - FP/n * pt/(1-pt), with treat-all and none."""
    y = np.asarray(y).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    keep = y >= 0
    y, p = y[keep], p[keep]
    n = max(len(y), 1)
    pts = np.asarray(thresholds, dtype=np.float64)
    w = pts / (1 - pts)
    pred = p[None, :] >= pts[:, None]
    tp = (pred & (y[None, :] == 1)).sum(axis=1) / n
    fp = (pred & (y[None, :] == 0)).sum(axis=1) / n
    prev = float((y == 1).mean()) if len(y) else 0.0
    return {"threshold": pts, "model": tp - fp * w, "treat_all": prev - (1 - prev) * w, "treat_none": np.zeros_like(pts)}


def decision_curve_plot(y: Any, prob: Any, path: Any, title: str = "", thresholds: Any = None) -> str:
    """PNG of the decision curve (net benefit vs threshold probability) of one binary result."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = np.linspace(0.01, 0.6, 60) if thresholds is None else np.asarray(thresholds)
    nb = net_benefit(y, prob, pts)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(pts, nb["model"], lw=2, label="model")
    ax.plot(pts, nb["treat_all"], "--", color="gray", label="treat all")
    ax.plot(pts, nb["treat_none"], ":", color="black", label="treat none")
    top = max(float(np.max(nb["model"])), float(np.max(nb["treat_all"])), 0.01)
    ax.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.05 * top - 0.01, top * 1.15),
           title=title or "decision curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def out_of_fold(fit_predict, X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold positive-class scores on the training rows, so a threshold is not chosen on memorised data.

    ``fit_predict(X_train, y_train, X_test) -> scores (n_test,)``; folds are stratified and seeded.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % folds
    out = np.zeros(len(y))
    for f in range(folds):
        te, tr = fold == f, fold != f
        if not te.any():
            continue
        if len(np.unique(y[tr])) < 2:
            raise DermbenchError(
                f"out-of-fold threshold selection: fold {f} leaves a single class to train on "
                f"({len(y)} training samples); use fewer folds or more training data"
            )
        out[te] = fit_predict(X[tr], y[tr], X[te])
    return out


def add_operating_points(predictions: dict[str, Any], y_bin: Any, score: Any, threshold: float) -> dict[str, Any]:
    """Add op_y / op_score / op_pred to a task's predictions (in place) and return them."""
    y_bin = np.asarray(y_bin).astype(np.int64)
    score = np.asarray(score, dtype=np.float64)
    predictions["op_y"] = y_bin
    predictions["op_score"] = score
    predictions["op_pred"] = (score >= threshold).astype(np.int64)
    return predictions
