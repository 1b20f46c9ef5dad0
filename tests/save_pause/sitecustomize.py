"""Test hook: a child process started by ``helpers.launch(..., pause_saves=FILE)`` imports this at start-up (its
PYTHONPATH names only this folder). Every atomic write of the project ends in ``os.replace(tmp, path)``; before one
puts a new ``FILE`` in place, the child creates the marker file ``C2FNAS_TEST_PAUSE_MARKER`` and waits until it is
deleted. Meanwhile ``helpers.run_or_kill`` reads the state still on disk and either deletes the marker (go on) or
SIGKILLs the child there, with the newer state written but not yet in place: a kill at a known point on any
machine, however fast, where a poll of the file could miss a short-lived state. Python has no hook for this."""

import os
import time

_WATCHED = os.environ.get("C2FNAS_TEST_PAUSE_SAVES")
_MARKER = os.environ.get("C2FNAS_TEST_PAUSE_MARKER")

if _WATCHED and _MARKER:
    _replace = os.replace

    def _replace_after_a_pause(src, dst, *args, **kwargs):
        if os.path.realpath(dst) == _WATCHED:
            with open(_MARKER, "w"):
                pass
            while os.path.exists(_MARKER):
                time.sleep(0.002)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _replace_after_a_pause
