"""The few pieces the bundle adds to MONAI's handlers (``CheckpointLoader``, ``CheckpointSaver``, ``MetricsSaver``),
each as small as what MONAI lacks allows. Rank-0-only output is chosen in the configs (``_disabled_``)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver
from scripts.errors import WeightsError, one_line

from networks.fileio import atomic_torch_save, atomic_write_json
from search.dice import dice_report

__all__ = ["CheckedCheckpointLoader", "AtomicCheckpointSaver", "DiceReport", "ReportSet", "read_checkpoint"]


def _unwrap(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel``; anything else as is."""
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


def _listed(names: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_checkpoint(path: str, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing or unreadable file is a ``WeightsError``."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: {what} file does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot read {what} ({one_line(e)})") from None


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (``weights_only``, ``strict``) whose failures name the file and the problem.

    What MONAI lacks: a missing, unreadable or mismatching file fails inside ``torch.load`` / ``load_state_dict``
    with a long traceback; here it is one ``WeightsError`` that names the file and lists the missing, unexpected and
    differently shaped keys (read again only after a failure), and weights holding NaN or Inf are refused (MONAI
    loads them and the network then predicts background everywhere). Also: ``engine_key`` loads the engine it is
    attached to under that key (a config cannot name the trainer inside the trainer's own handlers), and ``None``
    entries of ``load_dict`` (handlers disabled on this rank) are left out.

    Args:
        engine_key: when given, the key of the attached engine's state in the checkpoint.
    """

    def __init__(self, *args: Any, engine_key: Optional[str] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.load_dict = {k: v for k, v in self.load_dict.items() if v is not None}
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        if self.engine_key is not None:
            self.load_dict = {**self.load_dict, self.engine_key: engine}
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except Exception as e:
            raise WeightsError(self.diagnose(e)) from None
        for name, obj in self.load_dict.items():
            if isinstance(obj, torch.nn.Module):
                bad = [
                    k for k, v in _unwrap(obj).state_dict().items() if v.is_floating_point() and not v.isfinite().all()
                ]
                if bad:
                    raise WeightsError(
                        f"{self.load_path}: {len(bad)} tensors of '{name}' hold NaN or Inf ({_listed(bad)}); "
                        "these weights cannot segment"
                    )
        if self.engine_key is not None:
            self.logger.info(
                f"resuming training from {self.load_path} at epoch {engine.state.epoch}/{engine.state.max_epochs}"
            )

    def diagnose(self, error: Exception) -> str:
        path = str(self.load_path)
        state = read_checkpoint(path, "weights")
        name, target = next(iter(self.load_dict.items()))
        if not isinstance(state, Mapping):
            return f"{path}: not a state_dict ({one_line(error)})"
        if len(self.load_dict) == 1 and name in state:
            state = state[name]
        if not isinstance(target, torch.nn.Module) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            return f"{path}: does not fit ({one_line(error)}); delete it or give another file"
        expected = _unwrap(target).state_dict()
        shapes = [
            f"{k} {tuple(state[k].shape)} (network {tuple(v.shape)})"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        problems = [
            f"{title}: {_listed(keys)}"
            for title, keys in (
                ("missing keys", sorted(set(expected) - set(state))),
                ("unexpected keys", sorted(set(state) - set(expected))),
                ("other shapes", shapes),
            )
            if keys
        ]
        reason = "; ".join(problems) or one_line(error)
        return f"{path}: the weights do not fit the network (check --arch_file and --base_channels); {reason}"


class _AtomicDiskSaver(BaseSaveHandler):
    """Writes a checkpoint by ``atomic_torch_save`` under a fixed name (or the name ignite gives), on rank 0."""

    def __init__(self, dirname: str, filename: Optional[str] = None):
        self.dirname, self.filename = Path(dirname), filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Optional[Mapping] = None) -> None:
        if not dist.is_initialized() or dist.get_rank() == 0:
            atomic_torch_save(checkpoint, self.dirname / (self.filename or filename))

    def remove(self, filename: str) -> None:
        if self.filename is None and (not dist.is_initialized() or dist.get_rank() == 0):
            (self.dirname / filename).unlink(missing_ok=True)
        # a fixed name is replaced atomically by the next save: removing it first would leave no file for a while


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are complete or absent, with a fixed name for interval saves too.

    What MONAI lacks: its disk saver writes in place (``atomic=False``) and deletes a fixed-name file before writing
    its successor, so a kill at the wrong moment leaves a truncated ``model.pt`` or none; interval saves get a new
    name each time; and ``CheckpointSaver`` has ``load_state_dict`` but no ``state_dict``, so the best score so far
    cannot go into a resumable training state.

    Args:
        interval_filename: fixed file name of the interval saves (``save_interval``).
        engine_key: when given, the attached engine's state is saved under that key too.
        Others as MONAI's ``CheckpointSaver``.
    """

    def __init__(
        self, *args: Any, interval_filename: Optional[str] = None, engine_key: Optional[str] = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint):
            if checkpoint is not None:  # the fixed name MONAI's own disk saver was given
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, interval_filename)

    def attach(self, engine: Engine) -> None:
        if self.engine_key is not None:
            self.save_dict[self.engine_key] = engine  # the same dict the internal checkpoints save
        super().attach(engine)

    def state_dict(self) -> Dict[str, Any]:
        """The best-metric record (what ``load_state_dict`` restores)."""
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


class DiceReport:
    """After each evaluation, log the project's Dice (``search.dice``) per class and its mean, and write them as
    JSON to ``output_file`` when given (atomically).

    What MONAI lacks: ``MetricsSaver``'s summary averages each case over its classes first, which is not this
    bundle's Dice; this report applies ``search.dice.dice_report`` to the per-case values that MONAI's
    ``IgniteMetricHandler`` keeps in ``engine.state.metric_details[metric_name]`` (gathered over ranks).
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
        report = dice_report(torch.as_tensor(details).reshape(-1, len(self.class_names)), self.class_names)
        text = ", ".join(f"{k} {v:.4f}" for k, v in report["per_class"].items())
        self.logger.info(f"validation Dice on {report['cases']} cases: mean {report['mean_dice']:.4f} ({text})")
        if self.output_file:
            atomic_write_json(self.output_file, report)


class ReportSet:
    """An evaluation's reports (``MetricsSaver``'s CSVs, ``DiceReport``'s JSON) replaced as a whole.

    What MONAI lacks: ``MetricsSaver`` writes each file in place, one after the other, so a run killed part-way
    leaves a mixed set (the new summary beside the old per-case values) with nothing marking it. Here every report
    of the run goes into ``staging_dir`` (emptied when the evaluation starts); when it completes, the set replaces
    ``report_dir`` by two renames. A kill between them leaves no report, never a mixed one; the next run removes
    what is left. Rank 0 only (``_disabled_`` in the config).
    """

    def __init__(self, staging_dir: str, report_dir: str):
        self.staging_dir, self.report_dir = Path(staging_dir), Path(report_dir)
        self.replaced_dir = self.report_dir.with_name(f".{self.report_dir.name}.replaced")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.clear)
        engine.add_event_handler(Events.COMPLETED, self.publish)

    def clear(self, engine: Optional[Engine] = None) -> None:
        for leftover in (self.staging_dir, self.replaced_dir):
            shutil.rmtree(leftover, ignore_errors=True)
        self.staging_dir.mkdir(parents=True)

    def publish(self, engine: Optional[Engine] = None) -> None:
        if self.report_dir.exists():
            os.replace(self.report_dir, self.replaced_dir)
        os.replace(self.staging_dir, self.report_dir)
        shutil.rmtree(self.replaced_dir, ignore_errors=True)
        logging.getLogger("c2fnas.evaluate").info(f"reports written to {self.report_dir}")
