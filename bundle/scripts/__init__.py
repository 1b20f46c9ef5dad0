"""Custom code of the pancreas_ct_c2fnas_segmentation bundle (package name ``scripts``, as model-zoo and MONAI Label
expect). In the repository ``networks`` and ``search`` are links to the top-level packages; a released bundle
carries copies of them.

Importing it installs a ``sys.excepthook`` that shows errors about bad input (a dataset file, a setting, a
weights or architecture file, a saved search state) as their one message, without the traceback of the config
machinery around them; set ``C2FNAS_TRACEBACK=1`` for the full traceback.
"""

import os
import sys

INPUT_ERRORS = {"DatasetError", "SettingsError", "WeightsError", "ArchitectureError", "SearchStateError"}


def one_line(error: BaseException) -> str:
    """``"<type>: <first line of the message>"``, for an error quoted inside another one-line message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def input_error(error):
    """The first bad-input error in ``error``'s chain of causes, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if type(error).__name__ in INPUT_ERRORS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _excepthook(kind, value, traceback, _previous=sys.excepthook):
    error = input_error(value)
    if error is None or os.environ.get("C2FNAS_TRACEBACK"):
        _previous(kind, value, traceback)
    else:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)


_excepthook.c2fnas = True
if not getattr(sys.excepthook, "c2fnas", False):
    sys.excepthook = _excepthook
