"""Nothing silently wrong: one run per output directory, weights that cannot segment, splits with nothing to learn."""

import contextlib
import json
import math
import os
import shutil
import subprocess
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import BUNDLE, bundle_run


def _last_line(stderr):
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


def test_second_run_into_a_busy_output_dir_fails_at_once(dataset, tmp_path):
    """A training holds ``output_dir``; a second one into it stops at once naming the holder; once the first has
    ended, the directory is free again."""
    from helpers import run_or_kill

    out = tmp_path / "out"
    settings = {"dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 2, "val_interval": 2}
    state_file = out / "models" / "training_state.pt"  # the first training pauses before saving it: still running
    first = bundle_run(["train.json"], tmp_path, settings, wait=False, pause_saves=state_file)
    lock = out / ".c2fnas.lock"
    for _ in range(6000):
        if first.pause_marker.exists() or first.poll() is not None:
            break
        time.sleep(0.1)
    assert first.pause_marker.exists() and lock.exists(), "the first training, paused, holds the lock"
    holder = json.loads(lock.read_text())
    start = time.perf_counter()
    code, _, stderr = bundle_run(["train.json"], tmp_path, settings, check=False)
    assert code != 0 and time.perf_counter() - start < 60
    last = _last_line(stderr)
    assert last.startswith(f"OutputBusyError: {out}: in use by pid {holder['pid']}"), last
    assert run_or_kill(first), "the first training goes on to its end"
    assert not lock.exists(), "released when the holder ends"
    bundle_run(["train.json", "evaluate.json"], tmp_path, {**settings, "ckpt_file": str(out / "models" / "model.pt")})


def test_a_lock_left_by_a_killed_run_is_taken_over(dataset, tmp_path):
    """A lock whose process is gone (SIGKILL leaves it behind) does not block the next run on this machine."""
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".c2fnas.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    bundle_run(["plan.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(out)})
    assert (out / "plan.json").is_file() and not (out / ".c2fnas.lock").exists()


def test_weights_with_nan_stop_inference_and_evaluation(dataset, tmp_path):
    """NaN weights: one line naming the file, no segmentation and no report (before: exit 0, all-background masks,
    Dice 0)."""
    from networks import C2FNASNet

    net = C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 4)
    state = net.state_dict()
    state["stem.0.weight"][0, 0, 0, 0, 0] = float("nan")
    weights = tmp_path / "nan" / "model.pt"
    weights.parent.mkdir()
    torch.save(state, weights)
    bundle_run(["plan.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(weights.parent)})
    for configs in (["inference.json"], ["train.json", "evaluate.json"]):
        out = tmp_path / configs[-1].split(".")[0]
        overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "ckpt_file": str(weights)}
        code, _, stderr = bundle_run(configs, tmp_path, overrides, check=False)
        last = _last_line(stderr)
        assert code != 0 and last.startswith(f"WeightsError: {weights}: 1 tensors of 'model' hold NaN or Inf"), last
        assert "stem.0.weight" in last
        assert not list(out.glob("inference/*.nii.gz")) and not (out / "eval" / "dice_per_class.json").exists()


def test_a_split_whose_labels_hold_no_foreground_is_refused(dataset, tmp_path):
    """Evaluation (or training) on labels that are all background stops before it starts, naming the split."""
    empty = tmp_path / "empty"
    shutil.copytree(dataset, empty)
    for label in (empty / "labelsTr").glob("*.nii.gz"):
        volume = nib.load(str(label))
        nib.save(nib.Nifti1Image(np.zeros(volume.shape, np.uint8), volume.affine), str(label))
    shipped_plan = str(BUNDLE / "models" / "plan.json")
    overrides = {"dataset_dir": str(empty), "output_dir": str(tmp_path / "out"), "weights_plan_file": shipped_plan}
    code, _, stderr = bundle_run(["train.json", "evaluate.json"], tmp_path, overrides, check=False)
    last = _last_line(stderr)
    assert code != 0 and last.startswith(f"DatasetError: {empty}/dataset.json: no label of the"), last
    assert "holds foreground" in last and not (tmp_path / "out" / "eval").exists()


def test_segmentations_are_written_atomically(tmp_path, monkeypatch):
    """inference.json's writer: a write that fails half-way (a full disk, a kill) leaves the previous file or none,
    never a truncated one, and no temporary file; a write that succeeds replaces the file whole."""
    import nibabel
    from scripts.transforms import AtomicNibabelWriter

    target = tmp_path / "case_seg.nii.gz"

    def write(values):
        writer = AtomicNibabelWriter(output_dtype=np.uint8)
        writer.set_data_array(torch.full((1, 8, 8, 4), values, dtype=torch.uint8), channel_dim=0)
        writer.set_metadata({"affine": np.eye(4), "original_affine": np.eye(4)}, resample=False)
        writer.write(target)

    write(1)
    assert np.all(nib.load(str(target)).get_fdata() == 1)
    before = target.read_bytes()
    real_save = nibabel.save

    def half_then_fail(image, filename):
        real_save(image, filename)
        with open(filename, "r+b") as f:
            f.truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nibabel, "save", half_then_fail)
    try:
        write(2)
    except OSError as e:
        assert "No space left" in str(e)
    else:
        raise AssertionError("the failing write must raise")
    assert target.read_bytes() == before, "the previous segmentation is left whole"
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"], "no temporary file is left"


def _epochs_and_lrs(log):
    """The learning rates the trainer logged (LrScheduleHandler), in order."""
    import re

    return [float(x) for x in re.findall(r"Current learning rate: ([0-9.e-]+)", log)]


def test_training_resumed_with_other_settings_is_refused_and_a_finished_one_left_alone(dataset, tmp_path):
    """Rule 1: a training state is resumed only with the settings it was made with; one made with others is refused
    with one line naming each change (old -> new). A finished training is left alone (exit 0, model.pt untouched);
    ``--restart True`` trains anew. A model.pt without its state is not replaced silently."""
    out = tmp_path / "out"
    settings = {"dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 2, "val_interval": 1}
    bundle_run(["train.json"], tmp_path, settings)
    model = out / "models" / "model.pt"
    before = (model.read_bytes(), model.stat().st_mtime_ns)
    log = bundle_run(["train.json"], tmp_path, settings)
    assert "already finished with these settings" in log and "Epoch[1] Complete" not in log
    assert (model.read_bytes(), model.stat().st_mtime_ns) == before, "a finished training is left alone"
    for change, shown in (({"max_epochs": 4}, "max_epochs 2 -> 4"), ({"learning_rate": 0.001}, "0.025 -> 0.001")):
        code, _, stderr = bundle_run(["train.json"], tmp_path, {**settings, **change}, check=False)
        last = _last_line(stderr)
        assert code != 0 and last.startswith(f"SettingsError: {out}/models/training_state.pt: a training finished")
        assert shown in last and "--restart True" in last, last
    assert (model.read_bytes(), model.stat().st_mtime_ns) == before
    log = bundle_run(["train.json"], tmp_path, {**settings, "max_epochs": 3, "restart": True})
    assert "restart: removed" in log and "Epoch[3] Complete" in log
    cosine = [0.0125 * (1 + math.cos(math.pi * e / 3)) for e in (1, 2, 3)]
    assert _epochs_and_lrs(log) == pytest.approx(cosine), "a restart runs the new schedule from its start"
    (out / "models" / "training_state.pt").unlink()
    code, _, stderr = bundle_run(["train.json"], tmp_path, settings, check=False)
    last = _last_line(stderr)
    assert code != 0 and last.startswith(f"SettingsError: {model}: a model from an earlier training"), last


def test_training_killed_and_resumed_with_a_longer_schedule_is_refused(dataset, tmp_path):
    """The case found by hand: killed after epoch 1 of 3 and run again with 6 epochs, the old cosine schedule was
    restored under the new length (the rate climbed back). Now the run is refused naming max_epochs; the same
    command resumes it on its own schedule."""
    from helpers import run_or_kill

    out = tmp_path / "out"
    settings = {"dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 3, "val_interval": 1}
    state_file = out / "models" / "training_state.pt"
    process = bundle_run(["train.json"], tmp_path, settings, wait=False, pause_saves=state_file)
    assert not run_or_kill(process, lambda s: s["trainer"]["iteration"] >= s["trainer"]["epoch_length"])
    code, _, stderr = bundle_run(["train.json"], tmp_path, {**settings, "max_epochs": 6}, check=False)
    last = _last_line(stderr)
    assert code != 0 and "a training stopped at epoch" in last and "max_epochs 3 -> 6" in last, last
    log = bundle_run(["train.json"], tmp_path, settings)
    assert "resuming training from" in log
    lrs = _epochs_and_lrs(log)
    assert lrs == sorted(lrs, reverse=True), f"the resumed schedule keeps decaying: {lrs}"


@contextlib.contextmanager
def _small_filesystem(folder, size="4m", read_only=False):
    """A tmpfs of ``size`` mounted at ``folder`` (read-only with ``read_only``), unmounted afterwards; skips the
    test where mounting is not permitted (not root, or a container without the capability)."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("mounting a small filesystem is not permitted here")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder, leave):
    """Fill the filesystem of ``folder`` until about ``leave`` bytes are free."""
    stat = os.statvfs(folder)
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))


def test_output_dir_that_is_a_file_or_read_only_fails_before_any_work(dataset, tmp_path):
    """Rule 5: one line naming output_dir and the cause, before the first case is segmented."""
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("x")
    code, _, stderr = bundle_run(
        ["inference.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(not_a_dir)}, check=False
    )
    last = _last_line(stderr)
    assert (
        code != 0
        and last
        == f"OutputError: {not_a_dir}: output_dir is an existing file, not a directory; give another --output_dir"
    ), last
    with _small_filesystem(tmp_path / "ro", read_only=True) as read_only:
        out = read_only / "out"
        code, _, stderr = bundle_run(
            ["inference.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(out)}, check=False
        )
        last = _last_line(stderr)
        assert code != 0 and last.startswith(
            f"OutputError: {out}: cannot create output_dir (Read-only file system)"
        ), last
        assert "Traceback" not in stderr


def test_full_disk_during_inference_and_training_names_the_cause(dataset, tmp_path):
    """Rule 5 on a real full filesystem (a small tmpfs): one line naming the file and 'No space left on device',
    and no half-written segmentation, model or temporary file."""
    with _small_filesystem(tmp_path / "disk", size="8m") as disk:
        _fill(disk, leave=4096)
        out = disk / "inference"
        shipped = {"dataset_dir": str(dataset), "output_dir": str(out), "base_channels": 32}  # the shipped weights
        code, _, stderr = bundle_run(["inference.json"], tmp_path, shipped, check=False)
        last = _last_line(stderr)
        segmentation = out / "inference" / "synthetic_006_seg.nii.gz"
        assert code != 0 and last.startswith(
            f"OutputError: {segmentation}: cannot write the segmentation (No space left on device)"
        ), last
        assert not [p for p in out.rglob("*") if p.is_file() and p.name != ".c2fnas.lock"], "nothing half-written"
        (disk / "filler").unlink()
        shutil.rmtree(out)
        _fill(disk, leave=48 * 1024)
        out = disk / "train"
        settings = {"dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 2, "val_interval": 1}
        code, _, stderr = bundle_run(["train.json"], tmp_path, settings, check=False)
        last = _last_line(stderr)
        assert code != 0 and last.startswith(f"OSError: [Errno 28] No space left on device: '{out}/"), last
        for path in out.rglob("*"):
            assert not path.name.endswith(".tmp"), f"temporary left: {path}"
            if path.suffix == ".pt":
                torch.load(path, weights_only=True)  # complete, or it would not be there


def _kill_at_random_points(configs, tmp_path, overrides, times, outputs_ok, seed=0):
    """Run a stage ``times`` times, each SIGKILLed at a random moment within the uninterrupted run's wall time,
    checking ``outputs_ok()`` after each kill; then once to the end."""
    import random
    import signal

    start = time.perf_counter()
    bundle_run(configs, tmp_path, overrides)
    duration = time.perf_counter() - start
    reference = outputs_ok()
    shutil.rmtree(overrides["output_dir"])
    r = random.Random(seed)
    for _ in range(times):
        process = bundle_run(configs, tmp_path, overrides, wait=False)
        time.sleep(r.uniform(0.3, 1.0) * duration)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        outputs_ok(reference)
    bundle_run(configs, tmp_path, overrides)
    assert outputs_ok(reference) == reference, "the re-run completes with the uninterrupted result"


def test_evaluation_killed_at_random_points_leaves_a_whole_report_set_or_none(dataset, tmp_path):
    """Rule 2/6: the report set (metrics.csv, the raw per-case CSV, dice_per_class.json) is replaced as a whole;
    a kill at any point leaves the complete set or none, never a mix; the re-run gives the uninterrupted set."""
    weights = tmp_path / "weights"
    bundle_run(["train.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(weights), "max_epochs": 1})
    out = tmp_path / "out"
    overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "ckpt_file": str(weights / "models" / "model.pt")}

    def reports(reference=None):
        folder = out / "eval"
        found = {p.name: p.read_text() for p in folder.iterdir()} if folder.exists() else None
        if reference is not None and found is not None:
            assert set(found) == set(reference), f"a mixed or partial set: {sorted(found)}"
            assert json.loads(found["dice_per_class.json"]) == json.loads(reference["dice_per_class.json"])
        if found is None:
            assert reference is not None, "the uninterrupted run writes the reports"
        return found

    _kill_at_random_points(["train.json", "evaluate.json"], tmp_path, overrides, 3, reports)


def test_inference_killed_at_random_points_leaves_whole_segmentations(dataset, tmp_path):
    """Rule 2/6: after a kill at any point every segmentation there is complete (it loads, with the input's
    shape and affine) and no temporary is left; the re-run gives the uninterrupted result."""
    out = tmp_path / "out"
    overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "base_channels": 32}  # the shipped weights
    image = nib.load(str(_first_test_image(dataset)))

    def segmentations(reference=None):
        folder = out / "inference"
        assert not list(folder.glob(".*")) if folder.exists() else True, "no temporary left"
        found = {}
        for path in sorted(folder.glob("*.nii.gz")) if folder.exists() else []:
            seg = nib.load(str(path))
            assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
            found[path.name] = np.asanyarray(seg.dataobj).tobytes()
        if reference is not None:
            assert all(found[k] == reference[k] for k in found)
        return found

    _kill_at_random_points(["inference.json"], tmp_path, overrides, 3, segmentations)


def _first_test_image(dataset):
    return sorted((dataset / "imagesTs").glob("*.nii.gz"))[0]


def test_non_finite_network_output_stops_inference(dataset, tmp_path):
    """Rule 4: finite weights can still give NaN or Inf (an overflow, a diverged training): here weights of 3e38
    overflow the first convolution; inference stops with one line naming the case and writes nothing for it."""
    from networks import C2FNASNet

    net = C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 4)
    state = {k: torch.full_like(v, 3e38) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    weights = tmp_path / "huge" / "model.pt"
    weights.parent.mkdir()
    torch.save(state, weights)
    bundle_run(["plan.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(weights.parent)})
    images = {"inference.json": [_first_test_image(dataset).resolve()], "evaluate.json": _validation_images(dataset)}
    for configs in (["inference.json"], ["train.json", "evaluate.json"]):
        out = tmp_path / configs[-1].split(".")[0]
        overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "ckpt_file": str(weights)}
        code, _, stderr = bundle_run(configs, tmp_path, overrides, check=False)
        last = _last_line(stderr)
        assert code != 0 and last.startswith("NonFiniteError: "), last
        assert any(
            last.startswith(f"NonFiniteError: {i}: the network's output 'pred' holds") for i in images[configs[-1]]
        )
        assert not list(out.glob("inference/*")) and not (out / "eval").exists()


def _validation_images(dataset):
    from scripts.data import split_datalist

    return [item["image"] for item in split_datalist(dataset, "validation", check=False)]
