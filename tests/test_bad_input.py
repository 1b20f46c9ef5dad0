"""Bad input: each row of the bundle's bad-input table (bundle/docs/faults.md) through `python -m monai.bundle run`.
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


def _entry(dataset, split, index, value):
    """Replace entry ``index`` of dataset.json's ``split`` list by ``value`` (or ``value(entry)``)."""
    meta = json.loads((dataset / "dataset.json").read_text())
    meta[split][index] = value(meta[split][index]) if callable(value) else value
    (dataset / "dataset.json").write_text(json.dumps(meta))


def _symlink_loop(path):
    path.unlink()
    path.symlink_to(path.name)  # points at itself


def _zero_affine(path):
    """The file with an all-zero affine in its header (nibabel refuses to write one, so the bytes are patched)."""
    import gzip
    import struct

    raw = bytearray(nib.Nifti1Image(np.asanyarray(nib.load(str(path)).dataobj), np.eye(4)).to_bytes())
    raw[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1
    raw[280:328] = bytes(48)  # srow_x, srow_y, srow_z
    path.write_bytes(gzip.compress(bytes(raw)))


def _rgb(path):
    shape = nib.load(str(path)).shape
    nib.save(nib.Nifti1Image(np.zeros(shape, [("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4)), str(path))


# (name, how to break a copy of the clean dataset -> overrides, expected message pattern with {d} = dataset dir)
DATA_CASES = [
    ("dataset directory missing", lambda d: {"dataset_dir": str(d) + "_nowhere"}, "{d}_nowhere: dataset directory does not exist"),  # noqa: E501
    ("dataset.json missing", lambda d: (d / "dataset.json").unlink(), "{d}/dataset.json: missing"),
    ("dataset.json not JSON", lambda d: (d / "dataset.json").write_text("{training: ["), "{d}/dataset.json: not JSON"),
    ("dataset.json without training", lambda d: (d / "dataset.json").write_text('{"test": []}'),
     "{d}/dataset.json: needs a non-empty 'training' list"),
    ("image path does not exist", lambda d: _first(d, "imagesTr").unlink(),
     "{d}/dataset.json: training entry 0 image './imagesTr/synthetic_000.nii.gz' does not exist"),
    ("training entry without image", lambda d: _entry(d, "training", 1, lambda e: {"label": e["label"]}),
     "{d}/dataset.json: training entry 1 must have 'image' and 'label'"),
    ("training entry a number", lambda d: _entry(d, "training", 2, 7), "{d}/dataset.json: training entry 2 must have"),
    ("training entry a list", lambda d: _entry(d, "training", 0, ["a"]), "{d}/dataset.json: training entry 0 must"),
    ("training entry with a null label", lambda d: _entry(d, "training", 3, lambda e: {**e, "label": None}),
     "{d}/dataset.json: training entry 3 label must be a path relative to the dataset, got None"),
    ("image a symbolic link loop", lambda d: _symlink_loop(_first(d, "imagesTr")),
     "{d}/dataset.json: training entry 0 image './imagesTr/synthetic_000.nii.gz' is a symbolic link loop"),
    ("RGB image", lambda d: _rgb(_first(d, "imagesTr")),
     r"{d}/imagesTr/synthetic_000.nii.gz: image voxels are RGB \(\[\('R'"),
    ("complex image", lambda d: _rewrite(_first(d, "imagesTr"), lambda v, a: (v.astype(np.complex64), a)),
     r"{d}/imagesTr/synthetic_000.nii.gz: image voxels are complex \(complex64\)"),
    ("all-zero affine", lambda d: _zero_affine(_first(d, "imagesTr")),
     r"{d}/imagesTr/synthetic_000.nii.gz: image affine is singular or not finite \(e.g. all zero\)"),
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


TEST_CASES = [  # (name, how to break the test list of a copy, expected message with {d} = dataset dir)
    ("test entry a number", lambda d: _entry(d, "test", 0, 3), "{d}/dataset.json: test entry 0 must be a path"),
    ("test entry without image", lambda d: _entry(d, "test", 0, {"img": "x"}),
     "{d}/dataset.json: test entry 0 must be a path relative to the dataset, got None"),
    ("test image a symbolic link loop", lambda d: _symlink_loop(_first(d, "imagesTs")),
     "{d}/dataset.json: test entry 0 './imagesTs/synthetic_006.nii.gz' is a symbolic link loop"),
]  # fmt: skip


@pytest.mark.parametrize("name, breaks, message", TEST_CASES, ids=[c[0] for c in TEST_CASES])
def test_bad_test_entry_for_inference(dataset, tmp_path, name, breaks, message):
    broken = _copy(dataset, tmp_path)
    breaks(broken)
    code, last, wrote = _run(["inference.json"], tmp_path, dataset_dir=str(broken))
    assert code != 0 and last.startswith(f"DatasetError: {message.format(d=broken)}"), last
    assert not wrote


@pytest.mark.parametrize("kind", ["all-zero affine", "RGB", "symbolic link loop"])
def test_images_given_with_dataset_data_are_checked_too(dataset, tmp_path, kind):
    """``--dataset#data`` skips dataset.json, not the checks: the loader checks each file before reading it."""
    image = tmp_path / "given.nii.gz"
    shutil.copy(_first(dataset, "imagesTs"), image)
    {"all-zero affine": _zero_affine, "RGB": _rgb, "symbolic link loop": _symlink_loop}[kind](image)
    expected = {"all-zero affine": "image affine is singular", "RGB": "image voxels are RGB",
                "symbolic link loop": "image is a symbolic link loop"}[kind]  # fmt: skip
    code, last, wrote = _run(
        ["inference.json"],
        tmp_path,
        dataset_dir=str(dataset),
        base_channels=32,
        **{"dataset#data": [{"image": str(image)}]},
    )
    assert code != 0 and last.startswith(f"DatasetError: {image}: {expected}"), last
    assert not list((tmp_path / "out").glob("inference/*")), "no segmentation"


@pytest.mark.parametrize(
    "override, value, message",
    [
        ("roi_size", "96", "setting 'roi_size' (config or --roi_size override): 96 is not of type 'array'"),
        ("roi_size", "[40,40,40]", "setting 'roi_size' (config or --roi_size override): 40 is not a multiple of 16"),
        ("max_epochs", "ten", "setting 'max_epochs' (config or --max_epochs override): 'ten' is not of type 'integer'"),
        ("learning_rate", "-0.1", "setting 'learning_rate' (config or --learning_rate override): -0.1 is less than"),
        (
            "inference_runtime",
            "onnx",
            "setting 'inference_runtime' (config or --inference_runtime override): 'onnx' "
            "is not one of ['auto', 'torch', 'torch_channels_last', 'openvino']",
        ),
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
