"""Performance benchmarks of the C2FNAS bundle: every figure is measured in this run, ratios side by side.

Each measurement runs in its own child process, so that its peak memory and its allocator settings are its own.

Sections (``--sections``, default all):

- ``inference``: the best conv3d throughput of this machine (large 3x3x3 convolutions, both memory formats) and
  sliding-window inference of C2FNAS-Panc (the shipped weights, F=32, 96^3 windows, overlap 0.625, ``sw_batch_size``
  1 as ``inference.json`` on CPU) on a synthetic CT case of ``--volume``^3 voxels: plain PyTorch, each runtime of
  ``scripts.inference_runtime``, and the bundle's inferer choosing by measurement. Efficiency = achieved conv
  GFLOP/s (MACs x 2 / time) / best conv3d GFLOP/s.
- ``monai``: one 96^3 window (batch 1, inference) of C2FNAS-Panc vs MONAI ``DiNTS`` (an architecture decoded by
  ``TopologySearch.decode`` from freshly initialised alphas, seed 0), ``SegResNet`` and ``UNet`` of similar size.
- ``search``: one SGD training step of the supernets vs the derived network (same width, same patch), and of
  MONAI's ``TopologySearch`` (12 blocks, 4 depths, channel_mul 0.5).
- ``train``: the training step of the network ``make demo`` found in 0.6 and 0.8.3 (CPU profile: F=8, 4 crops of 32^3;
  and at the default width: F=32, one 96^3 crop) in float32 and under bfloat16 autocast, each in both memory formats:
  seconds, GFLOP/s (a step counted as three times the forward convolutions' 2 x MACs) and efficiency against the float32
  conv3d peak measured in the same run; the bundle's upsampling and instance norm against PyTorch's within a step; a
  label map (the argmax of class scores) by ``torch.argmax`` against the bundle's ``networks.labels.argmax``; and the
  CPU profile's augmentation of a training case with MONAI's meta-data tracking and without (the bundle's
  ``UntrackedRandomCompose``); on the CPU, the profile's training steps per second of one process against two side by
  side with half the threads each (``cluster_workers``).
- ``cost``: compute of coarse + fine search at the configs' default budget / compute of the default training run,
  from the iteration counts in the configs and the step and window times measured in ``search`` and ``monai``.
- ``dice``: Dice per unit of compute on the embedded data at the CPU profile: the network the search finds (seed 0)
  against MONAI's ``UNet`` and ``SegResNet``, all trained by the same ``train.json`` pipeline for the searched
  network's training wall time and scored by ``evaluate.json`` (``benchmarks/search_quality.py``'s parts, kept in
  ``--work_dir`` and reused while their inputs are unchanged).
- ``throughput``: a training at the default budget's settings (``train.json`` alone, the shipped architecture,
  F=32, amp on CUDA) on the embedded data for ``--throughput_epochs`` epochs without validation: seconds per
  iteration and patches per second in the last epoch, and the default budget's iterations at that rate.
- ``e2e``: wall time and peak memory of the README's main command (``make demo``: the five stages on the CPU
  profile), into a temporary output folder.

Peak memory: on CPU the growth of the child's peak RSS over its RSS before the measured work (``inference``,
``monai``) or its whole peak RSS (``search``: weights, gradients and optimiser state included; ``e2e``: the
largest stage); on CUDA ``torch.cuda.max_memory_allocated``.

    .venv/bin/python benchmarks/performance.py [--sections inference,monai,search,cost,e2e] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
GIB = 2**30


# ---------------------------------------------------------------------------------------------------- child side


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes(device, since: int = 0) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - since


def _timed(fn: Callable[[], object], device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    return statistics.median(_seconds_of(fn, device) for _ in range(repeats))


def _seconds_of(fn: Callable[[], object], device) -> float:
    """Seconds of one call of ``fn``, the device's queued work included."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _alternated(calls: Dict, device, rounds: int) -> Dict:
    """Seconds of each of ``calls`` (``key -> callable``), each called once to warm up, then all in turn, ``rounds``
    times, so that the machine's drift hits them alike: ``key -> [seconds per round]``."""
    for fn in calls.values():
        fn()
    times: Dict = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            times[key].append(_seconds_of(fn, device))
    return times


def _c2fnas(base_channels: int = 32, plain: bool = False):
    from networks import C2FNASNet, default_architecture

    net = C2FNASNet(default_architecture(), 1, 3, base_channels)
    for to_pytorch in PYTORCH_PARTS.values() if plain else ():
        net = to_pytorch(net)
    return net


def _swapped(net, bundle_class, pytorch_module: Callable):
    """``net`` with each of its ``bundle_class`` modules replaced by ``pytorch_module(that module)``."""
    for module in net.modules():
        for name, child in module.named_children():
            if isinstance(child, bundle_class):
                setattr(module, name, pytorch_module(child))
    return net


def _plain_upsampling(net):
    """``net`` with PyTorch's own upsampling (``nn.Upsample``) in place of the bundle's ``TrilinearUpsample2x``."""
    from torch import nn

    from networks.c2fnas import TrilinearUpsample2x

    def upsample(_):
        return nn.Upsample(scale_factor=2.0, mode="trilinear", align_corners=False)

    return _swapped(net, TrilinearUpsample2x, upsample)


def _plain_norm(net):
    """``net`` with PyTorch's ``nn.InstanceNorm3d`` (same weights) in place of the bundle's
    ``LayoutKeepingInstanceNorm3d``."""
    from torch import nn

    from networks.c2fnas import LayoutKeepingInstanceNorm3d

    def plain(norm):
        module = nn.InstanceNorm3d(norm.num_features, eps=norm.eps, affine=norm.affine)
        module.load_state_dict(norm.state_dict())
        return module

    return _swapped(net, LayoutKeepingInstanceNorm3d, plain)


# the bundle's parts that PyTorch also has, each with what puts PyTorch's in its place
PYTORCH_PARTS = {"upsampling": _plain_upsampling, "norm": _plain_norm}


def _shipped_weights() -> str:
    """The bundle's own weights file, by its config id (``common.json``'s ``ckpt_file``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "common.json"))
    parser["bundle_root"] = str(BUNDLE)
    return parser.get_parsed_content("ckpt_file")


def _case_volume(side: int):
    """A synthetic abdominal CT case (``scripts.data.synthetic_case``, seed 0), ``side``^3 voxels at 1 mm, windowed as
    the shipped plan normalises CT: ``(1, 1, side, side, side)`` float32. The shipped weights segment it, so a
    runtime the bundle checks by its labels (bfloat16) meets a segmentation rather than noise."""
    import torch
    from scripts.data import synthetic_case
    from scripts.transforms import PlanIntensityd

    plan = json.loads((BUNDLE / "models" / "plan.json").read_text())
    image, _ = synthetic_case(0, shape=(side, side, side), spacing=(1.0, 1.0, 1.0))
    image = torch.as_tensor(image[None], dtype=torch.float32)
    return PlanIntensityd(["image"], plan["intensity"])({"image": image})["image"][None]


def _dints():
    import torch
    from monai.networks.nets import DiNTS, TopologyInstance, TopologySearch

    torch.manual_seed(0)
    space = TopologySearch(channel_mul=1.0, num_blocks=12, num_depths=4, use_downsample=True, device="cpu")
    node_a, code_a, code_c, _ = space.decode()
    instance = TopologyInstance(
        channel_mul=1.0, num_blocks=12, num_depths=4, use_downsample=True, arch_code=[code_a, code_c], device="cpu"
    )
    return DiNTS(instance, in_channels=1, num_classes=3, use_downsample=True, node_a=node_a)


def _monai_model(kind: str):
    from monai.networks.nets import SegResNet, UNet

    if kind == "c2fnas":
        return _c2fnas()
    if kind == "dints":
        return _dints()
    if kind == "segresnet":
        return SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=32)
    if kind == "unet":
        return UNet(3, 1, 3, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2), num_res_units=2)
    raise ValueError(kind)


def job_conv_peak(device, **_) -> dict:
    """Best conv3d GFLOP/s over a few large 3x3x3 convolutions, contiguous and channels_last_3d."""
    import torch

    best = {"gflops": 0.0}
    for channels, side in ((64, 48), (128, 24), (64, 64), (32, 96)):
        conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False).to(device).eval()
        x = torch.randn(1, channels, side, side, side, device=device)
        flops = 2 * channels * channels * 27 * side**3
        for memory_format in (torch.contiguous_format, torch.channels_last_3d):
            c, xi = conv.to(memory_format=memory_format), x.to(memory_format=memory_format)
            with torch.inference_mode():
                seconds = min(_timed(lambda: c(xi), device, _repeats(device, 3)) for _ in range(2))
            if flops / seconds / 1e9 > best["gflops"]:
                best = {
                    "gflops": flops / seconds / 1e9,
                    "shape": f"{channels}ch {side}^3",
                    "format": str(memory_format),
                }
    return best


def job_sliding_window(device, volume: int, plain: bool, sw_batch_size: int, runtime: str, **_) -> dict:
    """Sliding-window inference of C2FNAS-Panc on a ``volume``^3 input: seconds, windows, conv MACs, memory.

    ``runtime``: ``monai`` runs MONAI's ``SlidingWindowInferer``; any of ``scripts.inference_runtime.RUNTIMES`` runs
    the bundle's ``MeasuredSlidingWindowInferer`` with it (``auto`` measuring from the first window). The first call
    (which builds and, for ``auto``, measures the runtimes) is timed apart as ``setup_seconds`` minus one call.
    """
    import torch
    from monai.inferers import SlidingWindowInferer
    from scripts.inference_runtime import MeasuredSlidingWindowInferer, count_windows

    from networks.complexity import count_macs

    net = _c2fnas(plain=plain)
    net.load_state_dict(torch.load(_shipped_weights(), map_location="cpu", weights_only=True))
    net = net.to(device).eval()
    macs_per_window = count_macs(net, (1, 1, 96, 96, 96))
    x = _case_volume(volume).to(device)
    roi = (96, 96, 96)
    if runtime == "monai":
        inferer = SlidingWindowInferer(roi, sw_batch_size, overlap=0.625)
    else:
        inferer = MeasuredSlidingWindowInferer(roi, sw_batch_size, overlap=0.625, runtime=runtime, min_windows=0)
    windows = count_windows(x.shape[2:], roi, 0.625)
    before = _rss_bytes()
    start = time.perf_counter()
    with torch.inference_mode():
        inferer(x, net)
    first = time.perf_counter() - start

    def infer():
        with torch.inference_mode():
            return inferer(x, net)

    seconds = _timed(infer, device, _repeats(device, 2))
    return {
        "seconds": seconds,
        "setup_seconds": first - seconds,
        "chosen": getattr(inferer, "chosen", None),
        "timings": getattr(inferer, "timings", {}),
        "windows": windows,
        "macs": macs_per_window * windows,
        "peak_bytes": _peak_bytes(device, before),
    }


def job_conv_shapes(device, **_) -> dict:
    """Where a 96^3 window of C2FNAS-Panc can reach: each of its convolutions timed alone (PyTorch, the faster of
    both memory formats) against the best conv3d; and, on CPU, OpenVINO's own time per layer type."""
    import torch

    net = _c2fnas().to(device).eval()
    shapes: Dict[tuple, int] = {}

    def record(module, inputs, _output):
        key = (tuple(inputs[0].shape), module.out_channels, module.kernel_size, module.stride, module.padding)
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    x = torch.rand(1, 1, 96, 96, 96, device=device)
    with torch.inference_mode():
        net(x)
    for h in hooks:
        h.remove()
    rows, total_macs, total_best = [], 0, 0.0
    for (shape, out, kernel, stride, padding), count in shapes.items():
        conv = torch.nn.Conv3d(shape[1], out, kernel, stride, padding, bias=False).to(device).eval()
        xi = torch.randn(shape, device=device)
        with torch.inference_mode():
            out_shape = conv(xi).shape
            macs = shape[1] * out * kernel[0] * kernel[1] * kernel[2] * int(torch.tensor(out_shape[2:]).prod())
            best = float("inf")
            for memory_format in (torch.contiguous_format, torch.channels_last_3d):
                c, xf = conv.to(memory_format=memory_format), xi.to(memory_format=memory_format)
                best = min(best, _timed(lambda: c(xf), device, _repeats(device, 3)))
        rows.append({"shape": f"{shape[1]}->{out} k{list(kernel)} s{stride[0]} {shape[2]}^3", "count": count,
                     "macs": macs * count, "seconds": best * count, "gflops": 2 * macs / best / 1e9})  # fmt: skip
        total_macs, total_best = total_macs + macs * count, total_best + best * count
    found = {"rows": sorted(rows, key=lambda r: -r["seconds"]), "macs": total_macs, "seconds": total_best}
    if device.type == "cpu":  # the bundle's OpenVINO runtime, with OpenVINO's own per-layer timing
        from scripts.inference_runtime import OpenVINORuntime

        runtime = OpenVINORuntime(net, x, PERF_COUNT=True)
        for _ in range(3):
            runtime(x)
        per_type: Dict[str, float] = {}
        for layer in runtime.request.profiling_info:
            per_type[layer.node_type] = per_type.get(layer.node_type, 0.0) + layer.real_time.total_seconds()
        found["openvino_per_type"] = per_type
    return found


def _repeats(device, cpu: int) -> int:
    """Timed repeats: ``cpu`` on the CPU, 20 on a GPU (milliseconds per call, launch jitter)."""
    return cpu if device.type == "cpu" else 20


def job_window(device, kind: str, amp: bool = False, **_) -> dict:
    """One 96^3 window, batch 1, inference mode, in float32 or under ``amp`` (float16 autocast on CUDA, as the
    bundle's ``amp``; bfloat16 on the CPU): seconds, parameters, conv MACs, memory growth."""
    import torch

    from networks.complexity import count_macs

    model = _monai_model(kind).to(device).eval()
    x = torch.rand(1, 1, 96, 96, 96, device=device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            return model(x)

    before = _rss_bytes()
    with torch.inference_mode():
        seconds = _timed(forward, device, _repeats(device, 2))
    peak = _peak_bytes(device, before)
    return {
        "seconds": seconds,
        "peak_bytes": peak,
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model.cpu(), (1, 1, 96, 96, 96)),
    }


def job_train_step(device, kind: str, roi: int, steps: int, **_) -> dict:
    """One SGD + DiceCE step (batch 1) of the default C2FNAS-Panc path through ``kind``: seconds, peak memory."""
    import random

    import torch
    from monai.losses import DiceCELoss

    from networks import Architecture, C2FNASNet, C2FNASSupernet, default_architecture
    from search import SearchSpace, random_ops

    torch.manual_seed(0)
    arch, r = default_architecture(), random.Random(0)
    if kind == "derived":
        model = C2FNASNet(arch, 1, 3, 32)
        forward = warm_forward = model
    elif kind.startswith("supernet"):
        topologies = (
            [arch.levels]
            if kind == "supernet_fine"
            else next(c for c in SearchSpace(seed=0).clusters if arch.levels in c)
        )
        model = C2FNASSupernet(topologies, 1, 3, 32)

        def forward(x):
            return model(x, arch)

        def warm_forward(x):  # random paths first: momentum buffers of unused weights exist, as in a long search
            return model(x, Architecture(r.choice(topologies), random_ops(r, 12)))

    else:
        from monai.networks.nets import DiNTS, TopologySearch

        space = TopologySearch(channel_mul=0.5, num_blocks=12, num_depths=4, use_downsample=True, device=str(device))
        model = DiNTS(space, in_channels=1, num_classes=3, use_downsample=True)
        forward = warm_forward = model
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(1, 1, roi, roi, roi, device=device)
    y = torch.randint(0, 3, (1, 1, roi, roi, roi), device=device)

    def step(fn):
        optimizer.zero_grad(set_to_none=True)
        loss_function(fn(x), y).backward()
        optimizer.step()

    for _ in range(2 if kind.startswith("supernet") else 0):
        step(warm_forward)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(lambda: step(forward), device, steps)
    return {
        "seconds": seconds,
        "peak_bytes": _peak_bytes(device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _train_step(device, width: int, roi: int, batch: int, channels_last: bool, bf16: bool, pytorch: str = ""):
    """One SGD + DiceCE step of the network ``make demo`` found in 0.6 and 0.8.3 (``DEMO_SEARCHED`` of
    ``training_reliability``, kept so that every version's figures compare; ``batch`` crops of ``roi``^3) as a
    callable, and its multiply-adds: optionally in ``channels_last_3d``, under bfloat16 autocast (CPU) or float16 AMP
    (CUDA), and with PyTorch's own in place of the bundle's part ``pytorch`` (a key of ``PYTORCH_PARTS``)."""
    import torch
    from monai.losses import DiceCELoss
    from training_reliability import DEMO_SEARCHED

    from networks import Architecture, C2FNASNet
    from networks.complexity import window_macs

    torch.manual_seed(0)
    arch = Architecture(tuple(DEMO_SEARCHED["levels"]), tuple(DEMO_SEARCHED["ops"]))
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = C2FNASNet(arch, 1, 3, width)
    model = (PYTORCH_PARTS[pytorch](model) if pytorch else model).to(device).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)
    x = torch.randn(batch, 1, roi, roi, roi, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 3, (batch, 1, roi, roi, roi), device=device)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=bf16 and device.type == "cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=bf16):
            loss = loss_function(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, window_macs(arch, 1, 3, width, roi) * batch


def job_train_variant(device, width: int, roi: int, batch: int, channels_last: bool, bf16: bool, steps: int, **_):
    """Median seconds of the found network's training step (``_train_step``), its multiply-adds and peak memory."""
    step, macs = _train_step(device, width, roi, batch, channels_last, bf16)
    seconds = _timed(step, device, steps)  # after its own warm-up step
    return {"seconds": seconds, "macs": macs, "peak_bytes": _peak_bytes(device)}


def job_train_part(
    device, part: str, width: int, roi: int, batch: int, channels_last: bool, bf16: bool, steps: int, **_
):
    """What the bundle's ``part`` (a key of ``PYTORCH_PARTS``) buys a training step: the step with PyTorch's own and
    with the bundle's, built alike and timed in alternation in one process (so the machine's drift hits both),
    ``steps`` pairs; the median and quartiles of the paired time ratios (PyTorch's over the bundle's)."""
    steps_by_kind = {kind: _train_step(device, width, roi, batch, channels_last, bf16, kind)[0] for kind in (part, "")}
    seconds = _alternated(steps_by_kind, device, steps)
    ratios = [a / b for a, b in zip(seconds[part], seconds[""])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"pairs": steps, "speed_up": statistics.median(ratios), "quartiles": [quartiles[0], quartiles[2]]}


def job_train_for(device, threads: int, seconds: float, bf16: bool, **_):
    """The CPU profile's training step (``_train_step``: F=8, 4 crops of 32^3, ``channels_last_3d``) with ``threads``
    threads, repeated for ``seconds`` after a warm-up: steps done, their seconds, the span's wall-clock start and end
    (``time.time()``), and the threads used."""
    import torch

    torch.set_num_threads(threads)
    step, _ = _train_step(device, 8, 32, 4, True, bf16)
    step()
    steps, start, wall_start = 0, time.perf_counter(), time.time()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    elapsed = time.perf_counter() - start
    return {"steps": steps, "seconds": elapsed, "span": [wall_start, time.time()], "threads": torch.get_num_threads()}


def job_label_map(device, side: int, classes: int, pairs: int, **_):
    """The label map of one case's class scores (``(classes, side, side, side)``, channel first and contiguous, as
    the post-processing gets them): ``torch.argmax`` over the class axis (what MONAI's ``AsDiscreted`` calls) and the
    bundle's ``networks.labels.argmax``, timed in alternation, ``pairs`` times; medians and the median paired ratio."""
    import torch

    from networks.labels import argmax

    scores = torch.randn(classes, side, side, side, device=device).softmax(0)
    if not torch.equal(argmax(scores, 0, True), torch.argmax(scores, 0, keepdim=True)):
        raise RuntimeError("networks.labels.argmax differs from torch.argmax")
    kinds = {"torch": lambda: torch.argmax(scores, 0, keepdim=True), "bundle": lambda: argmax(scores, 0, True)}
    times = _alternated(kinds, device, pairs)
    ratios = [a / b for a, b in zip(times["torch"], times["bundle"])]
    return {**{kind: statistics.median(t) for kind, t in times.items()}, "speed_up": statistics.median(ratios)}


def job_augmentation(device, pairs: int, **_):
    """The CPU profile's training augmentation (``common.json``'s ``augmentation``) of its first preprocessed training
    case: as MONAI's ``Compose`` of the same transforms runs it (meta data tracked) and as the bundle's
    ``UntrackedRandomCompose`` does, timed in alternation, ``pairs`` times (the patches of one call); medians, the
    median paired ratio and the case's shape. Both, from the same random state, must give the same patches."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose
    from scripts import stage_chain

    parser = ConfigParser(
        ConfigParser.load_config_files([str(BUNDLE / stage_chain.COMMON), str(BUNDLE / stage_chain.CPU_PROFILE)])
    )
    with tempfile.TemporaryDirectory() as output_dir:
        parser["bundle_root"], parser["output_dir"] = str(BUNDLE), output_dir
        case = parser.get_parsed_content("preprocessing")(parser.get_parsed_content("train_datalist")[0])
        untracked = parser.get_parsed_content("augmentation")
    kinds = {"tracked": Compose(list(untracked.transforms)), "untracked": untracked}
    patches = {}
    for kind, augmentation in kinds.items():
        augmentation.set_random_state(seed=0)
        patches[kind] = [p["image"].as_subclass(torch.Tensor) for p in augmentation(dict(case))]
    if any(not torch.equal(a, b) for a, b in zip(patches["tracked"], patches["untracked"])):
        raise RuntimeError("UntrackedRandomCompose gave other patches than MONAI's Compose")
    times = _alternated({kind: (lambda a=a: a(dict(case))) for kind, a in kinds.items()}, device, pairs)
    ratios = [a / b for a, b in zip(times["tracked"], times["untracked"])]
    return {
        **{kind: statistics.median(t) for kind, t in times.items()},
        "speed_up": statistics.median(ratios),
        "shape": list(case["image"].shape[1:]),
        "patches": len(patches["untracked"]),
    }


JOBS = {
    "augmentation": job_augmentation,
    "conv_peak": job_conv_peak,
    "label_map": job_label_map,
    "train_variant": job_train_variant,
    "train_part": job_train_part,
    "train_for": job_train_for,
    "conv_shapes": job_conv_shapes,
    "sliding_window": job_sliding_window,
    "window": job_window,
    "train_step": job_train_step,
}


def _child_main(spec: dict) -> dict:
    sys.path.insert(0, str(BUNDLE))
    import torch
    from scripts.device_tuning import tune_device

    device = torch.device(spec.pop("device"))
    if spec.pop("tuned", True):
        tune_device(device)
    return JOBS[spec.pop("job")](device, **spec)


# --------------------------------------------------------------------------------------------------- parent side


def run_child(**spec) -> dict:
    """The job ``spec`` in a child process of its own; its result."""
    return run_children(spec)[0]


def run_children(*specs: dict) -> list:
    """Each job of ``specs`` in a child process of its own, all at once; their results in order."""
    running = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for spec in specs
    ]
    results = []
    for spec, process in zip(specs, running):
        out, err = process.communicate()
        if process.returncode != 0:
            reason = "out of memory (killed)" if process.returncode in (-9, 137) else err.strip()[-500:]
            raise RuntimeError(f"{spec}: {reason}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _row(name: str, *cells) -> str:
    """A table row: the name left-aligned, then the cells right-aligned."""
    return f"{name:<46}" + "".join(f"{c:>14}" for c in cells)


def _seconds(seconds: float) -> str:
    """Seconds as a table cell: milliseconds below 0.1 s (a GPU's windows and steps)."""
    return f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _ratios(res: dict, base: dict) -> tuple:
    """Time and peak-memory ratios of ``res`` to ``base``, formatted."""
    return f"{res['seconds'] / base['seconds']:.2f}", f"{res['peak_bytes'] / base['peak_bytes']:.2f}"


def section_inference(args, found: dict) -> None:
    peak = run_child(job="conv_peak", device=args.device)
    print(f"best conv3d throughput: {peak['gflops']:.1f} GFLOP/s ({peak['shape']}, {peak['format']})")
    found["conv_peak"] = peak
    variants = [
        ("plain PyTorch (nn.Upsample, default malloc)", dict(plain=True, tuned=False, runtime="monai")),
        ("+ tuned allocator (scripts.device_tuning)", dict(plain=True, tuned=True, runtime="monai")),
        ("+ TrilinearUpsample2x: torch", dict(runtime="torch")),
        ("torch, channels_last_3d", dict(runtime="torch_channels_last")),
        ("openvino", dict(runtime="openvino")),
        ("openvino_bf16 (bfloat16)", dict(runtime="openvino_bf16")),
        ("torch, sw_batch_size 4", dict(runtime="torch", sw_batch_size=4)),
        ("bundle: inference.json's inferer (auto)", dict(runtime="auto")),
    ]
    if args.device != "cpu":
        variants = [v for v in variants if not v[1]["runtime"].startswith("openvino")]
    print(
        f"sliding-window inference, C2FNAS-Panc F=32 (shipped weights), a {args.volume}^3 synthetic CT case, 96^3 "
        "windows, overlap 0.625, sw_batch_size 1 unless named:"
    )
    print(_row("variant", "windows", "seconds", "GFLOP/s", "efficiency", "memory GiB", "setup s"))
    base = None
    for name, options in variants:
        spec = {"plain": False, "tuned": True, "sw_batch_size": 1, **options}
        res = run_child(job="sliding_window", device=args.device, volume=args.volume, **spec)
        gflops = 2 * res["macs"] / res["seconds"] / 1e9
        base = base or res["seconds"]
        res["efficiency"] = gflops / peak["gflops"]
        print(
            _row(
                name,
                res["windows"],
                _seconds(res["seconds"]),
                f"{gflops:.1f}",
                f"{res['efficiency']:.2f}",
                f"{res['peak_bytes'] / GIB:.2f}",
                "-" if options["runtime"] == "monai" else f"{res['setup_seconds']:.1f}",
            )
        )
        found.setdefault("sliding", {})[name] = res
    bundle = found["sliding"]["bundle: inference.json's inferer (auto)"]
    measured = ", ".join(f"{k} {v:.2f} s" for k, v in bundle["timings"].items())
    print(f"the bundle chose {bundle['chosen']} (per window: {measured}); setup {bundle['setup_seconds']:.1f} s once")
    print(
        f"speed-up of the bundle over plain PyTorch: {base / bundle['seconds']:.2f}x; efficiency "
        f"{bundle['efficiency']:.2f} (target >= 0.85)"
    )


def section_shapes(args, found: dict) -> None:
    """Why the efficiency stops where it does: the network's convolutions alone against the best conv3d."""
    peak = found.get("conv_peak") or run_child(job="conv_peak", device=args.device)
    shapes = run_child(job="conv_shapes", device=args.device)
    ceiling = 2 * shapes["macs"] / shapes["seconds"] / 1e9
    print(
        f"C2FNAS-Panc's {sum(r['count'] for r in shapes['rows'])} convolutions of a 96^3 window, each timed alone "
        f"(PyTorch, the faster format): {ceiling:.1f} GFLOP/s, {ceiling / peak['gflops']:.2f} of the best conv3d; "
        "the slowest shapes:"
    )
    print(_row("convolution", "count", "share of MACs", "GFLOP/s", "of peak"))
    for r in shapes["rows"][:8]:
        print(_row(r["shape"], r["count"], f"{r['macs'] / shapes['macs']:.2f}", f"{r['gflops']:.1f}",
                   f"{r['gflops'] / peak['gflops']:.2f}"))  # fmt: skip
    if "openvino_per_type" in shapes:
        total = sum(shapes["openvino_per_type"].values())
        parts = sorted(shapes["openvino_per_type"].items(), key=lambda kv: -kv[1])
        print("OpenVINO's time per layer type, one window: " + ", ".join(f"{k} {v / total:.1%}" for k, v in parts[:6]))
        conv = shapes["openvino_per_type"].get("Convolution", 0.0)
        print(
            f"OpenVINO's convolutions alone: {2 * shapes['macs'] / conv / 1e9 / peak['gflops']:.2f} of the best conv3d"
        )
    found["conv_shapes"] = shapes


def section_monai(args, found: dict) -> None:
    """One window of C2FNAS-Panc against MONAI's networks; on a GPU also under AMP (float16 autocast)."""
    precisions = (False,) if args.device == "cpu" else (False, True)
    print("one 96^3 window, batch 1, inference mode" + ("" if args.device == "cpu" else "; float32 and AMP") + ":")
    print(_row("model", "params (M)", "GMAC", "seconds", "memory GiB", "time ratio", "memory ratio"))
    base = None
    for kind, amp in ((k, a) for a in precisions for k in ("c2fnas", "dints", "segresnet", "unet")):
        name = f"{kind}, AMP" if amp else kind
        res = run_child(job="window", device=args.device, kind=kind, amp=amp)
        base = base or res
        found.setdefault("window", {})[name] = res
        print(
            _row(
                name,
                f"{res['parameters'] / 1e6:.1f}",
                f"{res['macs'] / 1e9:.0f}",
                _seconds(res["seconds"]),
                f"{res['peak_bytes'] / GIB:.2f}",
                *_ratios(res, base),
            )
        )


def section_search(args, found: dict) -> None:
    print(f"one training step, batch 1, {args.roi}^3 patch, F=32, median of {args.steps}:")
    print(_row("model", "params (M)", "seconds", "peak GiB", "time ratio", "memory ratio"))
    base = None
    for kind, tuned in (
        ("derived", True),
        ("derived", False),
        ("supernet_fine", True),
        ("supernet_coarse", True),
        ("dints_search", True),
    ):
        name = kind if tuned else f"{kind}, default malloc"
        try:
            res = run_child(
                job="train_step", device=args.device, kind=kind, roi=args.roi, steps=args.steps, tuned=tuned
            )
        except RuntimeError as e:
            print(f"{name}: failed: {e}")
            continue
        base = base or res
        found.setdefault("step", {})[name] = res
        print(
            _row(
                name,
                f"{res['parameters'] / 1e6:.1f}",
                _seconds(res["seconds"]),
                f"{res['peak_bytes'] / GIB:.2f}",
                *_ratios(res, base),
            )
        )
    print("targets for the supernets: time ratio <= 1.15, memory ratio <= 1.25")


def section_train(args, found: dict) -> None:
    """The found network's training step in float32 and bfloat16 (AMP on CUDA), both memory formats."""
    peak = found.get("conv_peak") or run_child(job="conv_peak", device=args.device)
    found["conv_peak"] = peak
    print(f"float32 conv3d peak: {peak['gflops']:.1f} GFLOP/s ({peak['shape']}, {peak['format']})")
    half = "bfloat16" if args.device == "cpu" else "float16 AMP"
    for width, roi, batch, label in ((8, 32, 4, "CPU profile: F=8, 4 x 32^3"), (32, 96, 1, "default: F=32, 96^3")):
        print(f"\n{label}, median of {args.steps} steps:")
        print(_row("variant", "seconds", "GFLOP/s", "efficiency", "speed-up", "peak GiB"))
        base = None
        for channels_last, bf16 in ((False, False), (True, False), (False, True), (True, True)):
            name = f"{half if bf16 else 'float32'}, {'channels_last_3d' if channels_last else 'contiguous'}"
            spec = dict(width=width, roi=roi, batch=batch, channels_last=channels_last, bf16=bf16, steps=args.steps)
            try:
                res = run_child(job="train_variant", device=args.device, **spec)
            except RuntimeError as e:
                print(f"{name}: failed: {e}")
                continue
            base = base or res
            gflops = 3 * 2 * res["macs"] / res["seconds"] / 1e9
            found.setdefault("train", {})[f"{label} / {name}"] = {**res, "gflops": gflops}
            print(
                _row(
                    name,
                    _seconds(res["seconds"]),
                    f"{gflops:.1f}",
                    f"{gflops / peak['gflops']:.2f}",
                    f"{base['seconds'] / res['seconds']:.2f}",
                    f"{res['peak_bytes'] / GIB:.2f}",
                )
            )
        # what the bundle's parts buy over PyTorch's where they differ from it: the separable upsampling on contiguous
        # tensors (channels-last ones it hands to PyTorch's kernel), the layout-keeping norm on channels_last_3d
        pairs = max(args.steps, 5) * (4 if width == 8 else 1)
        for part, against, layouts in (
            ("upsampling", "nn.Upsample", (False, False)),
            ("norm", "nn.InstanceNorm3d", (True, True)),
        ):
            for channels_last, bf16 in zip(layouts, (False, True)):
                name = f"{half if bf16 else 'float32'}, {'channels_last_3d' if channels_last else 'contiguous'}"
                spec = dict(width=width, roi=roi, batch=batch, channels_last=channels_last, bf16=bf16, steps=pairs)
                res = run_child(job="train_part", part=part, device=args.device, **spec)
                found.setdefault(f"train_{part}", {})[f"{label} / {name}"] = res
                print(
                    f"{name}: the bundle's {part} against {against}, {res['pairs']} steps each in alternation: "
                    f"{res['speed_up']:.3f}x (quartiles of the paired ratios {res['quartiles'][0]:.3f}-"
                    f"{res['quartiles'][1]:.3f})"
                )
    print("\nlabel maps (every training crop's, validation's and inference's post-processing), 3 classes:")
    print(_row("scores", "torch.argmax", "the bundle's", "speed-up"))
    for side, what in ((32, "a training crop"), (96, "a window"), (128, "the inference section's case")):
        res = run_child(job="label_map", device=args.device, side=side, classes=3, pairs=max(args.steps, 5))
        found.setdefault("label_map", {})[side] = res
        print(_row(f"{what}, {side}^3", _seconds(res["torch"]), _seconds(res["bundle"]), f"{res['speed_up']:.1f}"))
    res = run_child(job="augmentation", device="cpu", pairs=max(args.steps, 5) * 4)
    found["augmentation"] = res
    print(
        f"\ntraining augmentation (the CPU profile's, of one case of {'x'.join(map(str, res['shape']))} voxels into "
        f"{res['patches']} patches): MONAI's meta-data tracking {_seconds(res['tracked'])}, the bundle's "
        f"UntrackedRandomCompose {_seconds(res['untracked'])}, {res['speed_up']:.2f}x"
    )
    if args.device == "cpu":
        _side_by_side(args, found)
    print("targets: float32 training step >= 0.7 of the conv peak; bfloat16 >= 1.5x float32 (issue 29)")


def _side_by_side(args, found: dict) -> None:
    """What ``cluster_workers`` buys: the CPU profile's training steps per second of one process with all of torch's
    threads, against two processes with half of them each side by side (as the coarse search's clusters train),
    in the precision the bundle's ``cpu_bf16`` default picks; the two one after the other, twice, so the drift
    hits both."""
    import torch

    from networks.precision import default_cpu_bf16

    threads, bf16 = torch.get_num_threads(), default_cpu_bf16(torch.device("cpu"))
    if threads < 2:
        print("\ntwo trainings side by side: not measured (torch has 1 thread here)")
        return
    spec = dict(job="train_for", device="cpu", seconds=10.0 * max(args.steps, 5) / 5, bf16=bf16)
    rates: Dict[str, list] = {"one": [], "two": []}
    for _ in range(2):
        (one,) = run_children({**spec, "threads": threads})
        rates["one"].append(one["steps"] / one["seconds"])
        two = run_children(*[{**spec, "threads": threads // 2}] * 2)
        rates["two"].append(sum(r["steps"] / r["seconds"] for r in two))
    speed_up = [b / a for a, b in zip(rates["one"], rates["two"])]
    found["side_by_side"] = {"threads": threads, "bf16": bf16, "steps_per_second": rates, "speed_up": speed_up}
    print(
        f"\ntwo trainings side by side (the CPU profile's step, {'bfloat16' if bf16 else 'float32'}, "
        f"{spec['seconds']:.0f} s each, twice): one process of {threads} threads "
        f"{' and '.join(f'{r:.1f}' for r in rates['one'])} steps/s, two of {threads // 2} "
        f"{' and '.join(f'{r:.1f}' for r in rates['two'])} steps/s together: "
        f"{' and '.join(f'{x:.2f}x' for x in speed_up)} (cluster_workers)"
    )


def section_cost(args, found: dict) -> None:
    """Search compute / training compute at the configs' default budget, on MSD Task07-sized data."""
    if "step" not in found:
        section_search(args, found)
    if "window" not in found:
        section_monai(args, found)
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(BUNDLE))
    from scripts import stage_chain
    from scripts.inference_runtime import count_windows

    def merged(stage: str) -> dict:  # a stage's configs, as `monai.bundle run` merges them
        return ConfigParser.load_config_files(stage_chain.config_files(stage, BUNDLE))

    coarse, fine, train = merged("search_coarse"), merged("search_fine"), merged("train")
    cases, shape = args.cases, args.case_shape
    val = int(round(cases * train["val_fraction"]))
    iterations_per_epoch = -(-(cases - val) // train["batch_size"])
    step, window = found["step"], found["window"]["c2fnas"]["seconds"]
    # one step of every kind is measured at batch 1; train and search both draw batch_size x num_samples patches
    patches = train["batch_size"] * train["num_samples"]
    t_derived, t_fine = patches * step["derived"]["seconds"], patches * step["supernet_fine"]["seconds"]
    t_coarse = patches * step["supernet_coarse"]["seconds"]
    train_volume = count_windows(shape, [96] * 3, train["sw_overlap"]) * window
    coarse_evaluations = (
        coarse["num_clusters"] * coarse["score_samples"]
        + (coarse["population_size"] + coarse["cycles"]) * coarse["op_samples"]
    )
    fine_evaluations = fine["population_size"] + fine["cycles"]

    def search_parts(overlap: float, scored: int) -> Dict[str, float]:  # hours of each part, scoring on `scored` cases
        volume = count_windows(shape, [96] * 3, overlap) * window
        return {
            "coarse supernet training": coarse["num_clusters"] * coarse["cluster_iterations"] * t_coarse,
            "coarse evaluations": coarse_evaluations * scored * volume,
            "fine supernet training": fine["fine_iterations"] * t_fine,
            "fine evaluations": fine_evaluations * scored * volume,
        }

    search_val = min(val, coarse["search_val_cases"]) if coarse["search_val_cases"] else val  # fitness cases
    parts = search_parts(coarse["search_overlap"], search_val)
    before = search_parts(0.25, val)  # the evaluation budget of 0.3.1: overlap 0.25, every validation case
    training = {
        "training iterations": train["max_epochs"] * iterations_per_epoch * t_derived,
        "validations": train["max_epochs"] // train["val_interval"] * val * train_volume,
    }
    print(
        f"default budgets on {cases} cases of {'x'.join(map(str, shape))} voxels at 1 mm ({val} validation, "
        f"{search_val} of them scoring the search's candidates at overlap {coarse['search_overlap']}): "
        f"coarse {coarse['num_clusters']} x {coarse['cluster_iterations']} iterations + {coarse_evaluations} "
        f"evaluations, fine {fine['fine_iterations']} iterations + {fine_evaluations} evaluations, training "
        f"{train['max_epochs']} x {iterations_per_epoch} iterations + {train['max_epochs'] // train['val_interval']} "
        f"validations"
    )
    for name, seconds in {**parts, **training}.items():
        print(f"  {name:<28}{seconds / 3600:>10.1f} h on this machine")
    ratio = sum(parts.values()) / sum(training.values())
    print(f"search cost / training cost: {ratio:.2f} (target <= 1.0)")
    print(
        f"the same with 0.3.1's evaluation budget (overlap 0.25, all {val} validation cases): "
        f"{sum(before.values()) / sum(training.values()):.2f}; evaluation share of the search "
        f"{(parts['coarse evaluations'] + parts['fine evaluations']) / sum(parts.values()):.0%} now, "
        f"{(before['coarse evaluations'] + before['fine evaluations']) / sum(before.values()):.0%} before"
    )
    found["cost"] = ratio


# Runs argv[2:] with its output in argv[1] and prints its peak RSS: from this small process, not from the benchmark,
# because Linux starts an exec'd child's peak at the RSS of the process it was forked from (the benchmark holds torch)
# and ``RUSAGE_CHILDREN`` keeps the largest of every child ever waited for (an earlier section's DiNTS step).
_PEAK_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "with open(sys.argv[1], 'w') as log:\n"
    "    status = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(status)\n"
)


def _run_with_peak(command: list, cwd: Path, log: Path) -> Tuple[int, int]:
    """Run ``command`` in ``cwd`` with its output in ``log``: its exit status and its own peak RSS in bytes (its
    waited-for children included: the largest of them)."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", _PEAK_LAUNCHER, str(log), *map(str, command)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    return done.returncode, int(done.stdout.split()[-1])


def section_e2e(args, found: dict) -> None:
    out = Path(tempfile.mkdtemp(prefix="c2fnas-e2e-"))
    sys.path.insert(0, str(BUNDLE))
    from scripts import stage_chain

    profile = [BUNDLE / stage_chain.CPU_PROFILE]  # make demo's chain, into a temporary output_dir
    stages = {
        s.name: stage_chain.command(s.name, BUNDLE, profile, {"output_dir": str(out)}) for s in stage_chain.STAGES
    }
    total, peak = time.perf_counter(), 0
    try:
        for name, command in stages.items():
            start, log = time.perf_counter(), out / f"{name}.stage.log"  # removed with the outputs
            status, stage_peak = _run_with_peak(command, BUNDLE, log)
            if status != 0:
                raise RuntimeError(f"{name} failed (exit {status}): {log.read_text()[-1000:]}")
            peak = max(peak, stage_peak)
            print(f"  {name:<16}{time.perf_counter() - start:>8.0f} s{stage_peak / GIB:>8.2f} GiB")
        wall = time.perf_counter() - total
        dice = json.loads((out / "eval/dice_per_class.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"make demo chain: {wall:.0f} s wall, peak memory of the largest stage {peak / GIB:.2f} GiB; Dice {dice}")


def _iteration_times(log_dir: Path, tag: str = "train_loss") -> list:
    """Wall times of the per-iteration ``tag`` events that ``train.json``'s TensorBoard handler wrote, in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return sorted(e.wall_time for e in events.Scalars(tag))


def section_throughput(args, found: dict) -> None:
    """A training at the default budget's settings (``train.json`` without a profile, the shipped architecture, the
    embedded data) run for ``--throughput_epochs`` epochs without validation: seconds per iteration and patches per
    second over the last epoch (from the wall times of the per-iteration loss events, so start-up, caching and the
    first epoch's warm-up are left out; the epoch-end checkpoint is in), and the default budget's iterations at
    that rate."""
    sys.path.insert(0, str(BUNDLE))
    from monai.bundle import ConfigParser
    from scripts import stage_chain

    epochs = args.throughput_epochs
    if epochs < 2:
        raise SystemExit(
            f"--throughput_epochs {epochs}: at least 2 (the last epoch is timed from the end of the one before)"
        )
    extra = [str(Path(args.throughput_profile).resolve())] if args.throughput_profile else []
    config = ConfigParser(ConfigParser.load_config_files(stage_chain.config_files("train", BUNDLE, extra)))
    names = ("iterations_per_epoch", "max_epochs", "batch_size", "num_samples", "base_channels", "amp")
    setting = {k: config.get_parsed_content(k) for k in names}
    iterations = args.throughput_iterations or (setting["iterations_per_epoch"] if args.device != "cpu" else 10)
    patches = setting["batch_size"] * setting["num_samples"]
    out = Path(tempfile.mkdtemp(prefix="c2fnas-throughput-"))
    overrides = {
        "output_dir": str(out),
        "arch_file": str(BUNDLE / "models" / "architecture.json"),
        "max_epochs": epochs,
        "iterations_per_epoch": iterations,
        "val_interval": epochs + 1,
    }
    try:
        start = time.perf_counter()
        done = subprocess.run(
            stage_chain.command("train", BUNDLE, extra, overrides), cwd=BUNDLE, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"training failed: {done.stderr[-1500:]}")
        times = _iteration_times(out / "tensorboard" / "train")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if len(times) != epochs * iterations:
        raise RuntimeError(f"{len(times)} iteration events, expected {epochs} x {iterations}")
    last = times[-iterations - 1 :]  # the end of the epoch before, then every iteration of the last epoch
    per_iteration = (last[-1] - last[0]) / iterations
    budget = setting["max_epochs"] * setting["iterations_per_epoch"]
    print(
        f"train.json at {'+'.join(map(os.path.basename, extra)) or 'the default settings'} "
        f"(F={setting['base_channels']}, the shipped architecture, embedded data, {patches} patches of the plan's "
        f"roi per iteration, amp {setting['amp']}), {epochs} epochs of {iterations} iterations, no validation: "
        f"{wall:.0f} s wall"
    )
    print(
        f"  last epoch: {per_iteration:.3f} s per iteration, {patches / per_iteration:.1f} patches/s; the default "
        f"budget's {budget} iterations take {budget * per_iteration / 3600:.2f} h at this rate (validations apart)"
    )
    found["throughput"] = {"seconds_per_iteration": per_iteration, "patches_per_second": patches / per_iteration}


def machine(device: str) -> str:
    """The machine the figures are measured on: CPU model (family/model), cores, device, versions."""
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.search_quality import cpu_info

    info = cpu_info()
    cpu = info.get("model name", platform.processor() or platform.machine())
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']} model {info.get('model', '?')})"
    flags = info.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    native_bf16 = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX")) if flag in flags]
    bf16 = f" with {' and '.join(native_bf16)}" if native_bf16 else ""
    cpu += f", {isa}{bf16}, {os.cpu_count()} cores"
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{cpu}; device {device}; torch {torch.__version__}, python {platform.python_version()}"


def section_dice(args, found: dict) -> None:
    """The searched network vs MONAI's UNet and SegResNet at equal training wall time (CPU profile, embedded data)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import search_quality as sq
    from networks.complexity import count_macs

    work = Path(args.work_dir).resolve()
    bench = sq.Bench(work, None, BUNDLE / "configs" / "cpu_profile.json", reuse=True)
    searched = sq.search_part(bench, 0)
    arch = {"levels": searched["arch"]["levels"], "ops": searched["arch"]["ops"]}
    trained = {"searched C2FNAS (seed 0)": sq.train_part(bench, "searched_seed0", arch)}
    epochs = sq.calibration_part(bench, arch)
    for name in sq.BASELINES:
        n, every = epochs[name]["max_epochs"], epochs[name]["val_interval"]
        config = sq.baseline_config(bench, name)
        trained[name] = sq.train_part(bench, name, None, extra=[config], max_epochs=n, val_interval=every)

    def network(name: str):  # the network_def each was trained with, from the same configs
        from networks import Architecture, save_architecture

        overrides: Dict[str, object] = {"bundle_root": str(BUNDLE)}
        extra = [sq.baseline_config(bench, name)] if name in sq.BASELINES else []
        if not extra:
            arch_file = work / "configs" / "searched_seed0.json"
            save_architecture(Architecture(tuple(arch["levels"]), tuple(arch["ops"])), arch_file)
            overrides["arch_file"] = str(arch_file)
        parser = sq.parsed(bench.config_files("train", extra), overrides)
        return parser.get_parsed_content("network_def"), parser.get_parsed_content("roi_size")

    print("embedded data, CPU profile, equal training wall time (epochs calibrated by short real trainings):")
    print(_row("network", "params (M)", "GMAC/patch", "epochs", "train+eval s", "mean Dice"))
    for name, res in trained.items():
        net, roi = network("searched" if name.startswith("searched") else name)
        macs = count_macs(net.eval(), (1, 1, *roi))
        n = epochs["searched"]["max_epochs"] if name.startswith("searched") else epochs[name]["max_epochs"]
        print(
            _row(
                name,
                f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}",
                f"{macs / 1e9:.2f}",
                n,
                f"{res['wall_s']:.0f}",
                f"{res['dice']:.4f}",
            )
        )
    print(f"search (seed 0): {sum(searched['wall_s'].values()):.0f} s; parts in {work}")


SECTIONS = {
    "inference": section_inference,
    "shapes": section_shapes,
    "monai": section_monai,
    "search": section_search,
    "train": section_train,
    "cost": section_cost,
    "dice": section_dice,
    "throughput": section_throughput,
    "e2e": section_e2e,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sections",
        default=None,
        help=f"any of {', '.join(SECTIONS)} (default: all; on the CPU all but throughput, whose step is train's)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--volume", type=int, default=128, help="side of the cubic input of the inference section")
    parser.add_argument("--roi", type=int, default=96, help="training patch side of the search section")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per model")
    parser.add_argument("--cases", type=int, default=281, help="labelled cases (MSD Task07: 281)")
    parser.add_argument(
        "--case_shape", type=int, nargs=3, default=[400, 400, 232], help="a typical case at 1 mm (MSD Task07)"
    )
    parser.add_argument(
        "--work_dir", default=str(ROOT / "runs" / "performance_dice"), help="the dice section's kept parts"
    )
    parser.add_argument("--throughput_epochs", type=int, default=2, help="epochs of the throughput section's training")
    parser.add_argument(
        "--throughput_iterations", type=int, default=0, help="its iterations per epoch (0: the config's; 10 on a CPU)"
    )
    parser.add_argument(
        "--throughput_profile", default=None, help="a config layer over its train.json (default: none, the defaults)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child_main(json.loads(args.child))))
        return
    print(f"# {machine(args.device)}")
    found: Dict[str, dict] = {}
    default = [s for s in SECTIONS if args.device != "cpu" or s != "throughput"]
    for name in args.sections.split(",") if args.sections else default:
        print(f"\n## {name}")
        SECTIONS[name](args, found)


if __name__ == "__main__":
    main()
