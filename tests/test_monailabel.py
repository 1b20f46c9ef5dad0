"""MONAI Label (the real monailabel 0.8.5, in `.venv-label`; run with `make test-label`): the released bundle zip
unpacked into the `monaibundle` sample app's model folder, as model-zoo users load it, on CPU.

1. Python API: the app lists the model and its labels, infers a label volume in the input space, trains one epoch.
2. Server: `monailabel start_server` on 127.0.0.1 lists the model on `/info/` and answers `POST /infer/<model>`
   with a NIfTI label; the test starts the server and stops it by its process id.
3. Bad input (a study with a NaN voxel): the Python API raises the bundle's one-line ``DatasetError`` naming the
   file; the server answers 500 (MONAI Label's answer to any app error) and its log ends in that line.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import monailabel
import nibabel as nib
import numpy as np
import pytest
from helpers import BUNDLE

ROOT = BUNDLE.parent
SAMPLE_APP = Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle"
LABELS = {"pancreas": 1, "pancreatic tumour": 2}


@pytest.fixture(scope="module")
def name():
    from release import NAME

    return NAME


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory, name, release):
    """The monaibundle app with the release zip unpacked into ``model/`` (as ``monai.bundle download`` does)."""
    assert (BUNDLE / "models" / "model.pt").is_file(), "the release ships models/model.pt"
    zip_path = release[0]
    app = tmp_path_factory.mktemp("apps") / "monaibundle"
    shutil.copytree(SAMPLE_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(app / "model")
    assert (app / "model" / name / "configs" / "inference.json").is_file()
    return app


@pytest.fixture(scope="module")
def studies(tmp_path_factory, dataset):
    """Three labelled synthetic CT studies (labels in ``labels/final``), one without a label, and ``nonfinite``: the
    unlabelled one with a NaN voxel."""
    msd = dataset
    studies = tmp_path_factory.mktemp("studies")
    (studies / "labels" / "final").mkdir(parents=True)
    for image in sorted((msd / "imagesTr").glob("*.nii.gz"))[:3]:
        shutil.copy(image, studies / image.name)
        shutil.copy(msd / "labelsTr" / image.name, studies / "labels" / "final" / image.name)
    for image in sorted((msd / "imagesTs").glob("*.nii.gz")):
        shutil.copy(image, studies / f"unlabelled_{image.name}")
    volume = nib.load(str(image))
    voxels = np.asanyarray(volume.dataobj).astype(np.float32)
    voxels[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(voxels, volume.affine), str(studies / "nonfinite.nii.gz"))
    return studies


def _conf(name):
    return {"models": name, "zoo_source": "github", "preload": "false", "sam2": "false"}


def _check_label(label_file, study_file):
    """A label volume on the study's grid with only background / pancreas / tumour values; returns its values."""
    label, study = nib.load(str(label_file)), nib.load(str(study_file))
    assert label.shape == study.shape
    np.testing.assert_allclose(label.affine, study.affine, atol=1e-3)
    values = set(np.unique(np.asarray(label.dataobj)).astype(int).tolist())
    assert values <= {0, 1, 2}
    return values


def test_python_api_lists_infers_and_trains(app_dir, studies, name, monkeypatch):
    monkeypatch.syspath_prepend(str(app_dir))  # the sample app's own modules (main, lib)
    from main import MyApp

    app = MyApp(str(app_dir), str(studies), _conf(name))
    info = app.info()
    assert info["models"][name]["labels"] == LABELS
    assert name in info["trainers"]

    study = sorted(studies.glob("unlabelled_*.nii.gz"))[0]
    result = app.infer({"model": name, "image": study.name[: -len(".nii.gz")], "device": "cpu"})
    values = _check_label(result["file"], study)
    assert 1 in values, "the shipped weights find the pancreas"
    with pytest.raises(ValueError) as refused:  # the bundle's DatasetError, from the app's copy of scripts/
        app.infer({"model": name, "image": "nonfinite", "device": "cpu"})
    assert type(refused.value).__name__ == "DatasetError"
    assert str(refused.value) == f"{studies / 'nonfinite.nii.gz'}: image holds 1 NaN or Inf voxels"

    bundle = app_dir / "model" / name
    shipped = (bundle / "models" / "model.pt").read_bytes()
    app.train(
        {"model": name, "max_epochs": 1, "iterations_per_epoch": 2, "device": "cpu", "val_split": 0.34,
         "multi_gpu": False, "pretrained": True, "train_batch_size": 1, "val_batch_size": 1}  # fmt: skip
    )
    checkpoint = bundle / "outputs" / "models" / "training_state.pt"
    assert checkpoint.is_file(), "training writes its state to the bundle's output directory"
    import torch

    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)
    pretrained = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    progress = trained["trainer"]  # finished: one epoch of one, as long as the train panel's iterations_per_epoch
    assert progress["max_epochs"] == 1 and progress["iteration"] == progress["epoch_length"] == 2
    assert set(trained["network"]) == set(pretrained)
    assert any(not torch.equal(trained["network"][k], pretrained[k]) for k in pretrained), "one epoch changed it"
    assert (bundle / "models" / "model.pt").read_bytes() == shipped, "the shipped weights are not overwritten"
    # fine-tuning the shipped weights keeps their recipe (the shipped plan), and reads no data of the bundle's own
    plan = json.loads((bundle / "outputs" / "plan.json").read_text())
    shipped_plan = json.loads((bundle / "models" / "plan.json").read_text())
    assert {k: plan[k] for k in ("pixdim", "roi_size", "intensity", "class_names")} == {
        k: shipped_plan[k] for k in ("pixdim", "roi_size", "intensity", "class_names")
    }
    assert not (bundle / "data").exists(), "the embedded synthetic data was not generated inside the app"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(fields):
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_server_info_and_infer(app_dir, studies, name, tmp_path):
    port = _free_port()
    conf = [x for k, v in _conf(name).items() for x in ("--conf", k, v)] + ["--conf", "skip_trainers", "true"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = ""  # the app must find the bundle's code itself
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        ["monailabel", "start_server", "--app", str(app_dir), "--studies", str(studies), *conf,
         "--host", "127.0.0.1", "--port", str(port)],  # fmt: skip
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the launcher re-execs python: stop the whole group by its id
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                info = json.load(urllib.request.urlopen(f"{base}/info/", timeout=5))
                break
            except OSError:
                assert time.time() < deadline, "server did not answer /info/"
                time.sleep(1)
        assert info["models"][name]["labels"] == LABELS

        study = sorted(studies.glob("unlabelled_*.nii.gz"))[0]
        body, content_type = _multipart({"params": json.dumps({"device": "cpu"})})
        request = urllib.request.Request(
            f"{base}/infer/{name}?image={study.name[: -len('.nii.gz')]}&output=image",
            data=body,
            headers={"Content-Type": content_type},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            assert response.status == 200
            payload = response.read()
        label_file = tmp_path / "label.nii.gz"
        label_file.write_bytes(payload)
        _check_label(label_file, study)

        request = urllib.request.Request(
            f"{base}/infer/{name}?image=nonfinite&output=image",
            data=body,
            headers={"Content-Type": content_type},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=600)
        # MONAI Label answers any app error with a bare 500; its log shows the traceback, ending in the one line
        assert refused.value.code == 500
        expected = f"scripts.errors.DatasetError: {studies / 'nonfinite.nii.gz'}: image holds 1 NaN or Inf voxels"
        deadline = time.time() + 30  # the server logs the error as it answers; give its log a moment
        while expected not in (logged := (tmp_path / "server.log").read_text().splitlines()) and time.time() < deadline:
            time.sleep(0.5)
        assert expected in logged, [line for line in logged if "Error" in line]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert server.returncode is not None
    with socket.socket() as s:  # nothing listens on the port any more: no server process left running
        # SO_REUSEADDR: the connections of this test's own requests may sit in TIME_WAIT for a minute, which a plain
        # bind counts as "in use"; with it, bind still fails while any socket listens on the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_environment_is_the_real_monailabel():
    """No stand-in: the released monailabel and a torchvision whose compiled ops load."""
    import torch
    import torchvision

    assert monailabel.__version__ == "0.8.5" and torchvision.__version__.startswith("0.29.1")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
