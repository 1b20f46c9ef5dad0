"""The C2FNAS search: coarse (topology) and fine (operation) stages over the ``networks`` supernet."""

from search.coarse_search import CoarseSearch
from search.data import DiceEvaluator, PatchStream, cached_dataset
from search.dice import DICE_DEFINITION, ForegroundDice, dice_per_case, dice_report, reduce_dice
from search.evolution import AgingEvolution
from search.fine_search import FineSearch
from search.settings import SearchSettings, SearchSettingsError
from search.space import SearchSpace, kmeans, mutate_ops, random_ops, rng, topology_features
from search.stage import SearchStage
from search.state import SearchState, SearchStateError

__all__ = [
    "DICE_DEFINITION",
    "AgingEvolution",
    "CoarseSearch",
    "DiceEvaluator",
    "FineSearch",
    "ForegroundDice",
    "PatchStream",
    "SearchSettings",
    "SearchSettingsError",
    "SearchSpace",
    "SearchStage",
    "SearchState",
    "SearchStateError",
    "cached_dataset",
    "dice_per_case",
    "dice_report",
    "kmeans",
    "mutate_ops",
    "random_ops",
    "reduce_dice",
    "rng",
    "topology_features",
]
