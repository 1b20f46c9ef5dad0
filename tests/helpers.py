"""Shared by the tests: generated 3D tasks for the search, and running the bundle's configs as a user does."""

import atexit
import contextlib
import functools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from monai.transforms import Compose, EnsureTyped, RandFlipd

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"
TINY_PROFILE = Path(__file__).resolve().parent / "data" / "tiny_profile.json"  # every stage a few seconds on CPU
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")  # 2 CPU processes


def launch(args, cwd, torchrun=False, wait=True, timeout=900, pause_saves=None):
    """``python ARGS`` (or the same under torchrun with 2 CPU processes, gloo) in a fresh process from ``cwd``, without
    PYTHONPATH (the bundle and the project must find their own code). With ``wait`` returns the finished
    ``CompletedProcess``; otherwise the running ``Popen`` in its own session (stderr piped, for ``run_or_kill``),
    which, with ``pause_saves=FILE``, pauses before each new ``FILE`` is put in place (``save_pause/sitecustomize.py``).
    A ``-m monai.bundle`` run that waits is forked from the warm interpreter (``warm_python.py``) unless
    ``warm_enabled`` says no."""
    args = [str(a) for a in args]
    argv = [*(TORCHRUN if torchrun else (sys.executable,)), *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if torchrun:
        env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    if not wait:
        marker = None
        if pause_saves is not None:
            marker = Path(tempfile.mkdtemp(prefix="c2fnas_pause_")) / "paused"
            env.update(
                PYTHONPATH=str(Path(__file__).resolve().parent / "save_pause"),  # the hook alone, not the project
                C2FNAS_TEST_PAUSE_SAVES=os.path.realpath(pause_saves),
                C2FNAS_TEST_PAUSE_MARKER=str(marker),
            )
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        process.pause_marker, process.paused_file = marker, None if pause_saves is None else Path(pause_saves)
        return process
    assert pause_saves is None, "pause_saves is for a process run_or_kill watches (wait=False)"
    if not torchrun and args[:2] == ["-m", "monai.bundle"] and warm_enabled():
        return _WARM.run(argv, args[1], args[2:], cwd, env, timeout)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def warm_enabled():
    """Whether ``python -m monai.bundle`` runs fork from the warm interpreter: not where ``C2FNAS_TESTS_FRESH_PROCESS``
    is set (every run then a fresh interpreter), nor where torch sees a GPU (a CUDA driver does not survive a fork)."""
    return not os.environ.get("C2FNAS_TESTS_FRESH_PROCESS") and not _gpu_visible()


@functools.lru_cache(maxsize=None)
def _gpu_visible():
    """Whether torch sees a GPU, asked once per test session."""
    import torch

    return torch.cuda.is_available()


def _import_env(env):
    """The environment as imports may read it: without pytest's name of the running test, which changes each test."""
    return {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}


class _WarmInterpreter:
    """The client of ``warm_python.py``: started on first use, again for a run with another environment (the
    imports may read it), one run at a time, stopped when the test session's interpreter exits."""

    def __init__(self):
        self.process = None

    def _start(self, env):
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import warm_python; warm_python.serve()"],
            cwd=Path(__file__).resolve().parent,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pending, self.env = b"", _import_env(env)
        self._reply(None)  # "ready" once the imports are done

    def _reply(self, timeout):
        """The next reply line as a dict, or None after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            if not select.select([self.process.stdout.fileno()], [], [], left)[0]:
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the warm interpreter (warm_python.py) exited with {self.process.wait()}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv, module, args, cwd, env, timeout):
        if self.process is not None and (self.process.poll() is not None or _import_env(env) != self.env):
            self.stop()  # an interpreter that died, or one started with another environment than this run's
        if self.process is None:
            self._start(env)
        pid = None
        with tempfile.TemporaryDirectory() as streams:
            request = {"module": module, "args": args, "cwd": str(cwd), "env": env}
            request.update(stdout=f"{streams}/stdout", stderr=f"{streams}/stderr")
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
                pid = self._reply(None)["pid"]
                done = self._reply(timeout)
            except BaseException:  # interrupted (a test's time limit, Ctrl-C): no half-answered interpreter left
                for stray in (pid, self.process.pid):
                    if stray is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(stray, signal.SIGKILL)
                self.process.wait()
                self.process = None
                raise
            if done is None:
                os.kill(pid, signal.SIGKILL)
                self._reply(None)
                raise subprocess.TimeoutExpired(argv, timeout)
            read = [Path(streams, name).read_text(errors="replace") for name in ("stdout", "stderr")]
        return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(done["status"]), *read)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        self.process = None


_WARM = _WarmInterpreter()
atexit.register(_WARM.stop)


def monai_bundle(command, *args, cwd, overrides=None, torchrun=False, wait=True, check=True, pause_saves=None):
    """``python -m monai.bundle COMMAND ARGS --key value ...`` through ``launch``. With ``check`` asserts success and
    returns stdout + stderr; otherwise returns ``(returncode, stdout, stderr)`` (or the ``Popen`` without ``wait``,
    ``pause_saves`` as ``launch``)."""
    from scripts import stage_chain  # the bundle's package (pytest puts bundle/ on the path; not `python helpers.py`)

    argv = ["-m", "monai.bundle", command, *map(str, args), *stage_chain.override_args(overrides or {})]
    done = launch(argv, cwd, torchrun=torchrun, wait=wait, pause_saves=pause_saves)
    if not wait:
        return done
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr
    return done.returncode, done.stdout, done.stderr


def bundle_run(configs, cwd, overrides=None, profile=TINY_PROFILE, **kwargs):
    """The one way the tests run configs: ``python -m monai.bundle run`` over ``common.json``, ``configs`` (names in
    ``bundle/configs`` or paths) and ``profile`` (the tiny test profile unless None), with overrides. Other keyword
    arguments as ``monai_bundle``. ``stage_run`` runs a stage of the chain."""
    from scripts import stage_chain

    files = [BUNDLE / stage_chain.COMMON] + [Path(c) if os.path.isabs(str(c)) else CONFIGS / c for c in configs]
    return _run_files(files + ([profile] if profile is not None else []), cwd, overrides, **kwargs)


def stage_run(stage, cwd, overrides=None, profile=TINY_PROFILE, extra=(), **kwargs):
    """Stage ``stage`` of the bundle's chain (``scripts.stage_chain``: its layers and hand-offs) as a user runs it,
    with ``extra`` configs and ``profile`` (the tiny test profile unless None) as the last layers."""
    from scripts import stage_chain

    files = stage_chain.config_files(stage, BUNDLE, [*extra, *([profile] if profile is not None else [])])
    return _run_files(files, cwd, {**stage_chain.stage(stage).handoff, **(overrides or {})}, **kwargs)


def _run_files(files, cwd, overrides, **kwargs):
    return monai_bundle(
        "run",
        "--config_file",
        json.dumps([str(f) for f in files]),
        "--meta_file",
        CONFIGS / "metadata.json",
        "--logging_file",
        CONFIGS / "logging.conf",
        cwd=cwd,
        overrides={"bundle_root": str(BUNDLE), **(overrides or {})},
        **kwargs,
    )


SHORT, LONG = 10, 30  # rod lengths along the third axis


@contextlib.contextmanager
def http_server(directory):
    """``python -m http.server`` on 127.0.0.1 serving ``directory``; yields its base URL, stops it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


def run_or_kill(process, kill_when=None, timeout=600):
    """Wait for ``process``, started by ``launch(..., wait=False, pause_saves=STATE_FILE)``. Each time it is about to
    put a new STATE_FILE in place it pauses; if the state still on disk satisfies ``kill_when(state)``, SIGKILL its
    whole process group there and return False (the disk keeps that state; the newer one, written, is left as a
    temporary file and the work since that state is lost). Otherwise let it go on; assert it exited 0 and return True.
    The pause makes the kill point the same on every machine."""
    import torch

    marker, state_file = process.pause_marker, process.paused_file
    assert marker is not None, "launch the process with pause_saves=STATE_FILE"
    deadline = time.time() + timeout
    try:
        while process.poll() is None and time.time() < deadline:
            if marker.exists():
                if kill_when is not None and state_file.exists():
                    if kill_when(torch.load(state_file, weights_only=True)):
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        return False
                marker.unlink()
            time.sleep(0.01)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise AssertionError(f"still running after {timeout} s")
        error = process.stderr.read().decode()[-3000:] if process.stderr else ""
        assert process.wait(timeout=60) == 0, error
        return True
    finally:
        marker.unlink(missing_ok=True)
        marker.parent.rmdir()


def rods_case(seed: int, shape=(16, 16, 64), rods: int = 3, radius2: int = 3, noise: float = 0.1) -> dict:
    """Bright rods along the third spatial axis, identical in every axial slice: short rods are class 1, long
    rods class 2. Only context along the third axis separates them (a 2D op sees none of it)."""
    r = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for i in range(rods):
        length, cls = (SHORT, 1) if (i + seed) % 2 == 0 else (LONG, 2)
        cx, cy = r.integers(3, shape[0] - 3), r.integers(3, shape[1] - 3)
        z0 = r.integers(1, shape[2] - length - 1)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius2
        image[disc, z0 : z0 + length] = 1.0
        label[disc, z0 : z0 + length] = cls
    image += noise * r.standard_normal(shape).astype(np.float32)
    return {"image": image[None], "label": label[None]}


def rods_data(n: int, offset: int = 0, **kwargs) -> list:
    return [rods_case(offset + i, **kwargs) for i in range(n)]


def array_transforms():
    """(preprocessing, augmentation) for in-memory arrays: typing only, then random flips along each axis."""
    keys = ["image", "label"]
    preprocessing = Compose([EnsureTyped(keys=keys, track_meta=False)])
    augmentation = Compose([RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)])
    return preprocessing, augmentation


class Failing:
    """A transform that stops with ``ValueError(message)``; picklable, so it fails in worker processes too."""

    def __init__(self, message: str):
        self.message = message

    def __call__(self, data):
        raise ValueError(self.message)


def small_stage(stage: str, output_dir: str, seed: int = 0, topology=None, **overrides):
    """A CoarseSearch or FineSearch on tiny rods data (F=4, 6 cells), small enough for tests on 2 CPU cores."""
    from search import CoarseSearch, FineSearch, SearchSettings

    preprocessing, augmentation = array_transforms()
    settings = dict(
        output_dir=output_dir,
        base_channels=4,
        roi_size=(16, 16, 64),
        batch_size=2,
        sw_batch_size=1,
        population_size=4,
        sample_size=2,
        cycles=4,
        seed=seed,
        checkpoint_interval=5,
        checkpoint_candidates=2,
        show_progress=False,
    )
    stage_args = {k: overrides.pop(k) for k in list(overrides) if k not in SearchSettings.__dataclass_fields__}
    augmentation = stage_args.pop("augmentation", augmentation)
    data = (SearchSettings(**{**settings, **overrides}), rods_data(6), rods_data(2, offset=100), preprocessing)
    if stage == "coarse":
        budgets = dict(num_cells=6, min_depth=2, max_depth=3, num_clusters=3, cluster_iterations=12, score_samples=2)
        return CoarseSearch(*data, augmentation, **{**budgets, "op_samples": 2, **stage_args})
    return FineSearch(*data, augmentation, **{"topology": topology, "iterations": 16, **stage_args})


if __name__ == "__main__":  # python helpers.py STAGE OUTPUT_DIR [TOPOLOGY_FILE]: one small search, as a subprocess
    # (STAGE coarse_finalists: the coarse stage with 2 finalists per cluster; coarse_workers: with 2 worker processes)
    import torch  # under torchrun each rank also writes the architecture it ends with to rank<R>.json

    variants = {"coarse_finalists": {"finalists": 2}, "coarse_workers": {"cluster_workers": 2}}
    torch.set_num_threads(2 if sys.argv[1] == "coarse_workers" else 1)  # the workers: 1 thread each
    distributed = "RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    stage, more = (sys.argv[1], {}) if sys.argv[1] not in variants else ("coarse", variants[sys.argv[1]])
    arch = small_stage(stage, sys.argv[2], topology=sys.argv[3] if len(sys.argv) > 3 else None, **more).run()
    if distributed:
        Path(sys.argv[2], f"rank{os.environ['RANK']}.json").write_text(json.dumps(arch.to_dict()))
        torch.distributed.destroy_process_group()
