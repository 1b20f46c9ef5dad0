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


def _listed_again(dataset, how):
    """Add a training entry that is case 0 again: its image by ``how`` ("another spelling", "symbolic link",
    "identical copy"), with a label file of its own (a copy) unless spelt another way."""
    meta = json.loads((dataset / "dataset.json").read_text())
    image, label = _first(dataset, "imagesTr"), _first(dataset)
    entry = {"image": "./imagesTr/../imagesTr/" + image.name, "label": "./labelsTr/../labelsTr/" + label.name}
    if how != "another spelling":
        again = dataset / "imagesTr" / "again.nii.gz"
        again.symlink_to(image.name) if how == "symbolic link" else shutil.copy(image, again)
        shutil.copy(label, dataset / "labelsTr" / "again.nii.gz")
        entry = {"image": "./imagesTr/again.nii.gz", "label": "./labelsTr/again.nii.gz"}
    meta["training"].append(entry)
    (dataset / "dataset.json").write_text(json.dumps(meta))


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
    ("a case listed twice, spelt another way", lambda d: _listed_again(d, "another spelling"),
     r"{d}/dataset.json: training entries 0 and 6 name the same image file \({d}/imagesTr/synthetic_000.nii.gz\); "
     "list each case once"),
    ("a case listed twice, through a symbolic link", lambda d: _listed_again(d, "symbolic link"),
     r"{d}/dataset.json: training entries 0 and 6 name the same image file \({d}/imagesTr/synthetic_000.nii.gz\)"),
    ("a case listed twice, as an identical copy", lambda d: _listed_again(d, "identical copy"),
     "{d}/dataset.json: training entries 0 and 6 are one image: {d}/imagesTr/synthetic_000.nii.gz and "
     "{d}/imagesTr/again.nii.gz hold identical bytes"),
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


def _nan_voxel(path):
    _rewrite(path, lambda v, a: (np.where(np.arange(v.size).reshape(v.shape) == 7, np.nan, v).astype(np.float32), a))


GIVEN_CASES = {  # kind: (how to break a copy of a test image, the message that follows "<image>: ")
    "all-zero affine": (_zero_affine, "image affine is singular"),
    "RGB": (_rgb, "image voxels are RGB"),
    "symbolic link loop": (_symlink_loop, "image is a symbolic link loop"),
    "NaN voxel": (_nan_voxel, "image holds 1 NaN or Inf voxels"),
    "2D image": (lambda p: _rewrite(p, lambda v, a: (v[:, :, 0], a)), r"image has shape \(96, 96\); a 3D volume"),
    "an axis without voxels": (lambda p: _rewrite(p, lambda v, a: (v[:, :, :0], a)),
                               r"image has shape \(96, 96, 0\), an axis without voxels"),
    "two channels": (lambda p: _rewrite(p, lambda v, a: (np.stack([v, v], -1), a)),
                     r"image has 2 channels; the network and its plan take 1"),
}  # fmt: skip


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", sorted(GIVEN_CASES))
def test_images_given_with_dataset_data_are_checked_too(dataset, tmp_path, kind, num_workers):
    """``--dataset#data`` skips dataset.json, not the checks: the loader checks each file it reads (its header
    before, its voxels after), in the main process or in a data-loading worker, whose error is one line too."""
    image = tmp_path / "given.nii.gz"
    shutil.copy(_first(dataset, "imagesTs"), image)
    breaks, expected = GIVEN_CASES[kind]
    breaks(image)
    code, last, wrote = _run(
        ["inference.json"],
        tmp_path,
        dataset_dir=str(dataset),
        base_channels=32,
        num_workers=num_workers,
        **{"dataset#data": [{"image": str(image)}]},
    )
    assert code != 0 and re.match(f"DatasetError: {re.escape(str(image))}: {expected}", last), last
    assert not list((tmp_path / "out").glob("inference/*")), "no segmentation"


def test_a_training_image_read_in_a_worker_is_checked_too(dataset, tmp_path):
    """Cases given from outside (MONAI Label's route) skip the split's checks; with ``cache_rate`` 0 a worker
    reads them, and a NaN voxel is still one line naming the file."""
    broken = _copy(dataset, tmp_path)
    _nan_voxel(_first(broken, "imagesTr"))
    cases = [{"image": str(_first(broken, "imagesTr")), "label": str(_first(broken))}]
    code, last, _ = _run(
        ["train.json"],
        tmp_path,
        dataset_dir=str(dataset),
        cache_rate=0.0,
        num_workers=2,
        **{"train#dataset#data": cases},
    )
    assert code != 0 and last == f"DatasetError: {_first(broken, 'imagesTr')}: image holds 1 NaN or Inf voxels", last


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
            "is not one of ['auto', 'torch', 'torch_channels_last', 'openvino', 'openvino_bf16']",
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


def _random_geometry(rng):
    """A spatial shape (axes of 1 voxel included) and an affine: spacing 0.5-4 mm per axis, any rotation (oblique),
    flips, an origin anywhere; in 1 of 3 draws the image is 4D with one channel (MSD's channels-last layout)."""
    shape = tuple(int(rng.choice([1, int(rng.integers(2, 28))], p=[0.25, 0.75])) for _ in range(3))
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random orthogonal matrix: rotation or reflection
    if rng.random() < 0.5:  # also the axis-aligned grids scanners write, permuted and flipped
        rotation = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(rng.uniform(0.5, 4.0, size=3))
    affine[:3, 3] = rng.uniform(-200, 200, size=3)
    return shape + ((1,) if rng.random() < 1 / 3 else ()), affine


def test_segmentation_keeps_the_input_shape_and_affine(dataset, tmp_path):
    """Random shapes and affines (singleton axes, 4D with one channel, oblique and flipped grids, anisotropic
    spacing): every segmentation has the input's spatial shape and affine. (MONAI's writer dropped trailing axes of
    1 voxel: a 64 x 64 x 1 image gave a 64 x 64 segmentation.)"""
    from networks import C2FNASNet

    rng = np.random.default_rng(28)
    images = []
    for n in range(20):
        shape, affine = _random_geometry(rng)
        image = tmp_path / "given" / f"case{n:02d}.nii.gz"
        image.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(rng.normal(40, 30, size=shape).astype(np.float32), affine), str(image))
        images.append((image, shape[:3], affine))
    weights = tmp_path / "weights" / "model.pt"
    weights.parent.mkdir()
    torch.save(C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 4).state_dict(), weights)
    bundle_run(["plan.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(weights.parent)})
    code, last, _ = _run(
        ["inference.json"],
        tmp_path,
        dataset_dir=str(dataset),
        ckpt_file=str(weights),
        **{"dataset#data": [{"image": str(image)} for image, _, _ in images]},
    )
    assert code == 0, last
    for image, shape, affine in images:
        seg = nib.load(str(tmp_path / "out" / "inference" / image.name.replace(".nii.gz", "_seg.nii.gz")))
        assert seg.shape == shape, (image.name, seg.shape, shape)
        np.testing.assert_allclose(seg.affine, affine, atol=1e-3, err_msg=image.name)


def test_auto3dseg_folds_refuse_a_case_listed_twice(dataset, tmp_path):
    """Auto3DSeg's datalist: a case listed again (another spelling of its path) in another fold is refused before
    the fold's split is made, naming both entries."""
    import importlib.util

    template = BUNDLE.parent / "auto3dseg" / "c2fnas" / "scripts" / "train.py"
    spec = importlib.util.spec_from_file_location("c2fnas_auto3dseg_train", template)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    meta = json.loads((dataset / "dataset.json").read_text())
    training = [{**item, "fold": i % 5} for i, item in enumerate(meta["training"])]
    training.append({"image": "imagesTr/../" + training[0]["image"], "label": training[0]["label"], "fold": 4})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"labels": meta["labels"], "modality": meta["modality"], "training": training}))
    settings = {"bundle_root": str(BUNDLE), "data_list_file": str(datalist), "data_root": str(dataset), "fold": 0,
                "data_stats_file": str(tmp_path / "datastats.yaml"), "algo_dir": str(tmp_path / "algo")}  # fmt: skip
    with pytest.raises(ValueError, match=rf"^{re.escape(str(datalist))}: training entries 0 and 6 name the same image"):
        train.task_view(settings)
    assert not (tmp_path / "algo").exists()
