"""Bad input: each row of the bundle's bad-input table (bundle/docs/README.md) through `python -m monai.bundle run`.
The stage exits non-zero, its last line is one message naming the file (or setting) and the problem, and it
leaves no output behind."""

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import BUNDLE, bundle_run

BASE = {"val_fraction": 0.34, "max_epochs": 1}


def _copy(dataset, tmp_path):
    copy = tmp_path / "msd"
    shutil.copytree(dataset, copy)
    return copy


def _rewrite(path, change):
    """Replace a NIfTI file by ``change(voxels, affine) -> (voxels, affine)``."""
    volume = nib.load(str(path))
    voxels, affine = change(np.asanyarray(volume.dataobj), volume.affine.copy())
    nib.save(nib.Nifti1Image(voxels, affine), str(path))


def _run(config, tmp_path, **overrides):
    """Run a stage from another directory; returns (return code, last stderr line, whether it wrote outputs)."""
    settings = {"output_dir": str(tmp_path / "out"), **BASE, **overrides}
    code, _, stderr = bundle_run(config, tmp_path, settings, check=False)
    lines = stderr.strip().splitlines()
    return code, lines[-1] if lines else "", (tmp_path / "out").exists()


def _first(dataset, kind="labelsTr"):
    return sorted((dataset / kind).glob("*.nii.gz"))[0]


# (name, how to break a copy of the clean dataset -> overrides, expected message pattern with {d} = dataset dir)
DATA_CASES = [
    ("dataset directory missing", lambda d: {"dataset_dir": str(d) + "_nowhere"}, "{d}_nowhere: dataset directory does not exist"),  # noqa: E501
    ("dataset.json missing", lambda d: (d / "dataset.json").unlink(), "{d}/dataset.json: missing"),
    ("dataset.json not JSON", lambda d: (d / "dataset.json").write_text("{training: ["), "{d}/dataset.json: not JSON"),
    ("dataset.json without training", lambda d: (d / "dataset.json").write_text('{"test": []}'),
     "{d}/dataset.json: needs a non-empty 'training' list"),
    ("image path does not exist", lambda d: _first(d, "imagesTr").unlink(),
     "{d}/dataset.json: image './imagesTr/synthetic_000.nii.gz' does not exist"),
    ("truncated .nii.gz", lambda d: _first(d).write_bytes(_first(d).read_bytes()[:-100]),
     "{d}/labelsTr/synthetic_000.nii.gz: cannot read this label as NIfTI"),
    ("image and label shapes differ", lambda d: _rewrite(_first(d), lambda v, a: (v[:-2], a)),
     r"{d}/labelsTr/synthetic_000.nii.gz: label shape \(94, 96, 40\) differs from image"),
    ("image and label affines differ", lambda d: _rewrite(_first(d), lambda v, a: (v, a * np.diag([2, 1, 1, 1]))),
     "{d}/labelsTr/synthetic_000.nii.gz: label affine differs from image"),
    ("4D image with 2 channels", lambda d: _rewrite(_first(d, "imagesTr"), lambda v, a: (np.stack([v, v], -1), a)),
     r"{d}/imagesTr/synthetic_000.nii.gz: image has shape \(96, 96, 40, 2\); one 3D channel is expected "
     r"\(dataset.json 'modality'\)"),
    ("label values outside 0..2", lambda d: _rewrite(_first(d), lambda v, a: (np.where(v == 1, 5, v).astype(np.uint8), a)),  # noqa: E501
     r"{d}/labelsTr/synthetic_000.nii.gz: label values must be 0..2 \(dataset.json 'labels'\); found \[5\]"),
    ("NaN voxels", lambda d: _rewrite(_first(d, "imagesTr"), lambda v, a: (np.where(v > 300, np.nan, v).astype(np.float32), a)),  # noqa: E501
     r"{d}/imagesTr/synthetic_000.nii.gz: image holds \d+ NaN or Inf voxels"),
    ("empty training split", lambda d: {"val_fraction": 1.0}, "{d}/dataset.json: the training split is empty"),
]  # fmt: skip


@pytest.mark.parametrize("name, breaks, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_dataset(dataset, tmp_path, name, breaks, message):
    broken = _copy(dataset, tmp_path)
    overrides = breaks(broken)
    overrides = overrides if isinstance(overrides, dict) else {}
    code, last, wrote = _run(["train.json"], tmp_path, **{"dataset_dir": str(broken), **overrides})
    assert code != 0 and last.startswith("DatasetError: "), last
    assert re.search(message.format(d=broken), last), last
    assert not wrote, "no output directory after bad input"


def test_bad_test_image_for_inference(dataset, tmp_path):
    broken = _copy(dataset, tmp_path)
    image = _first(broken, "imagesTs")
    image.write_bytes(image.read_bytes()[:3000])
    code, last, wrote = _run(["inference.json"], tmp_path, dataset_dir=str(broken))
    assert code != 0 and last.startswith(f"DatasetError: {image}: cannot read this image as NIfTI"), last
    assert not wrote


@pytest.mark.parametrize(
    "override, value, message",
    [
        ("roi_size", "96", "setting 'roi_size' (config or --roi_size override): 96 is not of type 'array'"),
        ("roi_size", "[40,40,40]", "setting 'roi_size' (config or --roi_size override): 40 is not a multiple of 16"),
        ("max_epochs", "ten", "setting 'max_epochs' (config or --max_epochs override): 'ten' is not of type 'integer'"),
        ("learning_rate", "-0.1", "setting 'learning_rate' (config or --learning_rate override): -0.1 is less than"),
    ],
)
def test_override_of_the_wrong_type(dataset, tmp_path, override, value, message):
    code, last, wrote = _run(["train.json"], tmp_path, dataset_dir=str(dataset), **{override: value})
    assert code != 0 and last.startswith(f"SettingsError: {message}"), last
    assert not wrote


def test_invalid_architecture_file(dataset, tmp_path):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"format": "c2fnas-arch/1", "levels": [1, 3, 2, 1]}))
    code, last, wrote = _run(["train.json"], tmp_path, dataset_dir=str(dataset), arch_file=str(arch))
    assert code != 0 and last.startswith(f"ArchitectureError: {arch}: invalid topology"), last
    assert not wrote


@pytest.mark.parametrize("kind", ["other width", "other architecture", "not a weights file"])
def test_weights_that_do_not_fit(dataset, tmp_path, kind):
    from networks import C2FNASNet

    weights = tmp_path / "weights.pt"
    if kind == "other width":
        torch.save(C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 8).state_dict(), weights)
        expected = r"other shapes: stem\.0\.weight \(8, 1, 3, 3, 3\) \(network \(4, 1, 3, 3, 3\)\)"
    elif kind == "other architecture":
        arch = {"format": "c2fnas-arch/1", "levels": [1, 2, 3, 2, 1, 1], "ops": ["3D"] * 6}
        torch.save(C2FNASNet(arch, 1, 3, 4).state_dict(), weights)
        expected = r"missing keys: cells\.\d+\."
    else:
        weights.write_bytes(b"not a checkpoint")
        expected = "cannot read weights"
    shipped_plan = str(BUNDLE / "models" / "plan.json")
    code, last, _ = _run(
        ["inference.json"], tmp_path, dataset_dir=str(dataset), ckpt_file=str(weights), weights_plan_file=shipped_plan
    )
    assert code != 0 and last.startswith(f"WeightsError: {weights}: "), last
    assert re.search(expected, last), last
    assert not list((tmp_path / "out").glob("inference/*.nii.gz"))


def test_test_image_smaller_than_the_patch_is_padded(tmp_path):
    """Cases of 40 x 40 x 16 voxels (20 x 20 x 16 at the tiny profile's 2 mm; the plan's patch 32 x 16 x 16 pads
    the first axis in training): inference
    with a 32^3 patch pads them and writes the segmentation in the input's shape. (Training cases smaller than any
    patch are refused: tests/test_planning.py.)"""
    from scripts.data import generate_synthetic_dataset

    dataset = generate_synthetic_dataset(tmp_path / "small", num_cases=3, num_test=1, shape=(40, 40, 16))
    code, last, _ = _run(["train.json"], tmp_path, dataset_dir=str(dataset), val_interval=1)
    assert code == 0, last
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["roi_size"] == [32, 16, 16]
    model = tmp_path / "out" / "models" / "model.pt"
    code, last, _ = _run(
        ["inference.json"], tmp_path, dataset_dir=str(dataset), ckpt_file=str(model), roi_size=[32, 32, 32]
    )
    assert code == 0, last
    (seg,) = (tmp_path / "out" / "inference").glob("*_seg.nii.gz")
    assert nib.load(str(seg)).shape == nib.load(str(_first(dataset, "imagesTs"))).shape
