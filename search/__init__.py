"""The C2FNAS search: coarse (topology) and fine (operation) stages over the ``networks`` supernet."""

from .data import DiceEvaluator, PatchStream, cached_dataset
from .evolution import AgingEvolution
from .space import SearchSpace, kmeans, mutate_ops, random_ops, rng, topology_features
from .stages import CoarseSearch, FineSearch, SearchStage, SearchStateError

__all__ = [
    "AgingEvolution",
    "CoarseSearch",
    "DiceEvaluator",
    "FineSearch",
    "PatchStream",
    "SearchSpace",
    "SearchStage",
    "SearchStateError",
    "cached_dataset",
    "kmeans",
    "mutate_ops",
    "random_ops",
    "rng",
    "topology_features",
]
