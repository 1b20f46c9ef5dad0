"""The bundle's bad-input errors and how a stage shows them.

Every error about bad input (a dataset file, a setting, a weights file, a plan, an architecture file, a saved search
state, an output that cannot be written, a network output that is not finite) is one of ``input_error_types()``; an
``OSError`` that names its file and says what the user can act on (no space left, read-only, permission denied) is
shown the same way. ``install_excepthook()`` makes the interpreter print such an error as its one
message, without the traceback of the config machinery around it; ``C2FNAS_TRACEBACK=1`` shows the full traceback.
An error raised in a data-loading worker process reaches the main process only as text (PyTorch re-raises it as
"Caught ... in DataLoader worker process N" with the worker's traceback), so ``input_error`` also reads that text.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Optional, Tuple, Type

__all__ = [
    "DatasetError",
    "SettingsError",
    "WeightsError",
    "PlanError",
    "OutputBusyError",
    "OutputError",
    "NonFiniteError",
    "one_line",
    "input_error_types",
    "input_error",
    "install_excepthook",
]


class DatasetError(ValueError):
    """A dataset does not follow the MSD layout; the message names the file and the problem."""


class SettingsError(ValueError):
    """A config setting has the wrong type or value; the message names the setting."""


class WeightsError(RuntimeError):
    """A weights or training-state file cannot be read or does not fit; the message names the file."""


class PlanError(ValueError):
    """A plan file cannot be read, is not a valid plan, or was made from other data; the message names the file."""


class OutputBusyError(RuntimeError):
    """Another run holds the output directory (``scripts.locks``); the message names the directory and the holder."""


class OutputError(RuntimeError):
    """An output cannot be written where it should go (not a directory, read-only, no space left) or would replace
    another output of the same run; the message names the file or directory and the cause."""


class NonFiniteError(RuntimeError):
    """A network produced NaN or Inf for a case; the message names the case."""


# operating-system errors about a file or directory the user gave or the stage writes, shown as their one line
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC",
        "EDQUOT",
        "EFBIG",
        "EROFS",
        "EACCES",
        "EPERM",
        "ENOTDIR",
        "EISDIR",
        "ELOOP",
        "ENOENT",
        "EEXIST",
        "ENAMETOOLONG",
        "EIO",
    )
    if hasattr(errno, name)
)


def one_line(error: BaseException) -> str:
    """``"<type>: <first line of the message>"``, for an error quoted inside another one-line message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def input_error_types() -> Tuple[Type[BaseException], ...]:
    """The classes of bad-input errors: the bundle's own and those of ``networks`` and ``search``."""
    from networks import ArchitectureError
    from search import SearchSettingsError, SearchStateError

    return (
        DatasetError,
        SettingsError,
        WeightsError,
        PlanError,
        OutputBusyError,
        OutputError,
        NonFiniteError,
        ArchitectureError,
        SearchSettingsError,
        SearchStateError,
    )


def _environment_error(error: BaseException) -> bool:
    """An ``OSError`` naming its file, of a kind the user can act on (no space, read-only, permission, ...)."""
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS and error.filename is not None


# PyTorch's re-raise of an error from a data-loading worker: its message, then the worker's traceback as text
WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback", re.MULTILINE)


def _worker_input_error(error: BaseException) -> Optional[BaseException]:
    """The first (innermost) bad-input error named in the traceback text of an error re-raised from a worker."""
    text = str(error)
    if not WORKER_ERROR.search(text):
        return None
    kinds = {kind.__name__: kind for kind in input_error_types()}
    qualified = {f"{kind.__module__}.{kind.__name__}": kind for kind in kinds.values()}
    for line in text.splitlines():
        name, separator, message = line.partition(": ")
        kind = qualified.get(name) or kinds.get(name)
        if separator and kind is not None:
            return kind(message.strip())
    return None


def input_error(error: Optional[BaseException]) -> Optional[BaseException]:
    """The first bad-input or environment error in ``error``'s chain of causes, or None; an error re-raised from
    a data-loading worker counts as the bad-input error its worker traceback ends in."""
    kinds, seen = input_error_types(), set()
    while error is not None and id(error) not in seen:
        if _environment_error(error):
            return error
        found = _worker_input_error(error)
        if found is not None:
            return found
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _excepthook(kind, value, traceback, _previous=sys.excepthook):
    error = None if os.environ.get("C2FNAS_TRACEBACK") else input_error(value)
    if error is None:
        _previous(kind, value, traceback)
    else:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)


def install_excepthook() -> None:
    """Show bad-input errors as one line (once per process)."""
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook
