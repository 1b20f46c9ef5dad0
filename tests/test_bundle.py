"""The MONAI bundle: model-zoo acceptance checks on the release zip and every stage through `python -m monai.bundle
run`."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BUNDLE, bundle_run, http_server, launch, monai_bundle, run_or_kill

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"


def test_required_files_and_version():
    for name in ["LICENSE", "configs/metadata.json", "configs/common.json", "configs/inference.json",
                 "configs/train.json",
                 "configs/evaluate.json", "configs/search_coarse.json", "configs/search_fine.json",
                 "configs/logging.conf", "configs/cpu_profile.json", "configs/multi_gpu_train.json",
                 "configs/multi_gpu_evaluate.json", "configs/multi_gpu_search.json", "models/architecture.json",
                 "models/model.pt", "large_files.yml",
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


def test_verify_metadata_against_shipped_schema(release, tmp_path):
    meta = release[2] / "configs" / "metadata.json"
    out = monai_bundle("verify_metadata", "--meta_file", meta, "--filepath", SCHEMA, cwd=tmp_path)
    assert "metadata is verified with no error" in out


def test_verify_net_in_out(release):
    bundle = release[2]
    out = monai_bundle(
        "verify_net_in_out",
        "network_def",
        cwd=bundle,  # as model-zoo's CI runs it: from the bundle root, so `scripts`, `networks`, `search` import
        overrides={
            "meta_file": str(bundle / "configs" / "metadata.json"),
            "config_file": str(bundle / "configs" / "inference.json"),
            "bundle_root": str(bundle),
            "device": "cpu",
            "base_channels": 8,
        },
    )
    assert "data shape of network is verified with no error" in out


def test_shipped_weights_fit_the_shipped_architecture():
    """models/model.pt: tensors only (weights_only), on the CPU, and strictly C2FNAS-Panc at F = 32."""
    from networks import C2FNASNet

    state = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    net = C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 32)
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == 15_400_771


def test_ckpt_export_torchscript_equals_eager(release, tmp_path):
    """model-zoo's TorchScript check on the shipped weights: the exported module computes what the eager one does."""
    from networks import C2FNASNet

    bundle = release[2]
    monai_bundle(
        "ckpt_export",
        "network_def",
        cwd=bundle,
        overrides={
            "filepath": str(tmp_path / "model.ts"),
            "ckpt_file": str(bundle / "models" / "model.pt"),
            "meta_file": str(bundle / "configs" / "metadata.json"),
            "config_file": str(bundle / "configs" / "inference.json"),
            "bundle_root": str(bundle),
        },
    )
    net = C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 32).eval()
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("workflow_type, config", [("train", "train.json"), ("inference", "inference.json")])
def test_check_properties(release, workflow_type, config, dataset, tmp_path):
    """On the released single-file configs, as model-zoo's CI and MONAI Label read them, and on the repository's
    layered ones (common.json + stage)."""
    from monai.bundle import ConfigWorkflow

    for bundle, files in [
        (release[2], [release[2] / "configs" / config]),
        (BUNDLE, [BUNDLE / "configs" / "common.json", BUNDLE / "configs" / config]),
    ]:
        workflow = ConfigWorkflow(
            config_file=[str(f) for f in files],
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=str(bundle),
            output_dir=str(tmp_path / "outputs"),  # nothing written into the bundle
            dataset_dir=str(dataset),
        )
        workflow.initialize()
        assert workflow.check_properties() == [], bundle


def test_split_is_seeded_and_disjoint(dataset):
    from scripts.data import split_datalist, test_datalist

    train = split_datalist(dataset, "training", val_fraction=0.34, seed=1)
    val = split_datalist(dataset, "validation", val_fraction=0.34, seed=1)
    assert len(train) == 4 and len(val) == 2 and not {d["image"] for d in train} & {d["image"] for d in val}
    assert split_datalist(dataset, "validation", val_fraction=0.34, seed=1) == val
    assert all(Path(d["image"]).is_file() and Path(d["label"]).is_file() for d in train + val)
    assert len(test_datalist(dataset)) == 1


def test_training_seed_leaves_the_split_alone(dataset):
    """`seed` seeds training; the train/validation split has its own `split_seed`, so runs with other training seeds
    are scored on the same validation cases."""
    from monai.bundle import ConfigParser

    def split(**overrides):
        parser = ConfigParser(ConfigParser.load_config_files([str(BUNDLE / "configs" / "common.json")]))
        parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(dataset), "val_fraction": 0.34, **overrides})
        return [d["image"] for d in parser.get_parsed_content("val_datalist")]

    assert split(seed=1) == split(seed=0) == split(seed=7)
    assert any(split(split_seed=s) != split() for s in range(1, 4))


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

    # a set written by another version of the generator is replaced whole; a user's own dataset never is
    meta["generator"] = "an older generator"
    (default / "dataset.json").write_text(json.dumps(meta))
    (default / "imagesTr" / "left_over.nii.gz").write_bytes(b"")
    mine = tmp_path / "mine"
    shutil.copytree(default, mine)
    ensure_dataset(default, synthetic_dir=default, num_cases=3)
    assert json.loads((default / "dataset.json").read_text())["generator"] != "an older generator"
    assert not (default / "imagesTr" / "left_over.nii.gz").exists() and len(list((default / "imagesTr").iterdir())) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    ensure_dataset(mine, synthetic_dir=default)
    assert json.loads((mine / "dataset.json").read_text())["generator"] == "an older generator"


def test_synthetic_case_is_ct_like():
    from scripts.data import synthetic_case

    image, label = synthetic_case(3)
    assert image.dtype.name == "int16" and label.dtype.name == "uint8"
    assert image.min() <= -900 and 350 <= image.max() <= 600  # air, spine
    organ = image[label == 1].mean()
    assert 80 < organ < 140 and 0 < (label == 1).sum()
    assert set(label.ravel().tolist()) <= {0, 1, 2}


def test_synthetic_masses_follow_the_generators_stated_statistics():
    """Every case has a mass (as MSD Task07); longest diameters 10-40 mm (median about 20 mm), so 0.3-35 mL with
    the lobes; the organ 10-25 mL; masses both darker and brighter than the parenchyma (docstring of synthetic_case)."""
    from scripts.data import synthetic_case

    voxel_ml = 1.0 * 1.0 * 2.5 / 1000
    organ_ml, mass_ml, darker = [], [], []
    for seed in range(16):
        image, label = synthetic_case(seed)
        organ_ml.append((label == 1).sum() * voxel_ml)
        mass_ml.append((label == 2).sum() * voxel_ml)
        darker.append(image[label == 2].mean() < image[label == 1].mean())
    assert min(mass_ml) > 0.2 and max(mass_ml) < 40 and 1.0 < np.median(mass_ml) < 8.0, mass_ml
    assert 10 < min(organ_ml) and max(organ_ml) < 25, organ_ml
    assert 0 < sum(darker) < len(darker)


def test_release_zip_is_deterministic_and_downloads(dataset, release, tmp_path):
    import zipfile

    from release import NAME, build

    zip_path, sha1, _ = release
    again, sha1_again = build(BUNDLE, tmp_path / "dist2")
    assert sha1 == sha1_again and zip_path.read_bytes() == again.read_bytes()
    names = zipfile.ZipFile(zip_path).namelist()
    assert all(n.startswith(f"{NAME}/") for n in names)
    for needed in ["configs/metadata.json", "configs/inference.json", "LICENSE", "models/architecture.json",
                   "models/model.pt", "scripts/__init__.py", "networks/c2fnas.py",
                   "search/coarse_search.py"]:  # fmt: skip
        assert f"{NAME}/{needed}" in names, needed
    assert f"{NAME}/large_files.yml" not in names  # as model-zoo releases: the listed files are inside
    assert not [n for n in names if "__pycache__" in n or "/outputs/" in n or "/data/" in n]

    downloads = tmp_path / "downloads"
    with http_server(zip_path.parent) as base:
        url = f"{base}/{zip_path.name}"
        monai_bundle("download", "--name", NAME, "--bundle_dir", downloads, "--url", url, cwd=tmp_path)
    downloaded = downloads / NAME
    assert (downloaded / "networks" / "c2fnas.py").is_file() and (downloaded / "search" / "coarse_search.py").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # the downloaded bundle as shipped: its own weights, default settings
    overrides = {"bundle_root": str(downloaded), "dataset_dir": str(dataset), "output_dir": str(tmp_path / "out")}
    where = elsewhere / "where.json"  # which copy of the packages the run imported
    where.write_text(json.dumps({"+finalize": ["$print('packages:', __import__('networks').__file__)"]}))
    config = f"['{downloaded / 'configs' / 'inference.json'}','{where}']"
    log = monai_bundle("run", "--config_file", config, cwd=elsewhere, overrides=overrides)
    assert f"packages: {downloaded / 'networks' / '__init__.py'}" in log, "the zip's own copy"
    (seg,) = (tmp_path / "out" / "inference").glob("*_seg.nii.gz")
    import nibabel as nib

    assert 1 in set(
        nib.load(str(seg)).get_fdata().astype(int).ravel().tolist()
    ), "the shipped weights find the pancreas"


def test_training_resumes_after_sigkill(dataset, tmp_path):
    """train.json killed (SIGKILL) after its second epoch continues from its saved state when run again."""
    out = tmp_path / "outputs"
    overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 5, "val_interval": 2}
    state_file = out / "models" / "training_state.pt"
    process = bundle_run(["train.json"], tmp_path, overrides, wait=False, pause_saves=state_file)

    def after_two_epochs(state):
        return state["trainer"]["iteration"] >= 2 * state["trainer"]["epoch_length"]

    assert not run_or_kill(process, after_two_epochs), "killed during training"
    killed_at = torch.load(state_file, weights_only=True)
    epoch = killed_at["trainer"]["iteration"] // killed_at["trainer"]["epoch_length"]
    assert epoch < killed_at["trainer"]["max_epochs"]  # not finished
    assert 2 <= epoch < 5 and (out / "models" / "model.pt").is_file()
    log = bundle_run(["train.json"], tmp_path, overrides)
    assert f"resuming training from {state_file} at epoch {epoch}/5" in log
    assert f"Epoch[{epoch}] Complete" not in log and "Epoch[5] Complete" in log
    final = torch.load(state_file, weights_only=True)
    assert final["trainer"]["max_epochs"] == 5 and final["trainer"]["iteration"] == 5 * final["trainer"]["epoch_length"]
    best = lambda state: state["best_model"]["_saved"][0][0]  # noqa: E731  (the saver's best score)
    assert best(final) >= best(killed_at)
    assert not [p for p in (out / "models").iterdir() if p.name.startswith(".")]  # no half-written file
    assert "weight_average" not in final  # off by default: the weights as trained are the ones scored and saved


def test_weight_averaged_training_scores_and_saves_the_average(dataset, tmp_path):
    """With weight_average_momentum > 0 the training state carries the moving average beside the weights as
    trained, and the weights file (validated once, at the end) holds the average in the network's own format."""
    out = tmp_path / "outputs"
    overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 2, "val_interval": 2}
    overrides.update({"weight_average_momentum": 0.3, "inference_runtime": "torch"})
    bundle_run(["train.json"], tmp_path, overrides)
    state = torch.load(out / "models" / "training_state.pt", weights_only=True)
    saved = torch.load(out / "models" / "model.pt", weights_only=True)
    assert state["settings"]["weight_average_momentum"] == 0.3
    average, trained = state["weight_average"], state["network"]
    assert saved.keys() == average.keys() == trained.keys()
    assert all(torch.equal(saved[k], average[k]) for k in saved)
    changed = [k for k in average if average[k].is_floating_point() and not torch.allclose(average[k], trained[k])]
    assert changed, "the average is not the weights as trained"
    # the evaluation (layered on train.json, as the chain runs it) scores the weights file, not a fresh average
    bundle_run(["train.json", "evaluate.json"], tmp_path, {**overrides, "ckpt_file": str(out / "models" / "model.pt")})
    report = json.loads((out / "eval" / "dice_per_class.json").read_text())
    assert report["mean_dice"] == pytest.approx(state["best_model"]["_saved"][0][0], abs=1e-6)


def test_large_files_are_downloaded_with_their_hash_checked(tmp_path):
    """`monai.bundle download_large_files` over large_files.yml (URL pointed at a loopback server): the real file
    arrives; a corrupted one is rejected with a hash error and nothing is left at the target path."""
    import shutil

    import yaml

    listing = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    assert [e["path"] for e in listing] == ["models/model.pt"] and listing[0]["hash_type"] == "sha256"
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(BUNDLE / "models" / "model.pt", served / "model.pt")
    corrupted = bytearray((served / "model.pt").read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    (served / "corrupted.pt").write_bytes(bytes(corrupted))
    with http_server(served) as base:
        for name, ok in [("model.pt", True), ("corrupted.pt", False)]:
            bundle = tmp_path / name
            bundle.mkdir()
            entry = {**listing[0], "url": f"{base}/{name}"}
            (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
            code, _, stderr = monai_bundle("download_large_files", "--bundle_path", bundle, cwd=tmp_path, check=False)
            target = bundle / "models" / "model.pt"
            if ok:
                assert code == 0, stderr[-2000:]
                assert target.read_bytes() == (BUNDLE / "models" / "model.pt").read_bytes()
            else:
                assert code != 0 and "hash check of downloaded file failed" in stderr
                assert not target.exists()


def test_release_checks_large_files_and_leaves_out_their_list(tmp_path):
    import hashlib
    import shutil
    import zipfile

    import yaml

    from release import NAME, ReleaseError, build

    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    entry = {"path": "models/model.pt", "url": "https://example.org/model.pt", "hash_type": "sha256"}
    for hash_val, ok in [("0" * 64, False), (hashlib.sha256(b"weights").hexdigest(), True)]:
        (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [{**entry, "hash_val": hash_val}]}))
        if not ok:
            with pytest.raises(ReleaseError, match=r"large_files.yml: models/model.pt has sha256 \w+, not 0+"):
                build(bundle, tmp_path / "dist")
            assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
        else:
            names = zipfile.ZipFile(build(bundle, tmp_path / "dist")[0]).namelist()
            assert f"{NAME}/models/model.pt" in names and f"{NAME}/large_files.yml" not in names
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ReleaseError, match="models/model.pt is missing; fetch it from https://example.org/model.pt"):
        build(bundle, tmp_path / "dist")


_PAGE_FAULTS = """
import resource, sys, torch
from scripts.device_tuning import tune_device  # run from the bundle root
tuned = tune_device("cpu") if sys.argv[1] == "tuned" else False
faults = []
for _ in range(20):  # a 3D network allocates and frees activations of the same sizes again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x, y = torch.ones(32 * 2**20), torch.ones(16 * 2**20)  # 128 MB and 64 MB, touched
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, sum(faults[-5:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator tuning is for glibc")
def test_tuned_cpu_allocator_reuses_freed_memory():
    """After ``tune_device('cpu')`` freed activation-sized blocks are reused: once the heap has settled (about 6
    rounds here), new tensors of the same sizes cause no page faults. Without it every round's 192 MB is faulted in
    again from the kernel (49,152 pages of 4 KiB)."""
    results = {}
    for mode in ("default", "tuned"):
        out = launch(["-c", _PAGE_FAULTS, mode], cwd=BUNDLE)
        assert out.returncode == 0, out.stderr
        tuned, faults = out.stdout.split()
        results[mode] = (tuned, int(faults))
    assert results["tuned"][0] == "True" and results["default"][0] == "False"
    assert results["default"][1] > 5 * 45000, results  # the last 5 rounds
    assert results["tuned"][1] < 1000, results
