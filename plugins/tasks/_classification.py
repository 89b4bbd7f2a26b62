"""Shared pieces of the frozen-feature classification tasks (retrieval, probe)."""

from __future__ import annotations

from typing import Any

from dermbench.api import DermbenchError, Split

CLS_METRICS = ("auroc_macro", "f1_macro", "accuracy", "balanced_accuracy")


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
