"""kNN retrieval on frozen features: cosine similarity, k nearest training images, majority vote (DermINO)."""

from __future__ import annotations

from dermbench import hookimpl
from dermbench.api import TaskInfo, TaskOutput
from dermbench_plugins.tasks._classification import CLS_METRICS, check_train_classes, labelled, n_classes, predictions

INFO = TaskInfo(
    name="retrieval",
    description="cosine kNN on frozen embeddings, k=5 majority vote; scores = vote fractions (DermINO protocol)",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLS_METRICS,
    primary_metric="auroc_macro",
    defaults={"k": 5, "train_split": "train", "test_split": "test"},
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

    def __init__(self, k: int = 5, train_split: str = "train", test_split: str = "test"):
        self.k, self.train_split, self.test_split = int(k), train_split, test_split

    def run(self, ctx) -> TaskOutput:
        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        xtr, xte = ctx.features(train), ctx.features(test)
        scores, y_pred = knn_predict(xtr, ytr, xte, self.k, C)
        return TaskOutput(predictions(test, yte, scores, y_pred), list(CLS_METRICS), test,
                          extra={"k": self.k, "n_train": len(train)})


@hookimpl
def register_tasks(register):
    register(INFO, Retrieval)
