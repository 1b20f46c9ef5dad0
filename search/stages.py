"""The two C2FNAS search stages: ``CoarseSearch`` (topology) and ``FineSearch`` (one op per cell).

Both train a weight-sharing supernet at the deployed width and patch size with single-path sampling, then run aging
evolution with validation Dice (inherited weights) as fitness. Each writes, under ``output_dir``:

- ``arch_<stage>.json``: the result (``c2fnas-arch/1``; the coarse one has no ops),
- ``search_<stage>_history.json``: every evaluated candidate with its fitness,
- ``search_<stage>_fitness.png`` and ``arch_<stage>.png``: the search curve and the architecture (paper's Fig. 2),
- ``tensorboard/<stage>/``: loss, learning rate and fitness curves,
- ``search_<stage>_state.pt``: the whole state, written atomically every ``checkpoint_interval`` iterations and
  ``checkpoint_candidates`` evaluations. Running the same stage again continues from it.

All random decisions are functions of ``(seed, what, when)`` (see ``space.rng``), so on CPU a killed and resumed
search ends with the same architecture as an uninterrupted one.

Under torchrun (a default process group is initialised), every rank trains the same sampled path on its own share
of each batch (``batch_size`` per rank) with gradients averaged over ranks, and evaluates its share of the
validation cases; fitness values and the result are taken from rank 0 and broadcast, and only rank 0 writes
outputs, state, TensorBoard events and progress bars. A saved state resumes with the same number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from ..networks import OPS, Architecture, C2FNASSupernet, load_architecture, save_architecture
from ..networks.c2fnas import ArchLike, as_architecture
from ..networks.fileio import atomic_torch_save, atomic_write_json
from .data import DiceEvaluator, PatchStream, cached_dataset
from .distributed import barrier, broadcast_object, rank_and_world_size
from .engine import cosine_schedule, create_supernet_trainer, run_trainer
from .evolution import AgingEvolution
from .plots import plot_architecture, plot_fitness
from .space import SearchSpace, mutate_ops, random_ops, rng

__all__ = ["SearchStateError", "SearchStage", "CoarseSearch", "FineSearch"]

STATE_FORMAT = "c2fnas-search-state/1"


class SearchStateError(RuntimeError):
    """A saved search state cannot be resumed (unreadable, or written by a search with other settings)."""


def _fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SearchStage:
    """What both stages share: data, supernet training, cached evaluation, checkpoints and outputs.

    Args:
        train_data / val_data: lists of dicts (``image``, ``label``: file paths or arrays) for ``preprocessing``.
        preprocessing: deterministic transforms (load, orientation, spacing, intensity), cached once per search.
        augmentation: random transforms applied to each preprocessed training case (crops to ``roi_size``, flips...).
        output_dir: where the stage writes its outputs and its state.
        in_channels / out_channels / base_channels: network width F and I/O, as deployed.
        ops: candidate ops of every cell.
        batch_size, learning_rate, momentum, weight_decay: SGD on the supernet (cosine decay per training phase).
        roi_size, sw_batch_size, overlap: sliding-window validation (the deployed patch size).
        population_size, sample_size, cycles: aging evolution.
        seed: every random decision of the search.
        device: ``torch.device`` or string; amp: mixed precision on CUDA.
        checkpoint_interval: iterations between saved states; checkpoint_candidates: evaluations between them.
        loss_function: default ``DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)``, as
            the bundle's training.
        show_progress: progress bars and per-iteration logs (rank 0 only under DDP).
    """

    name = "stage"

    def __init__(
        self,
        train_data: Sequence[dict],
        val_data: Sequence[dict],
        preprocessing: Callable,
        augmentation: Optional[Callable],
        output_dir: Union[str, os.PathLike],
        in_channels: int = 1,
        out_channels: int = 3,
        base_channels: int = 32,
        ops: Sequence[str] = OPS,
        batch_size: int = 2,
        learning_rate: float = 0.025,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        roi_size: Union[int, Sequence[int]] = 96,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        population_size: int = 20,
        sample_size: int = 5,
        cycles: int = 60,
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
        amp: bool = False,
        num_workers: int = 0,
        cache_rate: float = 1.0,
        checkpoint_interval: int = 200,
        checkpoint_candidates: int = 5,
        loss_function: Optional[Callable] = None,
        show_progress: bool = True,
    ):
        self.train_data, self.val_data = list(train_data), list(val_data)
        if not self.val_data:
            raise ValueError("the validation set is empty: the search needs at least one validation case")
        self.rank, self.world_size = rank_and_world_size()
        self.is_main = self.rank == 0
        self.preprocessing, self.augmentation = preprocessing, augmentation
        self.output_dir = Path(output_dir)
        self.in_channels, self.out_channels, self.base_channels = in_channels, out_channels, base_channels
        self.ops = tuple(ops)
        self.batch_size, self.learning_rate, self.momentum, self.weight_decay = (
            batch_size,
            learning_rate,
            momentum,
            weight_decay,
        )
        self.roi_size = (roi_size,) * 3 if isinstance(roi_size, int) else tuple(roi_size)
        self.sw_batch_size, self.overlap = sw_batch_size, overlap
        self.population_size, self.sample_size, self.cycles = population_size, sample_size, cycles
        self.seed, self.device, self.amp = seed, torch.device(device), amp
        self.num_workers, self.cache_rate = num_workers, cache_rate
        self.checkpoint_interval, self.checkpoint_candidates = checkpoint_interval, checkpoint_candidates
        self.loss_function = loss_function or DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)
        self.show_progress = show_progress and self.is_main
        self.logger = logging.getLogger(f"c2fnas.search.{self.name}")
        if not self.is_main:  # one log under DDP
            self.logger.setLevel(logging.WARNING)
        self.progress: Dict[str, Any] = {}
        self._stream: Optional[PatchStream] = None
        self._evaluator: Optional[DiceEvaluator] = None
        self._writer: Optional[Any] = None

    # ------------------------------------------------------------------ paths and settings
    def path(self, kind: str) -> Path:
        """Output paths: ``arch``, ``arch_png``, ``history``, ``fitness_png``, ``state``, ``tensorboard``."""
        names = {
            "arch": f"arch_{self.name}.json",
            "arch_png": f"arch_{self.name}.png",
            "history": f"search_{self.name}_history.json",
            "fitness_png": f"search_{self.name}_fitness.png",
            "state": f"search_{self.name}_state.pt",
            "tensorboard": f"tensorboard/{self.name}",
        }
        return self.output_dir / names[kind]

    def settings(self) -> Dict[str, Any]:
        """Everything that changes the result (and so must match to resume)."""
        return {
            "stage": self.name,
            "data": _fingerprint([self.train_data, self.val_data]),
            "network": [self.in_channels, self.out_channels, self.base_channels, list(self.ops)],
            "optimizer": [self.batch_size, self.learning_rate, self.momentum, self.weight_decay],
            "validation": [list(self.roi_size), self.sw_batch_size, self.overlap],
            "evolution": [self.population_size, self.sample_size, self.cycles],
            "seed": self.seed,
            "amp": self.amp,
            "world_size": self.world_size,
        }

    # ------------------------------------------------------------------ data, evaluation, training
    @property
    def stream(self) -> PatchStream:
        if self._stream is None:
            cases = cached_dataset(self.train_data, self.preprocessing, self.cache_rate, self.num_workers)
            self._stream = PatchStream(
                cases, self.augmentation, self.batch_size, self.seed, self.num_workers, self.rank, self.world_size
            )
        return self._stream

    @property
    def evaluator(self) -> DiceEvaluator:
        if self._evaluator is None:
            share = self.val_data[self.rank :: self.world_size]  # this rank's validation cases
            cases = cached_dataset(share, self.preprocessing, 1.0, self.num_workers)
            self._evaluator = DiceEvaluator(
                cases, self.out_channels, self.roi_size, self.sw_batch_size, self.overlap, self.device, self.amp
            )
        return self._evaluator

    @property
    def writer(self) -> Any:
        """TensorBoard writer on rank 0; elsewhere one that writes nothing."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path("tensorboard"))) if self.is_main else _NoWriter()
        return self._writer

    def build_supernet(self, topologies: Sequence[Tuple[int, ...]], *key: object) -> C2FNASSupernet:
        """A supernet over ``topologies`` whose initial weights depend only on ``(seed, key)``."""
        torch.manual_seed(rng(self.seed, "init", *key).randrange(2**31))
        supernet = C2FNASSupernet(topologies, self.in_channels, self.out_channels, self.base_channels, self.ops)
        return supernet.to(self.device)

    def train_supernet(
        self,
        phase: str,
        supernet: C2FNASSupernet,
        topologies: Sequence[Tuple[int, ...]],
        iterations: int,
        state: Optional[dict],
        extra_state: Callable[[], dict],
    ) -> None:
        """Train ``supernet`` for ``iterations`` single-path steps (resuming from ``progress['iteration']`` and the
        optimizer/scheduler in ``state``); each step samples one topology of ``topologies`` and one op per cell."""
        optimizer = torch.optim.SGD(
            supernet.parameters(), lr=self.learning_rate, momentum=self.momentum, weight_decay=self.weight_decay
        )
        scheduler = cosine_schedule(optimizer, iterations)
        if state is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        start = self.progress["iteration"]

        def sample(iteration: int) -> Architecture:
            r = rng(self.seed, self.name, phase, "path", iteration)
            return Architecture(r.choice(topologies), random_ops(r, len(topologies[0]), self.ops))

        def checkpoint(done: int) -> None:
            self.progress["iteration"] = done
            self.save_state(supernet=supernet, optimizer=optimizer, scheduler=scheduler, **extra_state())

        engine = create_supernet_trainer(
            supernet, optimizer, scheduler, self.loss_function, sample, self.device, self.amp
        )
        run_trainer(
            engine,
            self.stream.batches(start, iterations),
            start,
            iterations,
            name=f"{self.name}/{phase}",
            checkpoint=checkpoint,
            checkpoint_interval=self.checkpoint_interval,
            summary_writer=self.writer if self.show_progress else None,
            show_progress=self.show_progress,
        )

    def fitness(self, supernet: C2FNASSupernet, arch: Architecture, context: str) -> float:
        """Validation mean Dice of ``arch`` with the supernet's weights, cached per (context, architecture)."""
        key = f"{context}|{','.join(map(str, arch.levels))}|{','.join(arch.ops)}"
        cache = self.progress["cache"]
        if key not in cache:
            supernet.eval()
            path = supernet.path_network(arch)
            cache[key] = broadcast_object(self.evaluator(path))  # rank 0's value decides on every rank
            record = {"context": context, "levels": list(arch.levels), "ops": list(arch.ops), "fitness": cache[key]}
            self.progress["evaluations"].append(record)
            self.writer.add_scalar(f"{self.name}/fitness", cache[key], len(self.progress["evaluations"]))
        return cache[key]

    def evolve(self, evolution: AgingEvolution, extra_state: Callable[[], dict]) -> Dict[str, Any]:
        """Run (or resume) ``evolution``, saving the state every ``checkpoint_candidates`` evaluations."""
        if self.progress.get("evolution"):
            evolution.load_state_dict(self.progress["evolution"])
        bar = tqdm(
            total=evolution.total,
            initial=len(evolution.history),
            desc=f"{self.name}/evolution",
            disable=not self.show_progress,
        )

        def after_step(record: Dict[str, Any]) -> None:
            self.progress["evolution"] = evolution.state_dict()
            best = evolution.best()["fitness"]
            bar.update(1)
            bar.set_postfix(fitness=f"{record['fitness']:.4f}", best=f"{best:.4f}")
            self.writer.add_scalar(f"{self.name}/evolution_best", best, len(evolution.history))
            if len(evolution.history) % max(1, self.checkpoint_candidates) == 0 or evolution.done:
                self.save_state(**extra_state())

        best = evolution.run(after_step)
        bar.close()
        return best

    # ------------------------------------------------------------------ state
    def save_state(self, **tensors: Any) -> None:
        """Write the whole state atomically (rank 0): settings, progress (JSON-able), tensors (state dicts), RNG."""
        if not self.is_main:
            return
        payload = {"format": STATE_FORMAT, "settings": self.settings(), "progress": self.progress}
        payload["rng"] = {"torch": torch.get_rng_state()}
        for key, value in tensors.items():
            payload[key] = value.state_dict() if hasattr(value, "state_dict") else value
        atomic_torch_save(payload, self.path("state"))

    def begin(self, **initial: Any) -> Tuple[Optional[dict], Optional[Architecture]]:
        """Start or resume: fresh progress (the shared entries plus the stage's ``initial`` ones), replaced by the
        saved state when there is one. Returns that state and, when the stage already finished, its result."""
        self.progress = {"iteration": 0, "evolution": None, "cache": {}, "evaluations": [], "done": False, **initial}
        state = self.load_state()
        if self.progress["done"] and self.path("arch").exists():
            return state, load_architecture(self.path("arch"))
        return state, None

    def load_state(self) -> Optional[dict]:
        """The saved state (``weights_only`` load), or ``None`` when there is none."""
        path = self.path("state")
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # truncated or foreign file: say which and what to do
            raise SearchStateError(f"{path}: cannot read the saved search state ({e}); delete it to start over") from e
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SearchStateError(f"{path}: not a {STATE_FORMAT} file; delete it to start over")
        if state["settings"] != self.settings():
            changed = sorted(k for k in self.settings() if state["settings"].get(k) != self.settings()[k])
            raise SearchStateError(
                f"{path}: saved by a {self.name} search with other settings (changed: {', '.join(changed)}); "
                "delete it to start over or choose another output_dir"
            )
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.progress = state["progress"]
        self.logger.info(f"resuming {self.name} search from {path}")
        return state

    # ------------------------------------------------------------------ outputs
    def write_outputs(self, arch: Architecture, history: Dict[str, Any], groups: Optional[Dict] = None) -> None:
        """The architecture file, the history and both pictures (each written atomically, by rank 0)."""
        if not self.is_main:
            return
        save_architecture(arch, self.path("arch"))
        atomic_write_json(self.path("history"), history)
        plot_fitness(
            history["evolution"],
            self.path("fitness_png"),
            f"{self.name} search",
            population_size=self.population_size,
            groups=groups,
        )
        plot_architecture(arch, self.path("arch_png"), f"{self.name} search result: {arch}")
        self.writer.flush()

    def finish(self, arch: Architecture, history: Dict[str, Any], groups: Optional[Dict] = None) -> Architecture:
        """Write the outputs and the finished state; every rank returns rank 0's architecture."""
        arch = broadcast_object(arch)
        history.update(
            {
                "stage": self.name,
                "settings": self.settings(),
                "result": arch.to_dict(),
                "evaluations": self.progress["evaluations"],
            }
        )
        self.write_outputs(arch, history, groups)
        self.progress["done"] = True
        self.save_state()
        barrier()  # the files exist before any rank goes on
        self.logger.info(f"{self.name} search result: {arch} -> {self.path('arch')}")
        return arch

    def provenance(self, **extra: Any) -> Dict[str, Any]:
        return {
            "stage": self.name,
            "seed": self.seed,
            "base_channels": self.base_channels,
            "roi_size": list(self.roi_size),
            "ops": list(self.ops),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }

    def run(self) -> Architecture:
        raise NotImplementedError


class _NoWriter:
    """Stands in for TensorBoard's ``SummaryWriter`` on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass


class CoarseSearch(SearchStage):
    """Stage 1, the macro topology.

    Every valid topology of the space is clustered (K-means on one-hot levels). For each cluster a fresh supernet is
    trained on it (each iteration: one topology of the cluster, one op per cell, uniformly) and scored by the mean
    Dice of ``score_samples`` sampled members. Aging evolution then searches the best cluster, the fitness of a
    topology being its Dice averaged over ``op_samples`` op assignments. Writes the best topology (no ops).

    Args (beyond ``SearchStage``):
        num_cells, min_depth, max_depth, num_clusters: the search space (``SearchSpace``).
        cluster_iterations: supernet training iterations per cluster.
        score_samples: sampled members per cluster score; op_samples: op assignments per topology fitness.
    """

    name = "coarse"

    def __init__(
        self,
        *args: Any,
        num_cells: int = 12,
        min_depth: int = 4,
        max_depth: int = 4,
        num_clusters: int = 8,
        cluster_iterations: int = 2000,
        score_samples: int = 8,
        op_samples: int = 3,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.space = SearchSpace(
            num_cells, min_depth=min_depth, max_depth=max_depth, num_clusters=num_clusters, seed=self.seed
        )
        self.cluster_iterations, self.score_samples, self.op_samples = cluster_iterations, score_samples, op_samples

    def settings(self) -> Dict[str, Any]:
        return {
            **super().settings(),
            "space": self.space.options(),
            "coarse": [self.cluster_iterations, self.score_samples, self.op_samples],
        }

    def op_sample(self, topology: Sequence[int], j: int) -> Tuple[str, ...]:
        return random_ops(rng(self.seed, "coarse-ops", tuple(topology), j), len(topology), self.ops)

    def topology_fitness(self, supernet: C2FNASSupernet, topology: Sequence[int], context: str) -> float:
        """Dice of ``topology`` averaged over ``op_samples`` fixed op assignments."""
        scores = [
            self.fitness(supernet, Architecture(tuple(topology), self.op_sample(topology, j)), context)
            for j in range(self.op_samples)
        ]
        return sum(scores) / len(scores)

    def run(self) -> Architecture:
        state, finished = self.begin(cluster=0, clusters=[], best_cluster=-1)
        if finished is not None:
            return finished
        best_weights = state.get("best_supernet") if state else None

        for k in range(self.progress["cluster"], self.space.num_clusters):
            members = self.space.clusters[k]
            supernet = self.build_supernet(members, "cluster", k)
            resume = state if state is not None and state.get("supernet") is not None else None
            if resume is not None:
                supernet.load_state_dict(resume["supernet"])
            self.train_supernet(
                f"cluster{k}",
                supernet,
                members,
                self.cluster_iterations,
                resume,
                extra_state=lambda: {"best_supernet": best_weights},
            )
            state = None
            samples = []
            for j in range(self.score_samples):
                topology = rng(self.seed, "score", k, j).choice(members)
                samples.append(self.fitness(supernet, Architecture(topology, self.op_sample(topology, j)), f"c{k}"))
            score = sum(samples) / len(samples)
            self.progress["clusters"].append({"cluster": k, "size": len(members), "score": score, "samples": samples})
            self.writer.add_scalar("coarse/cluster_score", score, k)
            self.logger.info(f"cluster {k} ({len(members)} topologies): score {score:.4f}")
            best_k = self.progress["best_cluster"]
            if best_k < 0 or score > self.progress["clusters"][best_k]["score"]:
                self.progress["best_cluster"] = k
                best_weights = {n: t.detach().clone() for n, t in supernet.state_dict().items()}
            self.progress.update({"cluster": k + 1, "iteration": 0})
            self.save_state(best_supernet=best_weights)

        k = self.progress["best_cluster"]
        members = self.space.clusters[k]
        supernet = self.build_supernet(members, "cluster", k)
        supernet.load_state_dict(best_weights)
        evolution = AgingEvolution(
            "coarse",
            self.population_size,
            self.sample_size,
            self.cycles,
            self.seed,
            random_candidate=lambda r: r.choice(members),
            mutate=lambda r, parent: self.space.mutate_topology(r, tuple(parent), members),
            fitness=lambda topology: self.topology_fitness(supernet, topology, f"c{k}"),
        )
        best = self.evolve(evolution, extra_state=lambda: {"best_supernet": best_weights})
        arch = Architecture(
            tuple(best["candidate"]),
            None,
            self.provenance(
                fitness=best["fitness"],
                search_space=self.space.options(),
                cluster=k,
                cluster_score=self.progress["clusters"][k]["score"],
                cluster_iterations=self.cluster_iterations,
                evaluations=len(self.progress["evaluations"]),
            ),
        )
        groups = {str(c["cluster"]): c["samples"] for c in self.progress["clusters"]}
        history = {
            "space": self.space.options(),
            "clusters": self.progress["clusters"],
            "best_cluster": k,
            "cluster_members": [list(map(list, c)) for c in self.space.clusters],
            "evolution": evolution.history,
        }
        return self.finish(arch, history, groups)


class FineSearch(SearchStage):
    """Stage 2, one op per cell on a fixed topology.

    A supernet on the topology is trained with one op per cell sampled uniformly each iteration, then aging
    evolution searches the ``len(ops) ** num_cells`` op assignments (mutation: one cell's op). Writes the final
    architecture.

    Args (beyond ``SearchStage``):
        topology: the coarse result (an architecture file path, dict or ``Architecture``; its ops are ignored).
        iterations: supernet training iterations.
    """

    name = "fine"

    def __init__(self, *args: Any, topology: ArchLike, iterations: int = 20000, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.topology = as_architecture(topology, require_ops=False)
        self.iterations = iterations

    def settings(self) -> Dict[str, Any]:
        return {**super().settings(), "topology": list(self.topology.levels), "fine": [self.iterations]}

    def run(self) -> Architecture:
        state, finished = self.begin()
        if finished is not None:
            return finished
        levels = self.topology.levels
        supernet = self.build_supernet([levels], "fine")
        if state is not None and state.get("supernet") is not None:
            supernet.load_state_dict(state["supernet"])
        self.train_supernet("ops", supernet, [levels], self.iterations, state, extra_state=dict)
        evolution = AgingEvolution(
            "fine",
            self.population_size,
            self.sample_size,
            self.cycles,
            self.seed,
            random_candidate=lambda r: random_ops(r, len(levels), self.ops),
            mutate=lambda r, parent: mutate_ops(r, parent, self.ops),
            fitness=lambda ops: self.fitness(supernet, Architecture(levels, tuple(ops)), "fine"),
        )
        best = self.evolve(evolution, extra_state=lambda: {"supernet": supernet})
        arch = Architecture(
            levels,
            tuple(best["candidate"]),
            self.provenance(
                fitness=best["fitness"],
                topology_provenance=self.topology.provenance,
                iterations=self.iterations,
                evaluations=len(self.progress["evaluations"]),
            ),
        )
        return self.finish(arch, history={"topology": list(levels), "evolution": evolution.history})
