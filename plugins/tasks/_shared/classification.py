"""Shared pieces of the frozen-feature classification tasks (retrieval, probe)."""

from __future__ import annotations

from typing import Any

from dermbench.api import DermbenchError, Split

CLS_METRICS = ("auroc_macro", "f1_macro", "accuracy", "balanced_accuracy")
#: calibration of the predicted probabilities (dermbench.stats: ECE with 15 equal-width bins, Brier)
CAL_METRICS = ("ece", "brier")
#: what every single-label classification task reports (probe, retrieval, finetune, zeroshot)
CLASSIFICATION_METRICS = CLS_METRICS + CAL_METRICS


def n_classes(split: Split) -> int:
    names = split.dataset.label_names or list(split.dataset.info.label_names)
    if names:
        return len(names)
    return int(max(s.label for s in split.dataset.samples if s.label is not None)) + 1


def labelled(split: Split) -> "Any":
    """Labels of a split, refusing unlabelled samples with a clear message."""
    missing = [s.id for s in split.samples if s.label is None]
    if missing:
        raise DermbenchError(
            f"{len(missing)} sample(s) of {split.dataset.name}:{split.name} have no label (e.g. {missing[:3]}); "
            "classification tasks need a label for every sample"
        )
    return split.labels


def check_train_classes(y_train: "Any", n: int, split: Split) -> None:
    import numpy as np

    present = np.unique(y_train)
    if len(present) < 2:
        raise DermbenchError(
            f"the training split of {split.dataset.name} has a single class ({present.tolist()}); "
            "a classifier needs at least two"
        )


def predictions(split: Split, y_true: "Any", scores: "Any", y_pred: "Any") -> dict[str, Any]:
    return {"ids": split.ids, "y_true": y_true, "scores": scores, "y_pred": y_pred}


def reliability_plot(y_true: "Any", scores: "Any", path: "Any", title: str = "") -> str:
    """Reliability diagram (accuracy vs confidence per bin, with the sample count) saved as a PNG.

    Uses the bins of ``dermbench.stats`` (15 equal-width bins, bin k holds confidences in (k/15, (k+1)/15]),
    so the ECE in the title is the one in the result record.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dermbench import api

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y_true)
    conf, correct = s.max(axis=1), (s.argmax(axis=1) == y)
    nb = api.ECE_BINS
    b = np.clip(np.ceil(conf * nb).astype(np.int64) - 1, 0, nb - 1)
    count = np.bincount(b, minlength=nb)
    acc = np.bincount(b, weights=correct.astype(float), minlength=nb) / np.maximum(count, 1)
    mconf = np.bincount(b, weights=conf, minlength=nb) / np.maximum(count, 1)
    ece = float(np.sum(count / len(y) * np.abs(acc - mconf)))
    edges = np.arange(nb) / nb
    used = count > 0
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.bar(edges[used], acc[used], width=1 / nb, align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
    ax.bar(edges[used], mconf[used], width=1 / nb, align="edge", fill=False, edgecolor="#c44e52", lw=1.3,
           label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for x, c, a in zip(edges[used], count[used], acc[used]):
        ax.text(x + 0.5 / nb, min(a + 0.02, 0.97), str(int(c)), ha="center", fontsize=6)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
           title=f"{title}\nECE={ece:.3f} (15 bins, n={len(y)})".strip())
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def calibration_artifacts(ctx: "Any", y_true: "Any", scores: "Any", name: str = "reliability.png") -> list[str]:
    """The reliability plot of a cell, written into ``ctx.out_dir``; a plotting failure never loses the cell."""
    try:
        title = f"{getattr(ctx, 'model_name', ctx.model_info.name)} / {ctx.dataset.name}"
        return [reliability_plot(y_true, scores, ctx.out_dir / name, title)]
    except Exception as e:  # matplotlib missing or a backend problem: the metrics are still recorded
        ctx.log(f"reliability plot not written: {type(e).__name__}: {e}")
        return []
