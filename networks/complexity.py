"""Parameter and multiply-accumulate (MAC) counts of C2FNAS networks, computed on the meta device (no memory, no
arithmetic): MACs are half the convolution FLOPs that ``torch.utils.flop_counter`` records for one forward pass."""

from __future__ import annotations

import copy
from typing import Dict, Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from networks.c2fnas import ArchLike, C2FNASNet, as_architecture

__all__ = ["count_parameters", "count_macs", "complexity_report", "PAPER_PARAMETERS"]

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
