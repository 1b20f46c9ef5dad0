"""The resumable state of a search stage: everything it needs to continue, saved atomically to one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from networks.fileio import atomic_torch_save

__all__ = ["STATE_FORMAT", "SearchStateError", "SearchState"]

STATE_FORMAT = "c2fnas-search-state/1"


class SearchStateError(RuntimeError):
    """A saved search state cannot be resumed (unreadable, or written by a search with other settings)."""


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
