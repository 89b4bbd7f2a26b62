"""Hand-checkable values for the DermINO losses (formulas in ../shared/DERMINO_PRETRAINING_NOTES.md §5.2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dermbench.api import DermbenchError
from dermino_model.losses import (
    MeanCentering,
    dino_cls_loss,
    entropy,
    ibot_patch_loss,
    ibot_patch_loss_dense,
    koleo_loss,
    masked_bce,
    sinkhorn_knopp,
)

torch.set_num_threads(1)


def naive_sk(t: torch.Tensor, temp: float, n_iter: int) -> torch.Tensor:
    """DINOv2's formula without max-subtraction (reference for moderate logits)."""
    q = torch.exp(t.double() / temp).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iter):
        q /= q.sum(1, keepdim=True)
        q /= k
        q /= q.sum(0, keepdim=True)
        q /= b
    return (q * b).T


# ---------------------------------------------------------------- DINO
def test_dino_uniform_teacher_zero_student_is_log_k():
    for k in (7, 65536):
        b, n_local = 3, 4
        t = torch.full((2 * b, k), 1.0 / k)
        loss = dino_cls_loss(torch.zeros(2 * b, k), torch.zeros(n_local * b, k), t)
        assert loss.item() == pytest.approx(math.log(k), rel=1e-6)
    assert math.log(65536) == pytest.approx(11.0904, abs=1e-4)


def test_dino_matches_hand_formula_and_pair_count():
    g = torch.Generator().manual_seed(0)
    b, k, n_local = 4, 10, 3
    sg, sl = torch.randn(2 * b, k, generator=g), torch.randn(n_local * b, k, generator=g)
    t = torch.softmax(torch.randn(2 * b, k, generator=g), -1)
    tv = t.split(b)
    views = list(sg.split(b)) + list(sl.split(b))
    terms = []
    for i, s in enumerate(views):
        for j, tt in enumerate(tv):
            if i < 2 and i == j:
                continue
            terms.append(-(tt * F.log_softmax(s / 0.1, -1)).sum(-1).mean())
    assert len(terms) == 2 + 2 * n_local
    expected = torch.stack(terms).mean()
    assert dino_cls_loss(sg, sl, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dino_excludes_same_view_pair_and_is_view_swap_invariant():
    g = torch.Generator().manual_seed(1)
    b, k = 5, 8
    sg = torch.randn(2 * b, k, generator=g)
    t = torch.softmax(torch.randn(2 * b, k, generator=g), -1)
    # only teacher view 2 (rows b:) may see student view 1 (rows :b): perturbing student view 1 changes the
    # loss by exactly the change of its cross term with teacher view 2.
    sg2 = sg.clone()
    sg2[:b] += torch.randn(b, k, generator=g)
    ce = lambda s, tt: -(tt * F.log_softmax(s / 0.1, -1)).sum(-1).mean()  # noqa: E731
    diff = dino_cls_loss(sg2, None, t) - dino_cls_loss(sg, None, t)
    expected = (ce(sg2[:b], t[b:]) - ce(sg[:b], t[b:])) / 2
    assert diff.item() == pytest.approx(expected.item(), rel=1e-5)
    swap = lambda x: torch.cat([x[b:], x[:b]])  # noqa: E731
    assert dino_cls_loss(swap(sg), None, swap(t)).item() == pytest.approx(dino_cls_loss(sg, None, t).item(), rel=1e-6)


def test_dino_refuses_mismatched_views():
    with pytest.raises(DermbenchError, match="n_global"):
        dino_cls_loss(torch.zeros(6, 4), None, torch.zeros(5, 4))


# ---------------------------------------------------------------- centering
def test_mean_centering_update_and_lag():
    c = MeanCentering(4)
    const = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(6, 1)
    p0 = c.targets(const, 0.04)  # centre 0 used for this batch
    assert torch.allclose(p0.sum(-1), torch.ones(6))
    assert torch.allclose(p0, torch.softmax(const / 0.04, -1))
    c.update(const)
    assert torch.allclose(c.center, 0.1 * const[:1])
    p1 = c.targets(const, 0.04)
    assert torch.allclose(p1, torch.softmax((const - 0.1 * const[:1]) / 0.04, -1))


# ---------------------------------------------------------------- Sinkhorn-Knopp
def test_sk_rows_sum_to_one_and_columns_balance():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(32, 16, generator=g)
    q3 = sinkhorn_knopp(t, 0.07, 3)
    assert torch.allclose(q3.sum(1), torch.ones(32), atol=1e-5)
    assert torch.allclose(q3.double(), naive_sk(t, 0.07, 3).to(q3.dtype).double(), atol=1e-5)
    q3s, q50 = sinkhorn_knopp(t, 0.3, 3), sinkhorn_knopp(t, 0.3, 50)
    assert torch.allclose(q50.sum(0), torch.full((16,), 32 / 16), rtol=1e-3)  # each prototype gets B/K
    assert (q3s.sum(0) - 2).abs().max() > (q50.sum(0) - 2).abs().max()


def test_sk_shift_invariance_and_temperature():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(24, 12, generator=g)
    per_proto = torch.randn(1, 12, generator=g) * 3
    per_sample = torch.randn(24, 1, generator=g) * 3
    q = sinkhorn_knopp(t, 0.1, 3)
    assert torch.allclose(sinkhorn_knopp(t + per_proto, 0.1, 3), q, atol=1e-5)  # exact: first row step
    q_many = sinkhorn_knopp(t, 0.5, 300)  # a per-sample shift is only removed at convergence
    assert torch.allclose(sinkhorn_knopp(t + per_sample / 3, 0.5, 300), q_many, atol=1e-4)
    assert entropy(sinkhorn_knopp(t, 0.04, 3)) < entropy(sinkhorn_knopp(t, 0.1, 3))


def test_sk_finite_where_naive_overflows():
    t = torch.zeros(8, 6)
    t[:, 0] = 10.0
    t[::2, 1] = 9.0
    naive = torch.exp(t / 0.04)
    assert not torch.isfinite(naive).all()
    q = sinkhorn_knopp(t, 0.04, 3)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(8), atol=1e-5)
    q16 = sinkhorn_knopp(t.half(), 0.04, 3)
    assert q16.dtype == torch.float32 and torch.isfinite(q16).all()


# ---------------------------------------------------------------- iBOT
def test_ibot_gradient_zero_on_unmasked_and_per_image_weighting():
    g = torch.Generator().manual_seed(4)
    n_crops, n, k = 4, 9, 6
    s = torch.randn(n_crops, n, k, generator=g, requires_grad=True)
    t = torch.softmax(torch.randn(n_crops, n, k, generator=g), -1)
    masks = torch.zeros(n_crops, n, dtype=torch.bool)
    masks[0, 0] = True  # one token
    masks[1, :7] = True  # seven tokens; crops 2, 3 unmasked
    loss = ibot_patch_loss_dense(s, t, masks)
    loss.backward()
    assert (s.grad[~masks] == 0).all()
    assert (s.grad[masks].abs().sum(-1) > 0).all()
    ce = -(t * F.log_softmax(s.detach() / 0.1, -1)).sum(-1)
    expected = (ce[0, 0] + ce[1, :7].mean()) / n_crops  # each masked image weighs the same; unmasked crops count
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    s2 = s.detach().clone()
    s2[~masks] = 100.0
    assert ibot_patch_loss_dense(s2, t, masks).item() == pytest.approx(loss.item(), rel=1e-6)


def test_ibot_half_masked_is_half_the_masked_mean_and_empty_is_zero():
    k = 5
    s = torch.zeros(3, k)
    t = torch.full((3, k), 1.0 / k)
    w = torch.tensor([1 / 3, 1 / 3, 1 / 3])  # one crop with 3 masked tokens, two crops total
    assert ibot_patch_loss(s, t, w, n_crops=2).item() == pytest.approx(math.log(k) / 2, rel=1e-6)
    empty = ibot_patch_loss(torch.zeros(0, k, requires_grad=True), torch.zeros(0, k), torch.zeros(0), 2)
    assert empty.item() == 0.0


# ---------------------------------------------------------------- KoLeo
def test_koleo_reference_values():
    eye = torch.eye(6, 16)
    assert koleo_loss(eye).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-5)
    assert koleo_loss(eye).item() == pytest.approx(-0.34657, abs=1e-5)
    scaled = eye * torch.tensor([[1.0], [5.0], [0.1], [2.0], [3.0], [7.0]])
    assert koleo_loss(scaled).item() == pytest.approx(koleo_loss(eye).item(), abs=1e-6)
    same = torch.ones(2, 768)
    val = koleo_loss(same).item()
    assert math.isfinite(val) and val == pytest.approx(15.06, abs=0.01)
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert koleo_loss(antipodal).item() == pytest.approx(-math.log(2.0), abs=1e-6)


def test_koleo_batch_of_one_is_refused_and_fp32_under_autocast():
    with pytest.raises(DermbenchError, match="at least 2 samples"):
        koleo_loss(torch.randn(1, 8))
    x = torch.randn(4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = koleo_loss(x)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------- masked BCE
def test_masked_bce_ignores_unknown_and_matches_bce_on_known():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 5, generator=g, requires_grad=True)
    y = (torch.rand(4, 5, generator=g) > 0.5).float()
    known = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    loss = masked_bce(logits, y, known)
    expected = F.binary_cross_entropy_with_logits(logits[known], y[known])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    y2 = y.clone()
    y2[~known] = torch.nan  # garbage where unknown changes nothing
    assert masked_bce(logits, y2, known).item() == pytest.approx(loss.item(), rel=1e-6)


def test_masked_bce_all_unknown_is_zero_not_nan_and_stable_at_large_logits():
    w = torch.randn(3, 8, requires_grad=True)
    logits = torch.randn(4, 8) @ w.T
    loss = masked_bce(logits, torch.ones(4, 3), torch.zeros(4, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    big = torch.tensor([[100.0, -100.0]])
    val = masked_bce(big, torch.tensor([[0.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert val.item() == pytest.approx(100.0, rel=1e-6)
