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
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from networks import Architecture, ArchitectureError, C2FNASSupernet, load_architecture, save_architecture
from networks.c2fnas import ArchLike, as_architecture
from networks.fileio import atomic_torch_save, atomic_write_json
from search.data import DiceEvaluator, PatchStream, cached_dataset
from search.distributed import barrier, broadcast_object, rank_and_world_size
from search.engine import cosine_schedule, create_supernet_trainer, run_trainer
from search.evolution import AgingEvolution
from search.plots import plot_architecture, plot_fitness
from search.settings import SearchSettings, SearchSettingsError, check_setting
from search.space import SearchSpace, mutate_ops, random_ops, rng

__all__ = ["SearchStateError", "SearchState", "SearchStage", "CoarseSearch", "FineSearch"]

STATE_FORMAT = "c2fnas-search-state/1"


class SearchStateError(RuntimeError):
    """A saved search state cannot be resumed (unreadable, or written by a search with other settings)."""


def _fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SearchState:
    """Everything a stage needs to resume, in one place, saved atomically to one file (rank 0).

    ``progress`` is JSON-able (counters, evaluation cache and history, evolution state); ``tensors`` maps names to
    live objects (saved through their ``state_dict()``) or to state dicts; the torch RNG state is saved alongside.
    ``settings`` is the fingerprint a saved state must match to be resumed.
    """

    def __init__(self, path: Path, settings: Dict[str, Any], is_main: bool = True):
        self.path, self.settings, self.is_main = Path(path), settings, is_main
        self.progress: Dict[str, Any] = {}
        self.tensors: Dict[str, Any] = {}

    def reset(self, **initial: Any) -> None:
        """Fresh progress: the shared entries plus a stage's ``initial`` ones; no tensors."""
        self.progress = {"iteration": 0, "evolution": None, "cache": {}, "evaluations": [], "done": False, **initial}
        self.tensors = {}

    def save(self) -> None:
        if not self.is_main:
            return
        payload = {"format": STATE_FORMAT, "settings": self.settings, "progress": self.progress}
        payload["rng"] = {"torch": torch.get_rng_state()}
        for key, value in self.tensors.items():
            payload[key] = value.state_dict() if hasattr(value, "state_dict") else value
        atomic_torch_save(payload, self.path)

    def load(self, device: torch.device) -> bool:
        """Replace progress and tensors by the saved state (``weights_only`` load); False when there is none."""
        if not self.path.exists():
            return False
        try:
            saved = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as e:  # truncated or foreign file: say which and what to do
            reason = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'truncated or damaged'}"
            )
            raise SearchStateError(
                f"{self.path}: cannot read the saved search state ({reason}); delete it to start over"
            ) from e
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise SearchStateError(f"{self.path}: not a {STATE_FORMAT} file; delete it to start over")
        if saved["settings"] != self.settings:
            changed = sorted(k for k in self.settings if saved["settings"].get(k) != self.settings[k])
            raise SearchStateError(
                f"{self.path}: saved by a {self.settings['stage']} search with other settings (changed: "
                f"{', '.join(changed)}); delete it to start over or choose another output_dir"
            )
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        self.progress = saved["progress"]
        self.tensors = {k: v for k, v in saved.items() if k not in ("format", "settings", "progress", "rng")}
        return True


class SearchStage:
    """What both stages share: data, supernet training, cached evaluation, the state and the outputs.

    Args:
        settings: ``SearchSettings`` (network, optimiser, validation, evolution, checkpoints, device).
        train_data / val_data: lists of dicts (``image``, ``label``: file paths or arrays) for ``preprocessing``.
        preprocessing: deterministic transforms (load, orientation, spacing, intensity), cached once per search.
        augmentation: random transforms applied to each preprocessed training case (crops to ``roi_size``, flips...).
        loss_function: default ``DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)``, as
            the bundle's training.
    """

    name = "stage"

    def __init__(
        self,
        settings: SearchSettings,
        train_data: Sequence[dict],
        val_data: Sequence[dict],
        preprocessing: Callable,
        augmentation: Optional[Callable] = None,
        loss_function: Optional[Callable] = None,
    ):
        if not isinstance(settings, SearchSettings):
            raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}")
        self.settings = settings
        self.train_data, self.val_data = list(train_data), list(val_data)[: settings.val_cases or None]
        if not self.val_data:
            raise ValueError("the validation set is empty: the search needs at least one validation case")
        self.rank, self.world_size = rank_and_world_size()
        self.is_main = self.rank == 0
        self.preprocessing, self.augmentation = preprocessing, augmentation
        self.output_dir = Path(settings.output_dir)
        self.loss_function = loss_function or DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)
        self.show_progress = settings.show_progress and self.is_main
        self.logger = logging.getLogger(f"c2fnas.search.{self.name}")
        if not self.is_main:  # one log under DDP
            self.logger.setLevel(logging.WARNING)
        self._stream: Optional[PatchStream] = None
        self._evaluator: Optional[DiceEvaluator] = None
        self._writer: Optional[Any] = None
        self._state: Optional[SearchState] = None
        self._kept: Dict[str, C2FNASSupernet] = {}

    @property
    def state(self) -> SearchState:
        """The stage's whole resumable state (created on first use, when the subclass's settings are known)."""
        if self._state is None:
            self._state = SearchState(self.path("state"), self.fingerprint(), self.is_main)
        return self._state

    @property
    def progress(self) -> Dict[str, Any]:
        return self.state.progress

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

    def fingerprint(self) -> Dict[str, Any]:
        """Everything that changes the result (and so must match to resume)."""
        s = self.settings
        return {
            "stage": self.name,
            "data": _fingerprint([self.train_data, self.val_data]),
            "network": [s.in_channels, s.out_channels, s.base_channels, list(s.ops)],
            "optimizer": [s.batch_size, s.learning_rate, s.momentum, s.weight_decay, s.lr_hold_fraction],
            "validation": [list(s.roi_size), s.sw_batch_size, s.overlap],
            "evolution": [s.population_size, s.sample_size, s.cycles],
            "seed": s.seed,
            "amp": s.amp,
            "world_size": self.world_size,
        }

    # ------------------------------------------------------------------ data, evaluation, training
    @property
    def stream(self) -> PatchStream:
        if self._stream is None:
            s = self.settings
            cases = cached_dataset(self.train_data, self.preprocessing, s.cache_rate, s.num_workers)
            self._stream = PatchStream(
                cases, self.augmentation, s.batch_size, s.seed, s.num_workers, self.rank, self.world_size
            )
        return self._stream

    @property
    def evaluator(self) -> DiceEvaluator:
        if self._evaluator is None:
            s = self.settings
            share = self.val_data[self.rank :: self.world_size]  # this rank's validation cases
            cases = cached_dataset(share, self.preprocessing, 1.0, s.num_workers)
            self._evaluator = DiceEvaluator(
                cases, s.out_channels, s.roi_size, s.sw_batch_size, s.overlap, s.device, s.amp
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
        s = self.settings
        torch.manual_seed(rng(s.seed, "init", *key).randrange(2**31))
        supernet = C2FNASSupernet(topologies, s.in_channels, s.out_channels, s.base_channels, s.ops)
        return supernet.to(s.device)

    def train_supernet(
        self, phase: str, supernet: C2FNASSupernet, topologies: Sequence[Tuple[int, ...]], iterations: int
    ) -> None:
        """Train ``supernet`` for ``iterations`` single-path steps, resuming from ``progress['iteration']`` and the
        optimizer/scheduler in the state; each step samples one topology of ``topologies`` and one op per cell.
        Checkpoints put the supernet, optimizer and scheduler into the state and save it."""
        s = self.settings
        optimizer = torch.optim.SGD(
            supernet.parameters(), lr=s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay
        )
        scheduler = cosine_schedule(optimizer, iterations, s.lr_hold_fraction)
        if self.state.tensors.get("optimizer") is not None:
            optimizer.load_state_dict(self.state.tensors["optimizer"])
            scheduler.load_state_dict(self.state.tensors["scheduler"])
        start = self.progress["iteration"]

        def sample(iteration: int) -> Architecture:
            r = rng(s.seed, self.name, phase, "path", iteration)
            return Architecture(r.choice(topologies), random_ops(r, len(topologies[0]), s.ops))

        def checkpoint(done: int) -> None:
            self.progress["iteration"] = done
            self.state.tensors.update(supernet=supernet, optimizer=optimizer, scheduler=scheduler)
            self.state.save()

        engine = create_supernet_trainer(supernet, optimizer, scheduler, self.loss_function, sample, s.device, s.amp)
        run_trainer(
            engine,
            self.stream.batches(start, iterations),
            start,
            iterations,
            name=f"{self.name}/{phase}",
            checkpoint=checkpoint,
            checkpoint_interval=s.checkpoint_interval,
            summary_writer=self.writer if self.show_progress else None,
            show_progress=self.show_progress,
        )

    def supernet_dice(self, supernet: C2FNASSupernet, arch: Architecture) -> float:
        """Validation mean Dice (``search.dice``) of ``arch`` with the supernet's weights (rank 0's value on every
        rank). A validation set with no foreground anywhere has no Dice; it counts as 0."""
        supernet.eval()
        dice = broadcast_object(self.evaluator(supernet.path_network(arch)))
        return 0.0 if dice != dice else dice

    def fitness(self, supernet: C2FNASSupernet, arch: Architecture, context: str) -> float:
        """``supernet_dice``, cached per (context, architecture) and recorded in the history and TensorBoard."""
        key = f"{context}|{','.join(map(str, arch.levels))}|{','.join(arch.ops)}"
        cache = self.progress["cache"]
        if key not in cache:
            cache[key] = self.supernet_dice(supernet, arch)
            record = {"context": context, "levels": list(arch.levels), "ops": list(arch.ops), "fitness": cache[key]}
            self.progress["evaluations"].append(record)
            self.writer.add_scalar(f"{self.name}/fitness", cache[key], len(self.progress["evaluations"]))
        return cache[key]

    def supernet_file(self, key: str) -> Path:
        """Where ``keep_supernets`` writes the trained supernet ``key`` (``cluster<k>`` or ``ops``)."""
        return self.output_dir / "supernets" / f"{self.name}_{key}.pt"

    def keep_supernet(self, supernet: C2FNASSupernet, key: str) -> None:
        """With ``settings.keep_supernets``, write ``supernet``'s topologies and weights (rank 0, atomically)."""
        if self.settings.keep_supernets and self.is_main:
            topologies = [list(t) for t in supernet.topologies]
            atomic_torch_save({"topologies": topologies, "state_dict": supernet.state_dict()}, self.supernet_file(key))

    def kept_supernet(self, key: str) -> C2FNASSupernet:
        """The supernet ``key`` written by ``keep_supernet`` (``weights_only`` load), in eval mode."""
        if key not in self._kept:
            path = self.supernet_file(key)
            if not path.exists():
                raise SearchStateError(
                    f"{path}: missing; run the {self.name} search with keep_supernets true to score architectures"
                )
            try:
                saved = torch.load(path, map_location=self.settings.device, weights_only=True)
                s = self.settings
                supernet = C2FNASSupernet(saved["topologies"], s.in_channels, s.out_channels, s.base_channels, s.ops)
                supernet.load_state_dict(saved["state_dict"])
            except Exception as e:
                raise SearchStateError(f"{path}: cannot load this kept supernet ({e})") from e
            self._kept[key] = supernet.to(self.settings.device).eval()
        return self._kept[key]

    def evolve(self, evolution: AgingEvolution) -> Dict[str, Any]:
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
            if len(evolution.history) % max(1, self.settings.checkpoint_candidates) == 0 or evolution.done:
                self.state.save()

        best = evolution.run(after_step)
        bar.close()
        return best

    def new_evolution(self, random_candidate: Callable, mutate: Callable, fitness: Callable) -> AgingEvolution:
        s = self.settings
        return AgingEvolution(
            self.name, s.population_size, s.sample_size, s.cycles, s.seed, random_candidate, mutate, fitness
        )

    # ------------------------------------------------------------------ start, finish
    def begin(self, **initial: Any) -> Optional[Architecture]:
        """Start (fresh state with the stage's ``initial`` progress) or resume from the saved state. Returns the
        result when the stage already finished. A finished state whose result file is gone is refused."""
        self.state.reset(**initial)
        if self.state.load(self.settings.device):
            self.logger.info(f"resuming {self.name} search from {self.state.path}")
        if self.progress["done"]:
            if not self.path("arch").exists():
                raise SearchStateError(
                    f"{self.state.path}: the {self.name} search finished but its result {self.path('arch')} is "
                    "missing; delete the state to search again"
                )
            return load_architecture(self.path("arch"))
        return None

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
            population_size=self.settings.population_size,
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
                "settings": self.fingerprint(),
                "result": arch.to_dict(),
                "evaluations": self.progress["evaluations"],
            }
        )
        self.write_outputs(arch, history, groups)
        self.progress["done"] = True
        self.state.tensors = {}
        self.state.save()
        barrier()  # the files exist before any rank goes on
        self.logger.info(f"{self.name} search result: {arch} -> {self.path('arch')}")
        return arch

    def provenance(self, **extra: Any) -> Dict[str, Any]:
        s = self.settings
        return {
            "stage": self.name,
            "seed": s.seed,
            "base_channels": s.base_channels,
            "roi_size": list(s.roi_size),
            "ops": list(s.ops),
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

    Args:
        settings, train_data, val_data, preprocessing, augmentation, loss_function: as ``SearchStage``.
        num_cells, min_depth, max_depth, num_clusters: the search space (``SearchSpace``).
        cluster_iterations: supernet training iterations per cluster.
        score_samples: sampled members per cluster score; op_samples: op assignments per topology fitness.
    """

    name = "coarse"

    def __init__(
        self,
        settings: SearchSettings,
        train_data: Sequence[dict],
        val_data: Sequence[dict],
        preprocessing: Callable,
        augmentation: Optional[Callable] = None,
        loss_function: Optional[Callable] = None,
        num_cells: int = 12,
        min_depth: int = 4,
        max_depth: int = 4,
        num_clusters: int = 8,
        cluster_iterations: int = 2000,
        score_samples: int = 8,
        op_samples: int = 3,
    ):
        super().__init__(settings, train_data, val_data, preprocessing, augmentation, loss_function)
        num_cells = check_setting("num_cells", num_cells, int, minimum=2)
        min_depth = check_setting("min_depth", min_depth, int, minimum=1, maximum=4)
        max_depth = check_setting("max_depth", max_depth, int, minimum=1, maximum=4)
        if min_depth > max_depth:
            raise SearchSettingsError("search settings 'min_depth' and 'max_depth': need min_depth <= max_depth")
        num_clusters = check_setting("num_clusters", num_clusters, int, minimum=1)
        self.cluster_iterations = check_setting("cluster_iterations", cluster_iterations, int, minimum=0)
        self.score_samples = check_setting("score_samples", score_samples, int, minimum=1)
        self.op_samples = check_setting("op_samples", op_samples, int, minimum=1)
        self.space = SearchSpace(
            num_cells, min_depth=min_depth, max_depth=max_depth, num_clusters=num_clusters, seed=settings.seed
        )

    def fingerprint(self) -> Dict[str, Any]:
        return {
            **super().fingerprint(),
            "space": self.space.options(),
            "coarse": [self.cluster_iterations, self.score_samples, self.op_samples],
        }

    def op_sample(self, topology: Sequence[int], j: int) -> Tuple[str, ...]:
        s = self.settings
        return random_ops(rng(s.seed, "coarse-ops", tuple(topology), j), len(topology), s.ops)

    def topology_fitness(
        self, supernet: C2FNASSupernet, topology: Sequence[int], context: Optional[str] = None
    ) -> float:
        """Dice of ``topology`` averaged over ``op_samples`` fixed op assignments: through ``fitness`` (cached and
        recorded) with a ``context``, else ``supernet_dice`` alone (scoring outside the search)."""
        scores = []
        for j in range(self.op_samples):
            arch = Architecture(tuple(topology), self.op_sample(topology, j))
            scores.append(
                self.supernet_dice(supernet, arch) if context is None else self.fitness(supernet, arch, context)
            )
        return sum(scores) / len(scores)

    def score(self, arch: ArchLike) -> Dict[str, float]:
        """How the coarse stage rates ``arch``, from the kept supernet of its topology's cluster (``keep_supernets``):
        ``architecture``, the supernet Dice of ``arch`` with its own ops, and ``topology``, the fitness the evolution
        gives its topology (mean over the ``op_samples`` op assignments)."""
        arch = as_architecture(arch)
        k = self.space.cluster_of(arch.levels)
        supernet = self.kept_supernet(f"cluster{k}")
        return {
            "cluster": k,
            "architecture": self.supernet_dice(supernet, arch),
            "topology": self.topology_fitness(supernet, arch.levels),
        }

    def run(self) -> Architecture:
        finished = self.begin(cluster=0, clusters=[], best_cluster=-1)
        if finished is not None:
            return finished
        tensors = self.state.tensors  # "best_supernet": weights of the best cluster so far; "supernet"...: in training
        for k in range(self.progress["cluster"], self.space.num_clusters):
            members = self.space.clusters[k]
            supernet = self.build_supernet(members, "cluster", k)
            if tensors.get("supernet") is not None:  # resuming inside this cluster's training
                supernet.load_state_dict(tensors["supernet"])
            self.train_supernet(f"cluster{k}", supernet, members, self.cluster_iterations)
            self.keep_supernet(supernet, f"cluster{k}")
            samples = []
            for j in range(self.score_samples):
                topology = rng(self.settings.seed, "score", k, j).choice(members)
                samples.append(self.fitness(supernet, Architecture(topology, self.op_sample(topology, j)), f"c{k}"))
            score = sum(samples) / len(samples)
            self.progress["clusters"].append({"cluster": k, "size": len(members), "score": score, "samples": samples})
            self.writer.add_scalar("coarse/cluster_score", score, k)
            self.logger.info(f"cluster {k} ({len(members)} topologies): score {score:.4f}")
            best_k = self.progress["best_cluster"]
            best_weights = tensors.get("best_supernet")
            if best_k < 0 or score > self.progress["clusters"][best_k]["score"]:
                self.progress["best_cluster"] = k
                best_weights = {n: t.detach().clone() for n, t in supernet.state_dict().items()}
            tensors.clear()
            tensors["best_supernet"] = best_weights
            self.progress.update({"cluster": k + 1, "iteration": 0})
            self.state.save()

        k = self.progress["best_cluster"]
        members = self.space.clusters[k]
        supernet = self.build_supernet(members, "cluster", k)
        supernet.load_state_dict(tensors["best_supernet"])
        evolution = self.new_evolution(
            random_candidate=lambda r: r.choice(members),
            mutate=lambda r, parent: self.space.mutate_topology(r, tuple(parent), members),
            fitness=lambda topology: self.topology_fitness(supernet, topology, f"c{k}"),
        )
        best = self.evolve(evolution)
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

    def run(self) -> Architecture:
        finished = self.begin()
        if finished is not None:
            return finished
        levels, ops = self.topology.levels, self.settings.ops
        supernet = self.build_supernet([levels], "fine")
        if self.state.tensors.get("supernet") is not None:
            supernet.load_state_dict(self.state.tensors["supernet"])
        self.train_supernet("ops", supernet, [levels], self.iterations)
        self.keep_supernet(supernet, "ops")
        self.state.tensors = {"supernet": supernet}  # evolution checkpoints keep the trained supernet
        evolution = self.new_evolution(
            random_candidate=lambda r: random_ops(r, len(levels), ops),
            mutate=lambda r, parent: mutate_ops(r, parent, ops),
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
            ),
        )
        return self.finish(arch, history={"topology": list(levels), "evolution": evolution.history})
