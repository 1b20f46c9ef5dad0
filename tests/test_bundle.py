"""The MONAI bundle: model-zoo acceptance checks and every stage config through `python -m monai.bundle run`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import BUNDLE, TINY, bundle_run, monai_bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    sys.path.insert(0, str(BUNDLE))
    from scripts.data import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "msd", num_cases=6, num_test=1)


def test_required_files_and_version():
    for name in ["LICENSE", "configs/metadata.json", "configs/inference.json", "configs/train.json",
                 "configs/evaluate.json", "configs/search_coarse.json", "configs/search_fine.json",
                 "configs/logging.conf", "configs/cpu_profile.json", "models/architecture.json",
                 "docs/README.md", "docs/data_license.txt", "docs/architecture.png"]:  # fmt: skip
        assert (BUNDLE / name).is_file(), name
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "pancreas",
        "2": "pancreatic tumour",
    }
    for config in (BUNDLE / "configs").glob("*.json"):
        text = config.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{config.name}: not 4-space JSON"


def test_verify_metadata_against_shipped_schema(tmp_path):
    meta = BUNDLE / "configs" / "metadata.json"
    out = monai_bundle("verify_metadata", "--meta_file", meta, "--filepath", SCHEMA, cwd=tmp_path)
    assert "metadata is verified with no error" in out


def test_verify_net_in_out():
    out = monai_bundle(
        "verify_net_in_out",
        "network_def",
        cwd=BUNDLE,  # as model-zoo's CI runs it: from the bundle root, so `scripts` imports
        overrides={
            "meta_file": str(BUNDLE / "configs" / "metadata.json"),
            "config_file": str(BUNDLE / "configs" / "inference.json"),
            "bundle_root": str(BUNDLE),
            "device": "cpu",
            "base_channels": 8,
        },
    )
    assert "data shape of network is verified with no error" in out


def test_ckpt_export_torchscript_equals_eager(tmp_path):
    sys.path.insert(0, str(BUNDLE))
    from scripts.networks import C2FNASNet

    torch.manual_seed(0)
    net = C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 8).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    monai_bundle(
        "ckpt_export",
        "network_def",
        cwd=BUNDLE,
        overrides={
            "filepath": str(tmp_path / "model.ts"),
            "ckpt_file": str(tmp_path / "model.pt"),
            "meta_file": str(BUNDLE / "configs" / "metadata.json"),
            "config_file": str(BUNDLE / "configs" / "inference.json"),
            "bundle_root": str(BUNDLE),
            "base_channels": 8,
        },
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("workflow_type, config", [("train", "train.json"), ("inference", "inference.json")])
def test_check_properties(workflow_type, config):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / config),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_stage_chain_through_monai_bundle_run(dataset, tmp_path):
    """search_coarse -> search_fine -> train -> evaluate -> inference, each a `monai.bundle run`, from another cwd."""
    out = tmp_path / "outputs"
    common = {**TINY, "dataset_dir": str(dataset), "output_dir": str(out)}
    shipped = {p.name: p.read_bytes() for p in (BUNDLE / "models").iterdir()}
    bundle_run(["search_coarse.json"], tmp_path, common)
    assert (out / "search" / "arch_coarse.json").is_file() and (out / "search" / "arch_coarse.png").is_file()
    bundle_run(["search_fine.json"], tmp_path, common)
    arch = json.loads((out / "search" / "arch_fine.json").read_text())
    coarse = json.loads((out / "search" / "arch_coarse.json").read_text())
    assert arch["levels"] == coarse["levels"] and len(arch["ops"]) == 12
    arch_file = str(out / "search" / "arch_fine.json")
    log = bundle_run(["train.json"], tmp_path, {**common, "arch_file": arch_file})
    assert "validation Dice on 1 cases" in log
    ckpt = out / "models" / "model.pt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    bundle_run(["train.json", "evaluate.json"], tmp_path, {**common, "arch_file": arch_file, "ckpt_file": str(ckpt)})
    report = json.loads((out / "eval" / "dice_per_class.json").read_text())
    assert set(report["per_class"]) == {"pancreas", "tumour"} and report["cases"] == 1
    bundle_run(["inference.json"], tmp_path, {**common, "arch_file": arch_file, "ckpt_file": str(ckpt)})
    import nibabel as nib

    (image,) = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    (seg,) = sorted((out / "inference").glob("*_seg.nii.gz"))
    source, result = nib.load(str(image)), nib.load(str(seg))
    assert result.shape == source.shape and (result.affine == source.affine).all()
    assert set(torch.as_tensor(result.get_fdata()).unique().tolist()) <= {0.0, 1.0, 2.0}
    assert {p.name: p.read_bytes() for p in (BUNDLE / "models").iterdir()} == shipped  # shipped models untouched


def test_split_is_seeded_and_disjoint(dataset):
    from scripts.data import split_datalist, test_datalist

    train = split_datalist(dataset, "training", val_fraction=0.34, seed=1)
    val = split_datalist(dataset, "validation", val_fraction=0.34, seed=1)
    assert len(train) == 4 and len(val) == 2 and not {d["image"] for d in train} & {d["image"] for d in val}
    assert split_datalist(dataset, "validation", val_fraction=0.34, seed=1) == val
    assert all(Path(d["image"]).is_file() and Path(d["label"]).is_file() for d in train + val)
    assert len(test_datalist(dataset)) == 1


def test_embedded_dataset_is_generated_only_at_the_default_place(tmp_path):
    from scripts.data import DatasetError, ensure_dataset, split_datalist

    default = tmp_path / "synthetic"
    with pytest.raises(DatasetError, match="dataset directory does not exist"):
        split_datalist(ensure_dataset(tmp_path / "mine", synthetic_dir=default))
    assert not default.exists()
    ensure_dataset(default, synthetic_dir=default, num_cases=3)
    meta = json.loads((default / "dataset.json").read_text())
    assert len(meta["training"]) == 3 and meta["labels"]["2"] == "cancer"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_synthetic_case_is_ct_like():
    from scripts.data import synthetic_case

    image, label = synthetic_case(3)
    assert image.dtype.name == "int16" and label.dtype.name == "uint8"
    assert image.min() <= -900 and 350 <= image.max() <= 600  # air, spine
    organ = image[label == 1].mean()
    assert 80 < organ < 140 and 0 < (label == 1).sum()
    assert set(label.ravel().tolist()) <= {0, 1, 2}


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_release_zip_is_deterministic_and_downloads(dataset, tmp_path):
    import socket
    import time
    import zipfile

    sys.path.insert(0, str(ROOT))
    from release import NAME, build

    zip_path, sha1 = build(BUNDLE, tmp_path / "dist")
    again, sha1_again = build(BUNDLE, tmp_path / "dist2")
    assert sha1 == sha1_again and zip_path.read_bytes() == again.read_bytes()
    names = zipfile.ZipFile(zip_path).namelist()
    assert all(n.startswith(f"{NAME}/") for n in names)
    for needed in ["configs/metadata.json", "configs/inference.json", "LICENSE", "models/architecture.json",
                   "scripts/__init__.py", "scripts/networks/c2fnas.py", "scripts/search/stages.py"]:  # fmt: skip
        assert f"{NAME}/{needed}" in names, needed
    assert not [n for n in names if "__pycache__" in n or "/outputs/" in n or "/data/" in n]

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=zip_path.parent,
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
        downloads = tmp_path / "downloads"
        url = f"http://127.0.0.1:{port}/{zip_path.name}"
        monai_bundle("download", "--name", NAME, "--bundle_dir", downloads, "--url", url, cwd=tmp_path)
    finally:
        server.kill()
        server.wait()
    downloaded = downloads / NAME
    assert (downloaded / "scripts" / "networks" / "c2fnas.py").is_file()
    assert not (downloaded / "scripts" / "networks").is_symlink()

    sys.path.insert(0, str(BUNDLE))
    from scripts.networks import C2FNASNet

    torch.manual_seed(0)
    torch.save(C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 4).state_dict(), tmp_path / "w.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    overrides = {**TINY, "bundle_root": str(downloaded), "dataset_dir": str(dataset),
                 "ckpt_file": str(tmp_path / "w.pt"), "output_dir": str(tmp_path / "out")}  # fmt: skip
    monai_bundle("run", "--config_file", downloaded / "configs" / "inference.json", cwd=elsewhere, overrides=overrides)
    assert len(list((tmp_path / "out" / "inference").glob("*_seg.nii.gz"))) == 1


def test_training_resumes_after_sigkill(dataset, tmp_path):
    """train.json killed (SIGKILL) after its second epoch continues from its saved state when run again."""
    import signal
    import time

    out = tmp_path / "outputs"
    overrides = {**TINY, "dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 5, "val_interval": 2}
    argv = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.json")]
    argv += [x for k, v in {**overrides, "bundle_root": str(BUNDLE)}.items() for x in (f"--{k}", json.dumps(v))]
    state_file = out / "models" / "training_state.pt"
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while process.poll() is None and time.time() < deadline:
        if state_file.exists():
            state = torch.load(state_file, weights_only=True)
            if state["trainer"]["iteration"] >= 2 * state["trainer"]["epoch_length"]:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    assert process.wait(timeout=60) == -signal.SIGKILL, "killed during training"
    killed_at = torch.load(state_file, weights_only=True)
    assert not killed_at["finished"]
    epoch = killed_at["trainer"]["iteration"] // killed_at["trainer"]["epoch_length"]
    assert 2 <= epoch < 5 and (out / "models" / "model.pt").is_file()
    log = bundle_run(["train.json"], tmp_path, overrides)
    assert f"resuming training from {state_file} at epoch {epoch}/5" in log
    assert f"Epoch[{epoch}] Complete" not in log and "Epoch[5] Complete" in log
    final = torch.load(state_file, weights_only=True)
    assert final["finished"] and final["trainer"]["iteration"] == 5 * final["trainer"]["epoch_length"]
    assert final["best_model"]["best"] >= killed_at["best_model"]["best"]
    assert not [p for p in (out / "models").iterdir() if p.name.startswith(".")]  # no half-written file
