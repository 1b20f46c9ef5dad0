"""Ignite handlers for the bundle's configs: per-class Dice, the best model and a resumable training state, each
written atomically and by rank 0 only under DDP."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, Optional, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from . import one_line
from .networks.fileio import atomic_torch_save, atomic_write_json, remove_stale_temporaries

__all__ = ["WeightsError", "WeightsLoader", "PerClassDice", "BestModelSaver", "ResumableTraining"]


class WeightsError(RuntimeError):
    """A weights file cannot be read or does not fit the network; the message names the file."""


def _rank() -> int:
    """This process's rank, straight from ``torch.distributed`` (0 without a process group). Not ignite's
    ``idist.get_rank()``: its first call runs collectives, which hang when only rank 0 makes it."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _unwrap(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel``; anything else as is."""
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


def _listed(names: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class WeightsLoader:
    """When the engine starts, load the weights file ``path`` into ``network``, strictly and ``weights_only``.

    The file holds a state_dict of tensors (or ``{"model": state_dict}``). A missing or unreadable file, or weights
    of another architecture or width, raise one ``WeightsError`` that names the file and the mismatching keys.
    """

    def __init__(self, path: str, network: torch.nn.Module, map_location: Any = "cpu"):
        self.path, self.network, self.map_location = str(path), network, map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Optional[Engine] = None) -> None:
        if not os.path.isfile(self.path):
            raise WeightsError(f"{self.path}: weights file does not exist (give --ckpt_file)")
        try:
            state = torch.load(self.path, map_location=self.map_location, weights_only=True)
        except Exception as e:
            raise WeightsError(f"{self.path}: cannot read weights ({one_line(e)})") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{self.path}: not a state_dict of tensors")
        expected = _unwrap(self.network).state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = [
            f"{k} {tuple(state[k].shape)} (network {tuple(v.shape)})"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        problems = [
            f"{title}: {_listed(keys)}"
            for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("other shapes", shapes))
            if keys
        ]
        if problems:
            raise WeightsError(
                f"{self.path}: the weights do not fit the network (check --arch_file and --base_channels); "
                + "; ".join(problems)
            )
        _unwrap(self.network).load_state_dict(state, strict=True)


class BestModelSaver:
    """After each evaluation, save ``network``'s state_dict (tensors only) to ``path`` when the key metric beats the
    best so far (rank 0, atomic). Its ``best`` value is part of ``ResumableTraining``'s state."""

    def __init__(self, network: torch.nn.Module, path: str):
        self.network, self.path = network, path
        self.best = -math.inf
        self.logger = logging.getLogger("c2fnas.checkpoint")

    def attach(self, engine: Engine) -> None:
        if _rank() == 0:
            remove_stale_temporaries(self.path)  # left by a killed run; the next save may be epochs away
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metric = engine.state.metrics.get(engine.state.key_metric_name)
        if metric is None or not metric > self.best:
            return
        self.best = float(metric)
        if _rank() == 0:
            atomic_torch_save(_unwrap(self.network).state_dict(), self.path)
            self.logger.info(f"best {engine.state.key_metric_name} {metric:.4f}: saved {self.path}")

    def state_dict(self) -> Dict[str, float]:
        return {"best": self.best}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.best = float(state["best"])


class PerClassDice:
    """After each evaluation, log the Dice of every foreground class (mean over the cases where it is present) and,
    when ``output_file`` is given, write them as JSON (rank 0 under DDP).

    Reads ``engine.state.metric_details[metric_name]`` (``(cases, classes)``, from a MONAI ``MeanDice`` with
    ``include_background=False`` and ``save_details=True``).
    """

    def __init__(
        self, class_names: Sequence[str], metric_name: str = "val_mean_dice", output_file: Optional[str] = None
    ):
        self.class_names, self.metric_name, self.output_file = list(class_names), metric_name, output_file
        self.logger = logging.getLogger("c2fnas.dice")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            return
        per_case = torch.as_tensor(details).float().reshape(-1, len(self.class_names))
        per_class = per_case.nanmean(0)
        report = {
            "mean_dice": float(torch.nan_to_num(per_class, nan=0.0).mean()),
            "cases": per_case.shape[0],
            "per_class": {name: float(v) for name, v in zip(self.class_names, per_class)},
        }
        text = ", ".join(f"{k} {v:.4f}" for k, v in report["per_class"].items())
        self.logger.info(f"validation Dice on {report['cases']} cases: mean {report['mean_dice']:.4f} ({text})")
        if self.output_file and _rank() == 0:  # one writer under DDP (the details are gathered)
            atomic_write_json(self.output_file, report)  # creates the folder too


class ResumableTraining:
    """The whole training state saved to ``path`` after every ``interval`` epochs and at the end (rank 0, atomic):
    ``objects`` (network, optimizer, LR scheduler, the best model's score...) plus the progress of the trainer it
    is attached to. When ``path`` holds an unfinished run as training starts, every rank loads it (``weights_only``)
    and training continues from its epoch, so a killed run resumes by running the same command again. After a
    finished run the same command trains anew (as MONAI Label's repeated training expects); delete ``path`` to
    start over early."""

    def __init__(self, path: str, objects: Dict[str, Any], interval: int = 1):
        self.path, self.objects, self.interval = path, dict(objects), interval
        self.logger = logging.getLogger("c2fnas.checkpoint")

    def attach(self, engine: Engine) -> None:
        self.objects.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, lambda e: self.save(e, finished=True))

    def _states(self) -> Dict[str, Any]:
        return {k: _unwrap(v).state_dict() for k, v in self.objects.items()}

    def save(self, engine: Engine, finished: bool = False) -> None:
        if _rank() == 0:
            atomic_torch_save({**self._states(), "finished": finished}, self.path)

    def load(self, engine: Engine) -> None:
        if not os.path.isfile(self.path):
            return
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{self.path}: cannot read the training state ({one_line(e)}); delete it to start over")
        if not isinstance(state, dict):
            raise WeightsError(f"{self.path}: not a training state (a dict of state dicts)")
        if state.get("finished") is True:
            return
        missing = sorted((set(self.objects) | {"finished"}) - set(state))
        if missing:
            raise WeightsError(f"{self.path}: not a training state of this config (no {', '.join(missing)})")
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects({k: _unwrap(v) for k, v in self.objects.items()}, state)
        except RuntimeError as e:  # e.g. another architecture: name the file
            raise WeightsError(f"{self.path}: does not fit this training ({one_line(e)}); delete it to start over")
        engine.state.max_epochs = max_epochs
        self.logger.info(f"resuming training from {self.path} at epoch {engine.state.epoch}/{max_epochs}")
