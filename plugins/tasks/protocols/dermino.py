"""The DermINO authors' evaluation rules, re-implemented (read from ``zxq-kd/DermINO``, ``downstreams/`` and
``pretrain/dinov2/eval/``).

* Segmentation metric (``segment_linear/tools/segmentation.py``): for each test batch of 64 images (loader
  order, no shuffling) the classes present in prediction or truth are found; Dice is averaged over those
  classes **including background**, and "JAC" is the micro ratio Σtp / (Σtp + Σfp + Σfn) pooled over the same
  classes (for two classes this is acc / (2 − acc)). The reported number is the unweighted mean over batches.
* Probe budget (``eval/linear.py``): "50 epochs" means 50 × a per-dataset ``epoch_length`` iterations of
  batch 256 drawn from an endless stream of shuffled passes (so MED-Node trains for 5 iterations in total).
* kNN (``eval/utils.py`` + sklearn ``KNeighborsClassifier(5)``): uniform votes; ties go to the lowest label.
"""

from __future__ import annotations

import math
from typing import Any

#: test batch over which the authors pool their segmentation metric
SEG_BATCH = 64

#: iterations per "epoch" of the authors' linear probe, by dermbench dataset name (``eval/linear.py``)
EPOCH_LENGTH: dict[str, float] = {
    "ddi": 6,
    "derm7pt-derm": 15,
    "derm7pt-clinic": 15,
    "fitzpatrick17k-2": 35,
    "fitzpatrick17k-3": 130,
    "fitzpatrick17k-9": 130,
    "mednode": 0.1,
    "ph2": 2,
    "ph2-binary": 2,
    "acne04": 12,
}


# --------------------------------------------------------------------------------------------------
# Segmentation


def seg_counts(pred: Any, true: Any) -> Any:
    """Per-image lesion-class pixel counts (n, 4): tp, fp, fn, tn of boolean (n, H, W) masks.

    The background class's counts follow (tp₀ = tn, fp₀ = fn, fn₀ = fp), so these four numbers are all the
    authors' metric needs; they are stored per image so the metric can be bootstrapped."""
    import numpy as np

    p, t = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"seg_counts needs two (n, H, W) masks of one shape, got {p.shape} and {t.shape}")
    tp = (p & t).sum(axis=(1, 2))
    fp = (p & ~t).sum(axis=(1, 2))
    fn = (~p & t).sum(axis=(1, 2))
    tn = (~p & ~t).sum(axis=(1, 2))
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.float64)


def pooled_dice_jac(S: Any) -> tuple[Any, Any]:
    """Dice (mean over present classes, background included) and micro JAC of pooled counts S (..., 4)."""
    import numpy as np

    S = np.asarray(S, dtype=np.float64)
    tp, fp, fn, tn = S[..., 0], S[..., 1], S[..., 2], S[..., 3]
    # class 1 (lesion) and class 0 (background): (tp, fp, fn) each
    cls = [(tp, fp, fn), (tn, fn, fp)]
    dice_sum = np.zeros_like(tp)
    n_present = np.zeros_like(tp)
    jt, jd = np.zeros_like(tp), np.zeros_like(tp)
    for a, b, c in cls:
        present = (a + b + c) > 0  # the class occurs in the prediction or the truth of this batch
        d = np.divide(2 * a, 2 * a + b + c, out=np.zeros_like(a), where=present)
        dice_sum += d
        n_present += present
        jt += np.where(present, a, 0.0)
        jd += np.where(present, a + b + c, 0.0)
    dice = np.divide(dice_sum, n_present, out=np.zeros_like(dice_sum), where=n_present > 0)
    jac = np.divide(jt, jd, out=np.ones_like(jt), where=jd > 0)
    return dice, jac


def batch_sums(F: Any, W: Any, batch_size: int) -> tuple[Any, Any]:
    """Per-batch sums of per-item rows F (n, k) when the multiset W (B, n) (item i drawn W[b, i] times) is laid
    out in item order and cut into consecutive batches: returns sums (B, nb, k) and batch sizes (B, nb).

    At W = 1 this is the authors' unshuffled test loader; a bootstrap replicate is evaluated the same way."""
    import numpy as np

    F = np.asarray(F, dtype=np.float64)
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    end = np.cumsum(W, axis=1)
    start = end - W
    nb = max(1, int(math.ceil(float(end[:, -1].max()) / batch_size)))
    sums = np.zeros((W.shape[0], nb, F.shape[1]))
    sizes = np.zeros((W.shape[0], nb))
    for b in range(nb):
        lo, hi = b * batch_size, (b + 1) * batch_size
        ov = np.clip(np.minimum(end, hi) - np.maximum(start, lo), 0.0, None)  # copies of item i in batch b
        sums[:, b] = ov @ F
        sizes[:, b] = ov.sum(axis=1)
    return sums, sizes


def dermino_seg_weighted(counts: Any, W: Any, batch_size: int = SEG_BATCH) -> tuple[Any, Any]:
    """The authors' Dice and JAC (each (B,)) for multiplicity weights W (B, n) over per-image counts (n, 4)."""
    import numpy as np

    sums, sizes = batch_sums(counts, W, batch_size)
    dice, jac = pooled_dice_jac(sums)
    used = sizes > 0
    k = used.sum(axis=1)
    return (np.where(used, dice, 0).sum(axis=1) / np.maximum(k, 1),
            np.where(used, jac, 0).sum(axis=1) / np.maximum(k, 1))


def dermino_seg_scores(pred: Any, true: Any, batch_size: int = SEG_BATCH) -> dict[str, float]:
    """Point values of the authors' segmentation metric on masks in test-loader order."""
    import numpy as np

    c = seg_counts(pred, true)
    d, j = dermino_seg_weighted(c, np.ones((1, len(c))), batch_size)
    return {"dice": float(d[0]), "jac": float(j[0]), "n_batches": int(math.ceil(len(c) / batch_size))}


def resolve_metric(name: str) -> Any:
    """``dermino_dice`` / ``dermino_jac`` for dermbench's scorer: the authors' batch-pooled metric over the
    per-image counts ``seg_tp, seg_fp, seg_fn, seg_tn`` in the predictions, resampled over images (a replicate
    is laid out in test order and cut into batches of 64 exactly as the point estimate)."""
    if name not in ("dermino_dice", "dermino_jac"):
        return None
    import numpy as np

    from dermbench import api

    keys = ("seg_tp", "seg_fp", "seg_fn", "seg_tn")
    which = 0 if name == "dermino_dice" else 1

    def counts(p: Any) -> Any:
        if ("dermino_counts",) not in p.cache:
            p.cache[("dermino_counts",)] = np.stack([p.array(k, name) for k in keys], axis=1)
        return p.cache[("dermino_counts",)]

    def weighted(p: Any, W: Any) -> tuple[Any, None]:
        W = np.atleast_2d(W)
        out = np.empty(W.shape[0])
        step = max(1, int(2_000_000 // max(p.n, 1)))
        for lo in range(0, W.shape[0], step):
            out[lo : lo + step] = dermino_seg_weighted(counts(p), W[lo : lo + step])[which]
        return out, None

    def jack(p: Any) -> tuple[Any, None]:
        return weighted(p, 1.0 - np.eye(p.n))

    label = "Dice averaged over classes incl. background" if which == 0 else "micro JAC Σtp/(Σtp+Σfp+Σfn)"
    return api.Metric(
        name, keys, weighted, jack,
        description=f"DermINO authors' segmentation metric: {label}, pooled per test batch of {SEG_BATCH} "
        "(test order), mean over batches; resampled over images",
        reference="zxq-kd/DermINO downstreams/segment_linear/tools/segmentation.py compute_metrics",
    )


# --------------------------------------------------------------------------------------------------
# Linear probe budget


def probe_iterations(epochs: int, epoch_length: float | None, n_train: int, batch_size: int) -> int:
    """Optimiser steps of the authors' probe: ``epochs × epoch_length`` (their loop runs while i < max_iter);
    ``epoch_length=None`` means one true pass, ceil(n / batch)."""
    if epoch_length is None:
        return int(epochs) * max(1, -(-int(n_train) // int(batch_size)))
    total = float(epochs) * float(epoch_length)
    return max(1, int(math.ceil(total - 1e-9)))


def stream_batches(n: int, batch_size: int, iterations: int, generator: Any) -> list[Any]:
    """``iterations`` batches cut from an endless stream of shuffled passes over n items (DINOv2's infinite
    sampler): a batch may straddle two passes, and a pass is never restarted at an iteration boundary."""
    import torch

    out, buf = [], torch.empty(0, dtype=torch.long)
    for _ in range(iterations):
        while len(buf) < batch_size:
            buf = torch.cat([buf, torch.randperm(n, generator=generator)])
        out.append(buf[:batch_size])
        buf = buf[batch_size:]
    return out


def epoch_length_for(dataset: str, option: Any) -> float | None:
    """The ``epoch_length`` option: ``auto`` looks the dataset up in :data:`EPOCH_LENGTH` (None = true epochs
    when it is not one of the authors' datasets), ``epoch`` means true epochs, a number is used as given."""
    if option in (None, "epoch", "none", ""):
        return None
    if option == "auto":
        base = dataset.split(":")[0]
        return EPOCH_LENGTH.get(base)
    try:
        v = float(option)
    except (TypeError, ValueError):
        raise ValueError(f"epoch_length={option!r}: expected auto, epoch or a positive number") from None
    if v <= 0:
        raise ValueError(f"epoch_length={option!r} must be positive")
    return v


# --------------------------------------------------------------------------------------------------
# kNN


def vote_argmax(votes: Any, simsum: Any, tie_break: str) -> Any:
    """Predicted class from kNN vote counts (n, C): ``similarity`` breaks ties by the larger summed similarity,
    ``lowest`` by the lowest label (scikit-learn's ``KNeighborsClassifier.predict``, the authors' rule)."""
    import numpy as np

    votes = np.asarray(votes, dtype=np.float64)
    if tie_break == "lowest":
        return votes.argmax(axis=1)  # numpy returns the first (lowest) maximal class
    if tie_break == "similarity":
        return (votes * 1e6 + np.asarray(simsum, dtype=np.float64)).argmax(axis=1)
    raise ValueError(f"tie_break={tie_break!r}: expected similarity or lowest")
