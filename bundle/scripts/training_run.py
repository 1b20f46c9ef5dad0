"""What train.json does with its output directory: train anew, resume, or leave a finished training alone.

MONAI's workflows resume whatever state file they are given: a training resumed with other settings silently mixes
the old run's schedule with the new run's settings, and a second training into a finished output directory replaces
its model at the first validation whatever its score. ``TrainingRun`` decides before any data is read:

============================================  ============================================================
found in ``ckpt_dir``                          what happens
============================================  ============================================================
nothing                                        train anew
an unfinished state, the same settings         resume it (same schedule, same best score so far)
a finished state, the same settings            say so and leave ``model.pt`` alone (exit 0)
a state made with other settings               ``SettingsError`` naming each changed setting (old -> new)
``model.pt`` without a state                   ``SettingsError``: it would be replaced
any of these, with ``restart=True``            the old state and model are removed, then train anew
============================================  ============================================================

The settings are saved in the training state (``state_dict``) so that the next run can compare them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch.distributed as dist
from scripts.data import SplitList
from scripts.errors import SettingsError, WeightsError
from scripts.handlers import read_checkpoint

__all__ = ["TrainingRun"]


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TrainingRun:
    """Args:
    state_file: the training state (``training_state.pt``); model_file: the best model (``model.pt``).
    settings: every setting that changes what the training computes (JSON-able values).
    restart: start anew even when a state or model is there (removing them first).
    train_data: the cases the trainer reads; cases given from outside (not a ``scripts.data.SplitList``: MONAI
        Label's train task, ``--train#dataset#data``) always train anew, as a MONAI Label train request expects.
    """

    def __init__(
        self,
        state_file: str,
        model_file: str,
        settings: Mapping[str, Any],
        restart: bool = False,
        train_data: Optional[Sequence[Any]] = None,
    ):
        self.state_file, self.model_file = Path(state_file), Path(model_file)
        self.settings = json.loads(json.dumps(dict(settings), default=str))  # as saved: plain JSON values
        self.restart = bool(restart) or (train_data is not None and not isinstance(train_data, SplitList))
        self.logger = logging.getLogger("c2fnas.train")
        self.status = self._decide()

    def _decide(self) -> str:
        if self.restart:
            return "restart"
        if not self.state_file.exists():
            if self.model_file.exists():
                raise SettingsError(
                    f"{self.model_file}: a model from an earlier training (no {self.state_file.name} beside it); "
                    "training would replace it: give another --output_dir, or --restart True to replace it"
                )
            return "new"
        state = read_checkpoint(str(self.state_file), "the training state")
        trainer = state.get("trainer") if isinstance(state, Mapping) else None  # ignite's Engine.state_dict()
        if not isinstance(trainer, Mapping) or not {"iteration", "epoch_length", "max_epochs"} <= set(trainer):
            raise WeightsError(f"{self.state_file}: not a training state of this bundle (no trainer progress)")
        saved = state.get("settings")
        if not isinstance(saved, Mapping):
            raise SettingsError(
                f"{self.state_file}: saved without its settings (an older version of this bundle); "
                "--restart True to train anew"
            )
        changed = [
            f"{k} {_shown(saved.get(k))} -> {_shown(self.settings.get(k))}"
            for k in sorted(set(saved) | set(self.settings))
            if saved.get(k) != self.settings.get(k)
        ]
        epoch = int(trainer["iteration"]) // max(1, int(trainer["epoch_length"]))
        finished = epoch >= int(trainer["max_epochs"])
        if changed:
            what = "finished" if finished else f"stopped at epoch {epoch}"
            raise SettingsError(
                f"{self.state_file}: a training {what} with other settings ({'; '.join(changed)}); run it with "
                "its settings to resume, --restart True to train anew, or give another --output_dir"
            )
        return "finished" if finished else "resume"

    @property
    def resumable(self) -> bool:
        """Whether the saved state is loaded (train.json's ``CheckedCheckpointLoader``)."""
        return self.status == "resume"

    @property
    def needed(self) -> bool:
        """Whether the trainer runs (False for a finished training)."""
        return self.status != "finished"

    def begin(self) -> str:
        """Log the decision; on restart remove the old state and model (rank 0) so no mixed set is left."""
        if self.status == "finished":
            self.logger.info(
                f"training in {self.state_file.parent} already finished with these settings; {self.model_file} "
                "left alone (--restart True trains anew)"
            )
        elif self.status == "restart" and (not dist.is_initialized() or dist.get_rank() == 0):
            for path in (self.state_file, self.model_file):
                if path.exists():
                    os.unlink(path)
                    self.logger.info(f"restart: removed {path}")
        if dist.is_initialized():
            dist.barrier()
        return self.status

    def state_dict(self) -> Dict[str, Any]:
        """The settings, saved in the training state."""
        return dict(self.settings)

    def load_state_dict(self, state: Optional[Mapping[str, Any]]) -> None:
        """Nothing to restore: the saved settings were compared with these before the run."""
