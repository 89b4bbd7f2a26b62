"""The four DermINO losses, written from the DINOv2 / iBOT / KoLeo / DermINO formulas.

* DINO CLS loss: cross-entropy between teacher targets of one global view and the student's
  ``softmax(s / tau_s)`` of every *other* crop, averaged over the ``2 * N_local + 2`` pairs.
* Teacher targets: Sinkhorn-Knopp (default) or mean-centering with an EMA centre.
* iBOT: the same cross-entropy per masked patch token, averaged per image and divided by the number
  of *all* global crops (unmasked crops count in the denominator, as in DINOv2).
* KoLeo: ``-mean_i log(min_j ||x_i - x_j||)`` on L2-normalised vectors, per process, in fp32.
* Supervised: BCE-with-logits against disease prototypes, masked by the known-label matrix ``n_ij``.

Every loss runs in fp32 (autocast disabled) because softmax/exp of logits divided by 0.04 overflow
in half precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dermbench.api import DermbenchError
from dermino_model.dist import all_reduce_, world_size


def _fp32_no_autocast():
    return torch.autocast(device_type="cuda" if torch.cuda.is_available() else "cpu", enabled=False)


# --------------------------------------------------------------------------------------------------
# Teacher targets


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignments of the (global) batch to K prototypes; returns (B_local, K), rows sum to 1.

    Distributed: the batch size, total mass and prototype (row) sums are all-reduced, so the result on
    each rank equals single-process SK on the concatenated batch; ranks may hold different numbers of
    samples (iBOT's masked-token counts differ per rank). Numerics: fp32, and the per-prototype max over
    the global batch is subtracted before ``exp``. That shift is removed *exactly* by the first row
    normalisation (unlike a per-sample shift), and it keeps ``exp(10 / 0.04)`` from overflowing, the
    source of DINOv2's random SK NaNs (dinov2#360).
    """
    t = teacher_logits.detach().float() / temp  # (B, K)
    b_local, k = t.shape
    row_max = t.max(dim=0).values if b_local else torch.full((k,), -torch.inf, device=t.device)
    all_reduce_(row_max, op="max")
    q = torch.exp(t - row_max).T  # (K, B_local)
    b_total = torch.tensor(float(b_local), device=t.device)
    all_reduce_(b_total)
    total = q.sum()
    all_reduce_(total)
    q = q / total
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(n_iterations):
        rows = q.sum(dim=1, keepdim=True)
        all_reduce_(rows)
        q = q / rows.clamp_min(tiny) / k
        cols = q.sum(dim=0, keepdim=True)  # per-sample: local, no reduction needed
        q = q / cols.clamp_min(tiny) / b_total
    q = q * b_total
    return q.T.contiguous()


class MeanCentering(torch.nn.Module):
    """DINO's centering: ``softmax((t - c) / tau)`` with ``c`` an EMA (0.9) of the all-reduced batch mean.

    ``targets`` uses the centre *before* this batch's update, which reproduces DINOv2's one-step lag
    (its update is applied asynchronously at the next call).
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def targets(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        return F.softmax((teacher_logits.float() - self.center) / temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        t = teacher_logits.detach().float()
        s = t.sum(dim=0, keepdim=True)
        n = torch.tensor(float(t.shape[0]), device=t.device)
        all_reduce_(s)
        all_reduce_(n)
        mean = s / n.clamp_min(1.0)
        self.center.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)


# --------------------------------------------------------------------------------------------------
# DINO CLS loss


def cross_entropy_soft(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row ``-sum_k t_k log softmax(s / tau_s)_k`` in fp32."""
    logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * logp).sum(dim=-1)


def dino_cls_loss(
    student_global: torch.Tensor,
    student_local: torch.Tensor | None,
    teacher_probs: torch.Tensor,
    n_global: int = 2,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """DINO loss over all (student crop, teacher global view) pairs except same-view global pairs.

    Inputs are view-major: ``student_global`` (n_global*B, K), ``student_local`` (n_local*B, K),
    ``teacher_probs`` (n_global*B, K), view ``v`` occupying rows ``v*B:(v+1)*B``. The sum of the
    per-pair batch means is divided by the pair count ``n_global*(n_global-1) + n_local*n_global``.
    """
    with _fp32_no_autocast():
        b = teacher_probs.shape[0] // n_global
        if b * n_global != teacher_probs.shape[0] or student_global.shape[0] != teacher_probs.shape[0]:
            raise DermbenchError(
                f"dino_cls_loss: teacher rows {teacher_probs.shape[0]} / student global rows "
                f"{student_global.shape[0]} are not n_global={n_global} views of one batch"
            )
        t_views = teacher_probs.float().split(b)
        s_views = list(student_global.split(b))
        n_local = 0
        if student_local is not None and student_local.numel():
            n_local = student_local.shape[0] // b
            s_views += list(student_local.split(b))
        total = student_global.new_zeros((), dtype=torch.float32)
        pairs = 0
        for si, s in enumerate(s_views):
            logp = F.log_softmax(s.float() / student_temp, dim=-1)
            for ti, t in enumerate(t_views):
                if si < n_global and si == ti:
                    continue
                total = total - (t * logp).sum(dim=-1).mean()
                pairs += 1
        assert pairs == n_global * (n_global - 1) + n_local * n_global
        return total / pairs


# --------------------------------------------------------------------------------------------------
# iBOT masked-patch loss


def ibot_patch_loss(
    student_masked: torch.Tensor,
    teacher_probs_masked: torch.Tensor,
    masks_weight: torch.Tensor,
    n_crops: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """``-(1/n_crops) sum_p w_p sum_k t_pk log softmax(s_p / tau_s)_k`` over the masked tokens ``p``.

    ``masks_weight`` is ``1 / (#masked tokens of p's crop)``, so each masked crop contributes the mean
    over its tokens; ``n_crops`` counts every global crop (masked or not), as DINOv2 does.
    """
    with _fp32_no_autocast():
        if student_masked.shape[0] == 0:
            return student_masked.float().sum() * 0.0
        ce = cross_entropy_soft(student_masked, teacher_probs_masked, student_temp)
        return (ce * masks_weight.float()).sum() / n_crops


def ibot_patch_loss_dense(
    student_patches: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Dense form: (n_crops, N, K) logits/targets and an (n_crops, N) bool mask; only masked tokens count."""
    masks = masks.bool()
    per_crop = masks.sum(dim=1, keepdim=True).clamp_min(1).float()
    weight = (1.0 / per_crop).expand_as(masks)[masks]
    return ibot_patch_loss(student_patches[masks], teacher_probs[masks], weight, masks.shape[0], student_temp)


# --------------------------------------------------------------------------------------------------
# KoLeo


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator term ``-mean_i log(d_i)``, d_i = distance to the nearest neighbour.

    Vectors are L2-normalised first (scale-invariant). The diagonal is filled with -2, below any cosine,
    so an antipodal pair cannot tie with the sample itself (DINOv2 used -1). A single sample has no
    neighbour: that is refused with an error rather than returning ~18 or inf (dinov2#314).
    """
    if x.shape[0] < 2:
        raise DermbenchError(
            f"KoLeo needs at least 2 samples per global view per process, got {x.shape[0]}. "
            "Increase batch_size_per_gpu to >= 2 or set koleo_weight: 0."
        )
    with _fp32_no_autocast():
        x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = x @ x.T
            dots.fill_diagonal_(-2.0)
            nn_idx = dots.argmax(dim=1)
        d = F.pairwise_distance(x, x[nn_idx], p=2, eps=eps)
        return -torch.log(d + eps).mean()


# --------------------------------------------------------------------------------------------------
# Supervised masked BCE against prototypes


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    global_count: bool = False,
    per_crop: bool = False,
) -> torch.Tensor:
    """Masked BCE-with-logits in fp32; 0 (not NaN) when nothing is known.

    ``per_crop=False``: ``sum n_ij BCE_ij / sum n_ij`` (every known entry weighs the same, so an image from an
    8-class source weighs 4x one from a 2-class source). ``per_crop=True`` is the authors' code: each crop's
    BCE is averaged over *its* known classes, then the crops that have any known class are averaged, so every
    labelled crop weighs the same whatever the size of its source's label set.

    Unknown entries (``n_ij = 0``: classes absent from the image's source label set, or unlabelled
    images) get exactly zero gradient, whatever their ``y_ij``. With ``global_count`` the denominator (known
    entries, or labelled crops) is all-reduced and divided by the world size, so that DDP's gradient
    averaging over ranks gives the mean over the *global* batch (the authors divide by each rank's own count).
    """
    with _fp32_no_autocast():
        known_b = known.bool()
        y = torch.where(known_b, targets.float(), torch.zeros_like(targets, dtype=torch.float32))
        per = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        per = torch.where(known_b, per, torch.zeros_like(per))
        if per_crop:
            n_known = known_b.sum(dim=1).float()
            labelled = n_known > 0
            per = per.sum(dim=1) / torch.where(labelled, n_known, torch.ones_like(n_known))
            count = labelled.sum().float()
        else:
            count = known_b.sum().float()
        if global_count:
            count = count.detach().clone()
            all_reduce_(count)
            count = count / world_size()
        return per.sum() / torch.where(count > 0, count, torch.ones_like(count))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-row entropy (nats); log K means a uniform (collapsed-to-uniform) teacher."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(dim=-1).mean()


LOG2 = math.log(2.0)
