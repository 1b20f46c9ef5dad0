"""What both search stages share, as one settings object checked where it is consumed.

A bundle config builds ``SearchSettings`` from its top-level ids; a wrong value fails at construction, before any data
is read, with one ``SearchSettingsError`` naming the setting.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from networks import OPS

__all__ = ["FITNESS", "SearchSettingsError", "SearchSettings", "check_setting"]

FITNESS = ("dice", "soft_dice")  # the candidate ratings ``SearchSettings.fitness`` names


class SearchSettingsError(ValueError):
    """A search setting has the wrong type or value; the message names the setting."""


def check_setting(
    name: str,
    value: Any,
    kind: type,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    below: Optional[float] = None,
) -> Any:
    """``value`` when it is a ``kind`` (int, float or bool) within the bounds; else ``SearchSettingsError``."""
    where = f"search setting '{name}' (config or --{name} override)"
    numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = numeric and float(value).is_integer()
    else:
        ok = numeric
    if not ok:
        raise SearchSettingsError(f"{where}: {value!r} is not of type '{kind.__name__}'")
    value = kind(value)
    if minimum is not None and value < minimum:
        raise SearchSettingsError(f"{where}: {value!r} is less than the minimum of {minimum}")
    if maximum is not None and value > maximum:
        raise SearchSettingsError(f"{where}: {value!r} is greater than the maximum of {maximum}")
    if below is not None and value >= below:
        raise SearchSettingsError(f"{where}: {value!r} must be below {below}")
    return value


@dataclass(frozen=True)
class SearchSettings:
    """Settings of a search stage: network, optimiser, validation, evolution, checkpoints.

    Args:
        output_dir: where the stage writes its outputs and its state.
        in_channels / out_channels / base_channels: network I/O and width F, as deployed.
        ops: candidate ops of every cell.
        batch_size, learning_rate, momentum, weight_decay: SGD on the supernet.
        lr_hold_fraction: each training phase keeps ``learning_rate`` for this fraction of its iterations, then
            decays it to zero by a cosine.
        roi_size, sw_batch_size, overlap: sliding-window validation (the deployed patch size).
        val_cases: a candidate's fitness is its Dice on the first ``val_cases`` validation cases (the split is a
            seeded shuffle, so they are a random subset); 0 uses them all.
        population_size, sample_size, cycles: aging evolution.
        seed: every random decision of the search.
        device: ``torch.device`` or string; amp: mixed precision on CUDA; cpu_bf16: bfloat16
            supernet training on the CPU (``networks.precision``).
        num_workers, cache_rate: data loading.
        checkpoint_interval: iterations between saved states; checkpoint_candidates: evaluations between them.
        show_progress: progress bars and per-iteration logs (rank 0 only under DDP).
        class_names: names of the foreground classes (``out_channels - 1``), for the per-class Dice the history,
            the logs, TensorBoard and the picture report per candidate; ``class1``, ``class2``... when not given.
        max_gmacs: a compute budget: the most multiply-adds (in 1e9) one ``roi_size`` window of the deployed network
            (``base_channels``, batch 1) may cost (``networks.window_macs``); candidates above it are never drawn,
            bred or chosen, and clusters with no topology within it are not trained. 0: no budget.
        fitness: how a candidate is rated on the validation cases: ``"dice"``, the project's Dice of the argmax
            prediction (``search.dice``), or ``"soft_dice"``, the same formula on the softmax probabilities, which
            moves with every voxel's confidence and so still ranks candidates whose argmax misses a small class.
        finetune_steps: K > 0 rates a candidate after K steps of training a copy of its path alone, from the
            supernet's weights (``SearchStage.finetuned``), so its rating depends less on what the other paths did to
            the weights it shares; 0 rates the shared weights as they are.
        keep_supernets: also write each trained supernet's weights to ``output_dir/supernets/`` so that other
            architectures can be scored after the search (``CoarseSearch.score``, ``FineSearch.score``); off by default
            (at the default budget the eight coarse supernets take several hundred MB).
    """

    output_dir: Union[str, os.PathLike]
    in_channels: int = 1
    out_channels: int = 3
    base_channels: int = 32
    ops: Tuple[str, ...] = OPS
    batch_size: int = 2
    learning_rate: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 4e-5
    lr_hold_fraction: float = 0.0
    roi_size: Union[int, Sequence[int]] = 96
    sw_batch_size: int = 4
    overlap: float = 0.25
    val_cases: int = 0
    population_size: int = 20
    sample_size: int = 5
    cycles: int = 60
    seed: int = 0
    device: Union[str, torch.device] = "cpu"
    amp: bool = False
    cpu_bf16: bool = False
    num_workers: int = 0
    cache_rate: float = 1.0
    checkpoint_interval: int = 200
    checkpoint_candidates: int = 5
    show_progress: bool = True
    keep_supernets: bool = False
    max_gmacs: float = 0.0
    fitness: str = "dice"
    finetune_steps: int = 0
    class_names: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        checks: Dict[str, Tuple[type, Dict[str, float]]] = {
            "in_channels": (int, {"minimum": 1}),
            "out_channels": (int, {"minimum": 2}),
            "base_channels": (int, {"minimum": 1}),
            "batch_size": (int, {"minimum": 1}),
            "learning_rate": (float, {"minimum": 0}),
            "momentum": (float, {"minimum": 0, "maximum": 1}),
            "weight_decay": (float, {"minimum": 0}),
            "lr_hold_fraction": (float, {"minimum": 0, "below": 1}),
            "sw_batch_size": (int, {"minimum": 1}),
            "overlap": (float, {"minimum": 0, "below": 1}),
            "val_cases": (int, {"minimum": 0}),
            "population_size": (int, {"minimum": 1}),
            "sample_size": (int, {"minimum": 1}),
            "cycles": (int, {"minimum": 0}),
            "seed": (int, {"minimum": 0}),
            "amp": (bool, {}),
            "cpu_bf16": (bool, {}),
            "num_workers": (int, {"minimum": 0}),
            "cache_rate": (float, {"minimum": 0, "maximum": 1}),
            "checkpoint_interval": (int, {"minimum": 0}),
            "checkpoint_candidates": (int, {"minimum": 0}),
            "show_progress": (bool, {}),
            "keep_supernets": (bool, {}),
            "max_gmacs": (float, {"minimum": 0}),
            "finetune_steps": (int, {"minimum": 0}),
        }
        for name, (kind, bounds) in checks.items():
            object.__setattr__(self, name, check_setting(name, getattr(self, name), kind, **bounds))
        if self.sample_size > self.population_size:
            raise SearchSettingsError(
                f"search settings 'sample_size' {self.sample_size} and 'population_size' {self.population_size}: "
                "the tournament cannot be larger than the population"
            )
        if self.fitness not in FITNESS:
            raise SearchSettingsError(f"search setting 'fitness': {self.fitness!r} is not one of {list(FITNESS)}")
        roi = (self.roi_size,) * 3 if isinstance(self.roi_size, int) else tuple(self.roi_size)
        if len(roi) != 3:
            raise SearchSettingsError(f"search setting 'roi_size': {list(roi)} does not have 3 sides")
        roi = tuple(check_setting("roi_size", side, int, minimum=1) for side in roi)
        object.__setattr__(self, "roi_size", roi)
        unknown = sorted(set(self.ops) - set(OPS))
        if not self.ops or unknown:
            raise SearchSettingsError(f"search setting 'ops': {list(self.ops)} must be a non-empty subset of {OPS}")
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "device", torch.device(self.device))
        names = [f"class{i}" for i in range(1, self.out_channels)] if self.class_names is None else self.class_names
        if isinstance(names, str) or len(names) != self.out_channels - 1 or not all(isinstance(n, str) for n in names):
            raise SearchSettingsError(
                f"search setting 'class_names': {names!r} must name the {self.out_channels - 1} foreground classes"
            )
        object.__setattr__(self, "class_names", tuple(names))
