"""Sliding-window inference on the runtime this machine measures fastest, for a network whose weights are fixed.

MONAI's inferers run the network they are given as it is; what is fastest differs between CPUs (the memory format
oneDNN prefers, PyTorch's eager kernels vs OpenVINO's fused graph: ``benchmarks/performance.py`` measures them side
by side), so :class:`MeasuredSlidingWindowInferer` times the candidates on this machine at its first call and runs
every window with the fastest one whose output matches PyTorch's.

``openvino_bf16`` (OpenVINO in bfloat16) runs only when named: on an AMD Zen 5 it halved the window time and moved
no class's mean Dice by more than 0.0022 (``benchmarks/inference_precision.py``), but a test process that had run it
and then started a subprocess died of a segmentation fault, so ``auto`` does not choose it.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from torch import nn

__all__ = [
    "RUNTIMES",
    "MeasuredSlidingWindowInferer",
    "OpenVINORuntime",
    "build_runtime",
    "candidate_runtimes",
    "count_windows",
]

RUNTIMES = ("auto", "torch", "torch_channels_last", "openvino", "openvino_bf16")
logger = logging.getLogger("c2fnas.inference")


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def count_windows(spatial: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows over spatial sides ``spatial`` (MONAI's scan: ``ceil((side - roi) / interval) + 1`` per axis)."""
    count = 1
    for side, size in zip(spatial, roi):
        interval = max(1, int(size * (1 - overlap)))
        count *= 1 if side <= size else -(-(side - size) // interval) + 1
    return count


def candidate_runtimes(device: torch.device) -> List[str]:
    """The runtimes ``auto`` measures on ``device``: PyTorch in both memory formats; OpenVINO (float32) on CPU."""
    names = ["torch", "torch_channels_last"]
    if device.type == "cpu" and _openvino_available():
        names.append("openvino")
    return names


class _ChannelsLast:
    """A copy of the network in ``channels_last_3d``: ``(B, C, *S) -> (B, out, *S)``, outputs contiguous."""

    def __init__(self, network: nn.Module):
        self.network = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()


class OpenVINORuntime:
    """The network converted by OpenVINO for one window batch shape ``(B, C, *S)``; smaller batches are padded.

    OpenVINO runs with PyTorch's thread count (``torch.get_num_threads()``, so ``OMP_NUM_THREADS`` holds for both)
    and in ``precision`` (``INFERENCE_PRECISION_HINT``: ``f32``, the precision the weights were trained in, or
    ``bf16``: weights and activations rounded to bfloat16, outputs float32); ``config`` adds OpenVINO properties
    (the benchmark's ``PERF_COUNT``).
    """

    def __init__(self, network: nn.Module, example: torch.Tensor, precision: str = "f32", **config: Any):
        import openvino

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shapes are fixed: tracing them is right
            model = openvino.convert_model(network, example_input=example)
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
            **config,
        }
        self.request = openvino.Core().compile_model(model, "CPU", config).create_infer_request()
        self.shape = tuple(example.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if tuple(x.shape[1:]) != self.shape[1:] or batch > self.shape[0]:
            raise ValueError(f"OpenVINO runtime built for windows {self.shape}, got {tuple(x.shape)}")
        if batch < self.shape[0]:
            x = torch.cat([x, x.new_zeros((self.shape[0] - batch, *x.shape[1:]))])
        out = self.request.infer([x.detach().to("cpu", torch.float32).contiguous().numpy()])[0]
        return torch.from_numpy(out)[:batch].to(x.device)


def build_runtime(name: str, network: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``name`` (one of :data:`RUNTIMES` but ``auto``) running ``network`` on windows shaped like ``example``."""
    if name == "torch":
        return network
    if name == "torch_channels_last":
        return _ChannelsLast(network)
    if name in ("openvino", "openvino_bf16"):
        if not _openvino_available():
            raise ImportError(f"inference_runtime '{name}' needs the openvino package (pip install openvino)")
        if example.device.type != "cpu":
            raise ValueError(f"inference_runtime '{name}' runs on CPU, the network is on {example.device}")
        return OpenVINORuntime(network, example, precision="bf16" if name == "openvino_bf16" else "f32")
    raise ValueError(f"inference_runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")


def _weights_key(network: nn.Module) -> Tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (loading, optimiser steps)."""
    tensors = [*network.parameters(), *network.buffers()]
    return (id(network), tuple((t.data_ptr(), t._version) for t in tensors))


class MeasuredSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's :class:`SlidingWindowInferer` whose windows run on a runtime chosen by measurement.

    ``runtime="auto"``: once the volumes given so far hold ``min_windows`` windows (the choice costs about 20
    window times, so short runs keep PyTorch), each of :func:`candidate_runtimes` is built for the window batch
    ``(sw_batch_size, C, *roi_size)`` and run once on the central window of the volume at hand; those whose output
    differs from PyTorch's by at most ``tolerance`` x its largest magnitude are timed in ``repeats`` rounds (each
    runtime once per round, so a slow spell of the machine hits all alike), and the one with the lowest median runs
    every later window. The measurements are logged. Any other ``runtime`` is used as named from the first window. The
    choice is remade only if the network's weights change, so use it where they are fixed (inference,
    evaluation); training's validation keeps MONAI's inferer.
    """

    def __init__(
        self,
        roi_size: Union[Sequence[int], int],
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        runtime: str = "auto",
        min_windows: int = 64,
        repeats: int = 3,
        tolerance: float = 1e-3,
        **kwargs,
    ):
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, **kwargs)
        if runtime not in RUNTIMES:
            raise ValueError(f"inference_runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.runtime, self.min_windows, self.repeats, self.tolerance = runtime, min_windows, repeats, tolerance
        self.chosen: Optional[str] = None
        self.timings: Dict[str, float] = {}
        self.windows_seen = 0
        self._key: Optional[Tuple] = None
        self._runner: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs):
        if isinstance(network, nn.Module):
            network = self._runtime_for(network, inputs)
        return super().__call__(inputs, network, *args, **kwargs)

    def _roi(self, spatial: Sequence[int]) -> List[int]:
        roi = self.roi_size if isinstance(self.roi_size, Sequence) else [self.roi_size] * len(spatial)
        return [int(s) if r is None or int(r) <= 0 else int(r) for r, s in zip(roi, spatial)]

    def count_windows(self, shape: Sequence[int]) -> int:
        """Windows over an input ``(B, C, *S)``: ``B`` x :func:`count_windows` of its sides."""
        return shape[0] * count_windows(shape[2:], self._roi(shape[2:]), self.overlap)

    def _runtime_for(self, network: nn.Module, inputs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        key = _weights_key(network)
        if key != self._key:  # new or changed weights: choose again
            self._key, self._runner, self.chosen, self.windows_seen = key, None, None, 0
        self.windows_seen += self.count_windows(inputs.shape)
        if self._runner is not None:
            return self._runner
        if self.runtime == "auto" and self.windows_seen < self.min_windows:
            if self.chosen is None:
                logger.info(f"inference runtime: torch until {self.min_windows} windows are due, then measured")
                self.chosen = "torch"
            return network
        example = self._central_windows(inputs)
        with torch.no_grad():
            self.chosen, self._runner = self._choose(network, example)
        return self._runner

    def _central_windows(self, inputs: torch.Tensor) -> torch.Tensor:
        """``sw_batch_size`` copies of the window at the centre of ``inputs[0]``, zero-padded to the ROI as MONAI
        pads: ``(sw_batch_size, C, *roi)``, the window batch the runtimes are built for, checked and timed on."""
        spatial = inputs.shape[2:]
        roi = self._roi(spatial)
        starts = [max(0, (side - size) // 2) for side, size in zip(spatial, roi)]
        window = inputs[(slice(0, 1), slice(None), *(slice(a, a + size) for a, size in zip(starts, roi)))].float()
        padding = [p for got, size in zip(reversed(window.shape[2:]), reversed(roi)) for p in (0, size - got)]
        window = F.pad(window, padding)
        return window.expand(self.sw_batch_size, *window.shape[1:]).contiguous()

    def _differs(self, out: torch.Tensor, reference: torch.Tensor) -> Optional[str]:
        """Why ``out`` does not match PyTorch's ``reference`` (float32, within ``tolerance``), or ``None``."""
        difference = (out.float() - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)
        return None if difference <= self.tolerance else f"its output differs from PyTorch's by {difference:.0e}"

    @staticmethod
    def _seconds(runner: Callable, example: torch.Tensor) -> float:
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)
        start = time.perf_counter()
        runner(example)
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)
        return time.perf_counter() - start

    def _choose(self, network: nn.Module, example: torch.Tensor) -> Tuple[str, Callable]:
        if self.runtime != "auto":
            logger.info(f"inference runtime: {self.runtime} (as set)")
            return self.runtime, build_runtime(self.runtime, network, example)
        runners: Dict[str, Callable] = {"torch": network}
        reference = network(example).float()  # PyTorch as trained: the reference, and its warm-up
        for name in candidate_runtimes(example.device)[1:]:
            try:
                runner = build_runtime(name, network, example)
                out = runner(example)  # its warm-up
            except Exception as e:  # a runtime that cannot run this network is skipped, not fatal
                logger.warning(f"inference runtime {name} skipped: {type(e).__name__}: {e}")
                continue
            reason = self._differs(out, reference)
            if reason is not None:
                logger.warning(f"inference runtime {name} skipped: {reason}")
                continue
            runners[name] = runner
        # timed in rounds, each runtime once per round, so a slow spell of the machine hits all of them alike
        times: Dict[str, List[float]] = {name: [] for name in runners}
        for _ in range(self.repeats):
            for name, runner in runners.items():
                times[name].append(self._seconds(runner, example))
        self.timings = {name: statistics.median(t) for name, t in times.items()}
        fastest = min(self.timings, key=self.timings.get)
        measured = ", ".join(f"{n} {s:.3f} s" for n, s in self.timings.items())
        logger.info(f"inference runtime: {fastest} (per batch of {tuple(example.shape)} windows, median of "
                    f"{self.repeats}: {measured})")  # fmt: skip
        return fastest, runners[fastest]
