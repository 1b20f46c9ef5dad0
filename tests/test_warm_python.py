"""The warm interpreter (``warm_python.py``) that forks the tests' ``python -m monai.bundle`` runs behaves as a fresh
``python -m monai.bundle`` process: the same exit status, streams, working directory on the import path, argv and
environment, the project's one-line errors, and a run past its time limit killed."""

import json
import os
import signal
import subprocess
import threading

import pytest
from helpers import BUNDLE, launch, warm_enabled

pytestmark = pytest.mark.skipif(not warm_enabled(), reason="the warm interpreter is off here (GPU or opted out)")

PROBE = {
    "run": [
        "$print('cwd', __import__('os').getcwd())",
        "$print('argv0', __import__('os').path.basename(__import__('sys').argv[0]))",
        "$print('env', __import__('os').environ.get('C2FNAS_PROBE'))",
        "$print('local', __import__('local_module').VALUE)",
        "$print('scripts', 'scripts' in __import__('sys').modules, 'networks' in __import__('sys').modules)",
        "$__import__('sys').exit(3)",
    ]
}


def _fresh(args, cwd, monkeypatch):
    """The same command by ``launch``'s other route, a plain fresh interpreter."""
    with monkeypatch.context() as patch:
        patch.setenv("C2FNAS_TESTS_FRESH_PROCESS", "1")
        return launch(args, cwd, timeout=300)


def _lines(text, prefixes):
    return [line for line in text.splitlines() if line.split(" ")[0] in prefixes]


def test_a_run_sees_what_a_fresh_process_sees(tmp_path, monkeypatch):
    """Working directory first on the import path, argv[0] the module's file, the environment of this run (a
    changed one restarts the interpreter), no project module imported beforehand, and ``sys.exit``'s status."""
    (tmp_path / "local_module.py").write_text("VALUE = 'from the working directory'\n")
    config = tmp_path / "probe.json"
    config.write_text(json.dumps(PROBE))
    args = ["-m", "monai.bundle", "run", "--config_file", str(config)]
    monkeypatch.setenv("C2FNAS_PROBE", "first")
    warm, fresh = launch(args, tmp_path), _fresh(args, tmp_path, monkeypatch)
    monkeypatch.setenv("C2FNAS_PROBE", "second")
    again = launch(args, tmp_path)
    keys = ("cwd", "argv0", "env", "local", "scripts")
    assert _lines(warm.stdout, keys) == _lines(fresh.stdout, keys), (warm.stdout, fresh.stdout)
    assert _lines(warm.stdout, keys) == [
        f"cwd {tmp_path}",
        "argv0 __main__.py",
        "env first",
        "local from the working directory",
        "scripts False False",
    ]
    assert "env second" in again.stdout
    assert warm.returncode == fresh.returncode == again.returncode == 3


def test_a_bad_input_error_is_the_same_one_line(monkeypatch):
    """The project's excepthook shows a refused run (a stage layer run alone) as one line and exit status 1, forked
    or fresh."""
    args = ["-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    warm, fresh = launch(args, BUNDLE), _fresh(args, BUNDLE, monkeypatch)
    assert warm.returncode == fresh.returncode == 1
    last = [done.stderr.strip().splitlines()[-1] for done in (warm, fresh)]
    assert last[0] == last[1] and last[0].startswith("SettingsError: configs/train.json is a layer over"), last


def test_a_run_past_its_time_limit_is_killed(tmp_path):
    config = tmp_path / "sleep.json"
    config.write_text(json.dumps({"run": ["$__import__('time').sleep(120)"]}))
    with pytest.raises(subprocess.TimeoutExpired):
        launch(["-m", "monai.bundle", "run", "--config_file", str(config)], tmp_path, timeout=3)
    done = launch(["-m", "monai.bundle", "run", "--config_file", str(config), "--run", "$print('next')"], tmp_path)
    assert done.returncode == 0 and "next" in done.stdout


class _Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise _Interrupted()


def test_an_interrupted_run_leaves_no_half_answered_interpreter(tmp_path):
    """A run interrupted while it waits (a test's time limit, Ctrl-C) kills its child and the interpreter; the next
    run starts a new one and gets its own answer."""
    config = tmp_path / "sleep.json"
    config.write_text(json.dumps({"run": ["$__import__('time').sleep(120)"]}))
    previous = signal.signal(signal.SIGUSR1, _interrupt)
    timer = threading.Timer(3, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(_Interrupted):
            launch(["-m", "monai.bundle", "run", "--config_file", str(config)], tmp_path)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    done = launch(["-m", "monai.bundle", "run", "--config_file", str(config), "--run", "$print('next')"], tmp_path)
    assert done.returncode == 0 and "next" in done.stdout
