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
    "solver=adam|lbfgs (lbfgs: PanDerm's L-BFGS logistic regression, C=auto (D*K/100) | cv | <float>, penalty "
    "0.5*|W|/C unsquared); epoch_length=epoch|auto|<iters> (auto: the DermINO authors' per-dataset iterations "
    "per 'epoch', batches from an endless shuffled stream); init=uniform|normal (N(0, .01)); "
    "train_fraction=[...] / shots=[...] with draws=N give a label-efficiency curve; "
    "--protocol dermino|panderm (docs/protocols.md)",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLASSIFICATION_METRICS,
    primary_metric="auroc_macro",
    defaults={"epochs": 50, "lr": 5e-3, "batch_size": 256, "weight_decay": 0.0, "standardize": True,
              "solver": "adam", "C": "auto", "epoch_length": "epoch", "init": "uniform",
              "train_split": "train", "test_split": "test", **CURVE_DEFAULTS},
    option_ranges={"solver": frozenset({"adam", "lbfgs"}), "init": frozenset({"uniform", "normal"}),
                   "epochs": (1, None), "batch_size": (1, None), "lr": (0, None), "weight_decay": (0, None),
                   "draws": (1, None)},
    protocols={
        # DermINO's eval/linear.py: raw features, N(0, .01) init, epochs x per-dataset epoch_length iterations
        "dermino": {"standardize": False, "epoch_length": "auto", "init": "normal"},
        # PanDerm's linear_eval.py: L-BFGS logistic regression on raw features, fixed C = D*K/100
        "panderm": {"solver": "lbfgs", "C": "auto", "standardize": False},
    },
)


def train_linear(xtr, ytr, n_cls: int, *, epochs: int, lr: float, batch_size: int, weight_decay: float, seed: int,
                 init: str = "uniform", iterations: int | None = None):
    """Train a linear head deterministically on CPU features; returns the torch module.

    ``iterations``: a fixed number of Adam steps on batches cut from an endless shuffled stream, with the cosine
    schedule over those steps (the DermINO authors' "epochs x epoch_length"); None: ``epochs`` true passes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.tensor(xtr, dtype=torch.float32)  # a copy: cached features are read-only memory maps
    Y = torch.as_tensor(ytr, dtype=torch.long)
    head = torch.nn.Linear(X.shape[1], n_cls)
    with torch.no_grad():  # seeded init independent of global RNG state
        if init == "normal":  # the authors' LinearClassifier: N(0, 0.01), bias 0
            head.weight.copy_(torch.empty_like(head.weight).normal_(0.0, 0.01, generator=g))
        else:
            bound = 1.0 / X.shape[1] ** 0.5
            head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=g))
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    if iterations is not None:
        from dermbench_plugins.tasks.protocols.dermino import stream_batches

        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iterations))
        loss_fn = torch.nn.CrossEntropyLoss()
        for idx in stream_batches(len(X), batch_size, iterations, g):
            opt.zero_grad(set_to_none=True)
            loss_fn(head(X[idx]), Y[idx]).backward()
            opt.step()
            sched.step()
        return head
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
                 reach=None, solver="adam", C="auto", epoch_length="epoch", init="uniform"):
        from dermbench.api import DermbenchError

        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.weight_decay = float(weight_decay)
        self.standardize = (standardize if isinstance(standardize, bool)
                            else str(standardize).lower() in ("1", "true", "yes"))
        self.solver, self.init = str(solver).lower(), str(init).lower()
        if self.solver not in ("adam", "lbfgs"):
            raise DermbenchError(f"probe solver={solver!r}: choose solver=adam (DermINO) or solver=lbfgs (PanDerm)")
        if self.init not in ("uniform", "normal"):
            raise DermbenchError(f"probe init={init!r}: choose init=uniform or init=normal")
        self.C = str(C).lower() if isinstance(C, str) else float(C)
        if isinstance(self.C, str) and self.C not in ("auto", "cv"):
            try:
                self.C = float(self.C)
            except ValueError:
                raise DermbenchError(f"probe C={C!r}: expected auto (D*K/100), cv or a positive number") from None
        if isinstance(self.C, float) and not self.C > 0:
            raise DermbenchError(f"probe C={C!r} must be positive")
        self.epoch_length_opt = epoch_length
        self.iterations: int | None = None  # set per run from epoch_length and the dataset
        self.fit_info: dict = {}
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
        if self.solver == "lbfgs":
            return self._fit_lbfgs(xtr, ytr, xte, n_cls, seed)
        head = train_linear(xtr, ytr, n_cls, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                            weight_decay=self.weight_decay, seed=seed, init=self.init, iterations=self.iterations)
        with torch.no_grad():
            logits = head(torch.tensor(xte, dtype=torch.float32))
            scores = torch.softmax(logits.double(), dim=1).numpy()
        return scores, np.argmax(scores, axis=1)

    def _fit_lbfgs(self, xtr, ytr, xte, n_cls: int, seed: int):
        """PanDerm's probe: L-BFGS logistic regression, objective mean CE + 0.5*|W|/C (unsquared norm)."""
        import numpy as np

        from dermbench_plugins.tasks.protocols import panderm

        xtr, xte = np.asarray(xtr, dtype=np.float64), np.asarray(xte, dtype=np.float64)
        base = panderm.auto_C(xtr.shape[1], n_cls)
        if self.C == "auto":
            C, info = base, {"C_rule": "D*K/100"}
        elif self.C == "cv":
            C, losses = panderm.cv_C(xtr, ytr, n_cls, base=base, seed=seed)
            info = {"C_rule": "3-fold CV log-loss over D*K/100 x {.01, .1, 1, 10, 100}",
                    "C_cv_logloss": {f"{c:.6g}": round(v, 6) for c, v in losses.items()}}
        else:
            C, info = float(self.C), {"C_rule": "given"}
        W, b = panderm.fit_logreg(xtr, ytr, n_cls, lam=0.5 / C, norm="unsquared", max_iter=1000, seed=seed)
        self.fit_info = {"solver": "lbfgs", "C": C, "penalty": "0.5*|W|_2/C (unsquared, bias free)", **info,
                         "weight_norm": float(np.linalg.norm(W))}
        scores = panderm.predict_proba(W, b, xte)
        return scores, np.argmax(scores, axis=1)

    def run(self, ctx) -> TaskOutput:
        from dermbench_plugins.tasks.protocols.dermino import epoch_length_for, probe_iterations

        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        xtr, xte = ctx.features(train), ctx.features(test)
        extra: dict = {"n_train": len(train), "epochs": self.epochs, "solver": self.solver,
                       "standardize": self.standardize}
        if self.solver == "adam":
            try:
                el = epoch_length_for(ctx.dataset.name, self.epoch_length_opt)
            except ValueError as e:
                from dermbench.api import DermbenchError

                raise DermbenchError(f"probe {e}") from None
            if el is not None:
                self.iterations = probe_iterations(self.epochs, el, len(train), self.batch_size)
            extra.update(init=self.init, epoch_length=el if el is not None else "epoch",
                         iterations=self.iterations if self.iterations is not None
                         else self.epochs * max(1, -(-len(train) // self.batch_size)))
        if self.settings:
            curve, scores, y_pred = curve_output(
                ctx, train, test, ytr, yte, lambda pos: self.fit_predict(xtr[pos], ytr[pos], xte, C, ctx.seed),
                self.settings, draws=self.draws, n_boot=self.curve_boot, metrics=CLASSIFICATION_METRICS,
                reach=self.reach)
            extra[CURVE_KEY] = curve
        else:
            scores, y_pred = self.fit_predict(xtr, ytr, xte, C, ctx.seed)
        extra.update(self.fit_info)
        arts = calibration_artifacts(ctx, yte, scores)
        from dermbench.api import operating_point_names  # binary results: clinical operating points (issue 18)

        return TaskOutput(predictions(test, yte, scores, y_pred), list(CLASSIFICATION_METRICS)
                          + operating_point_names(C), test, extra=extra, artifacts=arts)


@hookimpl
def register_tasks(register):
    register(INFO, Probe)
