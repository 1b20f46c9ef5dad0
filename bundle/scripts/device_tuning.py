"""Device tuning: process-wide settings (CPU allocator, cuDNN) that make the bundle's stages fast on their device."""

from __future__ import annotations

import ctypes
import platform
from typing import Union

import torch

__all__ = ["tune_device"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>


def tune_device(device: Union[str, torch.device]) -> bool:
    """Tune the process for ``device``; returns whether the CPU allocator was changed.

    CPU, with glibc: large blocks come from the heap instead of fresh ``mmap`` regions, and up to 2 GiB of freed heap
    is kept for reuse (``mallopt``). Otherwise every new activation tensor of a 3D network is page-faulted in from
    the kernel, which costs about a quarter of the time of a 96^3 forward pass on CPU (``benchmarks/performance.py``
    measures it); the price is that freed memory is not handed back to the system until the process ends.
    CUDA: ``cudnn.benchmark`` (fixed patch sizes, so the fastest convolution algorithms are picked once).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return False
    if device.type != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
