"""The trainable part of the federated task: a linear projection on frozen features, trained locally.

One routine serves the Flower clients, the centralised upper bound and the local-only lower bound, so the
three differ only in which data they see: a round is ``local_epochs`` of Adam with a cosine schedule started
afresh from the current global weights (DermINO: Adam lr 2e-4, cosine, 2 local epochs). Shuffling is seeded
by (seed, round) only, so identical clients produce identical updates and FedAvg of them equals
centralised training on one copy. Pure numpy: no torch in the client processes.
"""

from __future__ import annotations

import math

import numpy as np

Weights = dict[str, np.ndarray]  # {"weight": (C, D) float32, "bias": (C,) float32}


def init_weights(dim: int, n_classes: int, seed: int, kind: str = "uniform") -> Weights:
    """Seeded uniform(+-1/sqrt(D)) weights (``kind='normal'``: N(0, 0.01), the DermINO authors' linear head)
    and zero bias, independent of any global RNG state."""
    rng = np.random.default_rng([seed, dim, n_classes])
    if kind == "normal":
        w = rng.normal(0.0, 0.01, size=(n_classes, dim))
    else:
        bound = 1.0 / max(dim, 1) ** 0.5
        w = rng.uniform(-bound, bound, size=(n_classes, dim))
    return {"weight": w.astype(np.float32), "bias": np.zeros(n_classes, dtype=np.float32)}


def local_train(weights: Weights, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch_size: int,
                seed: int, server_round: int, proximal_mu: float = 0.0, schedule: str = "step",
                eta_min: float = 0.0) -> tuple[Weights, float]:
    """Train from ``weights`` for ``epochs`` on (x, y); returns new weights and the mean training loss.

    Mini-batch softmax cross-entropy, Adam (torch defaults: betas 0.9/0.999, eps 1e-8, bias-corrected) and
    a per-step cosine schedule (torch ``CosineAnnealingLR`` over all steps of the call), in float64 numpy:
    a ClientApp process then needs no torch import (each Flower message may start a fresh process), and
    ``tests/test_federated.py`` checks it against torch. ``proximal_mu`` > 0 adds FedProx's
    (mu/2)·||w - w_global||² term (Flower's FedProx strategy sends mu). ``schedule='epoch'``: the DermINO
    authors' CosineAnnealingLR(T_max=epochs, eta_min) stepped once per epoch (constant within an epoch).
    """
    W = np.array(weights["weight"], dtype=np.float64)
    b = np.array(weights["bias"], dtype=np.float64)
    n = len(x)
    if n == 0 or epochs <= 0:
        return {"weight": W.astype(np.float32), "bias": b.astype(np.float32)}, float("nan")
    X = np.asarray(x, dtype=np.float64)
    Y = np.asarray(y, dtype=np.int64)
    W0, b0 = W.copy(), b.copy()
    params = [W, b]
    m = [np.zeros_like(W), np.zeros_like(b)]
    v = [np.zeros_like(W), np.zeros_like(b)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    bs = max(1, int(batch_size))
    total_steps = max(1, epochs * -(-n // bs))
    rng = np.random.default_rng([int(seed), int(server_round)])
    step, total, count = 0, 0.0, 0
    for epoch in range(epochs):
        perm = rng.permutation(n)
        for lo in range(0, n, bs):
            idx = perm[lo : lo + bs]
            xb, yb = X[idx], Y[idx]
            logits = xb @ W.T + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            loss = float(-np.mean(np.log(np.clip(p[np.arange(len(yb)), yb], 1e-300, None))))
            g = p
            g[np.arange(len(yb)), yb] -= 1.0
            g /= len(yb)
            grads = [g.T @ xb, g.sum(axis=0)]
            if proximal_mu > 0:
                loss += 0.5 * proximal_mu * float(((W - W0) ** 2).sum() + ((b - b0) ** 2).sum())
                grads[0] = grads[0] + proximal_mu * (W - W0)
                grads[1] = grads[1] + proximal_mu * (b - b0)
            if schedule == "epoch":
                lr_t = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2
            else:
                lr_t = lr * (1 + math.cos(math.pi * step / total_steps)) / 2  # lr used by this step
            step += 1
            for k, (prm, gr) in enumerate(zip(params, grads)):
                m[k] = beta1 * m[k] + (1 - beta1) * gr
                v[k] = beta2 * v[k] + (1 - beta2) * gr * gr
                mhat = m[k] / (1 - beta1**step)
                vhat = v[k] / (1 - beta2**step)
                prm -= lr_t * mhat / (np.sqrt(vhat) + eps)
            total += loss * len(idx)
            count += len(idx)
    return {"weight": W.astype(np.float32), "bias": b.astype(np.float32)}, total / max(count, 1)


def predict_proba(weights: Weights, x: np.ndarray) -> np.ndarray:
    """Softmax scores (n, C) in float64 (numerically stable)."""
    logits = np.asarray(x, dtype=np.float64) @ np.asarray(weights["weight"], dtype=np.float64).T
    logits += np.asarray(weights["bias"], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def evaluate(weights: Weights, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``weights`` on (x, y); NaNs for an empty set."""
    if len(x) == 0:
        return float("nan"), float("nan")
    p = predict_proba(weights, x)
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
    return loss, float(np.mean(p.argmax(1) == y))


def train_rounds(x: np.ndarray, y: np.ndarray, init: Weights, *, rounds: int, local_epochs: int, lr: float,
                 batch_size: int, seed: int, schedule: str = "step", eta_min: float = 0.0) -> Weights:
    """Centralised/local-only training with the federated schedule: ``rounds`` restarts of ``local_epochs``.

    Same compute budget and optimiser schedule as a federation; with one client it is exactly FedAvg.
    """
    w = init
    for r in range(1, rounds + 1):
        w, _ = local_train(w, x, y, epochs=local_epochs, lr=lr, batch_size=batch_size, seed=seed, server_round=r,
                           schedule=schedule, eta_min=eta_min)
    return w
