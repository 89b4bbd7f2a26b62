"""kNN retrieval on frozen features: cosine similarity, k nearest training images, majority vote (DermINO).

With ``train_fraction`` or ``shots`` the gallery is a seeded label subset (``draws`` per setting) and the
label-efficiency curve goes into ``extra['label_efficiency']`` (see label_efficiency.py).
"""

from __future__ import annotations

from dermbench import hookimpl
from dermbench.api import TaskInfo, TaskOutput
from dermbench_plugins.tasks._classification import (
    CLASSIFICATION_METRICS, calibration_artifacts, check_train_classes, labelled, n_classes, predictions,
)
from dermbench_plugins.tasks.label_efficiency import CURVE_DEFAULTS, CURVE_KEY, curve_output, parse_settings

INFO = TaskInfo(
    name="retrieval",
    description="cosine kNN on frozen embeddings, k=5 majority vote; scores = vote fractions (DermINO protocol); "
    "train_fraction=[...] / shots=[...] with draws=N give a label-efficiency curve",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLASSIFICATION_METRICS,
    primary_metric="auroc_macro",
    defaults={"k": 5, "train_split": "train", "test_split": "test", **CURVE_DEFAULTS},
)


def knn_predict(train_x, train_y, test_x, k: int, n_cls: int, chunk: int = 1024):
    """Vote fractions (n, C) and predictions; ties between classes go to the larger summed similarity."""
    import numpy as np

    def norm(a):
        a = np.asarray(a, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    tr, te = norm(train_x), norm(test_x)
    k = min(k, len(tr))
    votes = np.zeros((len(te), n_cls), dtype=np.float64)
    simsum = np.zeros((len(te), n_cls), dtype=np.float64)
    for lo in range(0, len(te), chunk):
        sims = te[lo : lo + chunk] @ tr.T
        # stable order: highest similarity first, ties by training index
        idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        lab = train_y[idx]
        rows = np.arange(len(idx))[:, None]
        np.add.at(votes[lo : lo + chunk], (rows, lab), 1.0)
        np.add.at(simsum[lo : lo + chunk], (rows, lab), top)
    scores = votes / k
    # argmax of votes, then of summed similarity (|simsum| <= k, so it only breaks ties)
    key = votes * 1e6 + simsum
    y_pred = key.argmax(axis=1)
    return scores, y_pred


class Retrieval:
    info = INFO

    def __init__(self, k: int = 5, train_split: str = "train", test_split: str = "test", train_fraction=None,
                 shots=None, draws: int = 5, curve_boot=None, reach=None):
        self.k, self.train_split, self.test_split = int(k), train_split, test_split
        self.settings = parse_settings(train_fraction, shots, "retrieval")
        self.draws, self.reach = int(draws), reach
        self.curve_boot = int(curve_boot) if curve_boot is not None else None

    def run(self, ctx) -> TaskOutput:
        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        xtr, xte = ctx.features(train), ctx.features(test)
        extra: dict = {"k": self.k, "n_train": len(train)}
        if self.settings:
            curve, scores, y_pred = curve_output(
                ctx, train, test, ytr, yte, lambda pos: knn_predict(xtr[pos], ytr[pos], xte, self.k, C),
                self.settings, draws=self.draws, n_boot=self.curve_boot, metrics=CLASSIFICATION_METRICS,
                reach=self.reach)
            extra[CURVE_KEY] = curve
        else:
            scores, y_pred = knn_predict(xtr, ytr, xte, self.k, C)
        arts = calibration_artifacts(ctx, yte, scores)
        return TaskOutput(predictions(test, yte, scores, y_pred), list(CLASSIFICATION_METRICS), test,
                          extra=extra, artifacts=arts)


@hookimpl
def register_tasks(register):
    register(INFO, Retrieval)
