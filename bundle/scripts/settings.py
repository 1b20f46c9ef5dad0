"""Type checks of the configs' top-level settings, run by every config's ``initialize`` before anything is read or
written, so that an override of the wrong type (``--roi_size 96``, ``--max_epochs ten``) fails at once with one
message naming the setting."""

from __future__ import annotations

from typing import Any, Dict

import jsonschema

__all__ = ["SettingsError", "SETTINGS", "check_settings"]


class SettingsError(ValueError):
    """A config setting has the wrong type or value; the message names the setting."""


_INT = {"type": "integer", "minimum": 0}
_POSITIVE_INT = {"type": "integer", "minimum": 1}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_OVERLAP = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
SETTINGS: Dict[str, dict] = {
    "seed": _INT,
    "num_workers": _INT,
    "max_cases": _INT,
    "cache_rate": _FRACTION,
    "val_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "base_channels": _POSITIVE_INT,
    "roi_size": {
        "type": "array",
        "items": {"type": "integer", "minimum": 16, "multipleOf": 16},
        "minItems": 3,
        "maxItems": 3,
        "description": "3 patch sides, each a multiple of 16 (the network downsamples 16 times)",
    },
    "pixdim": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3},
    "a_min": {"type": "number"},
    "a_max": {"type": "number"},
    "num_samples": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "sw_batch_size": _POSITIVE_INT,
    "sw_overlap": _OVERLAP,
    "search_overlap": _OVERLAP,
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "max_epochs": _POSITIVE_INT,
    "val_interval": _POSITIVE_INT,
    "population_size": _POSITIVE_INT,
    "sample_size": _POSITIVE_INT,
    "cycles": _INT,
    "checkpoint_interval": _INT,
    "checkpoint_candidates": _INT,
    "num_cells": {"type": "integer", "minimum": 2},
    "min_depth": {"type": "integer", "minimum": 1, "maximum": 4},
    "max_depth": {"type": "integer", "minimum": 1, "maximum": 4},
    "num_clusters": _POSITIVE_INT,
    "cluster_iterations": _INT,
    "score_samples": _POSITIVE_INT,
    "op_samples": _POSITIVE_INT,
    "fine_iterations": _INT,
}


def check_settings(**settings: Any) -> bool:
    """Check each given setting against ``SETTINGS``; raise ``SettingsError`` for the first wrong one."""
    for name, value in settings.items():
        error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(SETTINGS[name]).iter_errors(value))
        if error is not None:
            hint = f" ({SETTINGS[name]['description']})" if "description" in SETTINGS[name] else ""
            raise SettingsError(f"setting '{name}' (config or --{name} override): {error.message}{hint}")
    if "a_min" in settings and "a_max" in settings and not settings["a_min"] < settings["a_max"]:
        raise SettingsError(f"settings 'a_min' {settings['a_min']} and 'a_max' {settings['a_max']}: need a_min < a_max")
    if "min_depth" in settings and "max_depth" in settings and settings["min_depth"] > settings["max_depth"]:
        raise SettingsError("settings 'min_depth' and 'max_depth': need min_depth <= max_depth")
    return True
