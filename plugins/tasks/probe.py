"""Linear probe on frozen features: Adam lr 5e-3, cosine schedule, 50 epochs, cross-entropy (DermINO)."""

from __future__ import annotations

from dermbench import hookimpl
from dermbench.api import TaskInfo, TaskOutput
from dermbench_plugins.tasks._classification import CLS_METRICS, check_train_classes, labelled, n_classes, predictions

INFO = TaskInfo(
    name="probe",
    description="linear head on frozen embeddings (Adam 5e-3, cosine, 50 epochs, CE); features standardised on train",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLS_METRICS,
    primary_metric="auroc_macro",
    defaults={"epochs": 50, "lr": 5e-3, "batch_size": 256, "weight_decay": 0.0, "standardize": True,
              "train_split": "train", "test_split": "test"},
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
                 train_split="train", test_split="test"):
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.weight_decay, self.standardize = float(weight_decay), bool(standardize)
        self.train_split, self.test_split = train_split, test_split

    def run(self, ctx) -> TaskOutput:
        import numpy as np
        import torch

        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        xtr, xte = ctx.features(train), ctx.features(test)
        if self.standardize:
            mu, sd = xtr.mean(0, keepdims=True), xtr.std(0, keepdims=True) + 1e-6
            xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        head = train_linear(xtr, ytr, C, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                            weight_decay=self.weight_decay, seed=ctx.seed)
        with torch.no_grad():
            logits = head(torch.as_tensor(xte, dtype=torch.float32))
            scores = torch.softmax(logits.double(), dim=1).numpy()
        y_pred = np.argmax(scores, axis=1)
        return TaskOutput(predictions(test, yte, scores, y_pred), list(CLS_METRICS), test,
                          extra={"n_train": len(train), "epochs": self.epochs})


@hookimpl
def register_tasks(register):
    register(INFO, Probe)
