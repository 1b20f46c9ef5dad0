"""What the search needs from ``torch.distributed`` (torchrun / DDP), each a no-op in a single process.

Under DDP every rank trains the same sampled path on its own share of the batch, and gradients are averaged over
ranks after each backward pass. Decisions (fitness values, the final architecture) are taken on rank 0 and
broadcast, and only rank 0 writes files.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.distributed as dist

__all__ = ["rank_and_world_size", "average_gradients", "all_reduce_sum", "broadcast_object", "barrier"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def average_gradients(module: torch.nn.Module) -> None:
    """Average ``.grad`` of ``module``'s parameters over ranks, in one flat all-reduce.

    Every rank must hold gradients for the same parameters (true when all ranks trained the same path).
    """
    if not _active() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor on ``tensor``'s device; the input itself without a process
    group). NCCL reduces on the rank's current CUDA device."""
    if not _active():
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    total = tensor.to(device, copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable object)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()
