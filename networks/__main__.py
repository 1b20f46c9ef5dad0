"""Command line: ``python -m networks summary|demo [--arch FILE] [--base_channels 32] [--roi_size 96]``."""

from __future__ import annotations

import time
from typing import Optional

import fire
import torch

from networks.architecture import DEFAULT_ARCHITECTURE_FILE
from networks.c2fnas import C2FNASNet, as_architecture
from networks.complexity import PAPER_PARAMETERS, complexity_report
from networks.labels import argmax


def summary(
    arch: str = str(DEFAULT_ARCHITECTURE_FILE),
    base_channels: int = 32,
    roi_size: int = 96,
    in_channels: int = 1,
    out_channels: int = 3,
) -> None:
    """Print the parameters and MACs of the network for ``arch`` (a c2fnas-arch/1 file) at one window size."""
    _print_summary(arch, base_channels, roi_size, in_channels, out_channels)


def _print_summary(arch: str, base_channels: int, roi_size: int, in_channels: int = 1, out_channels: int = 3) -> dict:
    report = complexity_report(arch, in_channels, out_channels, base_channels, roi_size)
    print(f"architecture  {arch}")
    print(f"              {report['architecture']}")
    print(
        f"width F       {base_channels} (levels 1-4: {', '.join(str(base_channels * 2**lv) for lv in range(1, 5))} ch)"
    )
    print(f"parameters    {report['parameters']:,} ({report['parameters'] / 1e6:.2f} M)", end="")
    is_default = as_architecture(arch).levels == as_architecture(DEFAULT_ARCHITECTURE_FILE).levels
    if is_default and base_channels == 32:
        print(f"   [paper: {PAPER_PARAMETERS / 1e6:.2f} M, unverified]")
    else:
        print()
    print(f"MACs          {report['macs'] / 1e9:.1f} G per {roi_size}^3 window (batch 1)")
    return report


def demo(
    arch: str = str(DEFAULT_ARCHITECTURE_FILE),
    base_channels: int = 32,
    roi_size: int = 96,
    seed: int = 0,
    device: Optional[str] = None,
) -> None:
    """``summary``, then one forward pass (random weights) on a generated volume with a bright ellipsoid in noise."""
    report = _print_summary(arch, base_channels, roi_size)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, roi_size)] * 3, indexing="ij"))
    blob = ((grid / torch.tensor([0.5, 0.3, 0.4]).view(3, 1, 1, 1)) ** 2).sum(0) < 1
    volume = (0.2 * torch.randn(roi_size, roi_size, roi_size) + blob.float())[None, None]
    net = C2FNASNet(arch, 1, 3, base_channels).to(dev).eval()
    volume = volume.to(dev).contiguous(memory_format=torch.channels_last_3d)
    net = net.to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = net(volume)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    counts = torch.bincount(argmax(logits, 1).flatten(), minlength=3).tolist()
    print(f"forward       input {tuple(volume.shape)} -> logits {tuple(logits.shape)} on {dev} in {seconds:.2f} s")
    print(
        f"              {2 * report['macs'] / seconds / 1e9:.0f} GFLOP/s; voxels per class (random weights): {counts}"
    )


if __name__ == "__main__":
    fire.Fire({"summary": summary, "demo": demo})
