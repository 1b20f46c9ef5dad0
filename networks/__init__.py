"""C2FNAS networks: the architecture file, the network family, its grid supernet and complexity figures."""

from networks.architecture import (
    DEFAULT_ARCHITECTURE_FILE,
    FORMAT,
    NUM_LEVELS,
    OPS,
    Architecture,
    ArchitectureError,
    CellWiring,
    default_architecture,
    enumerate_topologies,
    load_architecture,
    save_architecture,
    topology_error,
    topology_wiring,
)
from networks.c2fnas import PATCH_DIVISOR, C2FNASNet, as_architecture, level_channels
from networks.deep_supervision import DeepSupervision, decoder_taps
from networks.supernet import C2FNASSupernet, SupernetNode

__all__ = [
    "DEFAULT_ARCHITECTURE_FILE",
    "FORMAT",
    "NUM_LEVELS",
    "OPS",
    "PATCH_DIVISOR",
    "Architecture",
    "ArchitectureError",
    "CellWiring",
    "C2FNASNet",
    "C2FNASSupernet",
    "DeepSupervision",
    "SupernetNode",
    "as_architecture",
    "decoder_taps",
    "default_architecture",
    "enumerate_topologies",
    "level_channels",
    "load_architecture",
    "save_architecture",
    "topology_error",
    "topology_wiring",
]
