"""Parameter and multiply-accumulate (MAC) counts of C2FNAS networks, computed on the meta device (no memory, no
arithmetic): MACs are half the convolution FLOPs that ``torch.utils.flop_counter`` records for one forward pass.
``window_macs`` gives the same count from the architecture alone, cell by cell, in microseconds: what a search
needs to hold thousands of candidates to a compute budget."""

from __future__ import annotations

import copy
from typing import Dict, Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from networks.architecture import STEM_LEVEL, topology_wiring
from networks.c2fnas import ArchLike, C2FNASNet, as_architecture, level_channels

__all__ = ["count_parameters", "count_macs", "window_macs", "complexity_report", "PAPER_PARAMETERS"]

OP_KERNELS = {"2D": (9,), "3D": (27,), "P3D": (9, 3)}  # kernel volumes of each op's convolutions (make_op)

PAPER_PARAMETERS = 17.02e6  # C2FNAS-Panc in the paper (Yu et al. 2020), not verified by this project


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _spatial(roi_size: Union[int, Sequence[int]]) -> tuple:
    return (int(roi_size),) * 3 if isinstance(roi_size, int) else tuple(int(s) for s in roi_size)


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Convolution MACs of one forward pass of ``module`` on an input of ``input_shape`` ``(B, C, *S)``.

    The module is deep-copied to the meta device, so it can be any size.
    """
    meta = module if next(module.parameters()).is_meta else copy.deepcopy(module).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(*input_shape, device="meta"))
    return counter.get_total_flops() // 2


def window_macs(
    arch: ArchLike,
    in_channels: int = 1,
    out_channels: int = 3,
    base_channels: int = 32,
    roi_size: Union[int, Sequence[int]] = 96,
) -> int:
    """Convolution MACs of one forward pass of ``C2FNASNet(arch, in_channels, out_channels, base_channels)`` on one
    ``roi_size`` window (batch 1), from the architecture alone: each convolution costs its output voxels x output
    channels x input channels x kernel volume (the layers of ``networks/c2fnas.py``; equal to ``count_macs``,
    tested). ``arch`` needs its ops; ``roi_size`` sides divisible by 2 to the deepest level."""
    arch = as_architecture(arch)
    voxels0 = 1
    for side in _spatial(roi_size):
        voxels0 *= side

    def voxels(level: int) -> int:
        return voxels0 // 8**level

    f, c1 = base_channels, level_channels(STEM_LEVEL, base_channels)
    macs = voxels(0) * f * in_channels * 27 + voxels(1) * c1 * f * 27  # stem
    for wiring, op in zip(topology_wiring(arch.levels), arch.ops):
        c, n = level_channels(wiring.level, base_channels), voxels(wiring.level)
        transition = {"down": (c // 2) * 27, "up": 2 * c, "same": 0}[wiring.transition]
        pointwise = c * (3 if wiring.second >= 0 else 2)  # pre, post (and pre2)
        macs += n * c * (transition + pointwise + c * sum(OP_KERNELS[op]))
    fuse_in = 2 * c1 if C2FNASNet._concat_previous(arch) else c1
    macs += voxels(1) * c1 * fuse_in * 27 + voxels(0) * (f * c1 * 27 + out_channels * f)  # head
    return macs


def complexity_report(
    arch: ArchLike,
    in_channels: int = 1,
    out_channels: int = 3,
    base_channels: int = 32,
    roi_size: Union[int, Sequence[int]] = 96,
) -> Dict[str, object]:
    """Parameters and MACs of ``C2FNASNet(arch, ...)`` for one ``roi_size`` window (batch 1)."""
    arch = as_architecture(arch)
    spatial = _spatial(roi_size)
    with torch.device("meta"):
        net = C2FNASNet(arch, in_channels, out_channels, base_channels)
    return {
        "architecture": str(arch),
        "base_channels": base_channels,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "roi_size": list(spatial),
        "parameters": count_parameters(net),
        "macs": count_macs(net, (1, in_channels, *spatial)),
    }
