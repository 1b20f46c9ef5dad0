"""Search/deployment consistency: one training step of the supernet vs one of the derived network.

Each configuration runs in its own child process (so peak memory is its own): build the model, SGD with momentum
and DiceCE, run warm-up steps (random paths for the supernets, so that momentum buffers of unused weights exist as
in steady-state training), then time ``--steps`` steps of the default C2FNAS-Panc path.

Measured (all at the same width F and patch):
- ``derived``: ``C2FNASNet`` (C2FNAS-Panc).
- ``supernet_fine``: the fine-stage supernet (C2FNAS-Panc topology, all three ops per cell), same path.
- ``supernet_coarse``: the coarse-stage supernet over the K-means cluster that holds C2FNAS-Panc, same path.
- ``dints``: MONAI ``TopologySearch`` (12 blocks, 4 depths, channel_mul 0.5) + ``DiNTS``, one weight step.

Peak memory: peak RSS of the child on CPU, ``torch.cuda.max_memory_allocated`` on CUDA; both include weights,
gradients and optimizer state. Prints a table and the ratios to ``derived``.

    .venv/bin/python benchmarks/search_step.py [--roi 96] [--base_channels 32] [--device cpu] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("derived", "supernet_fine", "supernet_coarse", "dints")


def _child(kind: str, roi: int, base_channels: int, device_name: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "bundle"))
    import random

    import torch
    from monai.losses import DiceCELoss
    from scripts.networks import Architecture, C2FNASNet, C2FNASSupernet, default_architecture
    from scripts.search import SearchSpace, random_ops

    device = torch.device(device_name)
    torch.manual_seed(0)
    arch = default_architecture()
    r = random.Random(0)
    if kind == "derived":
        model = C2FNASNet(arch, 1, 3, base_channels)
        forward, warm_forward = model, model
    elif kind.startswith("supernet"):
        if kind == "supernet_fine":
            topologies = [arch.levels]
        else:
            space = SearchSpace(seed=0)
            topologies = next(c for c in space.clusters if arch.levels in c)
        model = C2FNASSupernet(topologies, 1, 3, base_channels)

        def forward(x):
            return model(x, arch)

        def warm_forward(x):
            return model(x, Architecture(r.choice(topologies), random_ops(r, 12)))

    else:
        from monai.networks.nets import DiNTS, TopologySearch

        space = TopologySearch(channel_mul=0.5, num_blocks=12, num_depths=4, use_downsample=True, device=device_name)
        model = DiNTS(space, in_channels=1, num_classes=3, use_downsample=True)
        forward, warm_forward = model, model
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(1, 1, roi, roi, roi, device=device)
    y = torch.randint(0, 3, (1, 1, roi, roi, roi), device=device)

    def step(fn):
        optimizer.zero_grad(set_to_none=True)
        loss_function(fn(x), y).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3 if kind.startswith("supernet") else 1):
        step(warm_forward)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(forward)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in model.parameters())
    return {"kind": kind, "seconds": statistics.median(times), "peak_bytes": peak, "parameters": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--base_channels", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.roi, args.base_channels, args.device, args.steps)))
        return
    results = {}
    for kind in args.kinds.split(","):
        command = [sys.executable, __file__, "--child", kind] + [
            f"--{k}={getattr(args, k)}" for k in ("roi", "base_channels", "device", "steps")
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            reason = "out of memory (killed)" if done.returncode in (-9, 137) else done.stderr.strip()[-300:]
            print(f"{kind}: failed: {reason}", file=sys.stderr)
            continue
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"# one training step, batch 1, patch {args.roi}^3, F={args.base_channels}, {args.device}, "
        f"{platform.processor() or platform.machine()}, median of {args.steps} steps"
    )
    print(f"{'model':<18}{'parameters':>14}{'step s':>10}{'peak GiB':>10}{'time ratio':>12}{'memory ratio':>14}")
    base = results.get("derived")
    for kind, res in results.items():
        time_ratio = f"{res['seconds'] / base['seconds']:.2f}" if base else "-"
        memory_ratio = f"{res['peak_bytes'] / base['peak_bytes']:.2f}" if base else "-"
        print(
            f"{kind:<18}{res['parameters']:>14,}{res['seconds']:>10.2f}{res['peak_bytes'] / 2**30:>10.2f}"
            f"{time_ratio:>12}{memory_ratio:>14}"
        )
    print("targets: supernet/derived time <= 1.15, memory <= 1.25")


if __name__ == "__main__":
    main()
