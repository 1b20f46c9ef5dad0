"""Ignite handlers for the bundle's configs."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from ignite.engine import Engine, Events

from .networks.fileio import atomic_write_json

__all__ = ["PerClassDice"]


class PerClassDice:
    """After each evaluation, log the Dice of every foreground class (mean over the cases where it is present) and,
    when ``output_file`` is given, write them as JSON.

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
        if self.output_file:
            atomic_write_json(self.output_file, report)  # creates the folder too
