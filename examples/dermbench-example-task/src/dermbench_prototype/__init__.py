"""A dermbench task plugin: nearest-prototype classification on frozen features.

Each class is represented by the mean of its training embeddings (its prototype, as in prototypical
networks, Snell et al. 2017) after centring on the training mean and L2 normalisation ("CL2N", which makes
nearest-centroid classification on frozen features competitive: SimpleShot, Wang et al. 2019); a test image
gets a softmax over its cosine similarities to the prototypes. It has no trainable parameters and one option, so it isolates how well a backbone clusters
diagnoses, and it behaves well with few training images per class (a label-scarce clinic's setting).

Everything comes from ``dermbench.api`` and ``dermbench.hookimpl``: the ``TaskInfo`` metadata, the task
class (``Prototype(**options).run(ctx) -> TaskOutput``) and the ``register_tasks`` hook. Walk-through:
docs/plugins.md, "Write a task plugin in 15 minutes".
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import DermbenchError, TaskInfo, TaskOutput

__version__ = "0.1.0"

#: metric names from dermbench's metric table (docs/reference.md); each needs prediction keys this task returns
METRICS = ("auroc_macro", "balanced_accuracy", "accuracy", "f1_macro", "ece", "brier")

INFO = TaskInfo(
    name="prototype",
    description="nearest class prototype on centred, L2-normalised embeddings (SimpleShot CL2N): scores = "
    "softmax(cosine similarity to each class mean / temperature)",
    requires=frozenset({"labels"}),  # dataset fields (dermbench.api.FIELDS)
    capabilities=frozenset({"cls"}),  # model capabilities (dermbench.api.CAPABILITIES): uses Backbone.embed
    metrics=METRICS,
    primary_metric="auroc_macro",
    defaults={"temperature": 0.1, "train_split": "train", "test_split": "test"},  # every option, with its default
)


def _unit(x: Any) -> Any:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Prototype:
    info = INFO

    def __init__(self, temperature: float = 0.1, train_split: str = "train", test_split: str = "test") -> None:
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise DermbenchError(f"prototype: temperature={temperature!r} must be > 0, "
                                 "e.g. --task-opt prototype.temperature=0.1")
        self.train_split, self.test_split = train_split, test_split

    def run(self, ctx: Any) -> TaskOutput:
        import numpy as np

        train, test = ctx.split(self.train_split), ctx.split(self.test_split)  # Split objects, not names
        n_cls = len(ctx.dataset.label_names)
        for split in (train, test):
            if any(s.label is None for s in split.samples):
                raise DermbenchError(f"prototype: {ctx.dataset.name}:{split.name} has unlabelled samples")
        y_train, y_test = train.labels, test.labels
        absent = [ctx.dataset.label_names[c] for c in range(n_cls) if not (y_train == c).any()]
        if absent:
            raise DermbenchError(f"prototype: no training image of class(es) {absent} in {ctx.dataset.name}:"
                                 f"{train.name}, so they have no prototype; use a larger dataset or split")
        f_train, f_test = ctx.features(train), ctx.features(test)  # cached (n, D) embeddings from Backbone.embed
        centre = np.asarray(f_train, dtype=np.float64).mean(axis=0)  # the training mean only: no test leakage
        x_train, x_test = _unit(f_train - centre), _unit(f_test - centre)
        prototypes = _unit(np.stack([x_train[y_train == c].mean(axis=0) for c in range(n_cls)]))
        sims = x_test @ prototypes.T  # (n_test, C) cosine similarities
        z = sims / self.temperature
        scores = np.exp(z - z.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
        ctx.log(f"prototype: {n_cls} prototypes from {len(train)} training images")
        return TaskOutput(
            predictions={"ids": test.ids, "y_true": y_test, "scores": scores, "y_pred": sims.argmax(axis=1)},
            metrics=list(METRICS),
            split=test,
            extra={"n_train": len(train), "temperature": self.temperature,
                   "prototype_cosine": np.round(prototypes @ prototypes.T, 4).tolist()},
        )


@hookimpl
def register_tasks(register):
    register(INFO, Prototype)
