"""One run per output directory: a lock file held by the running stage.

MONAI's workflows have no such lock; two stages writing into one ``output_dir`` at once mix their outputs and break
each other's atomic saves. ``lock_output_dir`` (the last step of every stage's ``initialize``) creates
``<output_dir>/.c2fnas.lock`` exclusively and removes it when the process ends. A second run fails at once with one
line naming the holder. A lock left by a killed run on this machine (its process is gone) is taken over. Under
``torchrun`` rank 0 holds the lock for the whole job.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Union

from scripts.errors import OutputBusyError, OutputError

__all__ = ["LOCK_NAME", "OutputBusyError", "lock_output_dir"]

LOCK_NAME = ".c2fnas.lock"
_HELD: Dict[Path, bool] = {}  # locks this process holds (a second stage in the same process takes it again)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _release(path: Path, created: bool) -> None:
    holder = _read(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
        if created:  # a run that stopped before writing anything leaves no empty output directory behind
            try:
                path.parent.rmdir()
            except OSError:
                pass
    _HELD.pop(path, None)


def lock_output_dir(output_dir: Union[str, os.PathLike]) -> Optional[Path]:
    """Hold ``output_dir``'s lock until this process ends; returns the lock file (None on ranks above 0).
    Raises ``OutputBusyError`` naming the holder when another live process holds it."""
    if int(os.environ.get("RANK", "0")) > 0:
        return None
    folder = Path(output_dir).absolute()
    path = folder / LOCK_NAME
    if path in _HELD:
        return path
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: output_dir is an existing file, not a directory; give another --output_dir")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create output_dir ({e.strerror}); give another --output_dir") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    me["command"] = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path) or {}
            same_host = holder.get("host") == socket.gethostname()
            if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                path.unlink(missing_ok=True)  # left by a killed run on this machine
                continue
            if not holder:  # being written this very moment, or unreadable
                raise OutputBusyError(f"{folder}: in use (lock {path} exists); wait, or give another --output_dir")
            raise OutputBusyError(
                f"{folder}: in use by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
                f"({holder.get('command', '?')}); wait for it, or give another --output_dir"
            )
        except OSError as e:  # read-only mount, no permission, no space
            raise OutputError(
                f"{folder}: output_dir is not writable ({e.strerror}); give another --output_dir"
            ) from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise OutputError(
                f"{folder}: output_dir is not writable ({e.strerror}); give another --output_dir"
            ) from None
        _HELD[path] = True
        atexit.register(_release, path, created)
        return path
    raise OutputBusyError(f"{folder}: lock {path} could not be taken; give another --output_dir")
