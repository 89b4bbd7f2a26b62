"""PanDerm's linear probe, re-implemented from its description and released evaluation
(``SiyuanYan1/PanDerm`` ``classification/linear_eval.py``, which calls a UNI-style ``eval_linear_probe``):

logistic regression on the **raw** frozen features (no standardisation), fitted full-batch with torch L-BFGS
(strong-Wolfe line search, up to 1000 iterations), objective ``mean cross-entropy + (1/C) · 0.5 · ‖W‖₂`` with
the **unsquared** Frobenius norm of the weight (bias not penalised), and a fixed ``C = D·K/100`` (D feature
dimension, K classes) instead of a sweep.

For checking against scikit-learn, :func:`fit_logreg` also fits the squared penalty ``λ‖W‖²``; and an
unsquared-penalty optimum W* is also the optimum of the squared problem with λ₂ = λ/(2‖W*‖), i.e. of
``LogisticRegression(C=‖W*‖/(n·λ))`` (tests/test_protocols.py checks both).
"""

from __future__ import annotations

from typing import Any


def auto_C(dim: int, n_classes: int) -> float:
    """PanDerm's fixed inverse regularisation strength C = D·K/100."""
    return float(dim) * float(n_classes) / 100.0


def fit_logreg(X: Any, y: Any, n_classes: int, *, lam: float, norm: str = "unsquared", max_iter: int = 1000,
               seed: int = 0, dtype: Any = None) -> tuple[Any, Any]:
    """Multinomial logistic regression by L-BFGS; returns (W (K, D), b (K,)) as float64 numpy arrays.

    Objective: mean CE + ``lam``·‖W‖ (``norm='unsquared'``, PanDerm with lam = 0.5/C) or + ``lam``·‖W‖²
    (``norm='squared'``; scikit-learn's ``LogisticRegression(C=c)`` is lam = 1/(2·n·c)). The start point is a
    seeded nn.Linear initialisation, as in the authors' probe; the problem is convex, so it only matters
    through the iteration budget."""
    import numpy as np
    import torch

    if norm not in ("unsquared", "squared"):
        raise ValueError(f"norm={norm!r}: expected unsquared or squared")
    dt = dtype or torch.float64
    Xt = torch.as_tensor(np.asarray(X), dtype=dt)
    Yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    D = Xt.shape[1]
    bound = 1.0 / D**0.5
    W = (torch.rand(n_classes, D, generator=g, dtype=dt) * 2 - 1).mul_(bound).requires_grad_(True)
    b = (torch.rand(n_classes, generator=g, dtype=dt) * 2 - 1).mul_(bound).requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=int(max_iter), line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure():
        opt.zero_grad()
        logits = Xt @ W.T + b
        loss = torch.nn.functional.cross_entropy(logits, Yt)
        reg = W.norm() if norm == "unsquared" else W.pow(2).sum()
        total = loss + lam * reg
        total.backward()
        return total

    opt.step(closure)
    return W.detach().double().numpy(), b.detach().double().numpy()


def predict_proba(W: Any, b: Any, X: Any) -> Any:
    """Softmax probabilities (n, K) in float64."""
    import numpy as np

    z = np.asarray(X, dtype=np.float64) @ np.asarray(W).T + np.asarray(b)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cv_C(X: Any, y: Any, n_classes: int, *, base: float, seed: int, folds: int = 3,
         factors: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0), max_iter: int = 300) -> tuple[float, dict]:
    """Choose C from ``base × factors`` by stratified k-fold cross-validated log-loss on the training rows
    only (a sweep, which PanDerm does not do; offered as ``probe.C=cv``). Returns (C, {C: mean log-loss})."""
    import numpy as np

    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for c in np.unique(y):  # stratified fold assignment
        pos = rng.permutation(np.flatnonzero(y == c))
        fold[pos] = np.arange(len(pos)) % folds
    losses: dict[float, float] = {}
    for f in factors:
        C = base * f
        tot = 0.0
        for k in range(folds):
            tr, va = fold != k, fold == k
            if not va.any() or len(np.unique(y[tr])) < 2:
                continue
            W, b = fit_logreg(X[tr], y[tr], n_classes, lam=0.5 / C, max_iter=max_iter, seed=seed)
            p = predict_proba(W, b, X[va])
            tot += float(-np.log(np.clip(p[np.arange(va.sum()), y[va]], 1e-12, None)).sum())
        losses[C] = tot / len(y)
    best = min(losses, key=lambda c: (losses[c], -c))
    return best, losses
