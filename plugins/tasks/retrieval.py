"""kNN retrieval on frozen features: cosine similarity, k nearest training images, majority vote (DermINO).

With ``train_fraction`` or ``shots`` the gallery is a seeded label subset (``draws`` per setting) and the
label-efficiency curve goes into ``extra['label_efficiency']`` (see label_efficiency/curves.py).
"""

from __future__ import annotations

from dermbench import hookimpl
from dermbench.api import DermbenchError, TaskInfo, TaskOutput
from dermbench_plugins.tasks._shared.classification import (
    CLASSIFICATION_METRICS, calibration_artifacts, check_train_classes, labelled, n_classes, predictions,
)
from dermbench_plugins.tasks.label_efficiency.curves import CURVE_DEFAULTS, CURVE_KEY, curve_output, parse_settings

INFO = TaskInfo(
    name="retrieval",
    description="cosine kNN on frozen embeddings, k=5 majority vote; scores = vote fractions (DermINO protocol); "
    "train_fraction=[...] / shots=[...] with draws=N give a label-efficiency curve; tie_break=similarity|lowest "
    "(class ties in the vote: larger summed similarity, or the lowest label as scikit-learn / the DermINO authors)",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLASSIFICATION_METRICS,
    primary_metric="auroc_macro",
    defaults={"k": 5, "train_split": "train", "test_split": "test", "index": "exact", "tie_break": "similarity",
              **CURVE_DEFAULTS},
    option_ranges={"tie_break": frozenset({"similarity", "lowest"}), "k": (1, None), "draws": (1, None)},
    # the DermINO authors score sklearn KNeighborsClassifier(5): same neighbours and vote fractions, ties ->
    # lowest label; PanDerm reports no kNN, so its preset keeps dermbench's default
    protocols={"dermino": {"tie_break": "lowest"}, "panderm": {}},
)


INDEXES = ("exact", "torch", "faiss-exact", "faiss-hnsw")


def _unit(a):
    import numpy as np

    a = np.asarray(a, dtype=np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _order(idx, top):
    """Sort each row's k neighbours by similarity (descending), ties by training index: the reference order."""
    import numpy as np

    o = np.argsort(idx, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, o, 1), np.take_along_axis(top, o, 1)
    o = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(idx, o, 1), np.take_along_axis(top, o, 1)


def topk_exact(sims, k: int):
    """The first k columns of ``argsort(-sims, kind='stable')`` per row, in O(n) per row instead of O(n log n).

    argpartition finds the k-th largest value t; a row where exactly k entries are >= t has its set fixed.
    Rows with ties at t (duplicates, quantised features) take the > t entries plus the lowest-index == t ones,
    and rows holding NaN fall back to the stable sort, so the neighbours are exactly the reference's.
    """
    import numpy as np

    m, n = sims.shape
    if k >= n or k == 0:
        idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(sims, idx, 1)
    idx = np.argpartition(sims, n - k, axis=1)[:, n - k :]  # NaN sorts last, i.e. into this block
    top = np.take_along_axis(sims, idx, 1)
    thr = top.min(axis=1)  # NaN when the row holds NaN
    nan = np.isnan(thr)
    tie = (np.count_nonzero(sims >= thr[:, None], axis=1) != k) & ~nan
    if tie.any():
        r = np.flatnonzero(tie)
        s, t = sims[r], thr[r][:, None]
        gt, eq = s > t, s == t
        need = k - np.count_nonzero(gt, axis=1)
        sel = gt | (eq & (np.cumsum(eq, axis=1) <= need[:, None]))
        cols = np.nonzero(sel)[1].reshape(len(r), k)
        idx[r], top[r] = cols, np.take_along_axis(s, cols, 1)
    if nan.any():
        r = np.flatnonzero(nan)
        cols = np.argsort(-sims[r], axis=1, kind="stable")[:, :k]
        idx[r], top[r] = cols, np.take_along_axis(sims[r], cols, 1)
    return _order(idx, top)


def _topk_torch(s, k: int):
    """torch twin of topk_exact for one chunk on the accelerator; returns numpy (idx, top) in reference order."""
    import torch

    top, idx = torch.topk(s, k, dim=1)
    thr = top[:, -1]
    nan = torch.isnan(s).any(dim=1)
    tie = ((s >= thr[:, None]).sum(dim=1) != k) & ~nan
    if bool(tie.any()):
        r = torch.nonzero(tie).flatten()
        sr, t = s[r], thr[r][:, None]
        gt, eq = sr > t, sr == t
        need = k - gt.sum(dim=1)
        sel = gt | (eq & (torch.cumsum(eq.int(), dim=1) <= need[:, None]))
        cols = torch.nonzero(sel)[:, 1].reshape(len(r), k)
        idx[r], top[r] = cols, torch.gather(sr, 1, cols)
    if bool(nan.any()):
        r = torch.nonzero(nan).flatten()
        cols = torch.sort(-s[r], dim=1, stable=True).indices[:, :k]
        idx[r], top[r] = cols, torch.gather(s[r], 1, cols)
    return _order(idx.cpu().numpy().astype("int64"), top.float().cpu().numpy())


def knn_search(tr, te, k: int, index: str = "exact", chunk: int = 1024, device: str = "cpu",
               hnsw_m: int = 32, ef_search: int = 128):
    """(idx, sims) of the k nearest unit-norm training rows for each test row, most similar first.

    ``exact`` (default): numpy matmul + partial selection, identical to a stable full sort (ties by training index).
    ``torch``: the same rule on ``device`` (e.g. CUDA); similarities may differ from numpy in the last bit.
    ``faiss-exact``: faiss IndexFlatIP, exact inner product (ties at the k-th place may resolve differently).
    ``faiss-hnsw``: faiss HNSW graph, approximate; for banks >= 1e5 where exact search is too slow.
    """
    import numpy as np

    # a chunk's similarity block plus argpartition's int64 index block cost 12 bytes per (query, bank) pair:
    # past a 32k-row bank keep them near 400 MB (row-block size does not change the matmul's bits, >= 64 rows)
    chunk = max(64, min(chunk, (1 << 25) // max(1, len(tr))))
    if index == "exact":
        parts = [topk_exact(te[lo : lo + chunk] @ tr.T, k) for lo in range(0, len(te), chunk)]
    elif index == "torch":
        import torch

        T = torch.from_numpy(np.ascontiguousarray(tr)).to(device)
        with torch.inference_mode():
            parts = [_topk_torch(torch.from_numpy(np.ascontiguousarray(te[lo : lo + chunk])).to(device) @ T.T, k)
                     for lo in range(0, len(te), chunk)]
    elif index in ("faiss-exact", "faiss-hnsw"):
        try:
            import faiss
        except ImportError:
            raise DermbenchError(f"retrieval index={index!r} needs faiss: pip install 'dermbench[index]' "
                                 "(faiss-cpu), or use index=exact") from None
        d = tr.shape[1]
        if index == "faiss-exact":
            ix = faiss.IndexFlatIP(d)
        else:
            ix = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            ix.hnsw.efSearch = max(int(ef_search), k)
        ix.add(np.ascontiguousarray(tr))
        top, idx = ix.search(np.ascontiguousarray(te), k)
        if (idx < 0).any():
            raise DermbenchError(f"retrieval index={index!r} found fewer than k={k} neighbours for "
                                 f"{int((idx < 0).any(axis=1).sum())} test rows: raise ef_search or use index=exact")
        parts = [_order(idx.astype(np.int64), top.astype(np.float32))]
    else:
        raise DermbenchError(f"retrieval index={index!r} is unknown: use one of {', '.join(INDEXES)}")
    if not parts:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def knn_predict(train_x, train_y, test_x, k: int, n_cls: int, chunk: int = 1024, index: str = "exact",
                device: str = "cpu", tie_break: str = "similarity"):
    """Vote fractions (n, C) and predictions; ties between classes go to the larger summed similarity
    (``tie_break='lowest'``: to the lowest label, scikit-learn's rule).

    Neighbours: highest cosine similarity first, ties by training index (see ``knn_search`` for backends).
    """
    import numpy as np

    tr, te = _unit(train_x), _unit(test_x)
    k = min(k, len(tr))
    idx, top = knn_search(tr, te, k, index=index, chunk=chunk, device=device)
    lab = np.asarray(train_y)[idx]
    votes = np.zeros((len(te), n_cls), dtype=np.float64)
    simsum = np.zeros((len(te), n_cls), dtype=np.float64)
    rows = np.arange(len(te))
    for j in range(k):  # column by column = np.add.at's order: bit-identical sums
        votes[rows, lab[:, j]] += 1.0
        simsum[rows, lab[:, j]] += top[:, j]
    scores = votes / k
    if tie_break == "lowest":
        return scores, votes.argmax(axis=1)  # first maximal class = lowest label
    # argmax of votes, then of summed similarity (|simsum| <= k, so it only breaks ties)
    key = votes * 1e6 + simsum
    y_pred = key.argmax(axis=1)
    return scores, y_pred


class Retrieval:
    info = INFO

    def __init__(self, k: int = 5, train_split: str = "train", test_split: str = "test", train_fraction=None,
                 shots=None, draws: int = 5, curve_boot=None, reach=None, index: str = "exact",
                 tie_break: str = "similarity"):
        self.k, self.train_split, self.test_split = int(k), train_split, test_split
        if tie_break not in ("similarity", "lowest"):
            raise DermbenchError(f"retrieval.tie_break={tie_break!r}: use similarity (default) or lowest "
                                 "(scikit-learn's / the DermINO authors' rule)")
        self.tie_break = tie_break
        if index not in INDEXES:
            raise DermbenchError(f"retrieval.index={index!r} is unknown: use one of {', '.join(INDEXES)} "
                                 "(exact is the default; faiss-hnsw is approximate)")
        self.index = index
        self.settings = parse_settings(train_fraction, shots, "retrieval")
        self.draws, self.reach = int(draws), reach
        self.curve_boot = int(curve_boot) if curve_boot is not None else None

    def run(self, ctx) -> TaskOutput:
        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        xtr, xte = ctx.features(train), ctx.features(test)
        # the record says which search ran: only faiss-hnsw is approximate
        extra: dict = {"k": self.k, "n_train": len(train), "index": self.index,
                       "index_exact": self.index != "faiss-hnsw", "tie_break": self.tie_break}
        if self.index == "torch":
            extra["index_device"] = str(ctx.device)
        knn = dict(index=self.index, device=ctx.device, tie_break=self.tie_break)
        if self.settings:
            curve, scores, y_pred = curve_output(
                ctx, train, test, ytr, yte, lambda pos: knn_predict(xtr[pos], ytr[pos], xte, self.k, C, **knn),
                self.settings, draws=self.draws, n_boot=self.curve_boot, metrics=CLASSIFICATION_METRICS,
                reach=self.reach)
            extra[CURVE_KEY] = curve
        else:
            scores, y_pred = knn_predict(xtr, ytr, xte, self.k, C, **knn)
        arts = calibration_artifacts(ctx, yte, scores)
        from dermbench.api import operating_point_names  # binary results: clinical operating points (issue 18)

        return TaskOutput(predictions(test, yte, scores, y_pred), list(CLASSIFICATION_METRICS)
                          + operating_point_names(C), test, extra=extra, artifacts=arts)


@hookimpl
def register_tasks(register):
    register(INFO, Retrieval)
