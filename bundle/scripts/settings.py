"""Type checks of the data, preprocessing and training settings, run by ``initialize`` (``checked_settings`` in
common.json, extended by train.json) before anything is read or written, so that an override of the wrong type
(``--roi_size 96``, ``--max_epochs ten``) fails at once with one message naming the setting. The search budgets are
checked where they are consumed, by ``search.SearchSettings`` and the stage classes."""

from __future__ import annotations

from typing import Any, Dict

import jsonschema
from scripts.errors import SettingsError
from scripts.inference_runtime import RUNTIMES

from networks import PATCH_DIVISOR

__all__ = ["SettingsError", "SETTINGS", "PATCH_SIDE", "check_settings"]


_INT = {"type": "integer", "minimum": 0}
_POSITIVE_INT = {"type": "integer", "minimum": 1}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_OVERLAP = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
PATCH_SIDE = {"type": "integer", "minimum": PATCH_DIVISOR, "multipleOf": PATCH_DIVISOR}  # networks.PATCH_DIVISOR
_PATCH = {"type": "array", "items": PATCH_SIDE, "minItems": 3, "maxItems": 3}
SETTINGS: Dict[str, dict] = {
    "seed": _INT,
    "split_seed": _INT,
    "num_workers": _INT,
    "max_cases": _INT,
    "cache_rate": _FRACTION,
    "val_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "base_channels": _POSITIVE_INT,
    "roi_size": {
        **_PATCH,
        "description": f"3 patch sides, each a multiple of {PATCH_DIVISOR} (the network downsamples "
        f"{PATCH_DIVISOR} times)",
    },
    "pixdim": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3},
    "plan_min_spacing": {
        "type": ["array", "null"],
        "items": {"type": "number", "exclusiveMinimum": 0},
        "minItems": 3,
        "maxItems": 3,
        "description": "null, or the coarsest spacing the plan may keep per axis (mm)",
    },
    "plan_max_roi_size": {
        **_PATCH,
        "description": f"3 largest patch sides the plan may choose, each a multiple of {PATCH_DIVISOR}",
    },
    "num_samples": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "sw_batch_size": _POSITIVE_INT,
    "sw_overlap": _OVERLAP,
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "max_epochs": _POSITIVE_INT,
    "iterations_per_epoch": {
        **_POSITIVE_INT,
        "description": "optimizer steps per epoch, whatever the number of training cases (the data is cycled)",
    },
    "val_interval": _POSITIVE_INT,
    "weight_average_momentum": {
        "type": "number",
        "minimum": 0,
        "exclusiveMaximum": 1,
        "description": "0 (off), or the weight m of each step in the moving average of the weights that validation "
        "scores and the weights file holds",
    },
    "restart": {"type": "boolean"},
    "deep_supervision": {
        "type": "boolean",
        "description": "training only: auxiliary outputs from the network's decoder levels 2 and 3 in the loss",
    },
    "cpu_bf16": {
        "type": "boolean",
        "description": "bfloat16 autocast and channels_last_3d for training and search forward passes on the CPU",
    },
    "inference_runtime": {
        "enum": list(RUNTIMES),
        "description": "auto measures torch, torch_channels_last and openvino on this machine; openvino_bf16 "
        "(OpenVINO in bfloat16) runs only when named",
    },
}


def check_settings(**settings: Any) -> bool:
    """Check each given setting against ``SETTINGS``; raise ``SettingsError`` for the first wrong one."""
    for name, value in settings.items():
        error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(SETTINGS[name]).iter_errors(value))
        if error is not None:
            hint = f" ({SETTINGS[name]['description']})" if "description" in SETTINGS[name] else ""
            raise SettingsError(f"setting '{name}' (config or --{name} override): {error.message}{hint}")
    return True
