"""What both C2FNAS search stages share (``SearchStage``): data, supernet training, evaluation, state, outputs.

The stages themselves are ``search.coarse_search.CoarseSearch`` (topology) and ``search.fine_search.FineSearch``
(one op per cell).

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

from networks import Architecture, C2FNASSupernet, load_architecture, save_architecture
from networks.complexity import OP_KERNELS, window_macs
from networks.fileio import atomic_torch_save, atomic_write_json
from search.data import DiceEvaluator, PatchStream, cached_dataset
from search.distributed import barrier, broadcast_object, rank_and_world_size
from search.engine import cosine_schedule, create_supernet_trainer, run_trainer
from search.evolution import AgingEvolution
from search.plots import plot_architecture, plot_fitness
from search.settings import SearchSettings, SearchSettingsError
from search.space import random_ops, rng
from search.state import SearchState, SearchStateError

__all__ = ["SearchStage"]


def _fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        self.progress_bar = self.show_progress  # a worker process beside another shows its logs only
        self.logger = logging.getLogger(f"c2fnas.search.{self.name}")
        if not self.is_main:  # one log under DDP
            self.logger.setLevel(logging.WARNING)
        self._stream: Optional[PatchStream] = None
        self._evaluator: Optional[DiceEvaluator] = None
        self._writer: Optional[Any] = None
        self._state: Optional[SearchState] = None
        self._kept: Dict[str, C2FNASSupernet] = {}

    def __getstate__(self) -> Dict[str, Any]:
        """For a worker process: the stage without what it builds on use (data, evaluator, writer, state)."""
        fresh = {"_stream": None, "_evaluator": None, "_writer": None, "_state": None, "_kept": {}}
        return {**self.__dict__, **fresh}

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
            **self.non_default_settings(),
        }

    # ------------------------------------------------------------------ compute budget
    def gmacs(self, arch: Architecture) -> float:
        """Multiply-adds (1e9) of one ``roi_size`` window of ``arch`` at the deployed width (``window_macs``)."""
        s = self.settings
        return window_macs(arch, s.in_channels, s.out_channels, s.base_channels, s.roi_size) / 1e9

    def within_budget(self, arch: Architecture) -> bool:
        return self.settings.max_gmacs <= 0 or self.gmacs(arch) <= self.settings.max_gmacs

    def cheapest(self, levels: Sequence[int]) -> Architecture:
        """``levels`` with every cell's cheapest op: the least multiply-adds of any op assignment (costs add up)."""
        op = min(self.settings.ops, key=lambda name: sum(OP_KERNELS[name]))
        return Architecture(tuple(levels), (op,) * len(levels))

    def budgeted_ops(self, r: Any, levels: Sequence[int], draws: int = 100) -> Tuple[str, ...]:
        """The first of up to ``draws`` uniform op assignments from ``r`` within the budget, else the cheapest."""
        for _ in range(draws):
            ops = random_ops(r, len(levels), self.settings.ops)
            if self.within_budget(Architecture(tuple(levels), ops)):
                return ops
        return self.cheapest(levels).ops

    def check_budget(self, topologies: Sequence[Sequence[int]]) -> None:
        """``SearchSettingsError`` when not even the cheapest architecture on ``topologies`` fits ``max_gmacs``."""
        s = self.settings
        if s.max_gmacs > 0 and not any(self.within_budget(self.cheapest(t)) for t in topologies):
            least = min(self.gmacs(self.cheapest(t)) for t in topologies)
            raise SearchSettingsError(
                f"search setting 'max_gmacs' (config or --search_max_gmacs override): {s.max_gmacs} is below the "
                f"cheapest architecture of the search space ({least:.3f} GMACs per {list(s.roi_size)} window at "
                f"width {s.base_channels})"
            )

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
                cases, s.out_channels, s.roi_size, s.sw_batch_size, s.overlap, s.device, s.amp, s.fitness == "soft_dice"
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

        engine = create_supernet_trainer(
            supernet, optimizer, scheduler, self.loss_function, sample, s.device, s.amp, s.cpu_bf16
        )
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
            progress_bar=self.progress_bar,
        )

    def supernet_dice(self, supernet: C2FNASSupernet, arch: Architecture) -> float:
        """Validation mean Dice (``search.dice``) of ``arch`` with the supernet's weights (rank 0's value on every
        rank). A validation set with no foreground anywhere has no Dice; it counts as 0."""
        return self.supernet_dice_per_class(supernet, arch)[0]

    def supernet_dice_per_class(
        self, supernet: C2FNASSupernet, arch: Architecture
    ) -> Tuple[float, Dict[str, Optional[float]]]:
        """``(supernet_dice, {class name: Dice or None})``: the mean and each foreground class's Dice, None where a
        class had no value (absent from every prediction and label)."""
        supernet.eval()
        mean, per_class = broadcast_object(self.evaluator.dice(self.rated_network(supernet, arch)))
        values = [None if d != d else d for d in per_class]
        return (0.0 if mean != mean else mean), dict(zip(self.settings.class_names, values))

    def rated_network(self, supernet: C2FNASSupernet, arch: Architecture) -> torch.nn.Module:
        """The network a candidate's rating scores: its path with the supernet's weights, or with ``finetune_steps``
        a trained copy of it (``finetuned``)."""
        return self.finetuned(supernet, arch) if self.settings.finetune_steps else supernet.path_network(arch)

    def finetuned(self, supernet: C2FNASSupernet, arch: Architecture) -> torch.nn.Module:
        """A copy of ``supernet``'s path ``arch`` trained ``finetune_steps`` more steps, as the supernets are trained
        (SGD at ``learning_rate`` decaying to 0 by cosine, the loss, ``amp``/``cpu_bf16``, gradients averaged under
        DDP) on the patches of draws 0 .. K-1, the same for every candidate; in eval mode. The supernet is not
        changed."""
        s = self.settings
        network = supernet.derive(arch)
        optimizer = torch.optim.SGD(
            network.parameters(), lr=s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay
        )
        scheduler = cosine_schedule(optimizer, s.finetune_steps)
        engine = create_supernet_trainer(
            network, optimizer, scheduler, self.loss_function, None, s.device, s.amp, s.cpu_bf16
        )
        run_trainer(
            engine,
            self.stream.batches(0, s.finetune_steps),
            0,
            s.finetune_steps,
            f"{self.name}/finetune",
            show_progress=False,
        )
        return network.eval()

    def fitness(self, supernet: C2FNASSupernet, arch: Architecture, context: str) -> float:
        """``supernet_dice``, cached per (context, architecture) and recorded, with each class's Dice, in the history,
        the log and TensorBoard, so that a fitness blind to a class shows."""
        key = f"{context}|{','.join(map(str, arch.levels))}|{','.join(arch.ops)}"
        cache = self.progress["cache"]
        if key not in cache:
            cache[key], per_class = self.supernet_dice_per_class(supernet, arch)
            record = {"context": context, "levels": list(arch.levels), "ops": list(arch.ops), "fitness": cache[key]}
            record["per_class"], record["gmacs"] = per_class, self.gmacs(arch)
            self.progress["evaluations"].append(record)
            step = len(self.progress["evaluations"])
            self.writer.add_scalar(f"{self.name}/fitness", cache[key], step)
            for name, value in per_class.items():
                if value is not None:
                    self.writer.add_scalar(f"{self.name}/dice/{name}", value, step)
            classes = ", ".join(f"{n} {'-' if v is None else format(v, '.4f')}" for n, v in per_class.items())
            self.logger.info(f"candidate {step} ({context}, {arch}): fitness {cache[key]:.4f} ({classes})")
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
            evaluations=history["evaluations"],
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

    def non_default_settings(self) -> Dict[str, Any]:
        """The settings added after states were first saved, named only when not at their default (a compute budget,
        bfloat16 supernets, the soft-Dice and fine-tuned fitnesses), so the fingerprints and provenance of searches
        without them stay as they were."""
        s = self.settings
        found: Dict[str, Any] = {}
        if s.max_gmacs > 0:
            found["max_gmacs"] = s.max_gmacs
        if s.cpu_bf16:
            found["cpu_bf16"] = True
        if s.fitness != "dice":
            found["search_fitness"] = s.fitness  # not "fitness": the provenance's "fitness" is a candidate's value
        if s.finetune_steps:
            found["finetune_steps"] = s.finetune_steps
        return found

    def provenance(self, **extra: Any) -> Dict[str, Any]:
        s = self.settings
        return {
            "stage": self.name,
            "seed": s.seed,
            "base_channels": s.base_channels,
            "roi_size": list(s.roi_size),
            "ops": list(s.ops),
            **self.non_default_settings(),
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
