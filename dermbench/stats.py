"""Bootstrap scoring, confidence intervals, paired tests and multiple-comparison correction.

Why this module exists: a leaderboard's "A beats B" is only as good as its statistics. Everything here is
pure numpy/scipy, vectorised over bootstrap replicates, and exact (equal to scikit-learn to 1e-9 on the
point estimate and on every replicate).

How replicates are computed
---------------------------
A bootstrap replicate is a multiset of sample positions. We turn the index matrix ``idx`` (B, n) into a
small-integer multiplicity matrix ``W`` (B, n) (``W[b, i]`` = how often sample i was drawn in replicate b;
:class:`Resamples` computes it once per split and shares it across metrics and models) and express every
metric as a function of ``W``, processed in cache-sized blocks of replicates:

* count/mean metrics (accuracy, balanced accuracy, macro F1, ECE, Brier, Dice, Jaccard, ``mean:<key>``) are
  ratios of sufficient statistics ``W @ F`` for a per-sample feature matrix ``F`` (one BLAS matmul for all
  replicates);
* macro AUROC is rank based: after one sort of the negatives per class, the Mann-Whitney numerator of a
  replicate is ``sum_pos w_i * (negative weight below s_i + half the tied negative weight)``, a cumulative sum
  over the sorted negatives gathered at precomputed ``searchsorted`` positions -- O(B n) per class, ties exact,
  in integer arithmetic (twice the numerator), so the only rounding is the final division.

The point estimate is the same function at ``W = 1`` and jackknife (leave-one-out) values, needed for BCa,
come in closed form, so no metric is ever computed twice by different code.

Replicate indices depend only on (split hash, the fixed bootstrap seed ``defaults.BOOTSTRAP_SEED``, n, n_boot,
strata) -- never on the model or its training seed -- so two models (and several training seeds of one model)
scored on the same split see identical resamples (paired) even when run months apart. Classification
resamples within classes by default (``strata="auto"``), so a replicate never loses a class of y_true.

Defined behaviour for bad or degenerate input (never a silent NaN)
------------------------------------------------------------------
* NaN/inf scores or per-sample values: :class:`DermbenchError` naming how many and which ids.
* Single-class test split: AUROC (and any metric undefined on the full split) is undefined; :func:`point`
  raises :class:`UndefinedMetric` and :func:`score` reports ``value=None`` with a note (other metrics of the
  record are kept).
* A class absent from the test split (AUROC) or from a replicate: macro averages run over the classes that
  are defined there (AUROC: classes with at least one positive and one negative; F1: classes in
  y_true or y_pred, as scikit-learn's default labels; balanced accuracy: classes in y_true, as scikit-learn).
  Replicates whose class set differs from the full split's are counted (``n_lost_class``) and excluded from
  the CI and from paired tests; replicates where the metric is undefined altogether (binary AUROC with one
  class drawn) are excluded and counted too (``n_undefined``); ``n_invalid`` is their sum.
* Mismatched sample ids between two models: :class:`DermbenchError` listing a few ids; the same ids in a
  different order are aligned to model A's order.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from dermbench.api import DermbenchError
from dermbench.defaults import ALPHA, BOOTSTRAP_SEED, CI_METHOD, N_BOOT

__all__ = [
    "METRICS",
    "CI_METHODS",
    "TESTS",
    "Metric",
    "UndefinedMetric",
    "bootstrap_indices",
    "Resamples",
    "get_metric",
    "replicates",
    "point",
    "prepare",
    "jackknife",
    "score",
    "evaluate",
    "resamples_for",
    "Scored",
    "Prepared",
    "confidence_interval",
    "bca_edge",
    "pool_seeds",
    "paired_seed_test",
    "bootstrap_models",
    "seed_draws",
    "simultaneous_intervals",
    "projection_gap_interval",
    "projection_worst_interval",
    "paired_test",
    "paired_from_replicates",
    "correct",
]

CI_METHODS = ("percentile", "bca", "paper")
TESTS = ("bootstrap", "paper-ttest")
ECE_BINS = 15
#: bytes of one temporary (rows, n) block: replicates are processed in row blocks that stay in the CPU cache
_BLOCK_BYTES = 1 << 20
_MATMUL_BLOCK_BYTES = 32 << 20


class UndefinedMetric(DermbenchError):
    """The metric is not defined on this data (e.g. AUROC on a single-class test split)."""


# --------------------------------------------------------------------------------------------------
# Bootstrap indices


def _strata_codes(strata: Any, n: int) -> np.ndarray:
    arr = np.asarray(strata)
    if arr.shape != (n,):
        raise DermbenchError(
            f"strata has shape {arr.shape}, expected ({n},) (one stratum label per sample); "
            "pass the test labels (y_true) or None for unstratified resampling"
        )
    _, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.reshape(-1)


def _rng_plan(split_hash: str, seed: int, n: int, n_boot: int, strata: Any) -> tuple[Any, list[np.ndarray] | None]:
    """The generator(s) behind a replicate matrix: one stream (unstratified), or one child stream per stratum.

    Every stream is consumed row by row, so drawing the matrix in row blocks gives exactly the same numbers as
    drawing it at once: a 100k-sample split never needs its (B, n) index matrix in memory."""
    if n <= 0:
        raise DermbenchError(f"cannot bootstrap an empty split (n={n}); the test split has no samples")
    if n_boot <= 0:
        raise DermbenchError(f"n_boot must be positive, got {n_boot}")
    key: dict[str, Any] = {"v": 1, "split": str(split_hash), "seed": int(seed), "n": int(n), "B": int(n_boot)}
    members = None
    if strata is not None:
        codes = _strata_codes(strata, n)
        key["strata"] = hashlib.sha256(codes.astype("<i8").tobytes()).hexdigest()
        key["v"] = 2  # v2: one child stream per stratum (row-blockable)
        members = [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1)]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).digest()
    ss = np.random.SeedSequence(int.from_bytes(digest[:16], "little"))
    if members is None:
        return np.random.default_rng(ss), None
    return [np.random.default_rng(c) for c in ss.spawn(len(members))], members


def _draw_rows(rngs: Any, members: list[np.ndarray] | None, n: int, rows: int) -> np.ndarray:
    if members is None:
        return rngs.integers(0, n, size=(rows, n), dtype=np.int64)
    return np.concatenate(
        [m[g.integers(0, m.size, size=(rows, m.size))] for g, m in zip(rngs, members)], axis=1
    )


def bootstrap_indices(
    split_hash: str, seed: int, n: int, n_boot: int = 1000, strata: Any = None
) -> np.ndarray:
    """(n_boot, n) resample positions derived only from (split_hash, seed, n, n_boot, strata).

    ``seed`` is the *bootstrap* seed (``dermbench.defaults.BOOTSTRAP_SEED`` everywhere in dermbench), never a
    training seed. With ``strata`` (e.g. labels) each replicate draws, with replacement, as many samples from
    each stratum as the stratum holds; columns are grouped by stratum (order is irrelevant to every metric).
    The generator is ``default_rng(SeedSequence(sha256(inputs)))``, so the matrix is identical on any machine
    and for any model. Large splits: use :meth:`Resamples.draw`, which never holds this matrix.
    """
    rngs, members = _rng_plan(split_hash, seed, n, n_boot, strata)
    return _draw_rows(rngs, members, n, n_boot)


class Resamples:
    """Bootstrap multiplicity matrix ``counts`` (B, n) -- ``counts[b, i]`` = how often sample i is drawn in
    replicate b, a small unsigned integer -- computed once and shared by every metric and every model scored
    on the same split.

    Build it from an index matrix (``Resamples(idx)``) or, for large splits, with :meth:`draw`, which
    generates the indices in row blocks and keeps only the uint8 counts (B·n bytes: 100 MB at n=100k,
    B=1000, instead of 800 MB of int64 indices)."""

    def __init__(self, idx: np.ndarray | None, n: int | None = None, *, counts: np.ndarray | None = None):
        if idx is None:
            if counts is None:
                raise DermbenchError("Resamples needs an index matrix or a counts matrix")
            self.idx = None
            self.n = int(counts.shape[1])
            self._counts: np.ndarray | None = counts
            self._B = int(counts.shape[0])
            return
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise DermbenchError(f"bootstrap indices must be a 2-D (n_boot, n) array, got shape {idx.shape}")
        self.idx = idx
        self.n = int(n if n is not None else idx.shape[1])
        self._B = int(idx.shape[0])
        self._counts = None

    @classmethod
    def draw(cls, split_hash: str, seed: int, n: int, n_boot: int = 1000, strata: Any = None,
             *, block_bytes: int = 64 << 20) -> "Resamples":
        """The same replicates as ``bootstrap_indices(...)``, drawn in row blocks straight into counts."""
        rngs, members = _rng_plan(split_hash, seed, n, n_boot, strata)
        out = np.zeros((n_boot, n), dtype=np.uint8)
        rows = max(1, block_bytes // (8 * n))
        for start in range(0, n_boot, rows):
            r = min(rows, n_boot - start)
            c = _counts_of(_draw_rows(rngs, members, n, r), n)
            if c.dtype != out.dtype:
                out = out.astype(c.dtype)
            out[start : start + r] = c
        return cls(None, counts=out)

    @property
    def n_boot(self) -> int:
        return self._B

    def check(self, n: int) -> None:
        if self.idx is None:
            if n != self.n:
                raise DermbenchError(
                    f"bootstrap resamples were drawn for n={self.n} but the predictions have n={n} samples; "
                    "draw them with Resamples.draw(split_hash, seed, n) for these predictions"
                )
            return
        if n != self.n or (self.idx.size and (self.idx.min() < 0 or self.idx.max() >= n)):
            raise DermbenchError(
                f"bootstrap indices were drawn for n={self.n} (max index {self.idx.max()}) but the predictions "
                f"have n={n} samples; draw them with bootstrap_indices(split_hash, seed, n) for these predictions"
            )

    @property
    def counts(self) -> np.ndarray:
        if self._counts is None:
            B, n = self._B, self.n
            out = np.empty((B, n), dtype=np.uint8)
            rows = max(1, (1 << 20) // max(n, 1))
            for start in range(0, B, rows):
                c = _counts_of(self.idx[start : start + rows], n)  # type: ignore[index]
                if c.dtype != out.dtype:
                    out = out.astype(c.dtype)
                out[start : start + c.shape[0]] = c
            self._counts = out
        return self._counts


def _counts_of(blk: np.ndarray, n: int) -> np.ndarray:
    r = blk.shape[0]
    c = np.bincount((blk + (np.arange(r, dtype=np.int64) * n)[:, None]).ravel(), minlength=r * n).reshape(r, n)
    return c.astype(np.uint8) if c.max(initial=0) <= 255 else c.astype(np.int32)


def _as_resamples(idx: Any, n: int) -> Resamples:
    rs = idx if isinstance(idx, Resamples) else Resamples(idx)
    rs.check(n)
    return rs


def _row_blocks(k: int, n: int, item_bytes: int, target: int = _BLOCK_BYTES) -> Any:
    """Row slices sized so a temporary (rows, n) array of ``item_bytes`` items has about ``target`` bytes."""
    rows = max(1, min(k, target // (item_bytes * max(n, 1))))
    for start in range(0, k, rows):
        yield slice(start, min(k, start + rows))


# --------------------------------------------------------------------------------------------------
# Validated predictions


class Prepared:
    """Predictions validated once, with per-metric precomputations cached (sort orders, features).

    Public (re-exported by ``dermbench.api``): a task that scores many metrics or replicate sets on the same
    predictions prepares them once."""

    def __init__(self, predictions: dict[str, Any]):
        if not isinstance(predictions, dict):
            raise DermbenchError(f"predictions must be a dict, got {type(predictions).__name__}")
        self.raw = predictions
        if "ids" in predictions:
            self.ids = [str(i) for i in predictions["ids"]]
            self.n = len(self.ids)
        else:
            lengths = [len(v) for k, v in predictions.items() if hasattr(v, "__len__") and not isinstance(v, str)]
            if not lengths:
                raise DermbenchError("predictions have no 'ids' and no per-sample arrays")
            self.n = lengths[0]
            self.ids = [str(i) for i in range(self.n)]
        self.cache: dict[Any, Any] = {}

    def _ids_where(self, mask: np.ndarray, limit: int = 5) -> str:
        bad = np.flatnonzero(mask)
        shown = ", ".join(self.ids[i] for i in bad[:limit])
        return shown + (", ..." if bad.size > limit else "")

    def array(self, key: str, metric: str) -> np.ndarray:
        if ("arr", key) in self.cache:
            return self.cache[("arr", key)]
        if key not in self.raw:
            raise DermbenchError(
                f"metric {metric!r} needs predictions[{key!r}], but the predictions only have "
                f"{sorted(self.raw)}; the task must return it (see dermbench.api.TaskOutput)"
            )
        arr = np.asarray(self.raw[key])
        if arr.shape[:1] != (self.n,):
            raise DermbenchError(
                f"predictions[{key!r}] has shape {arr.shape} but there are {self.n} ids; "
                "every per-sample array must have one entry per id"
            )
        if key in ("y_true", "y_pred"):
            if arr.ndim != 1:
                raise DermbenchError(f"predictions[{key!r}] must be a 1-D array of class indices, got shape {arr.shape}")
            try:
                f = arr.astype(float)
            except (TypeError, ValueError):
                f = np.array([np.nan if not isinstance(v, (int, float, np.number)) else float(v) for v in arr])
            bad = ~(np.isfinite(f) & (np.mod(f, 1) == 0)) if f.size else np.zeros(0, bool)
            if bad.any():
                raise DermbenchError(
                    f"predictions[{key!r}] must hold integer class indices; {int(bad.sum())} of {self.n} are "
                    f"missing or not integers (ids: {self._ids_where(bad)}, values: {arr[bad][:3].tolist()}); "
                    "drop unlabelled samples from the test split before scoring"
                )
            arr = arr.astype(np.int64)
            if arr.size and arr.min() < 0:
                raise DermbenchError(
                    f"predictions[{key!r}] has negative class {arr.min()} for ids {self._ids_where(arr < 0)}"
                )
        else:
            arr = arr.astype(np.float64)
            finite = np.isfinite(arr).reshape(self.n, -1).all(axis=1)
            if not finite.all():
                raise DermbenchError(
                    f"predictions[{key!r}] has NaN/inf for {int((~finite).sum())} of {self.n} samples "
                    f"(ids: {self._ids_where(~finite)}); the model or task produced non-finite outputs -- "
                    "fix them upstream (e.g. check the features and probe training) rather than dropping samples"
                )
        self.cache[("arr", key)] = arr
        return arr

    def scores(self, metric: str) -> np.ndarray:
        """(n, C) scores; a 1-D array is the positive-class score of a binary problem."""
        s = self.array("scores", metric)
        if s.ndim == 1:
            s = np.stack([1.0 - s, s], axis=1)
        if s.ndim != 2 or s.shape[1] < 2:
            raise DermbenchError(f"predictions['scores'] must be (n, C) with C >= 2, got shape {s.shape}")
        y = self.array("y_true", metric)
        if y.size and y.max() >= s.shape[1]:
            raise DermbenchError(
                f"predictions['y_true'] has class {y.max()} but scores have only {s.shape[1]} columns "
                f"(ids: {self._ids_where(y >= s.shape[1])}); scores need one column per class"
            )
        return s

    def y_pred(self, metric: str) -> np.ndarray:
        if "y_pred" in self.raw:
            return self.array("y_pred", metric)
        return self.scores(metric).argmax(axis=1)

    def n_classes(self, metric: str) -> int:
        if "scores" in self.raw:
            return self.scores(metric).shape[1]
        y, p = self.array("y_true", metric), self.y_pred(metric)
        return int(max(y.max(initial=0), p.max(initial=0))) + 1


#: deprecated private name, kept for plugins written against it
_Prepared = Prepared


# --------------------------------------------------------------------------------------------------
# Metrics: each maps multiplicity weights W (k, n) -> (values (k,), classes used (k,) or None)

Weighted = Callable[[Prepared, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


@dataclass(frozen=True)
class Metric:
    """A scorable metric. ``weighted`` evaluates it for many weight vectors at once; ``jackknife`` gives the
    n leave-one-out values (for BCa). ``reference`` says which scikit-learn call it equals."""

    name: str
    needs: tuple[str, ...]
    weighted: Weighted
    jackknife: Callable[[Prepared], tuple[np.ndarray, "np.ndarray | None"]]
    higher_is_better: bool = True
    description: str = ""
    reference: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _linear_metric(
    name: str,
    needs: tuple[str, ...],
    features: Callable[[Prepared, str], np.ndarray],
    finalize: Callable[[Prepared, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]],
    *,
    integer_features: bool = False,
    **kw: Any,
) -> Metric:
    """A metric that is a function of sufficient statistics S = W @ F (F: per-sample features, column 0 = 1).

    ``integer_features``: F holds only 0/1, so S holds integer counts <= n and float32 is exact for
    n < 2**24 (half the memory traffic of float64); otherwise the matmul runs in float64.
    """

    def feats(p: Prepared, dtype: Any) -> np.ndarray:
        key = ("F", name, np.dtype(dtype).name)
        if key not in p.cache:
            p.cache[key] = np.ascontiguousarray(features(p, name), dtype=dtype)
        return p.cache[key]

    def weighted(p: Prepared, W: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        dt = np.float32 if integer_features and p.n < 2**24 else np.float64
        F = feats(p, dt)
        S = np.empty((W.shape[0], F.shape[1]), dtype=dt)
        for sl in _row_blocks(W.shape[0], p.n, np.dtype(dt).itemsize, _MATMUL_BLOCK_BYTES):
            np.matmul(W[sl].astype(dt), F, out=S[sl])
        return finalize(p, S.astype(np.float64))

    def jack(p: Prepared) -> tuple[np.ndarray, np.ndarray | None]:
        F = feats(p, np.float64)
        return finalize(p, F.sum(axis=0)[None, :] - F)

    return Metric(name, needs, weighted, jack, **kw)


def _onehot(labels: np.ndarray, C: int) -> np.ndarray:
    out = np.zeros((labels.size, C))
    out[np.arange(labels.size), labels] = 1.0
    return out


def _f_accuracy(p: Prepared, m: str) -> np.ndarray:
    y, yp = p.array("y_true", m), p.y_pred(m)
    return np.stack([np.ones(p.n), (y == yp).astype(float)], axis=1)


def _fin_ratio(p: Prepared, S: np.ndarray) -> tuple[np.ndarray, None]:
    return S[:, 1] / S[:, 0], None


def _f_confusion(p: Prepared, m: str) -> np.ndarray:
    y, yp = p.array("y_true", m), p.y_pred(m)
    C = max(p.n_classes(m), int(yp.max(initial=0)) + 1)
    T, P = _onehot(y, C), _onehot(yp, C)
    return np.concatenate([np.ones((p.n, 1)), T, P, T * (y == yp)[:, None]], axis=1)


def _split_confusion(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    C = (S.shape[1] - 1) // 3
    return S[:, 1 : 1 + C], S[:, 1 + C : 1 + 2 * C], S[:, 1 + 2 * C :]


def _fin_f1(p: Prepared, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T, P, TP = _split_confusion(S)
    denom = T + P  # 2TP + FP + FN; zero only when the class is absent from y_true and y_pred
    ok = denom > 0
    f1 = np.divide(2 * TP, denom, out=np.zeros_like(denom), where=ok)
    used = ok.sum(axis=1)
    return np.divide(f1.sum(axis=1), used, out=np.full(len(S), np.nan), where=used > 0), used


def _fin_balanced(p: Prepared, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T, _, TP = _split_confusion(S)
    ok = T > 0
    rec = np.divide(TP, T, out=np.zeros_like(T), where=ok)
    used = ok.sum(axis=1)
    return np.divide(rec.sum(axis=1), used, out=np.full(len(S), np.nan), where=used > 0), used


def _f_ece(p: Prepared, m: str) -> np.ndarray:
    s = p.scores(m)
    conf = s.max(axis=1)
    correct = (s.argmax(axis=1) == p.array("y_true", m)).astype(float)
    bins = _ece_bin(conf)
    F = _onehot(bins, ECE_BINS) * (correct - conf)[:, None]
    return np.concatenate([np.ones((p.n, 1)), F], axis=1)


def _ece_bin(conf: np.ndarray) -> np.ndarray:
    """Bin k holds confidences in (k/15, (k+1)/15]; a confidence of exactly 0 goes to bin 0."""
    return np.clip(np.ceil(conf * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)


def _fin_ece(p: Prepared, S: np.ndarray) -> tuple[np.ndarray, None]:
    return np.abs(S[:, 1:]).sum(axis=1) / S[:, 0], None


def _f_brier(p: Prepared, m: str) -> np.ndarray:
    s = p.scores(m)
    y = p.array("y_true", m)
    per = ((s - _onehot(y, s.shape[1])) ** 2).sum(axis=1)
    if s.shape[1] == 2:  # scikit-learn's scale_by_half='auto': binary Brier is (p1 - y)^2
        per = per / 2.0
    return np.stack([np.ones(p.n), per], axis=1)


def _f_log_loss(p: Prepared, m: str) -> np.ndarray:
    s = p.scores(m)
    y = p.array("y_true", m)
    s = s / s.sum(axis=1, keepdims=True)  # sklearn normalises rows too
    py = np.clip(s[np.arange(p.n), y], 1e-15, 1.0)
    return np.stack([np.ones(p.n), -np.log(py)], axis=1)


def _mean_of(key: str) -> Callable[[Prepared, str], np.ndarray]:
    def f(p: Prepared, m: str) -> np.ndarray:
        x = p.array(key, m)
        if x.ndim != 1:
            raise DermbenchError(f"predictions[{key!r}] must be a 1-D per-sample array for {m!r}, got {x.shape}")
        return np.stack([np.ones(p.n), x], axis=1)

    return f


# ---- macro AUROC (rank based)


def _auroc_plan(p: Prepared, m: str) -> list[dict[str, Any]]:
    """Per class: positives, negatives sorted by score, and searchsorted positions of positives' scores."""
    key = ("auroc", m)
    if key in p.cache:
        return p.cache[key]
    s, y = p.scores(m), p.array("y_true", m)
    C = s.shape[1]
    classes = [1] if C == 2 else list(range(C))
    plan = []
    for c in classes:
        pos = np.flatnonzero(y == c)
        neg = np.flatnonzero(y != c)
        order = np.argsort(s[neg, c], kind="stable")
        neg_sorted = neg[order]
        neg_scores = s[neg_sorted, c]
        pos_scores = s[pos, c]
        lo = np.searchsorted(neg_scores, pos_scores, "left")
        hi = np.searchsorted(neg_scores, pos_scores, "right")
        plan.append(dict(c=c, pos=pos, neg=neg, neg_sorted=neg_sorted, lo=lo, hi=hi, ties=bool((lo != hi).any())))
    p.cache[key] = plan
    return plan


def _auroc_weighted(p: Prepared, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Macro AUROC for each row of the integer multiplicity matrix W (k, n).

    Per class c and replicate b, with w = W[b]: numerator = sum over positives i of w_i * (negative weight
    with score < s_i + 1/2 negative weight with score == s_i); AUROC_c = numerator / (W_pos * W_neg). The
    negative weight below s_i is a cumulative sum over the negatives sorted once by score, read at the
    positions ``searchsorted`` gave for the positives. Integer arithmetic (twice the numerator) keeps it exact.
    """
    plan = _auroc_plan(p, "auroc_macro")
    k = W.shape[0]
    total = np.zeros(k)
    used = np.zeros(k, dtype=np.int64)
    cum_t = np.int32 if p.n * max(int(W.max(initial=1)), 1) < 2**31 else np.int64
    for sl in _row_blocks(k, p.n, 4):
        w = W[sl]
        r = w.shape[0]
        for cp in plan:
            ns = cp["neg_sorted"]
            if cp["pos"].size == 0 or ns.size == 0:
                continue
            CN = np.empty((r, ns.size + 1), dtype=cum_t)
            CN[:, 0] = 0
            np.cumsum(np.take(w, ns, axis=1), axis=1, dtype=cum_t, out=CN[:, 1:])
            Wp = np.take(w, cp["pos"], axis=1)
            if cp["ties"]:
                below2 = np.take(CN, cp["lo"], axis=1) + np.take(CN, cp["hi"], axis=1)
            else:
                below2 = np.take(CN, cp["lo"], axis=1) * 2
            num2 = np.multiply(Wp, below2, dtype=np.int64).sum(axis=1)
            denom = Wp.sum(axis=1, dtype=np.int64) * CN[:, -1].astype(np.int64)
            ok = denom > 0
            total[sl] += np.divide(num2 * 0.5, denom, out=np.zeros(r), where=ok)
            used[sl] += ok
    return np.divide(total, used, out=np.full(k, np.nan), where=used > 0), used


def _auroc_jackknife(p: Prepared) -> tuple[np.ndarray, np.ndarray]:
    plan = _auroc_plan(p, "auroc_macro")
    s = p.scores("auroc_macro")
    n = p.n
    total = np.zeros(n)
    used = np.zeros(n, dtype=np.int64)
    for cp in plan:
        pos, neg = cp["pos"], cp["neg"]
        P, N = pos.size, neg.size
        if P == 0 or N == 0:
            continue
        below_pos = (cp["lo"] + cp["hi"]) * 0.5  # each positive's share of the Mann-Whitney numerator
        U = below_pos.sum()
        pos_sorted = np.sort(s[pos, cp["c"]])
        sn = s[neg, cp["c"]]
        lo = np.searchsorted(pos_sorted, sn, "left")
        hi = np.searchsorted(pos_sorted, sn, "right")
        above_neg = (P - hi) + (hi - lo) * 0.5  # each negative's share
        num = np.empty(n)
        den = np.empty(n)
        num[pos], den[pos] = U - below_pos, float((P - 1) * N)
        num[neg], den[neg] = U - above_neg, float(P * (N - 1))
        ok = den > 0
        total += np.divide(num, den, out=np.zeros(n), where=ok)
        used += ok
    return np.divide(total, used, out=np.full(n, np.nan), where=used > 0), used


# ---- registry

METRICS: dict[str, Metric] = {}


def _add(m: Metric) -> None:
    METRICS[m.name] = m


_add(
    Metric(
        "auroc_macro",
        ("y_true", "scores"),
        _auroc_weighted,
        _auroc_jackknife,
        description="one-vs-rest macro AUROC (C=2: AUROC of class 1), ties count 1/2",
        reference="sklearn roc_auc_score(y, scores, multi_class='ovr', average='macro'); binary: scores[:, 1]",
    )
)
_add(
    _linear_metric(
        "f1_macro", ("y_true", "y_pred"), _f_confusion, _fin_f1, integer_features=True,
        description="macro F1 over classes present in y_true or y_pred",
        reference="sklearn f1_score(y, y_pred, average='macro')",
    )
)
_add(
    _linear_metric(
        "accuracy", ("y_true", "y_pred"), _f_accuracy, _fin_ratio, integer_features=True,
        description="fraction correct", reference="sklearn accuracy_score",
    )
)
_add(
    _linear_metric(
        "balanced_accuracy", ("y_true", "y_pred"), _f_confusion, _fin_balanced, integer_features=True,
        description="mean recall over classes present in y_true", reference="sklearn balanced_accuracy_score",
    )
)
_add(
    _linear_metric(
        "ece", ("y_true", "scores"), _f_ece, _fin_ece, higher_is_better=False,
        description=f"expected calibration error, {ECE_BINS} equal-width bins on the max probability "
        "(bin k: (k/15, (k+1)/15]), sum_k |B_k|/n * |acc(B_k) - conf(B_k)|",
    )
)
_add(
    _linear_metric(
        "brier", ("y_true", "scores"), _f_brier, _fin_ratio, higher_is_better=False,
        description="multiclass Brier score mean_i sum_c (p_ic - [y_i=c])^2; halved for C=2",
        reference="sklearn brier_score_loss(y, scores, labels=range(C)) (scale_by_half='auto')",
    )
)
_add(
    _linear_metric(
        "log_loss", ("y_true", "scores"), _f_log_loss, _fin_ratio, higher_is_better=False,
        description="mean negative log-probability of the true class (probabilities clipped at 1e-15)",
        reference="sklearn log_loss(y, scores, labels=range(C))",
    )
)
for _key in ("dice", "jaccard"):
    _add(
        _linear_metric(
            _key, (_key,), _mean_of(_key), _fin_ratio,
            description=f"mean of the per-image {_key} scores in predictions[{_key!r}]",
        )
    )

#: metrics where lower is better, for names resolved dynamically (mean:<key>)
_LOWER_IS_BETTER_KEYS = ("loss", "error", "ece", "brier", "hd95", "hausdorff")


def get_metric(name: str) -> Metric:
    """Look up a metric; ``mean:<key>`` is the mean of any per-sample array ``predictions[key]``."""
    if name in METRICS:
        return METRICS[name]
    if name.startswith("mean:") and len(name) > 5:
        key = name[5:]
        lower = any(w in key.lower() for w in _LOWER_IS_BETTER_KEYS)
        m = _linear_metric(
            name, (key,), _mean_of(key), _fin_ratio, higher_is_better=not lower,
            description=f"mean of the per-sample values predictions[{key!r}]",
        )
        return m
    from dermbench import plugins

    for _plugin, resolver in plugins.registry().metric_resolvers:  # plugin metrics (hook register_metrics)
        m = resolver(name)
        if m is not None:
            return m
    raise DermbenchError(
        f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}, or mean:<key> for any per-sample array"
    )


# --------------------------------------------------------------------------------------------------
# Point, replicates, jackknife


def _as_prepared(predictions: Any) -> Prepared:
    return predictions if isinstance(predictions, Prepared) else Prepared(predictions)


def prepare(predictions: dict[str, Any]) -> Prepared:
    """Validate predictions once; the result is accepted wherever a predictions dict is, and caches sort
    orders and features across calls (useful when scoring many metrics or replicate sets)."""
    return _as_prepared(predictions)


def _point_used(p: Prepared, m: Metric) -> tuple[float, int | None]:
    vals, used = m.weighted(p, np.ones((1, p.n), dtype=np.uint8))
    v = float(vals[0])
    if not math.isfinite(v):
        raise UndefinedMetric(_undefined_reason(p, m))
    return v, (int(used[0]) if used is not None else None)


def _undefined_reason(p: Prepared, m: Metric) -> str:
    if "y_true" in m.needs and "y_true" in p.raw:
        classes = np.unique(p.array("y_true", m.name))
        if classes.size < 2:
            return (
                f"{m.name} is undefined: the test split has a single class ({classes.tolist()}); it needs "
                "both positives and negatives. Use a split with at least two classes."
            )
    return f"{m.name} is undefined on these predictions (n={p.n})"


def point(predictions: dict[str, Any], metric: str) -> float:
    """The metric on the full split (equals scikit-learn's); raises UndefinedMetric where undefined."""
    p = _as_prepared(predictions)
    return _point_used(p, get_metric(metric))[0]


def _replicates_used(p: Prepared, m: Metric, idx: Any) -> tuple[np.ndarray, np.ndarray | None]:
    rs = _as_resamples(idx, p.n)
    return m.weighted(p, rs.counts)


def replicates(predictions: dict[str, Any], metric: str, idx: "np.ndarray | Resamples") -> np.ndarray:
    """(n_boot,) metric value on each resample ``predictions[idx[b]]``; NaN where undefined in a replicate.

    Vectorised over replicates (cache-sized blocks of rows; no Python loop over replicates). Pass a
    :class:`Resamples` to share the multiplicity matrix across metrics and models.
    """
    p = _as_prepared(predictions)
    return _replicates_used(p, get_metric(metric), idx)[0]


def jackknife(predictions: dict[str, Any], metric: str) -> np.ndarray:
    """(n,) leave-one-out values (closed form), used for the BCa acceleration."""
    p = _as_prepared(predictions)
    return get_metric(metric).jackknife(p)[0]


# --------------------------------------------------------------------------------------------------
# Confidence intervals


def _z(q: float) -> float:
    from scipy.special import ndtri

    return float(ndtri(q))


def confidence_interval(
    reps: np.ndarray,
    value: float,
    *,
    method: str = CI_METHOD,
    alpha: float = ALPHA,
    jack: np.ndarray | None = None,
    allow_bca: bool = True,
) -> tuple[float, float, str]:
    """(low, high, note) from finite replicates.

    * ``percentile``: the alpha/2 and 1-alpha/2 quantiles of the replicates (linear interpolation).
    * ``bca``: bias-corrected and accelerated (Efron 1987); bias z0 from the share of replicates below the
      estimate (ties count 1/2), acceleration from the jackknife values' skewness. Guarded: where z0 is
      infinite, or the adjusted levels leave [10/B, 1 - 10/B] (fewer than 10 replicates beyond an endpoint,
      e.g. the zero-width interval of a strongly biased statistic), BCa is refused and the percentile
      interval is returned with a note saying so. ``allow_bca=False`` (max/min statistics) refuses it too.
    * ``paper``: the DermINO authors' "mu ± v" as their code computes it (fl-master ``boot.py``): mu = mean of
      the replicates, v = ONE standard deviation of the replicates (numpy default ddof=0), whatever ``alpha``;
      the bootstrap mean is also reported (``boot_mean``). Roughly a 68% interval, not a 95% one; it ignores
      skew and bias. Reported for comparison with the paper only.
    """
    r = np.asarray(reps, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan, "no valid replicate: CI undefined"
    lo_q, hi_q = alpha / 2, 1 - alpha / 2
    if method == "percentile":
        lo, hi = np.quantile(r, [lo_q, hi_q])
        return float(lo), float(hi), ""
    if method == "paper":
        mu = float(r.mean())
        v = float(r.std(ddof=0))
        return mu - v, mu + v, (f"paper mu ± v (DermINO authors' code): mu={mu:.6g} (bootstrap mean), "
                                f"v={v:.6g} (1 SD, ddof 0; ~68% coverage, not {1 - alpha:.0%})")
    if method == "bca":
        lo, hi = (float(x) for x in np.quantile(r, [lo_q, hi_q]))
        if not allow_bca:
            return lo, hi, "BCa refused for this statistic (max/min statistics are biased under the bootstrap): percentile used"
        below = (np.count_nonzero(r < value) + 0.5 * np.count_nonzero(r == value)) / r.size
        if below <= 0 or below >= 1:
            return lo, hi, "BCa refused: bias correction infinite (all replicates on one side): percentile used"
        z0 = _z(below)
        a = 0.0
        if jack is not None:
            j = np.asarray(jack, dtype=float)
            j = j[np.isfinite(j)]
            d = j.mean() - j
            ss = float((d**2).sum())
            if ss > 0:
                a = float((d**3).sum()) / (6.0 * ss**1.5)
        from scipy.special import ndtr

        qs = []
        for q in (lo_q, hi_q):
            zq = _z(q)
            qs.append(float(ndtr(z0 + (z0 + zq) / (1 - a * (z0 + zq)))))
        edge = bca_edge(r.size)
        if not (edge <= qs[0] and qs[1] <= 1 - edge):
            return lo, hi, (
                f"BCa refused: adjusted levels [{qs[0]:.4g}, {qs[1]:.4g}] leave [10/B, 1-10/B] = "
                f"[{edge:.4g}, {1 - edge:.4g}] (z0={z0:.3g}, a={a:.3g}; too few replicates beyond an endpoint): "
                "percentile used"
            )
        blo, bhi = np.quantile(r, qs)
        return float(blo), float(bhi), f"BCa z0={z0:.4g} a={a:.4g}"
    raise DermbenchError(f"unknown CI method {method!r}; choose one of {', '.join(CI_METHODS)}")


def bca_edge(n_boot: int) -> float:
    """The BCa guard: adjusted levels must stay inside [10/B, 1 - 10/B]."""
    return 10.0 / max(int(n_boot), 1)


# --------------------------------------------------------------------------------------------------
# Resamples for a record: the single place that decides (split hash, bootstrap seed, strata)


def _resolve_strata(p: Prepared, strata: Any) -> tuple[Any, str]:
    """(strata array or None, label). ``"auto"``: classification (``y_true`` present) resamples within
    classes, everything else resamples samples."""
    if isinstance(strata, str) and strata == "auto":
        if "y_true" in p.raw and np.asarray(p.raw["y_true"]).ndim == 1:
            return p.array("y_true", "strata='auto'"), "y_true"
        return None, "none"
    if isinstance(strata, str):
        return p.array(strata, f"strata={strata!r}"), strata
    if strata is None:
        return None, "none"
    return strata, "given"


def resamples_for(
    predictions: Any,
    *,
    split_hash: str,
    n_boot: int = N_BOOT,
    strata: Any = "auto",
    boot_seed: int = BOOTSTRAP_SEED,
) -> tuple[Resamples, str]:
    """(Resamples, strata label) every scorer of these predictions uses: drawn from (split hash, the fixed
    bootstrap seed, n, B, strata) -- never from a training seed -- so all models and all training seeds of
    a split are paired."""
    p = _as_prepared(predictions)
    arr, label = _resolve_strata(p, strata)
    return Resamples.draw(split_hash, boot_seed, p.n, n_boot, arr), label


def _legacy_seed(seed: Any, where: str) -> None:
    if seed is not None:
        import warnings

        warnings.warn(
            f"{where}(seed=...) is ignored: bootstrap resamples come from (split hash, "
            "dermbench.defaults.BOOTSTRAP_SEED), never from a training seed; pass boot_seed= to change the "
            "bootstrap seed itself", DeprecationWarning, stacklevel=3,
        )


# --------------------------------------------------------------------------------------------------
# score: the one scoring path (runner, tasks, leaderboard, compare)


@dataclass
class Scored:
    """One metric on one record: the JSON summary stored in records, plus the replicate vector and the mask
    of replicates usable in paired tests (finite and with the full split's class set)."""

    summary: dict[str, Any]
    replicates: np.ndarray | None
    valid: np.ndarray | None
    jackknife: np.ndarray | None = None

    @property
    def value(self) -> float | None:
        return self.summary.get("value")


def evaluate(
    predictions: Any,
    metric: str,
    resamples: Resamples,
    *,
    ci: str = CI_METHOD,
    alpha: float = ALPHA,
    keep_jackknife: bool = False,
) -> Scored:
    """Point estimate, replicates and CI of one metric on given resamples (what :func:`score` stores, plus
    the replicates the leaderboard needs for ranks and paired tests)."""
    if ci not in CI_METHODS:
        raise DermbenchError(f"unknown CI method {ci!r}; choose one of {', '.join(CI_METHODS)}")
    p = _as_prepared(predictions)
    m = get_metric(metric)
    B = resamples.n_boot
    base = {"ci_method": ci, "n_boot": B, "n": p.n}
    try:
        value, used0 = _point_used(p, m)
    except UndefinedMetric as e:
        return Scored({"value": None, "ci_low": None, "ci_high": None, **base, "n_invalid": B, "n_lost_class": 0,
                       "n_undefined": B, "note": str(e)}, None, None)
    reps, used = _replicates_used(p, m, resamples)
    custom = m.extra.get("interval")
    jack = m.jackknife(p)[0] if ((ci == "bca" and custom is None) or keep_jackknife) else None
    override = None
    if custom is not None:  # statistics whose bootstrap is biased (max/min over groups) bring their own method
        override = custom(p, resamples.counts, value, alpha)
        base["ci_method"] = m.extra.get("interval_name", "custom")
    summary, valid = _summarise(p, m, value, used0, reps, used, ci=ci, alpha=alpha, base=base, jack=jack,
                                override=override)
    return Scored(summary, reps, valid, jack)


def score(
    predictions: dict[str, Any],
    metrics: Sequence[str],
    *,
    split_hash: str,
    n_boot: int = N_BOOT,
    ci: str = CI_METHOD,
    strata: Any = "auto",
    alpha: float = ALPHA,
    boot_seed: int = BOOTSTRAP_SEED,
    seed: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Point estimate + bootstrap CI per metric, as JSON-able plain values (what a record stores).

    The one scoring path of dermbench: the runner, tasks, the leaderboard and ``compare`` all score through
    it (or through :func:`evaluate` on the same :func:`resamples_for`). Resamples come from (split_hash,
    ``boot_seed`` = the fixed ``BOOTSTRAP_SEED``); ``seed`` is accepted for old callers and ignored with a
    DeprecationWarning (a training seed must never pick the resamples). ``strata``: ``"auto"`` (default:
    within classes when ``y_true`` is present), None, an (n,) array, or a predictions key. A metric
    undefined on the full split gets ``value=None`` and a note, so the other metrics of the record are kept.
    """
    _legacy_seed(seed, "score")
    if ci not in CI_METHODS:
        raise DermbenchError(f"unknown CI method {ci!r}; choose one of {', '.join(CI_METHODS)}")
    p = _as_prepared(predictions)
    rs, label = resamples_for(p, split_hash=split_hash, n_boot=n_boot, strata=strata, boot_seed=boot_seed)
    out: dict[str, dict[str, Any]] = {}
    for name in metrics:
        d = evaluate(p, name, rs, ci=ci, alpha=alpha).summary
        d.update(boot_seed=int(boot_seed), strata=label)
        out[name] = d
    return out


def _summarise(
    p: Prepared, m: Metric, value: float, used0: int | None, reps: np.ndarray, used: np.ndarray | None,
    *, ci: str, alpha: float, base: dict[str, Any], jack: np.ndarray | None = None,
    override: tuple[float, float, str] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    undefined = ~np.isfinite(reps)
    fewer = (used < used0) & ~undefined if (used is not None and used0 is not None) else np.zeros_like(undefined)
    valid = ~undefined & ~fewer
    notes = []
    if used0 is not None and m.name == "auroc_macro":
        C = p.scores(m.name).shape[1]
        expected = 1 if C == 2 else C
        if used0 < expected:
            notes.append(f"macro over the {used0} of {expected} classes present in the test split")
    if fewer.any():
        notes.append(f"{int(fewer.sum())} replicates lacked a class, excluded from the CI and from paired tests")
    if undefined.any():
        notes.append(f"{int(undefined.sum())} replicates undefined (single class drawn), excluded from the CI")
    if override is not None:
        lo, hi, ci_note = override
    else:
        lo, hi, ci_note = confidence_interval(reps[valid], value, method=ci, alpha=alpha, jack=jack,
                                              allow_bca=m.extra.get("bca", True))
    if ci_note:
        notes.append(ci_note)
    finite = math.isfinite(lo) and math.isfinite(hi)
    return {
        "value": float(value),
        "ci_low": float(lo) if finite else None,
        "ci_high": float(hi) if finite else None,
        **base,
        "n_invalid": int(undefined.sum() + fewer.sum()),
        "n_lost_class": int(fewer.sum()),
        "n_undefined": int(undefined.sum()),
        "note": "; ".join(notes),
        **({"boot_mean": float(reps[valid].mean())} if ci == "paper" and valid.any() else {}),
    }, valid


# --------------------------------------------------------------------------------------------------
# Paired comparison


def _align(pa: Prepared, pb: Prepared, raw_b: dict[str, Any]) -> Prepared:
    """Return B's predictions in A's id order; refuse mismatched id sets."""
    for name, q in (("A", pa), ("B", pb)):
        if len(set(q.ids)) != q.n:
            seen: set[str] = set()
            dup = [i for i in q.ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
            raise DermbenchError(f"model {name}'s predictions repeat sample ids ({', '.join(dup[:5])}); ids must be unique")
    if pa.ids == pb.ids:
        return pb
    sa, sb = set(pa.ids), set(pb.ids)
    if sa != sb:
        only_a = sorted(sa - sb)[:5]
        only_b = sorted(sb - sa)[:5]
        raise DermbenchError(
            f"the two models were scored on different samples ({len(sa - sb)} ids only in A, e.g. {only_a}; "
            f"{len(sb - sa)} only in B, e.g. {only_b}); a paired comparison needs both on the same split -- "
            "re-run them on the same dataset split (same split hash)"
        )
    pos = {i: k for k, i in enumerate(pb.ids)}
    order = np.array([pos[i] for i in pa.ids])
    new = {}
    for k, v in raw_b.items():
        if k == "ids":
            new[k] = list(pa.ids)
        elif hasattr(v, "__len__") and not isinstance(v, str) and len(v) == pb.n:
            new[k] = np.asarray(v)[order]
        else:
            new[k] = v
    return Prepared(new)


def paired_from_replicates(
    reps_a: np.ndarray,
    reps_b: np.ndarray,
    value_a: float,
    value_b: float,
    *,
    test: str = "bootstrap",
    ci: str = CI_METHOD,
    alpha: float = ALPHA,
    jack_diff: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> dict[str, Any]:
    """Paired test from replicates computed on identical resamples (same index matrix for A and B).

    ``bootstrap`` (default): d* = reps_a - reps_b, d = value_a - value_b. The shift method centres the
    bootstrap distribution on the null: H0 is rejected when the observed |d| is extreme relative to
    |d* - d|, with the +1 correction so p is never 0:  p = (1 + #{|d*_b - d| >= |d|}) / (1 + B).
    ``paper-ttest``: DermINO's two-sided paired t-test on the B replicate pairs (scipy ttest_rel).
    Anti-conservative: its standard error is SD(d*)/sqrt(B), so p shrinks with B, not with the data.
    ``exclude``: replicates to leave out explicitly (e.g. ones that lost a class for either model); they
    are counted in ``n_excluded`` and named in the note, never mixed in.
    """
    if test not in TESTS:
        raise DermbenchError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    ra, rb = np.asarray(reps_a, float), np.asarray(reps_b, float)
    finite = np.isfinite(ra) & np.isfinite(rb)
    ex = np.zeros(ra.shape, bool) if exclude is None else (np.asarray(exclude, bool) & finite)
    ok = finite & ~ex
    d_star = ra[ok] - rb[ok]
    d = float(value_a) - float(value_b)
    B = int(d_star.size)
    notes = []
    if B == 0:
        raise UndefinedMetric("no replicate where both models' metric is defined: the paired test is undefined")
    if test == "bootstrap":
        p = (1 + int(np.count_nonzero(np.abs(d_star - d) >= abs(d)))) / (1 + B)
        label = "paired bootstrap test (shift method, two-sided, p=(1+#{|d*-d|>=|d|})/(1+B))"
    else:
        from scipy.stats import ttest_rel

        if np.all(d_star == d_star[0]):
            p = 1.0 if d_star[0] == 0 else 0.0
            notes.append("replicate differences constant: t undefined, p set to 0/1")
        else:
            p = float(ttest_rel(ra[ok], rb[ok]).pvalue)
        label = (
            "paper-ttest: paired t-test on bootstrap replicates (DermINO reproduction; ANTI-CONSERVATIVE, "
            "p shrinks with the number of replicates)"
        )
    lo, hi, ci_note = confidence_interval(d_star, d, method=ci, alpha=alpha, jack=jack_diff)
    if ci_note:
        notes.append(ci_note)
    n_undef = int((~finite).sum())
    if n_undef:
        notes.append(f"{n_undef} replicates undefined for a model, excluded")
    if ex.any():
        notes.append(f"{int(ex.sum())} replicates that lost a class for a model, excluded")
    return {
        "diff": d,
        "value_a": float(value_a),
        "value_b": float(value_b),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "ci_method": ci,
        "p_value": float(p),
        "test": test,
        "label": label,
        "n_boot": int(ra.size),
        "n_used": B,
        "n_invalid": int(ra.size - B),
        "n_excluded": int(ex.sum()),
        "note": "; ".join(notes),
    }


def paired_test(
    pred_a: dict[str, Any],
    pred_b: dict[str, Any],
    metric: str,
    *,
    split_hash: str,
    n_boot: int = N_BOOT,
    test: str = "bootstrap",
    ci: str = CI_METHOD,
    strata: Any = "auto",
    alpha: float = ALPHA,
    boot_seed: int = BOOTSTRAP_SEED,
    seed: int | None = None,
) -> dict[str, Any]:
    """Compare A and B (difference a - b) on identical resamples drawn from (split_hash, bootstrap seed).

    Returns diff, value_a, value_b, the diff's CI, a two-sided p-value, the test label, n/n_boot and how many
    replicates were excluded (undefined, or a class lost for either model). Raises DermbenchError if the two
    prediction sets cover different sample ids, UndefinedMetric if the metric is undefined on the split.
    ``seed`` is ignored (see :func:`score`).
    """
    _legacy_seed(seed, "paired_test")
    m = get_metric(metric)
    pa = _as_prepared(pred_a)
    pb = _align(pa, _as_prepared(pred_b), pred_b if isinstance(pred_b, dict) else pred_b.raw)
    idx, _ = resamples_for(pa, split_hash=split_hash, n_boot=n_boot, strata=strata, boot_seed=boot_seed)
    sa = evaluate(pa, metric, idx, ci="percentile", alpha=alpha, keep_jackknife=ci == "bca")
    sb = evaluate(pb, metric, idx, ci="percentile", alpha=alpha, keep_jackknife=ci == "bca")
    if sa.value is None or sb.value is None:
        raise UndefinedMetric((sa.summary if sa.value is None else sb.summary)["note"])
    jd = sa.jackknife - sb.jackknife if ci == "bca" else None  # type: ignore[operator]
    lost = (np.isfinite(sa.replicates) & ~sa.valid) | (np.isfinite(sb.replicates) & ~sb.valid)  # type: ignore[operator]
    out = paired_from_replicates(sa.replicates, sb.replicates, sa.value, sb.value, test=test, ci=ci, alpha=alpha,
                                 jack_diff=jd, exclude=lost)
    out.update(metric=metric, n=pa.n, higher_is_better=m.higher_is_better)
    return out


# --------------------------------------------------------------------------------------------------
# Many models on one large split, in bounded memory


def bootstrap_models(
    predictions: Sequence[Any],
    metrics: Sequence[str],
    *,
    split_hash: str,
    n_boot: int = N_BOOT,
    strata: Any = "auto",
    boot_seed: int = BOOTSTRAP_SEED,
    correction: str = "holm",
    max_bytes: int = 256 << 20,
) -> dict[str, Any]:
    """Point estimates, replicates and all pairwise paired tests for k models on one split.

    The replicate matrix is never held whole: replicates are drawn in row blocks of about ``max_bytes`` of
    multiplicities (identical numbers to :func:`bootstrap_indices` / :func:`score`, whatever the block size),
    and every model and metric is evaluated on a block before the next is drawn. Memory is O(block + k·n·C)
    instead of O(B·n): n = 100k samples, 10 models, B = 1000 stays far below 2 GB.

    Returns ``{"points": {metric: (k,)}, "replicates": {metric: (k, B)}, "tests": {metric: [{"a", "b", "diff",
    "p_value", "p_adj"} ...]}}`` (pairs i < j, one correction family per metric).
    """
    preps = [_as_prepared(p) for p in predictions]
    if not preps:
        raise DermbenchError("bootstrap_models needs at least one model's predictions")
    n = preps[0].n
    for i, p in enumerate(preps):
        if p.n != n:
            raise DermbenchError(f"model #{i} has {p.n} predictions, model #0 has {n}: all must cover the same split")
    arr, _ = _resolve_strata(preps[0], strata)
    rngs, members = _rng_plan(split_hash, boot_seed, n, n_boot, arr)
    ms = [get_metric(m) for m in metrics]
    points = {m.name: np.array([_point_used(p, m)[0] for p in preps]) for m in ms}
    reps = {m.name: np.empty((len(preps), n_boot)) for m in ms}
    rows = max(1, min(n_boot, int(max_bytes) // (17 * max(n, 1))))  # int64 indices + int64 bincount + uint8 counts
    for start in range(0, n_boot, rows):
        r = min(rows, n_boot - start)
        W = _counts_of(_draw_rows(rngs, members, n, r), n)
        for m in ms:
            for k, p in enumerate(preps):
                reps[m.name][k, start : start + r] = m.weighted(p, W)[0]
        del W
    tests: dict[str, list[dict[str, Any]]] = {}
    for m in ms:
        out = []
        for i in range(len(preps)):
            for j in range(i + 1, len(preps)):
                t = paired_from_replicates(reps[m.name][i], reps[m.name][j], points[m.name][i], points[m.name][j])
                out.append({"a": i, "b": j, "diff": t["diff"], "p_value": t["p_value"]})
        for t, pa in zip(out, correct([t["p_value"] for t in out], correction)):
            t["p_adj"] = pa
        tests[m.name] = out
    return {"points": points, "replicates": reps, "tests": tests}


# --------------------------------------------------------------------------------------------------
# Several training seeds: two-level (test sample x seed) bootstrap


def seed_draws(key: str, k: int, n_boot: int, boot_seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(n_boot, k) seed positions drawn with replacement, from (key, k, B, bootstrap seed) only."""
    digest = hashlib.sha256(json.dumps({"v": 1, "seeds": str(key), "k": int(k), "B": int(n_boot),
                                        "seed": int(boot_seed)}, sort_keys=True).encode()).digest()
    rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))
    return rng.integers(0, k, size=(n_boot, k))


def pool_seeds(
    values: Sequence[float],
    reps: np.ndarray,
    *,
    key: str,
    alpha: float = ALPHA,
    boot_seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Seed-mean of a cell run with k training seeds, with a two-level (test sample x seed) interval.

    ``reps`` (k, B): each seed's replicates on the *same* test resamples (the fixed bootstrap seed makes
    them identical across seeds). Two variance components: the test-sample part, the variance over b of the
    seed-averaged replicate ``mean_s reps[s, b]``, and the seed part, SD²/k over the k seed values. The
    interval is mean ± t_{df, 1-alpha/2}·sqrt(sum), df by Welch-Satterthwaite (the seed part has k-1 df),
    because resampling only k seeds is too coarse for percentiles (simulation: FPR 0.08-0.11 at k=3-5).
    ``replicates`` (for ranks): the test part plus seeds resampled with replacement, rescaled by sqrt(k/(k-1)).
    k = 1 gives the single-seed percentile interval and replicates back.
    """
    v = np.asarray(values, float)
    R = np.asarray(reps, float)
    k, B = R.shape
    if k != v.size:
        raise DermbenchError(f"pool_seeds: {v.size} values but {k} replicate rows")
    mean = float(v.mean())
    if k == 1:
        lo, hi, _ = confidence_interval(R[0], mean, method="percentile", alpha=alpha)
        return {"value": mean, "sd": 0.0, "k": 1, "ci_low": lo, "ci_high": hi, "replicates": R[0].copy(),
                "test_part": R[0].copy(), "seed_var": 0.0, "df": math.inf}
    test_part = R.mean(axis=0)
    S = seed_draws(key, k, B, boot_seed)
    drawn = np.take_along_axis(R, S.T, axis=0).mean(axis=0)  # R[S[b, j], b] averaged over j
    pooled = test_part + math.sqrt(k / (k - 1)) * (drawn - test_part)
    sd = float(v.std(ddof=1))
    v_test = float(np.nanvar(test_part, ddof=1))
    v_seed = sd**2 / k
    df = _welch_df([(v_seed, k - 1)], v_test)
    from scipy.stats import t as t_dist

    half = float(t_dist.ppf(1 - alpha / 2, df)) * math.sqrt(v_test + v_seed)
    return {"value": mean, "sd": sd, "k": int(k), "ci_low": mean - half, "ci_high": mean + half,
            "replicates": pooled, "test_part": test_part, "seed_var": v_seed, "df": df}


def _welch_df(seed_parts: Sequence[tuple[float, int]], v_test: float) -> float:
    """Welch-Satterthwaite df of v_test (treated as known) plus seed variance parts (variance, df)."""
    tot = v_test + sum(v for v, _ in seed_parts)
    den = sum(v**2 / d for v, d in seed_parts if d > 0)
    return math.inf if den <= 0 else max(1.0, tot**2 / den)


def paired_seed_test(a: dict[str, Any], b: dict[str, Any], *, alpha: float = ALPHA) -> dict[str, Any]:
    """Two-level paired test of two seed-pooled cells (outputs of :func:`pool_seeds` on identical test
    resamples): d = mean_a - mean_b; variance = variance over b of the paired test-part difference + SD_a²/k_a
    + SD_b²/k_b; t-test with Welch-Satterthwaite df. Simulation (k=5, seed SD = test SE): see
    benchmarks/coverage.py."""
    from scipy.stats import t as t_dist

    d = float(a["value"]) - float(b["value"])
    diff = np.asarray(a["test_part"], float) - np.asarray(b["test_part"], float)
    v_test = float(np.nanvar(diff, ddof=1))
    parts = [(a["seed_var"], a["k"] - 1), (b["seed_var"], b["k"] - 1)]
    df = _welch_df(parts, v_test)
    se = math.sqrt(v_test + a["seed_var"] + b["seed_var"])
    if se == 0:
        p = 1.0 if d == 0 else 0.0
    else:
        p = float(2 * t_dist.sf(abs(d) / se, df))
    half = float(t_dist.ppf(1 - alpha / 2, df)) * se
    return {"diff": d, "ci_low": d - half, "ci_high": d + half, "p_value": p, "df": df, "se": se,
            "test": "two-level (test sample x seed) paired t-test, Welch-Satterthwaite df"}


# --------------------------------------------------------------------------------------------------
# Max/min statistics over groups: projection of simultaneous max-t intervals


def simultaneous_intervals(point_vals: np.ndarray, rep_vals: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray, float]:
    """Max-t simultaneous (1 - alpha) intervals for m parameters from their bootstrap replicates.

    ``point_vals`` (m,), ``rep_vals`` (m, B) on identical resamples. t*_b = max_j |θ*_jb - θ̂_j| / se_j and
    c = its (1 - alpha) quantile; interval j = θ̂_j ± c·se_j. Undefined entries (NaN) are ignored.
    Returns (low (m,), high (m,), c)."""
    pt = np.asarray(point_vals, float)
    R = np.asarray(rep_vals, float)
    ok = np.isfinite(R).any(axis=0)  # a replicate where some parameter is undefined still informs the others
    R = R[:, ok]
    if R.shape[1] < 2:
        return np.full(pt.shape, np.nan), np.full(pt.shape, np.nan), math.nan
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(R, axis=1, ddof=1)
        se = np.where(np.isfinite(se), se, 0.0)
        se_safe = np.where(se > 0, se, np.inf)
        t = np.nanmax(np.abs(R - pt[:, None]) / se_safe[:, None], axis=0)
    c = float(np.quantile(t[np.isfinite(t)], 1 - alpha))
    return pt - c * se, pt + c * se, c


def projection_gap_interval(point_vals: np.ndarray, rep_vals: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, str]:
    """Interval for the gap max_g θ_g - min_g θ_g that stays valid when the true gap is 0.

    Percentile/BCa intervals of a max - min statistic are biased upwards (they cover a true gap of 0 in 0%
    of simulations). Instead: simultaneous max-t intervals for every pairwise difference D_ij = θ_i - θ_j
    (:func:`simultaneous_intervals`), projected onto the gap = max |D_ij|:
    [max(0, max_ij(|D̂_ij| - c·se_ij)), max_ij(|D̂_ij| + c·se_ij)]. Conservative (coverage >= 1 - alpha)."""
    pt = np.asarray(point_vals, float)
    R = np.asarray(rep_vals, float)
    k = pt.size
    i, j = np.triu_indices(k, 1)
    lo, hi, c = simultaneous_intervals(pt[i] - pt[j], R[i] - R[j], alpha)
    if not math.isfinite(c):
        return math.nan, math.nan, "too few valid replicates for a projection interval"
    return _abs_projection(lo, hi), float(np.nanmax(np.maximum(np.abs(lo), np.abs(hi)))), \
        f"projection of simultaneous max-t intervals over {i.size} pairwise group differences (c={c:.3g})"


def _abs_projection(lo: np.ndarray, hi: np.ndarray) -> float:
    """Smallest possible max |D| when each D lies in [lo, hi] (0 if some interval contains 0 -- for all)."""
    low_abs = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
    return float(max(0.0, np.nanmax(low_abs)))


def projection_worst_interval(point_vals: np.ndarray, rep_vals: np.ndarray, *, higher_is_better: bool,
                              alpha: float = ALPHA) -> tuple[float, float, str]:
    """Interval for the worst group's value (min, or max for lower-is-better metrics), by projecting
    simultaneous max-t intervals of the group values: [min_g low_g, min_g high_g] (max for lower-is-better)."""
    lo, hi, c = simultaneous_intervals(point_vals, rep_vals, alpha)
    if not math.isfinite(c):
        return math.nan, math.nan, "too few valid replicates for a projection interval"
    f = np.nanmin if higher_is_better else np.nanmax
    return float(f(lo)), float(f(hi)), f"projection of simultaneous max-t intervals over {len(lo)} groups (c={c:.3g})"


# --------------------------------------------------------------------------------------------------
# Multiple comparisons


def correct(pvalues: Sequence[float | None], method: str = "holm") -> list[float | None]:
    """Adjusted p-values in input order. ``holm``: step-down family-wise control; ``bh``: Benjamini-Hochberg
    false discovery rate; ``none``: unchanged. ``None`` entries (no test) pass through and do not count."""
    if method not in ("holm", "bh", "none"):
        raise DermbenchError(f"unknown correction {method!r}; choose holm, bh or none")
    vals = [None if v is None else float(v) for v in pvalues]
    keep = [i for i, v in enumerate(vals) if v is not None]
    for i in keep:
        if not (0.0 <= vals[i] <= 1.0):  # type: ignore[operator]
            raise DermbenchError(f"p-value #{i} is {vals[i]}; p-values must lie in [0, 1]")
    out: list[float | None] = list(vals)
    if method == "none" or not keep:
        return out
    p = np.array([vals[i] for i in keep], dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ps))
    else:
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ps)[::-1])[::-1]
        adj = np.minimum(adj, 1.0)
    res = np.empty(m)
    res[order] = adj
    for j, i in enumerate(keep):
        out[i] = float(res[j])
    return out
