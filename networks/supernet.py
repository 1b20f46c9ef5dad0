"""The C2FNAS grid supernet: one node per (cell, level) pair that a topology space uses, every op in every node.

``forward(x, arch)`` runs exactly one path (single-path one-shot): it assembles a ``C2FNASNet`` whose modules *are*
the supernet's modules for that path, so one step costs the time and activation memory of the derived network.
``derive(arch)`` returns a standalone ``C2FNASNet`` with a copy of those weights.
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import torch
from torch import nn

from networks.architecture import OPS, Architecture, ArchitectureError, topology_error, topology_wiring
from networks.c2fnas import (
    ArchLike,
    C2FNASNet,
    Cell,
    Head,
    as_architecture,
    level_channels,
    make_head_decode,
    make_head_fuse,
    make_op,
    make_pointwise,
    make_stem,
    make_transition,
)

__all__ = ["SupernetNode", "C2FNASSupernet", "node_name"]


def node_name(cell: int, level: int) -> str:
    """Key of grid node (cell ``cell`` (1-based), level ``level``) in ``C2FNASSupernet.nodes``."""
    return f"cell{cell}_level{level}"


class SupernetNode(nn.Module):
    """Everything a cell at one (cell, level) grid position may need: its transitions in, pre/pre2/post, all ops."""

    def __init__(self, channels: int, ops: Sequence[str], transitions: Iterable[str], has_second: bool):
        super().__init__()
        self.transitions = nn.ModuleDict({t: make_transition(t, channels) for t in sorted(transitions) if t != "same"})
        self.pre = make_pointwise(channels)
        self.pre2 = make_pointwise(channels) if has_second else None
        self.ops = nn.ModuleDict({name: make_op(name, channels) for name in ops})
        self.post = make_pointwise(channels)

    def cell(self, transition: str, op: str, with_second: bool) -> Cell:
        """A ``Cell`` made of this node's modules (shared) for one transition and op."""
        return Cell(
            transition=nn.Identity() if transition == "same" else self.transitions[transition],
            pre=self.pre,
            pre2=self.pre2 if with_second else nn.Identity(),
            op=self.ops[op],
            post=self.post,
        )


class C2FNASSupernet(nn.Module):
    """Weight-sharing supernet over a set of topologies (all of the same number of cells).

    Args:
        topologies: the valid level paths of the search space (see ``enumerate_topologies``).
        in_channels, out_channels, base_channels: as for ``C2FNASNet``.
        ops: the candidate ops of every node.

    ``forward(x, arch)``: ``x`` ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)`` through the one path ``arch``.
    """

    def __init__(
        self,
        topologies: Iterable[Sequence[int]],
        in_channels: int = 1,
        out_channels: int = 3,
        base_channels: int = 32,
        ops: Sequence[str] = OPS,
    ):
        super().__init__()
        self.topologies: Tuple[Tuple[int, ...], ...] = tuple(sorted({tuple(t) for t in topologies}))
        if not self.topologies:
            raise ArchitectureError("a supernet needs at least one topology")
        if len({len(t) for t in self.topologies}) != 1:
            raise ArchitectureError("all topologies of a supernet must have the same number of cells")
        unknown = [op for op in ops if op not in OPS]
        if unknown or not ops:
            raise ArchitectureError(f"unknown ops {unknown}; ops are {', '.join(OPS)}")
        for topology in self.topologies:
            error = topology_error(topology)
            if error:
                raise ArchitectureError(f"invalid topology {list(topology)}: {error}")
        self._topology_set = frozenset(self.topologies)
        self.ops: Tuple[str, ...] = tuple(ops)
        self.in_channels, self.out_channels, self.base_channels = in_channels, out_channels, base_channels
        self.num_cells = len(self.topologies[0])

        needs: Dict[Tuple[int, int], Tuple[Set[str], List[bool]]] = {}
        concat_kinds: Set[bool] = set()
        for topology in self.topologies:
            for i, w in enumerate(topology_wiring(topology), start=1):
                transitions, second = needs.setdefault((i, w.level), (set(), [False]))
                transitions.add(w.transition)
                second[0] |= w.second >= 0
            concat_kinds.add(C2FNASNet._concat_previous(Architecture(topology)))

        self.stem = make_stem(in_channels, base_channels)
        self.nodes = nn.ModuleDict(
            {
                node_name(cell, level): SupernetNode(level_channels(level, base_channels), ops, transitions, second[0])
                for (cell, level), (transitions, second) in sorted(needs.items())
            }
        )
        c1 = level_channels(1, base_channels)
        self.head_fuse = nn.ModuleDict(
            {("pair" if concat else "single"): make_head_fuse(c1, concat) for concat in sorted(concat_kinds)}
        )
        self.head_decode = make_head_decode(base_channels, out_channels)

    def _checked(self, arch: ArchLike) -> Architecture:
        arch = as_architecture(arch)
        if arch.levels not in self._topology_set:
            raise ArchitectureError(f"topology {list(arch.levels)} is not in this supernet's search space")
        unknown = sorted(set(arch.ops) - set(self.ops))
        if unknown:
            raise ArchitectureError(f"ops {unknown} are not candidates of this supernet (candidates: {self.ops})")
        return arch

    def path_network(self, arch: ArchLike) -> C2FNASNet:
        """A ``C2FNASNet`` for ``arch`` whose modules are this supernet's (weights shared, nothing copied)."""
        arch = self._checked(arch)
        cells = [
            self.nodes[node_name(i, w.level)].cell(w.transition, op, w.second >= 0)
            for i, (w, op) in enumerate(zip(topology_wiring(arch.levels), arch.ops), start=1)
        ]
        concat = C2FNASNet._concat_previous(arch)
        head = Head(self.head_fuse["pair" if concat else "single"], self.head_decode)
        net = C2FNASNet.from_parts(
            arch, self.in_channels, self.out_channels, self.base_channels, self.stem, cells, head
        )
        return net.train(self.training)

    def forward(self, x: torch.Tensor, arch: ArchLike) -> torch.Tensor:
        return self.path_network(arch)(x)

    def derive(self, arch: ArchLike) -> C2FNASNet:
        """A standalone ``C2FNASNet`` for ``arch`` with a copy of the supernet's weights (same output, eval mode)."""
        return copy.deepcopy(self.path_network(arch))
