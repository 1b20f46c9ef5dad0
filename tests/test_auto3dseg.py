"""C2FNAS as an Auto3DSeg algorithm: MONAI's real AutoRunner with the template in auto3dseg/ (no network access).

Each test runs the whole of Auto3DSeg on CPU with only the C2FNAS template, 1 fold and the tests' tiny budgets:
data analysis (DataAnalyzer), template filling (BundleGen), the coarse and fine search and training (each a bundle
stage), ranking, and ensemble inference on the test images.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import TINY_PROFILE

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "auto3dseg"
pytestmark = pytest.mark.slow  # each runs Auto3DSeg end to end: minutes on 2 CPU cores

RUNNER = """
import json, sys
from monai.apps.auto3dseg import AutoRunner
work_dir, data_src, templates, params, algos = sys.argv[1:6]
runner = AutoRunner(work_dir=work_dir, input=data_src, algos=algos.split(","), templates_path_or_url=templates)
runner.set_num_fold(1)
runner.set_training_params(json.loads(params))
runner.run()
"""
MONAI_TEMPLATES = os.environ.get("MONAI_AUTO3DSEG_TEMPLATES")  # research-contributions' auto3dseg/algorithm_templates


def _datalist(dataset_dir: Path, folder: Path, modality: str) -> Path:
    """An Auto3DSeg input (``task.yaml``'s content as JSON) over an MSD dataset: 5 folds, the test images."""
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    training = [{**item, "fold": i % 5} for i, item in enumerate(meta["training"])]
    tests = [{"image": t if isinstance(t, str) else t["image"]} for t in meta.get("test", [])]
    datalist = {"labels": meta["labels"], "modality": meta["modality"], "training": training, "testing": tests}
    (folder / "datalist.json").write_text(json.dumps(datalist, indent=4))
    source = {"modality": modality, "datalist": str(folder / "datalist.json"), "dataroot": str(dataset_dir)}
    (folder / "task.json").write_text(json.dumps(source, indent=4))
    return folder / "task.json"


def _auto_runner(work_dir: Path, task: Path, wait: bool = True, templates=TEMPLATES, params=None, algos="c2fnas"):
    params = json.dumps(params or {"profile": str(TINY_PROFILE)})
    argv = [sys.executable, "-c", RUNNER, str(work_dir), str(task), str(templates), params, algos]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # Auto3DSeg runs `python`
    if not wait:
        return subprocess.Popen(argv, cwd=work_dir.parent, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    done = subprocess.run(argv, cwd=work_dir.parent, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


def _check_ensemble(dataset_dir: Path, work_dir: Path, labels: set):
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    tests = [t if isinstance(t, str) else t["image"] for t in meta["test"]]
    outputs = sorted((work_dir / "ensemble_output").rglob("*.nii.gz"))
    assert len(outputs) == len(tests), outputs
    for image, output in zip(sorted(tests), outputs):
        source, seg = nib.load(str(dataset_dir / image)), nib.load(str(output))
        assert seg.shape[:3] == source.shape[:3], (seg.shape, source.shape)  # in the input's space
        assert np.allclose(seg.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).astype(int)) <= labels


def _score(work_dir: Path) -> float:
    (progress,) = work_dir.glob("c2fnas_0/outputs/models/progress.yaml")
    import yaml

    return float(yaml.safe_load(progress.read_text())[-1]["best_avg_dice_score"])


def test_auto_runner_with_c2fnas_on_the_embedded_data(dataset, tmp_path):
    task = _datalist(dataset, tmp_path, "CT")
    work_dir = tmp_path / "work"
    _auto_runner(work_dir, task)
    algo = work_dir / "c2fnas_0"
    assert (work_dir / "datastats.yaml").is_file()
    hyper = (algo / "configs" / "hyper_parameters.yaml").read_text()
    assert "data_stats_file: " + str(work_dir / "datastats.yaml") in hyper
    for produced in ("search/arch_coarse.json", "search/arch_fine.json", "models/model.pt", "plan.json"):
        assert (algo / "outputs" / produced).is_file(), produced
    plan = json.loads((algo / "outputs" / "plan.json").read_text())
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    assert plan["in_channels"] == 1 and plan["class_names"] == [labels[k] for k in sorted(labels, key=int)][1:]
    assert 0.0 <= _score(work_dir) <= 1.0
    _check_ensemble(dataset, work_dir, {0, 1, 2})


def test_auto_runner_with_c2fnas_on_two_channel_mr(tmp_path):
    from benchmarks.tasks import dataset as task_dataset

    data = task_dataset("prostate_mr", tmp_path / "prostate_mr", num_cases=8, num_test=1)
    task = _datalist(data, tmp_path, "MRI")
    work_dir = tmp_path / "work"
    _auto_runner(work_dir, task)
    plan = json.loads((work_dir / "c2fnas_0" / "outputs" / "plan.json").read_text())
    assert plan["in_channels"] == 2 and [c["scheme"] for c in plan["intensity"]] == ["zscore_nonzero"] * 2
    _check_ensemble(data, work_dir, {0, 1, 2})


def test_auto_runner_killed_during_the_search_continues(dataset, tmp_path):
    """SIGKILL while the coarse search runs (its state saved), then the same AutoRunner call: it completes, and the
    coarse stage resumed from its state instead of starting again."""
    task = _datalist(dataset, tmp_path, "CT")
    work_dir = tmp_path / "work"
    process = _auto_runner(work_dir, task, wait=False)
    state = work_dir / "c2fnas_0" / "outputs" / "search" / "search_coarse_state.pt"
    deadline = time.time() + 900
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), process.stderr.read().decode()[-3000:] if process.poll() is not None else "no state"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (work_dir / "c2fnas_0" / "outputs" / "search" / "arch_fine.json").exists()
    _auto_runner(work_dir, task)
    log = (work_dir / "c2fnas_0" / "outputs" / "logs" / "search_coarse.log").read_text()
    assert f"resuming coarse search from {state}" in log, log[-3000:]
    assert (work_dir / "c2fnas_0" / "outputs" / "models" / "model.pt").is_file()
    _check_ensemble(dataset, work_dir, {0, 1, 2})


@pytest.mark.skipif(not MONAI_TEMPLATES, reason="MONAI's Auto3DSeg templates are a download: MONAI_AUTO3DSEG_TEMPLATES")
def test_auto_runner_with_c2fnas_beside_monai_segresnet(dataset, tmp_path):
    """One AutoRunner run holding C2FNAS and MONAI's SegResNet template (their folders side by side): both train,
    both are scored, and the ensemble is written. The training parameters go to both; each takes its own."""
    import shutil

    pytest.importorskip("psutil")  # MONAI's SegResNet template needs it
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES / "c2fnas", templates / "c2fnas")
    shutil.copytree(Path(MONAI_TEMPLATES) / "segresnet", templates / "segresnet")
    task = _datalist(dataset, tmp_path, "CT")
    work_dir = tmp_path / "work"
    params = {"profile": str(TINY_PROFILE), "num_epochs": 2, "num_epochs_per_validation": 1, "num_warmup_epochs": 0}
    params.update({"num_workers": 0, "auto_scale_allowed": False})
    log = _auto_runner(work_dir, task, templates=templates, params=params, algos="c2fnas,segresnet")
    assert 0.0 <= _score(work_dir) <= 1.0
    (segresnet,) = work_dir.glob("segresnet_0/model/progress.yaml")
    assert "best_avg_dice_score" in segresnet.read_text()
    assert "picked the following networks to ensemble" in log
    _check_ensemble(dataset, work_dir, {0, 1, 2})
