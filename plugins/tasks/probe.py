"""Linear probe on frozen features: Adam lr 5e-3, cosine schedule, 50 epochs, cross-entropy (DermINO).

With ``train_fraction`` or ``shots`` (a value or a list) the probe is trained on ``draws`` seeded label subsets
per setting and the label-efficiency curve goes into ``extra['label_efficiency']`` (see label_efficiency/curves.py);
the record's predictions are then those of the largest setting, draw 0.
"""

from __future__ import annotations

from dermbench import hookimpl
from dermbench.api import TaskInfo, TaskOutput
from dermbench_plugins.tasks._shared.classification import (
    CLASSIFICATION_METRICS, calibration_artifacts, check_train_classes, labelled, n_classes, predictions,
)
from dermbench_plugins.tasks.label_efficiency.curves import CURVE_DEFAULTS, CURVE_KEY, curve_output, parse_settings

INFO = TaskInfo(
    name="probe",
    description="linear head on frozen embeddings (Adam 5e-3, cosine, 50 epochs, CE); features standardised on train; "
    "train_fraction=[...] / shots=[...] with draws=N give a label-efficiency curve",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLASSIFICATION_METRICS,
    primary_metric="auroc_macro",
    defaults={"epochs": 50, "lr": 5e-3, "batch_size": 256, "weight_decay": 0.0, "standardize": True,
              "train_split": "train", "test_split": "test", **CURVE_DEFAULTS},
)


def train_linear(xtr, ytr, n_cls: int, *, epochs: int, lr: float, batch_size: int, weight_decay: float, seed: int):
    """Train a linear head deterministically on CPU features; returns the torch module."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(xtr, dtype=torch.float32)
    Y = torch.as_tensor(ytr, dtype=torch.long)
    head = torch.nn.Linear(X.shape[1], n_cls)
    with torch.no_grad():  # seeded init independent of global RNG state
        bound = 1.0 / X.shape[1] ** 0.5
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=g))
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(X) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for lo in range(0, len(X), batch_size):
            idx = perm[lo : lo + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(head(X[idx]), Y[idx])
            loss.backward()
            opt.step()
            sched.step()
    return head


class Probe:
    info = INFO

    def __init__(self, epochs=50, lr=5e-3, batch_size=256, weight_decay=0.0, standardize=True,
                 train_split="train", test_split="test", train_fraction=None, shots=None, draws=5, curve_boot=None,
                 reach=None):
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.weight_decay, self.standardize = float(weight_decay), bool(standardize)
        self.train_split, self.test_split = train_split, test_split
        self.settings = parse_settings(train_fraction, shots, "probe")
        self.draws, self.reach = int(draws), reach
        self.curve_boot = int(curve_boot) if curve_boot is not None else None

    def fit_predict(self, xtr, ytr, xte, n_cls: int, seed: int):
        """Standardise on the given training rows, train the head, return (softmax scores, argmax)."""
        import numpy as np
        import torch

        if self.standardize:
            mu, sd = xtr.mean(0, keepdims=True), xtr.std(0, keepdims=True) + 1e-6
            xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        head = train_linear(xtr, ytr, n_cls, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                            weight_decay=self.weight_decay, seed=seed)
        with torch.no_grad():
            logits = head(torch.as_tensor(xte, dtype=torch.float32))
            scores = torch.softmax(logits.double(), dim=1).numpy()
        return scores, np.argmax(scores, axis=1)

    def run(self, ctx) -> TaskOutput:
        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        xtr, xte = ctx.features(train), ctx.features(test)
        extra: dict = {"n_train": len(train), "epochs": self.epochs}
        if self.settings:
            curve, scores, y_pred = curve_output(
                ctx, train, test, ytr, yte, lambda pos: self.fit_predict(xtr[pos], ytr[pos], xte, C, ctx.seed),
                self.settings, draws=self.draws, n_boot=self.curve_boot, metrics=CLASSIFICATION_METRICS,
                reach=self.reach)
            extra[CURVE_KEY] = curve
        else:
            scores, y_pred = self.fit_predict(xtr, ytr, xte, C, ctx.seed)
        arts = calibration_artifacts(ctx, yte, scores)
        return TaskOutput(predictions(test, yte, scores, y_pred), list(CLASSIFICATION_METRICS), test,
                          extra=extra, artifacts=arts)


@hookimpl
def register_tasks(register):
    register(INFO, Probe)
