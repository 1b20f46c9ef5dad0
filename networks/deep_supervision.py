"""Deep supervision for training a C2FNAS network: auxiliary outputs from its decoder levels, training only.

MONAI's ``DynUNet`` builds its deep-supervision heads into the network, so they sit in its weights and its exports;
``C2FNASNet`` is the paper's deployed network and stays as it is. ``DeepSupervision`` wraps it for training only:
in training mode it returns the network's logits followed by one auxiliary output per tapped decoder level (a
1x1x1 convolution with bias on that level's last cell), which ``monai.losses.DeepSupervisionLoss`` scores against
the label resized to each output; in eval mode it is the wrapped network's forward, bit for bit. The wrapped
network's parameters, weights file and TorchScript export are unchanged: the heads live beside it.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from networks.c2fnas import C2FNASNet, level_channels

__all__ = ["DeepSupervision", "decoder_taps"]


def decoder_taps(levels: List[int], max_levels: int) -> List[int]:
    """Cells whose outputs get an auxiliary head: for each level 2, 3, ... (at most ``max_levels`` of them), the
    last cell at that level. Level 1 is the head's own input; a level deeper than ``max_levels + 1`` is too coarse
    to score (2 voxels a side at the CPU profile's 32³ patch and level 4). Indices into ``levels``, finest first."""
    taps = []
    for level in range(2, 2 + max_levels):
        at_level = [i for i, cell_level in enumerate(levels) if cell_level == level]
        if at_level:
            taps.append(at_level[-1])
    return taps


class DeepSupervision(nn.Module):
    """A ``C2FNASNet`` with training-only auxiliary outputs (module doc).

    Args:
        network: the network to train; shared, not copied.
        max_levels: how many levels below level 1 get a head (2: levels 2 and 3 where the topology has them).

    Training mode: ``(B, in, *S) -> [(B, K, *S), (B, K, *S / 4), (B, K, *S / 8), ...]``, one entry per tapped level
    after the logits. Eval mode: ``(B, in, *S) -> (B, K, *S)``, the network's own forward.
    ``loss_weights``: 1, 1/2, 1/4, ... per output, normalised to sum 1 (nnU-Net's weighting), for
    ``DeepSupervisionLoss(weights=...)``.
    """

    def __init__(self, network: nn.Module, max_levels: int = 2):
        super().__init__()
        if not isinstance(network, C2FNASNet):
            raise TypeError(
                f"deep_supervision: expected a C2FNASNet to wrap, got {type(network).__name__}; with "
                "multi_gpu_train.json or another network_def, set deep_supervision to false"
            )
        self.network = network
        self.taps = decoder_taps(list(network.arch.levels), max_levels)
        self.heads = nn.ModuleList(
            nn.Conv3d(level_channels(network.arch.levels[i], network.base_channels), network.out_channels, 1)
            for i in self.taps
        )
        raw = [0.5**k for k in range(1 + len(self.taps))]
        self.loss_weights = [w / sum(raw) for w in raw]

    def forward(self, x: torch.Tensor) -> torch.Tensor | List[torch.Tensor]:
        if not self.training:
            return self.network(x)
        outputs = self.network.cell_outputs(x)
        return [self.network.head_output(outputs)] + [head(outputs[i + 1]) for head, i in zip(self.heads, self.taps)]
