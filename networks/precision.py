"""bfloat16 training on the CPU: what MONAI's ``amp`` lacks (its engines autocast and scale gradients on CUDA only).

With ``cpu_bf16`` a training forward pass on the CPU runs under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with
the network and its input in ``channels_last_3d`` (oneDNN's fast layout for bfloat16 convolutions); the output is
returned in float32, so the loss, the gradients' accumulation and the optimizer stay in float32 and no gradient
scaling is needed (bfloat16 has float32's exponent range). The weights stay float32: the checkpoint, the deployed
network and its exports are unchanged. Elsewhere (``cpu_bf16`` off, or a CUDA tensor, where ``amp`` applies)
the forward pass is the plain one, bit for bit.

One exception, found on an AMD Zen 5 (AVX512-BF16 without AMX, torch 2.13.0): oneDNN's bfloat16 weight gradient of
a convolution whose input is smaller than its kernel along some axis (a 3x3 kernel over the 2x2x2 maps at level 4
of a 32^3 patch) is intermittently NaN or Inf, which ended C2FNAS-Panc's trainings at the CPU profile. So under
``CPUBFloat16`` such a convolution runs in float32 (:func:`float32_where_input_is_smaller_than_kernel`); it costs
nothing measurable, these maps being the smallest of the network.

In both cases the network gets its input as a plain ``torch.Tensor`` (the same storage): given MONAI's
``MetaTensor``, as the data loaders give it, each of the network's operations would go through its meta-data
handling, 4.5 ms of a 60 ms CPU-profile step (machine X, 0.8.2); a training step does not use the meta data.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from monai.inferers import SimpleInferer

__all__ = [
    "CPUBFloat16",
    "BFloat16Inferer",
    "cpu_has_native_bf16",
    "default_cpu_bf16",
    "float32_where_input_is_smaller_than_kernel",
]


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 natively (x86 ``avx512_bf16`` or ``amx_bf16`` flags; Linux). Elsewhere
    oneDNN emulates bfloat16 and it is slower than float32, so it is never chosen there."""
    if not sys.platform.startswith("linux") or not cpuinfo.is_file():
        return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.open() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_cpu_bf16(device: Any) -> bool:
    """The bundle's default for ``cpu_bf16``: on for a CPU ``device`` that computes bfloat16 natively."""
    return torch.device(device).type == "cpu" and cpu_has_native_bf16()


_FLOAT32_GUARD = "_c2fnas_float32_guard"


def _enter_float32(conv: torch.nn.modules.conv._ConvNd, args: tuple):
    """Forward pre-hook: under CPU autocast, a convolution whose input is smaller than its kernel along some axis
    leaves autocast (entered here, left by :func:`_leave_float32`) and takes its input as float32."""
    x = args[0]
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    if all(side >= k for side, k in zip(x.shape[2:], conv.kernel_size)):
        return None
    guard = torch.autocast("cpu", enabled=False)
    guard.__enter__()
    setattr(conv, _FLOAT32_GUARD, guard)
    return (x.float(), *args[1:])


def _leave_float32(conv: torch.nn.Module, args: tuple, output: Any) -> None:
    guard = conv.__dict__.pop(_FLOAT32_GUARD, None)
    if guard is not None:
        guard.__exit__(None, None, None)


def float32_where_input_is_smaller_than_kernel(network: torch.nn.Module) -> torch.nn.Module:
    """Hook every convolution of ``network`` so that under CPU autocast it runs in float32 where its input is smaller
    than its kernel along some axis (see the module doc); elsewhere, and outside autocast, nothing changes. Returns
    ``network``, hooked once however often it is called."""
    for module in network.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd) and not getattr(module, "_c2fnas_float32_hooked", False):
            module.register_forward_pre_hook(_enter_float32)
            module.register_forward_hook(_leave_float32, always_call=True)
            module._c2fnas_float32_hooked = True
    return network


class CPUBFloat16:
    """A training forward pass on the CPU in bfloat16 and ``channels_last_3d`` when ``enabled`` (see module doc).

    ``forward(network, image, *args)`` returns ``network(image, *args)`` as float32, ``(B, K, *S)`` for a
    ``(B, C, *S)`` image. The network's 5-D parameters are moved to ``channels_last_3d`` in place on its first call
    (the optimizer keeps the same parameter objects), and its convolutions are hooked by
    :func:`float32_where_input_is_smaller_than_kernel`.
    """

    def __init__(self, enabled: bool = False):
        self.enabled = bool(enabled)
        self._converted: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()

    def applies(self, tensor: torch.Tensor) -> bool:
        return self.enabled and tensor.device.type == "cpu"

    def forward(self, network: torch.nn.Module, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        image = image.as_subclass(torch.Tensor)  # a MetaTensor's meta data, which training does not use, dropped
        if not self.applies(image):
            return network(image, *args, **kwargs)
        if network not in self._converted:
            network.to(memory_format=torch.channels_last_3d)
            float32_where_input_is_smaller_than_kernel(network)
            self._converted.add(network)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = network(image.contiguous(memory_format=torch.channels_last_3d), *args, **kwargs)
        if isinstance(output, list):  # a deep-supervised training: the logits, then the auxiliary outputs
            return [o.float() for o in output]
        return output.float()


class BFloat16Inferer(SimpleInferer):
    """``SimpleInferer`` (the training inferer) whose forward pass is ``CPUBFloat16(enabled).forward``."""

    def __init__(self, enabled: bool = False):
        super().__init__()
        self.precision = CPUBFloat16(enabled)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        return self.precision.forward(network, inputs, *args, **kwargs)
