"""Tiny helpers over torch.distributed that degrade to no-ops in a single process.

DINOv2's iBOT Sinkhorn-Knopp called ``all_reduce`` without checking that a process group exists and
crashed single-process runs (dinov2 PR #590); every collective here goes through ``world_size()``.
"""

from __future__ import annotations

import torch


def is_dist() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_dist() else 0


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) of ``t``; identity without a process group."""
    if is_dist():
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy, for logging)."""
    t = t.detach().clone()
    all_reduce_(t)
    return t / world_size()
