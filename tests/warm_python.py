"""A Python interpreter that has imported ``monai.bundle`` (torch, MONAI, ignite) once and forks a fresh child for
each ``python -m monai.bundle ARGS`` the tests run, so that a bundle run costs its own work and not 6-8 s of imports
(most of the default suite's time on a 2-core CPU). Plain ``subprocess`` lacks this; ``multiprocessing``'s forkserver
preloads modules but runs functions, not ``python -m`` with its ``__main__``, exit status and stream redirection.

Each child is what ``python -m MODULE ARGS`` would be: its own process, working directory, environment, stdout
and stderr (files), ``sys.argv`` as the interpreter sets it, the working directory first on the import path (the
server starts as ``python -c``, whose ``''`` entry follows ``os.chdir``), the module run as ``__main__``,
an uncaught exception shown by ``sys.excepthook`` with exit status 1, and the interpreter's shutdown
(``threading._shutdown``: thread exit hooks such as ``concurrent.futures``', non-daemon threads joined; then
``atexit``). Imported beforehand is only what ``python -m monai.bundle`` imports before its ``__main__`` runs; the
project's own code (``networks``, ``search``, the bundle's ``scripts``) is imported by each child, from its own
working directory and paths, as in a fresh process.

Protocol (one request at a time, JSON lines on stdin/stdout): the request
``{"module", "args", "cwd", "env", "stdout", "stderr"}`` is answered by ``{"pid"}`` at once and by
``{"status"}`` (``os.waitpid``'s) when the child ends. ``tests/helpers.py`` (``launch``) is the client.
"""

import atexit
import json
import os
import runpy
import sys
import threading

# what `python -m monai.bundle` imports before its __main__ runs (torch, ignite, nibabel, MONAI's transforms, handlers,
# networks and losses come with it), so a child starts with the modules a fresh `python -m monai.bundle` has
PRELOAD = "monai.bundle"


def _run_child(request: dict) -> None:
    """In the forked child: become ``python -m MODULE ARGS`` and exit with its status (never returns)."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = [request["module"], *request["args"]]  # runpy replaces argv[0] by the module's file
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException:  # noqa: B036 - the interpreter's own handling of an uncaught exception
            sys.excepthook(*sys.exc_info())
        threading._shutdown()  # the interpreter's own first step of shutting down: the threads' exit hooks, joins
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream; nothing left to write
                pass
        os._exit(code)


def serve() -> None:
    """Preload, then answer requests until stdin closes."""
    __import__(PRELOAD)
    replies = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        replies.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        print(json.dumps({"pid": pid}), file=replies, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), file=replies, flush=True)


if __name__ == "__main__":
    serve()
