"""The C2FNAS network family (Yu et al., CVPR 2020) for 3D segmentation, as ``bundle/docs/method.md`` describes it.

Shapes: the input is ``(B, in_channels, D0, D1, D2)`` with every spatial side divisible by ``2 ** deepest level``
(16 for a topology that reaches level 4; the bundle uses multiples of 32). Level ``l`` holds
``base_channels * 2**l`` channels at ``1 / 2**l`` of the input size. The output is
``(B, out_channels, D0, D1, D2)`` logits.
"""

from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from networks.architecture import NUM_LEVELS, OPS, Architecture, ArchitectureError, load_architecture, topology_wiring

# Input sides that are multiples of this fit every network of the family: a network's own ``size_divisor`` is
# 2 ** its deepest level, at most 2 ** NUM_LEVELS. Patches (the plan's ``roi_size``) are chosen as such multiples.
PATCH_DIVISOR: int = 2**NUM_LEVELS

__all__ = [
    "C2FNASNet",
    "Cell",
    "Head",
    "LayoutKeepingInstanceNorm3d",
    "TrilinearUpsample2x",
    "as_architecture",
    "level_channels",
    "make_op",
    "make_transition",
    "make_stem",
    "make_head",
]

ArchLike = Union[Architecture, Mapping[str, Any], str, "os.PathLike[str]"]


def level_channels(level: int, base_channels: int) -> int:
    """Channels at ``level``: ``base_channels * 2**level`` (F = 32 gives 64, 128, 256, 512)."""
    return base_channels * 2**level


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out ``channels_last_3d`` and not also contiguous (a layout-neutral shape is not)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


class LayoutKeepingInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same arguments, parameters and values) whose output ``(B, C, D0, D1, D2)`` keeps a
    ``channels_last_3d`` input's layout.

    PyTorch's CPU instance norm always returns a contiguous tensor. In a channels-last network every following
    operation then mixes layouts: the next convolution converts its input back, and the ReLU between them runs its
    backward on a contiguous output and a channels-last gradient, about 6x slower than on one layout. Converting the
    output once here keeps the network in one layout (the CPU-profile training step of ``make demo``'s network 1.1x
    faster in bfloat16 and in float32; ``benchmarks/performance.py --sections train``).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if input.dim() == 4:  # one unbatched (C, D0, D1, D2) volume
            return self._apply_instance_norm(input.unsqueeze(0)).squeeze(0)
        output = self._apply_instance_norm(input)
        if _channels_last(input):
            output = output.contiguous(memory_format=torch.channels_last_3d)
        return output


def _norm(channels: int) -> nn.InstanceNorm3d:
    return LayoutKeepingInstanceNorm3d(channels, affine=True)


def _conv(in_channels: int, out_channels: int, kernel: Sequence[int], stride: int = 1) -> nn.Conv3d:
    """Bias-free convolution with "same" padding for odd kernels (halving the size when ``stride`` is 2)."""
    padding = tuple(k // 2 for k in kernel)
    return nn.Conv3d(in_channels, out_channels, tuple(kernel), stride=stride, padding=padding, bias=False)


class TrilinearUpsample2x(nn.Module):
    """Trilinear x2 upsampling with ``align_corners=False``: ``(B, C, D0, D1, D2) -> (B, C, 2*D0, 2*D1, 2*D2)``.

    Equal to ``nn.Upsample(scale_factor=2, mode="trilinear")``. A contiguous input is computed as three separable 1D
    passes that write straight into their outputs: 1.1-3.5x faster than PyTorch's CPU kernel for contiguous tensors,
    with autograd too (its backward is the passes' adjoint, ``_SeparableUpsample``; ``benchmarks/performance.py``).
    Half-precision tensors are computed in float32 and rounded once, as PyTorch's kernel does. A ``channels_last_3d``
    input goes to ``F.interpolate``, whose channels-last kernel is as fast or faster (in bfloat16 with autograd about
    twice, the values and gradients the same to float32 rounding), as do inputs when traced (a graph runtime such as
    OpenVINO then sees one interpolation), scripted with autograd (TorchScript has no custom autograd functions), and
    with sides under 2.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or x.dim() != 5 or min(x.shape[2:]) < 2 or _channels_last(x):
            return nn.functional.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
        if torch.is_grad_enabled() and x.requires_grad:
            if torch.jit.is_scripting():  # TorchScript has no custom autograd functions
                return nn.functional.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
            return self._with_autograd(x)
        return _separable(x, adjoint=False)

    @torch.jit.unused
    def _with_autograd(self, x: torch.Tensor) -> torch.Tensor:
        return _SeparableUpsample.apply(x)


class _SeparableUpsample(torch.autograd.Function):
    """``_separable`` x2 upsampling with its exact adjoint as backward: PyTorch's ``upsample_trilinear3d`` and its
    backward are single CPU kernels about twice as slow on these shapes."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _separable(x, adjoint=False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _separable(grad, adjoint=True)


def _separable(x: torch.Tensor, adjoint: bool) -> torch.Tensor:
    """``_linear_double`` (or, ``adjoint``, ``_linear_halve``) along each spatial axis of ``(B, C, D0, D1, D2)``, on
    a channels-last view where the tensor is ``channels_last_3d`` so that the result keeps that layout; bfloat16 and
    float16 in float32, rounded once at the end."""
    half = x.dtype == torch.bfloat16 or x.dtype == torch.float16
    y = x.float() if half else x
    channels_last = _channels_last(y)
    if channels_last:
        y = y.permute(0, 2, 3, 4, 1)  # (B, D0, D1, D2, C), dense
    # the innermost spatial axis first: the large passes then write whole contiguous rows
    for dim in (3, 2, 1) if channels_last else (4, 3, 2):
        y = _linear_halve(y, dim) if adjoint else _linear_double(y, dim)
    if channels_last:
        y = y.permute(0, 4, 1, 2, 3)
    return y.to(x.dtype) if half else y


def _linear_double(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear x2 along ``dim`` (``align_corners=False``): ``out[2i] = 3/4 x[i] + 1/4 x[i-1]``,
    ``out[2i+1] = 3/4 x[i] + 1/4 x[i+1]``, the neighbours clamped at the ends."""
    n = x.shape[dim]
    shape = list(x.shape)
    shape.insert(dim + 1, 2)
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    even, odd = out.select(dim + 1, 0), out.select(dim + 1, 1)
    torch.lerp(x.narrow(dim, 1, n - 1), x.narrow(dim, 0, n - 1), 0.25, out=even.narrow(dim, 1, n - 1))
    even.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    torch.lerp(x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1), 0.25, out=odd.narrow(dim, 0, n - 1))
    odd.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1))
    return out.flatten(dim, dim + 1)


def _linear_halve(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """The adjoint of ``_linear_double`` along ``dim`` (``2n -> n``): ``x[i]`` collects ``3/4`` of ``out[2i]`` and
    ``out[2i+1]`` and ``1/4`` of ``out[2i+2]`` and ``out[2i-1]``; at the ends the clamped neighbour's quarter too."""
    n = grad.shape[dim] // 2
    pairs = grad.unflatten(dim, (n, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    out = torch.add(even, odd).mul_(0.75)
    out.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1), alpha=0.25)
    out.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1), alpha=0.25)
    out.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1), alpha=0.25)
    out.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1), alpha=0.25)
    return out


def make_op(name: str, channels: int) -> nn.Sequential:
    """A cell operation, ``(B, C, *S) -> (B, C, *S)``.

    ``2D``: ReLU, Conv (3,3,1), IN. ``3D``: ReLU, Conv (3,3,3), IN. ``P3D``: ReLU, Conv (3,3,1), Conv (1,1,3), IN.
    The (3,3,1) kernel is in-plane for the first two spatial axes (axial slices in RAS orientation).
    """
    if name == "2D":
        convs = [_conv(channels, channels, (3, 3, 1))]
    elif name == "3D":
        convs = [_conv(channels, channels, (3, 3, 3))]
    elif name == "P3D":
        convs = [_conv(channels, channels, (3, 3, 1)), _conv(channels, channels, (1, 1, 3))]
    else:
        raise ArchitectureError(f"unknown op {name!r}; ops are {', '.join(OPS)}")
    return nn.Sequential(nn.ReLU(), *convs, _norm(channels))


def make_transition(kind: str, channels: int) -> nn.Module:
    """The resampling into a cell at ``channels`` (its level's width) from the previous cell.

    ``down``: ReLU, Conv 3x3x3 stride 2 (C/2 -> C), IN: ``(B, C/2, 2S) -> (B, C, S)``.
    ``up``: trilinear x2, ReLU, Conv 1x1x1 (2C -> C), IN: ``(B, 2C, S/2) -> (B, C, S)``. ``same``: identity.
    """
    if kind == "same":
        return nn.Identity()
    if kind == "down":
        return nn.Sequential(nn.ReLU(), _conv(channels // 2, channels, (3, 3, 3), stride=2), _norm(channels))
    if kind == "up":
        return nn.Sequential(
            TrilinearUpsample2x(), nn.ReLU(), _conv(channels * 2, channels, (1, 1, 1)), _norm(channels)
        )
    raise ValueError(f"unknown transition {kind!r}; expected 'down', 'up' or 'same'")


def make_stem(in_channels: int, base_channels: int) -> nn.Sequential:
    """Conv 3x3x3 (in -> F), IN, ReLU, Conv 3x3x3 stride 2 (F -> 2F), IN: ``(B, in, S) -> (B, 2F, S/2)``."""
    return nn.Sequential(
        _conv(in_channels, base_channels, (3, 3, 3)),
        _norm(base_channels),
        nn.ReLU(),
        _conv(base_channels, 2 * base_channels, (3, 3, 3), stride=2),
        _norm(2 * base_channels),
    )


class Cell(nn.Module):
    """``out = post(op(pre(transition(x)) + pre2(second)))``; pre, pre2, post are bias-free 1x1x1 convolutions.

    ``x``: the previous cell's output, ``(B, C', S')`` at the neighbouring or same level; ``second``: ``(B, C, S)``
    or ``None``. Returns ``(B, C, S)``. ``pre2`` is an ``nn.Identity`` placeholder in cells with no second input.
    """

    def __init__(self, transition: nn.Module, pre: nn.Module, pre2: nn.Module, op: nn.Module, post: nn.Module):
        super().__init__()
        self.transition = transition
        self.pre = pre
        self.pre2 = pre2
        self.op = op
        self.post = post

    def forward(self, x: torch.Tensor, second: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.pre(self.transition(x))
        if second is not None:
            h = h + self.pre2(second)
        return self.post(self.op(h))


def make_pointwise(channels: int) -> nn.Conv3d:
    return _conv(channels, channels, (1, 1, 1))


class Head(nn.Module):
    """Segmentation head from level 1 to full resolution.

    ``fuse``: ReLU, Conv 3x3x3 (C1 or 2*C1 -> C1), IN, applied to the last cell's output ``(B, C1, S/2)``,
    concatenated with the previous cell's output when that is also at level 1. ``decode``: ReLU, trilinear x2,
    Conv 3x3x3 (C1 -> F), IN, ReLU, Conv 1x1x1 (F -> classes, with bias): ``(B, C1, S/2) -> (B, classes, S)``.
    """

    def __init__(self, fuse: nn.Module, decode: nn.Module):
        super().__init__()
        self.fuse = fuse
        self.decode = decode

    def forward(self, last: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
        if previous is not None:
            last = torch.cat([last, previous], dim=1)
        return self.decode(self.fuse(last))


def make_head(base_channels: int, out_channels: int, concat_previous: bool) -> Head:
    c1 = level_channels(1, base_channels)
    return Head(make_head_fuse(c1, concat_previous), make_head_decode(base_channels, out_channels))


def make_head_fuse(c1: int, concat_previous: bool) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), _conv(2 * c1 if concat_previous else c1, c1, (3, 3, 3)), _norm(c1))


def make_head_decode(base_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        TrilinearUpsample2x(),
        _conv(level_channels(1, base_channels), base_channels, (3, 3, 3)),
        _norm(base_channels),
        nn.ReLU(),
        nn.Conv3d(base_channels, out_channels, kernel_size=1, bias=True),
    )


def as_architecture(arch: ArchLike, require_ops: bool = True) -> Architecture:
    """Accept an ``Architecture``, a ``c2fnas-arch/1`` dict or the path of such a JSON file."""
    if isinstance(arch, Architecture):
        out = arch
    elif isinstance(arch, Mapping):
        out = Architecture.from_dict(dict(arch))
    elif isinstance(arch, (str, os.PathLike)):
        out = load_architecture(arch)
    else:
        raise ArchitectureError(f"expected an Architecture, a dict or a file path, got {type(arch).__name__}")
    if require_ops and out.ops is None:
        raise ArchitectureError(
            f"architecture {out} has no ops; a network needs one op per cell (run the fine search stage first)"
        )
    return out


class C2FNASNet(nn.Module):
    """A C2FNAS network for one architecture (topology and op per cell).

    Args:
        arch: an ``Architecture``, a ``c2fnas-arch/1`` dict, or the path of such a JSON file.
        in_channels: input channels (1 for CT).
        out_channels: output classes (3 for background, pancreas, tumour).
        base_channels: width F; level ``l`` has ``F * 2**l`` channels.

    Input ``(B, in_channels, D0, D1, D2)``, sides divisible by ``size_divisor``;
    output ``(B, out_channels, D0, D1, D2)``.
    TorchScript-able; accepts ``channels_last_3d`` tensors.
    """

    __jit_ignored_attributes__ = ["arch"]

    def __init__(self, arch: ArchLike, in_channels: int = 1, out_channels: int = 3, base_channels: int = 32):
        super().__init__()
        arch = as_architecture(arch)
        wiring = topology_wiring(arch.levels)
        cells = []
        for w, op in zip(wiring, arch.ops):
            channels = level_channels(w.level, base_channels)
            cells.append(
                Cell(
                    transition=make_transition(w.transition, channels),
                    pre=make_pointwise(channels),
                    pre2=make_pointwise(channels) if w.second >= 0 else nn.Identity(),
                    op=make_op(op, channels),
                    post=make_pointwise(channels),
                )
            )
        head = make_head(base_channels, out_channels, concat_previous=self._concat_previous(arch))
        self._setup(arch, in_channels, out_channels, base_channels, make_stem(in_channels, base_channels), cells, head)

    @staticmethod
    def _concat_previous(arch: Architecture) -> bool:
        """The head also takes the second-to-last cell when it sits at level 1 (always the stem for one cell)."""
        return len(arch.levels) < 2 or arch.levels[-2] == 1

    def _setup(
        self,
        arch: Architecture,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        stem: nn.Module,
        cells: List[Cell],
        head: Head,
    ) -> None:
        self.arch = arch
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.size_divisor: int = 2 ** max(arch.levels)
        self.second_inputs: List[int] = [w.second for w in topology_wiring(arch.levels)]
        self.concat_previous: bool = self._concat_previous(arch)
        self.stem = stem
        self.cells = nn.ModuleList(cells)
        self.head = head

    @classmethod
    def from_parts(
        cls,
        arch: Architecture,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        stem: nn.Module,
        cells: List[Cell],
        head: Head,
    ) -> "C2FNASNet":
        """Assemble a network from existing modules (shared, not copied): how the supernet runs one path."""
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._setup(arch, in_channels, out_channels, base_channels, stem, cells, head)
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_output(self.cell_outputs(x))

    def head_output(self, outputs: List[torch.Tensor]) -> torch.Tensor:
        """The head on ``cell_outputs``'s last tensor (and the one before it when that is at level 1)."""
        previous: Optional[torch.Tensor] = None
        if self.concat_previous:
            previous = outputs[-2]
        return self.head(outputs[-1], previous)

    def cell_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The stem's output, then every cell's: ``1 + len(cells)`` tensors, cell ``i``'s at index ``i + 1``,
        ``(B, F * 2**level, *S / 2**level)``. ``forward`` applies the head to the last one or two."""
        for side in x.shape[2:]:
            if side % self.size_divisor != 0:
                raise ValueError(
                    "C2FNASNet: every spatial side of the input must be divisible by "
                    + str(self.size_divisor)
                    + ", got shape "
                    + str(x.shape)
                )
        outputs: List[torch.Tensor] = [self.stem(x)]
        i = 0
        for cell in self.cells:
            second: Optional[torch.Tensor] = None
            if self.second_inputs[i] >= 0:
                second = outputs[self.second_inputs[i]]
            outputs.append(cell(outputs[-1], second))
            i += 1
        return outputs
