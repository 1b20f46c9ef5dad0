"""Cheap proxies of an architecture's stand-alone Dice that train nothing: parameter count, multiply-adds per window
and SynFlow (Tanaka et al., NeurIPS 2020). The search-quality benchmark ranks its architectures by them beside the
supernets' fitness (``search_quality.py``), and ``proxy_baselines.py`` does so for a finished report."""

from __future__ import annotations

import copy
from typing import Any, Dict, Sequence


def synflow(net: Any, in_channels: int, roi_size: Sequence[int]) -> float:
    """SynFlow of ``net`` (a copy is scored: absolute weights, norms removed, float64, one all-ones window)."""
    import torch
    from torch import nn

    scored = copy.deepcopy(net).double()
    for module in list(scored.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.modules.instancenorm._InstanceNorm):
                setattr(module, name, nn.Identity())
    with torch.no_grad():
        for p in scored.parameters():
            p.abs_()
    scored.zero_grad()
    scored(torch.ones(1, in_channels, *roi_size, dtype=torch.float64)).sum().backward()
    return float(sum((p * p.grad).abs().sum().item() for p in scored.parameters() if p.grad is not None))


def proxies(arch: Dict[str, Any], in_channels: int, out_channels: int, width: int, roi: Sequence[int]) -> dict:
    """``{"parameters", "gmacs", "synflow"}`` of C2FNAS architecture ``arch`` (``levels``, ``ops``) at ``width`` for
    windows of ``roi`` with ``in_channels`` -> ``out_channels``; its weights drawn with torch seed 0."""
    import torch

    from networks import C2FNASNet
    from networks.complexity import count_parameters, window_macs

    arch = {"format": "c2fnas-arch/1", **arch}
    torch.manual_seed(0)
    net = C2FNASNet(arch, in_channels, out_channels, width)
    return {
        "parameters": count_parameters(net),
        "gmacs": window_macs(arch, in_channels, out_channels, width, roi) / 1e9,
        "synflow": synflow(net, in_channels, roi),
    }
