"""torch.distributed helpers for data-parallel feature extraction (torchrun), imported only when used.

Under ``torchrun --nproc-per-node N -m dermbench run ...`` every rank extracts a share of the *batches* of
each split (batch b goes to rank b mod N), so each batch has exactly the composition it has in a
single-process run and the features are bit-identical; rank 0 gathers, writes the cache entry once and runs
the tasks.
"""

from __future__ import annotations

import os
from typing import Any


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_active() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if not is_active():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world() -> int:
    if not is_active():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def init_from_env(device: str) -> str:
    """Initialise the process group when launched by torchrun; returns the device this rank should use."""
    if env_world_size() <= 1:
        return device
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    if not is_active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_active():
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    if is_active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
