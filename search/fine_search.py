"""Stage 2 of C2FNAS, the fine search: one operation (2D, 3D or P3D) per cell on the coarse stage's topology."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from networks import Architecture, ArchitectureError
from networks.c2fnas import ArchLike, as_architecture
from search.settings import SearchSettings, SearchSettingsError, check_setting
from search.space import mutate_ops
from search.stage import SearchStage

__all__ = ["FineSearch"]


class FineSearch(SearchStage):
    """Stage 2, one op per cell on a fixed topology.

    A supernet on the topology is trained with one op per cell sampled uniformly each iteration, then aging
    evolution searches the ``len(ops) ** num_cells`` op assignments (mutation: one cell's op), only those within
    the compute budget (``max_gmacs``) when there is one. Writes the final architecture.

    Args:
        settings, train_data, val_data, preprocessing, augmentation, loss_function: as ``SearchStage``.
        topology: the coarse result (an architecture file path, dict or ``Architecture``; its ops are ignored).
        iterations: supernet training iterations.
    """

    name = "fine"

    def __init__(
        self,
        settings: SearchSettings,
        train_data: Sequence[dict],
        val_data: Sequence[dict],
        preprocessing: Callable,
        augmentation: Optional[Callable] = None,
        loss_function: Optional[Callable] = None,
        topology: Optional[ArchLike] = None,
        iterations: int = 20000,
    ):
        super().__init__(settings, train_data, val_data, preprocessing, augmentation, loss_function)
        if topology is None:
            raise SearchSettingsError("search setting 'topology': the fine search needs the coarse result")
        self.topology = as_architecture(topology, require_ops=False)
        self.iterations = check_setting("fine_iterations", iterations, int, minimum=0)

    def fingerprint(self) -> Dict[str, Any]:
        return {**super().fingerprint(), "topology": list(self.topology.levels), "fine": [self.iterations]}

    def score(self, arch: ArchLike) -> Dict[str, float]:
        """How the fine stage rates ``arch`` (the coarse topology with any ops): ``architecture``, its Dice in the kept
        fine supernet (``keep_supernets``), the fitness the evolution gives it."""
        arch = as_architecture(arch)
        if arch.levels != self.topology.levels:
            raise ArchitectureError(
                f"topology {list(arch.levels)}: the fine supernet only holds {list(self.topology.levels)}"
            )
        return {"architecture": self.supernet_dice(self.kept_supernet("ops"), arch)}

    def budgeted_mutation(self, r: Any, levels: Sequence[int], parent: Sequence[str], draws: int = 100) -> tuple:
        """The first of up to ``draws`` one-cell mutations of ``parent`` within the budget, else ``parent``."""
        for _ in range(draws):
            child = mutate_ops(r, parent, self.settings.ops)
            if self.within_budget(Architecture(tuple(levels), tuple(child))):
                return child
        return tuple(parent)

    def run(self) -> Architecture:
        finished = self.begin()
        if finished is not None:
            return finished
        levels = self.topology.levels
        self.check_budget([levels])
        supernet = self.build_supernet([levels], "fine")
        if self.state.tensors.get("supernet") is not None:
            supernet.load_state_dict(self.state.tensors["supernet"])
        self.train_supernet("ops", supernet, [levels], self.iterations)
        self.keep_supernet(supernet, "ops")
        self.state.tensors = {"supernet": supernet}  # evolution checkpoints keep the trained supernet
        evolution = self.new_evolution(
            random_candidate=lambda r: self.budgeted_ops(r, levels),
            mutate=lambda r, parent: self.budgeted_mutation(r, levels, parent),
            fitness=lambda candidate: self.fitness(supernet, Architecture(levels, tuple(candidate)), "fine"),
        )
        best = self.evolve(evolution)
        arch = Architecture(
            levels,
            tuple(best["candidate"]),
            self.provenance(
                fitness=best["fitness"],
                topology_provenance=self.topology.provenance,
                iterations=self.iterations,
                evaluations=len(self.progress["evaluations"]),
                gmacs=self.gmacs(Architecture(levels, tuple(best["candidate"]))),
            ),
        )
        return self.finish(arch, history={"topology": list(levels), "evolution": evolution.history})
