"""Atomic file writes: a reader sees either the old file or the complete new one, never a half-written file."""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]

__all__ = ["atomic_write", "atomic_write_json", "atomic_torch_save", "remove_stale_temporaries"]


def remove_stale_temporaries(path: PathLike, suffix: str = ".tmp") -> None:
    """Remove the temporary files of ``path`` (``.<name>.<token><suffix>``) that a writer killed mid-write left
    behind (SIGKILL skips all clean-up). Every file here has one writer at a time (rank 0 under DDP), so none of
    them is in use."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The parent directory is created if needed. If ``write`` raises, ``path`` is left untouched (an ``OSError``, e.g.
    no space left, is raised again naming ``path``). Temporary files of ``path`` left by a killed writer are
    removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except OSError as e:  # a failed write() names no file: name the one that could not be written
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _strict(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats as None (strict JSON has no NaN; ``null`` reads as "undefined")."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as 4-space indented strict JSON (model-zoo style; NaN and Inf as ``null``), atomically."""
    text = json.dumps(_strict(obj), indent=4, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a truncated checkpoint behind (serialised in memory first, so a full disk is
    an ``OSError`` naming ``path``, not an error from inside torch's zip writer)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))
