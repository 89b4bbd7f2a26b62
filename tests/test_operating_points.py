"""Operating-point metrics equal scikit-learn on the full split and on bootstrap replicates; thresholds and DCA."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_curve

from dermbench import stats
from dermbench.api import DermbenchError
from dermbench.operating_points import (
    OP_METRICS, add_operating_points, choose_threshold, decision_curve_plot, net_benefit, operating_point_metric,
    out_of_fold,
)


def _ref(y, s):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"sens@spec95": tpr[fpr <= 0.05].max(), "sens@spec90": tpr[fpr <= 0.10].max(),
            "spec@sens95": 1 - fpr[tpr >= 0.95].min(), "spec@sens90": 1 - fpr[tpr >= 0.90].min(),
            "auprc": average_precision_score(y, s)}


@pytest.mark.parametrize("trial", range(3))
def test_curve_metrics_equal_sklearn_on_split_and_replicates(trial):
    rng = np.random.default_rng(trial)
    n = 150
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(y * 1.2, 1, n), 1)  # rounded: many ties
    p = stats.prepare({"ids": [str(i) for i in range(n)], "y_true": y, "scores": np.stack([1 - s, s], 1)})
    ref = _ref(y, s)
    idx = rng.integers(0, n, (5, n))
    W = np.stack([np.bincount(r, minlength=n) for r in idx])
    for name, v in ref.items():
        m = operating_point_metric(name)
        assert m.weighted(p, np.ones((1, n), dtype=np.int64))[0][0] == pytest.approx(v, abs=1e-12), name
        got = m.weighted(p, W)[0]
        for b in range(len(idx)):
            assert got[b] == pytest.approx(_ref(y[idx[b]], s[idx[b]])[name], abs=1e-12), (name, b)


def test_op_arrays_multiclass_and_ignored_samples():
    rng = np.random.default_rng(5)
    n = 90
    y = rng.integers(0, 3, n)
    scores = rng.dirichlet(np.ones(3), n)
    pred = {"ids": [str(i) for i in range(n)], "y_true": y, "scores": scores}
    with pytest.raises(stats.UndefinedMetric, match="needs a binary result: this one has 3 classes"):
        stats.point(pred, "sens@spec95")
    op_y = np.where(y == 2, -1, (y == 1).astype(int))  # class 2 is 'uncertain': ignored
    add_operating_points(pred, op_y, scores[:, 1], threshold=0.4)
    keep = op_y >= 0
    assert stats.point(pred, "auprc") == pytest.approx(average_precision_score(op_y[keep], scores[keep, 1]))
    sens = ((scores[:, 1] >= 0.4) & (op_y == 1)).sum() / (op_y == 1).sum()
    spec = ((scores[:, 1] < 0.4) & (op_y == 0)).sum() / (op_y == 0).sum()
    assert stats.point(pred, "sens@thr") == pytest.approx(sens) and stats.point(pred, "spec@thr") == pytest.approx(spec)
    # scored with CIs and compared like any metric (resolved through the transfer plugin's register_metrics hook)
    out = stats.score(pred, list(OP_METRICS), split_hash="op-test", n_boot=300)
    for m in OP_METRICS:
        assert out[m]["ci_low"] <= out[m]["value"] <= out[m]["ci_high"], m
    other = dict(pred, op_score=scores[:, 0])
    t = stats.paired_test(pred, other, "sens@spec95", split_hash="op-test", n_boot=300)
    assert t["diff"] == pytest.approx(stats.point(pred, "sens@spec95") - stats.point(other, "sens@spec95"))


def test_threshold_rules_and_one_class_error():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert choose_threshold(y, s, "youden") == 0.7  # tpr .75, fpr 0 -> J = .75 (0.4: tpr 1, fpr .25 -> .75 tie, first)
    assert choose_threshold(y, s, "sens95") == 0.4
    assert choose_threshold(y, s, "spec95") == 0.7
    with pytest.raises(DermbenchError, match="single class .*0 positive, 4 negative"):
        choose_threshold(y[:4], s[:4], "youden", where="the training split of ph2")
    with pytest.raises(DermbenchError, match="unknown threshold rule 'f1'"):
        choose_threshold(y, s, "f1")


def test_out_of_fold_and_decision_curve(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    oof = out_of_fold(lambda xtr, ytr, xte: xte[:, 0], X, y, folds=5)
    assert np.allclose(oof, X[:, 0])
    nb = net_benefit(y, 1 / (1 + np.exp(-4 * X[:, 0])), [0.1, 0.5])
    prev = y.mean()
    assert nb["treat_all"][0] == pytest.approx(prev - (1 - prev) * 0.1 / 0.9)
    pred = 1 / (1 + np.exp(-4 * X[:, 0])) >= 0.5
    assert nb["model"][1] == pytest.approx(((pred & (y == 1)).sum() - (pred & (y == 0)).sum()) / 60)
    path = decision_curve_plot(y, 1 / (1 + np.exp(-4 * X[:, 0])), tmp_path / "dca.png")
    assert (tmp_path / "dca.png").stat().st_size > 5000 and path.endswith("dca.png")
