"""Datasets in the Medical Segmentation Decathlon (MSD) layout: the seeded train/validation split, the test list,
and the embedded default, a small synthetic pancreas CT dataset generated on first use.

MSD layout: ``<dataset_dir>/dataset.json`` with ``"training": [{"image": "./imagesTr/x.nii.gz", "label":
"./labelsTr/x.nii.gz"}, ...]`` and optionally ``"test": ["./imagesTs/y.nii.gz", ...]``; paths are relative to
``dataset_dir``. ``labels`` (``{"0": "background", "1": ...}``) names the label values and ``modality``
(``{"0": "CT"}``, or one entry per channel of a 4D image) the image channels; both are required for training.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from scripts.errors import DatasetError, one_line

__all__ = [
    "DatasetError",
    "ensure_dataset",
    "check_case",
    "check_image_file",
    "dataset_classes",
    "dataset_modalities",
    "SplitList",
    "check_distinct_cases",
    "split_datalist",
    "test_datalist",
    "generate_synthetic_dataset",
]

PathLike = Union[str, os.PathLike]


def ensure_dataset(dataset_dir: PathLike, synthetic_dir: Optional[PathLike] = None, num_cases: int = 24) -> Path:
    """``dataset_dir``, after generating the synthetic dataset there when it is the default (``synthetic_dir``) and
    has no ``dataset.json`` yet, or one written by another version of the generator (``SYNTHETIC_META``'s
    ``generator``; the old set is replaced whole, never mixed)."""
    dataset_dir = Path(dataset_dir)
    is_default = synthetic_dir is not None and dataset_dir.resolve() == Path(synthetic_dir).resolve()
    if not is_default:
        return dataset_dir
    meta_file = dataset_dir / "dataset.json"

    def current() -> bool:
        return json.loads(meta_file.read_text()).get("generator") == SYNTHETIC_META["generator"]

    if not meta_file.exists():
        generate_synthetic_dataset(dataset_dir, num_cases=num_cases)
    elif not current():
        fresh = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}.new.", dir=dataset_dir.parent))
        try:
            generate_synthetic_dataset(fresh / "dataset", num_cases=num_cases)
            if not current():  # another process (a DDP rank) may have replaced it meanwhile
                os.replace(dataset_dir, fresh / "stale")
                os.replace(fresh / "dataset", dataset_dir)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
    return dataset_dir


def _read_dataset_json(dataset_dir: Path) -> dict:
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir}: dataset directory does not exist")
    path = dataset_dir / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; an MSD dataset needs a dataset.json with a 'training' list") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list) or not meta["training"]:
        raise DatasetError(f"{path}: needs a non-empty 'training' list of {{'image': ..., 'label': ...}} pairs")
    return meta


def _resolve(dataset_dir: Path, relative: object, source: Path, what: str) -> str:
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{source}: {what} must be a path relative to the dataset, got {relative!r}")
    try:
        path = (dataset_dir / relative).resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a symlink loop so
        raise DatasetError(f"{source}: {what} {relative!r} is a symbolic link loop") from None
    except OSError as e:
        reason = "is a symbolic link loop" if e.errno == errno.ELOOP else "does not exist"
        raise DatasetError(f"{source}: {what} {relative!r} {reason} ({dataset_dir / relative})") from None
    if not path.is_file():
        raise DatasetError(f"{source}: {what} {relative!r} is not a file ({path})")
    return str(path)


def check_image_file(path: PathLike, what: str = "image") -> None:
    """Check a NIfTI file from its header alone (cheap, for every way an image arrives: dataset.json,
    ``--dataset#data``, MONAI Label); raises ``DatasetError`` naming the file when it is missing or a symbolic
    link loop, not readable as NIfTI, has an axis of no voxels, holds RGB or complex voxels, or has a singular
    (e.g. all-zero) affine.
    ``check_case`` reads the voxels after it (channels, NaN, labels)."""
    import nibabel as nib

    if not isinstance(path, (str, os.PathLike)):
        raise DatasetError(f"{what} must be a file path, got {path!r}")
    try:
        os.stat(path)
    except OSError as e:
        reason = "is a symbolic link loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"
        raise DatasetError(f"{path}: {what} {reason}") from None
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} is not a file")
    try:
        volume = nib.load(str(path))
        dtype, affine, shape = volume.get_data_dtype(), volume.affine, volume.shape
    except Exception as e:
        raise DatasetError(f"{path}: cannot read this {what} as NIfTI ({one_line(e)})") from None
    if 0 in shape:
        raise DatasetError(f"{path}: {what} has shape {shape}, an axis without voxels")
    if dtype.fields is not None or dtype.kind not in "biuf":
        kind = "RGB" if dtype.fields is not None else "complex" if dtype.kind == "c" else str(dtype)
        raise DatasetError(f"{path}: {what} voxels are {kind} ({dtype}); one real number per voxel is expected")
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DatasetError(
            f"{path}: {what} affine is singular or not finite (e.g. all zero); its voxel spacing "
            "and orientation are unknown"
        )


def _load_volume(path: str, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(voxels, affine)`` of a NIfTI file, read completely (a truncated file fails here, not mid-training)."""
    import nibabel as nib

    try:
        volume = nib.load(path)
        return np.asanyarray(volume.dataobj), volume.affine
    except Exception as e:
        raise DatasetError(f"{path}: cannot read this {what} as NIfTI ({one_line(e)})") from None


_CHECKED: Dict[tuple, bool] = {}  # (paths, sizes, modification times, expectations) that passed -> has foreground


def _numbered(meta: dict, key: str, source: PathLike, minimum: int, names: str, numbers: str, order: str) -> dict:
    """dataset.json's ``key`` as ``{int: str}`` with keys 0, 1, ... and at least ``minimum`` entries; the messages
    say what it ``names`` (with an example), what its keys are (``numbers``) and their ``order``."""
    entries = meta.get(key)
    if not isinstance(entries, dict) or len(entries) < minimum:
        raise DatasetError(f"{source}: needs '{key}' naming {names}")
    try:
        numbered = {int(k): str(v) for k, v in entries.items()}
    except ValueError:
        raise DatasetError(f"{source}: '{key}' keys must be {numbers} 0, 1, ...; got {sorted(entries)}") from None
    if sorted(numbered) != list(range(len(numbered))):
        raise DatasetError(f"{source}: '{key}' must number {order}; got {sorted(numbered)}")
    return numbered


def dataset_classes(meta: dict, source: PathLike) -> Dict[int, str]:
    """``{label value: class name}`` from dataset.json's ``labels``; values must be 0 (background), 1, ..., K."""
    names = 'the label values, e.g. {"0": "background", "1": "organ"}'
    return _numbered(meta, "labels", source, 2, names, "label values", "the classes 0 (background), 1, 2, ...")


def dataset_modalities(meta: dict, source: PathLike) -> List[str]:
    """The image channels' modalities from dataset.json's ``modality``: ``{"0": "CT"}``, ``{"0": "T2", "1": "ADC"}``."""
    names = 'each image channel, e.g. {"0": "CT"}'
    channels = _numbered(meta, "modality", source, 1, names, "channel numbers", "the channels 0, 1, ...")
    return [channels[i] for i in range(len(channels))]


def check_case(image: str, label: Optional[str] = None, num_classes: int = 3, channels: int = 1) -> bool:
    """Whether the label holds foreground (False without a label), after reading the case; raises ``DatasetError``
    naming the file when: it cannot be read (missing, truncated, not
    NIfTI); the image is not 3D with ``channels`` channels (a 4D NIfTI holds them on its last axis, as MSD does)
    or the label not 3D; it holds NaN or Inf; the label has values outside ``0..num_classes - 1``; image and label
    differ in spatial shape or affine."""
    paths = (image,) if label is None else (image, label)
    key = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths if os.path.exists(p))
    key += (num_classes, channels)
    if key in _CHECKED:
        return _CHECKED[key]
    volumes = {}
    for path, what in zip(paths, ("image", "label")):
        check_image_file(path, what)
        voxels, affine = _load_volume(path, what)
        expected = channels if what == "image" else 1
        if voxels.ndim == 4 and voxels.shape[3] == 1:
            voxels = voxels[..., 0]
        found = voxels.shape[3] if voxels.ndim == 4 else 1 if voxels.ndim == 3 else None
        if found != expected:
            want = "one 3D channel" if expected == 1 else f"{expected} channels (4D, channels last)"
            source = " (dataset.json 'modality')" if what == "image" else ""
            raise DatasetError(f"{path}: {what} has shape {voxels.shape}; {want} is expected{source}")
        if voxels.dtype.kind == "f" and not np.isfinite(voxels).all():
            raise DatasetError(f"{path}: {what} holds {int((~np.isfinite(voxels)).sum())} NaN or Inf voxels")
        volumes[what] = voxels, affine
    if label is not None:
        (voxels, affine), (image_voxels, image_affine) = volumes["label"], volumes["image"]
        bad = (voxels < 0) | (voxels > num_classes - 1) | (voxels != np.round(voxels))
        if bad.any():
            values = sorted(set(np.unique(voxels[bad]).tolist()))[:5]
            raise DatasetError(
                f"{label}: label values must be 0..{num_classes - 1} (dataset.json 'labels'); found {values}"
            )
        if voxels.shape != image_voxels.shape[:3]:
            raise DatasetError(
                f"{label}: label shape {voxels.shape} differs from image {image} {image_voxels.shape[:3]}"
            )
        if not np.allclose(affine, image_affine, atol=1e-3):
            raise DatasetError(f"{label}: label affine differs from image {image}; both must share one voxel grid")
    _CHECKED[key] = label is not None and bool((volumes["label"][0] > 0).any())
    return _CHECKED[key]


_DIGESTS: Dict[tuple, str] = {}  # (path, size, modification time) -> sha1 of the file's bytes


def _file_digest(path: str, stat: os.stat_result) -> str:
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def check_distinct_cases(pairs: List[Dict[str, str]], source: PathLike) -> None:
    """Refuse, with one ``DatasetError`` naming both entries, two training entries of ``source`` that are one case:
    the same image file (the paths are resolved, so another spelling or a symbolic link is the same file; a hard
    link is the same inode), the same label file, or two image files with identical bytes. Otherwise the seeded
    split could put one case in both the training and the validation part, and every validation Dice would be
    partly a training score. Only files of equal size are hashed, so a dataset of distinct cases costs one
    ``stat`` per file."""
    seen: Dict[tuple, int] = {}
    by_size: Dict[int, List[int]] = {}
    stats = [{key: os.stat(item[key]) for key in ("image", "label")} for item in pairs]
    for i, item in enumerate(pairs):
        for key in ("image", "label"):
            identity = (key, stats[i][key].st_dev, stats[i][key].st_ino)
            if identity in seen:
                j = seen[identity]
                raise DatasetError(
                    f"{source}: training entries {j} and {i} name the same {key} file ({item[key]}); list each "
                    "case once, or it can be in both the training and the validation part"
                )
            seen[identity] = i
        by_size.setdefault(stats[i]["image"].st_size, []).append(i)
    for group in (g for g in by_size.values() if len(g) > 1):
        digests: Dict[str, int] = {}
        for i in group:
            digest = _file_digest(pairs[i]["image"], stats[i]["image"])
            if digest in digests:
                j = digests[digest]
                raise DatasetError(
                    f"{source}: training entries {j} and {i} are one image: {pairs[j]['image']} and "
                    f"{pairs[i]['image']} hold identical bytes; list each case once, or it can be in both the "
                    "training and the validation part"
                )
            digests[digest] = i


class SplitList(list):
    """A part of the split made by ``split_datalist``: a plain list of cases that also tells a stage its data are
    the bundle's own split, not cases given from outside (MONAI Label's train task, ``--train#dataset#data``)."""


def split_datalist(
    dataset_dir: PathLike,
    split: str = "training",
    val_fraction: float = 0.2,
    seed: int = 0,
    max_cases: int = 0,
    check: bool = True,
) -> List[Dict[str, str]]:
    """The ``training`` or ``validation`` part of a seeded split of the MSD ``training`` pairs (absolute paths).

    Two entries that are one case are refused (``check_distinct_cases``), so no image is in both parts.
    ``max_cases`` > 0 keeps only the first cases of the split (quick runs). With ``check``, every case of the part
    is read once and checked (``check_case``) before anything else runs, so bad data fails at once with its name,
    and a part whose labels hold no foreground at all is refused.
    """
    if split not in ("training", "validation"):
        raise ValueError(f"split must be 'training' or 'validation', got {split!r}")
    dataset_dir = Path(dataset_dir)
    meta = _read_dataset_json(dataset_dir)
    source = dataset_dir / "dataset.json"
    num_classes, channels = len(dataset_classes(meta, source)), len(dataset_modalities(meta, source))
    pairs = []
    for i, item in enumerate(meta["training"]):
        if not isinstance(item, dict) or not {"image", "label"} <= set(item):
            raise DatasetError(f"{source}: training entry {i} must have 'image' and 'label', got {item!r}")
        pairs.append(
            {
                "image": _resolve(dataset_dir, item["image"], source, f"training entry {i} image"),
                "label": _resolve(dataset_dir, item["label"], source, f"training entry {i} label"),
            }
        )
    check_distinct_cases(pairs, source)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(pairs))) if val_fraction > 0 else 0
    chosen = order[:n_val] if split == "validation" else order[n_val:]
    if not chosen:
        raise DatasetError(
            f"{source}: the {split} split is empty ({len(pairs)} labelled cases, val_fraction {val_fraction}); "
            "add cases or change val_fraction"
        )
    data = [pairs[i] for i in sorted(chosen)]
    data = data[:max_cases] if max_cases > 0 else data
    foreground = [check_case(item["image"], item["label"], num_classes, channels) for item in (data if check else [])]
    if check and not any(foreground):
        raise DatasetError(
            f"{source}: no label of the {split} split ({len(data)} cases) holds foreground; there is nothing to "
            "learn or score"
        )
    return SplitList(data)


def test_datalist(dataset_dir: PathLike, check: bool = True, channels: int = 1) -> List[Dict[str, str]]:
    """Images to segment: the ``test`` list of dataset.json, else every ``imagesTs/*.nii.gz`` (each checked with
    ``check_case`` when ``check``, for the ``channels`` the network takes)."""
    dataset_dir = Path(dataset_dir)
    meta = _read_dataset_json(dataset_dir)
    source = dataset_dir / "dataset.json"
    tests = meta.get("test")
    if tests is not None and not isinstance(tests, list):
        raise DatasetError(f"{source}: 'test' must be a list of image paths, got {type(tests).__name__}")
    if tests:
        images = [t.get("image") if isinstance(t, dict) else t for t in tests]
        data = [{"image": _resolve(dataset_dir, img, source, f"test entry {n}")} for n, img in enumerate(images)]
    else:
        data = [{"image": str(p.resolve())} for p in sorted((dataset_dir / "imagesTs").glob("*.nii*"))]
    if not data:
        raise DatasetError(f"{source}: no test images (no 'test' list and nothing in {dataset_dir / 'imagesTs'})")
    seen: Dict[str, str] = {}
    for item in data:
        name, extension = os.path.splitext(Path(item["image"]).name)  # as MONAI's SaveImage names <name>_seg
        name = os.path.splitext(name)[0] if extension == ".gz" else name
        if name in seen:
            raise DatasetError(
                f"{source}: test images {seen[name]} and {item['image']} share the name {name!r}; their "
                "segmentations would overwrite each other"
            )
        seen[name] = item["image"]
    for item in data if check else []:
        check_case(item["image"], channels=channels)
    return data


# ---------------------------------------------------------------------------- synthetic data
def _ellipsoid(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    local = np.einsum("ij,j...->i...", rotation, grid - centre[:, None, None, None])
    return ((local / radii[:, None, None, None]) ** 2).sum(0) <= 1.0


def _rotation(r: np.random.Generator, max_angle: float) -> np.ndarray:
    a, b, c = r.uniform(-max_angle, max_angle, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(r: np.random.Generator, shape, cells: int) -> np.ndarray:
    """A smooth random field of ``shape`` with zero mean and unit standard deviation: Gaussian noise on a coarse
    grid of about ``cells`` nodes per axis, interpolated trilinearly."""
    import torch

    coarse = torch.from_numpy(r.normal(0, 1, [max(2, min(cells, n)) for n in shape]).astype(np.float32))
    field = torch.nn.functional.interpolate(coarse[None, None], size=tuple(shape), mode="trilinear")[0, 0].numpy()
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _pancreatic_mass(r: np.random.Generator, mm: np.ndarray, organ_mm: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """A lobulated mass centred in the organ, as a boolean mask on the grid ``mm`` (3, X, Y, Z) in mm.

    Longest diameter log-uniform in 10-40 mm (AJCC pancreas T1 <= 20 mm and T2 20-40 mm, the resectable masses of
    MSD Task07), capped at 0.4 of the smaller in-plane field of view so small test volumes keep some organ; the other
    two axes 0.6-1.0 of it; one to three lobes on its surface."""
    diameter = min(float(np.exp(r.uniform(np.log(10.0), np.log(40.0)))), 0.4 * float(min(extent[:2])))
    radii = diameter / 2 * np.array([1.0, r.uniform(0.6, 1.0), r.uniform(0.6, 1.0)])
    centre = organ_mm[r.integers(len(organ_mm))]
    rotation = _rotation(r, np.pi)
    mass = _ellipsoid(mm, centre, radii, rotation)
    for _ in range(r.integers(1, 4)):
        towards = r.normal(size=3)
        lobe_centre = centre + towards / np.linalg.norm(towards) * radii.min() * r.uniform(0.5, 0.9)
        mass |= _ellipsoid(mm, lobe_centre, radii * r.uniform(0.35, 0.6), _rotation(r, np.pi))
    return mass


def synthetic_case(seed: int, shape=(96, 96, 40), spacing=(1.0, 1.0, 2.5)) -> tuple:
    """One synthetic portal-venous abdominal CT slab in HU and its label, ``(image int16, label uint8)`` of
    ``shape``: 0 background, 1 pancreas, 2 pancreatic mass.

    Air outside an elliptic body (-1000 HU), fat (-100) and soft tissue (40) inside, a spine (400), and a curved
    pancreas-like organ (head to tail along a random arc over 60-75 % of the field's width, 18-24 mm thick at the
    head and 10-16 mm at the tail; at the default size 10-19 mL without its mass, median 16 mL, over seeds 0-39)
    enhancing to 90-130 HU. Every case has a mass, as every case of MSD Task07 does: Simpson et al. 2019, "A large
    annotated medical image dataset for the development and evaluation of segmentation algorithms",
    arXiv:1902.09063, describe it as portal-venous CT of patients undergoing resection of a pancreatic mass
    (intraductal mucinous neoplasm, neuroendocrine tumour or ductal adenocarcinoma), labelled as pancreas and mass
    (cyst or tumour). So the mass is drawn from those three kinds:

    - size: longest diameter log-uniform in 10-40 mm (median 20 mm), the range of the AJCC 8th edition's T1
      (<= 2 cm) and T2 (2-4 cm) pancreatic tumours, i.e. resectable masses. Over seeds 0-39 the labelled mass is
      0.3-18 mL (median 3.0 mL, 16 % of organ and mass). (Task07's per-case volumes were not reachable from where
      this generator was written; this range is the stated assumption.)
    - shape: a rotated ellipsoid with one to three lobes, centred in the organ and free to expand it (mass
      effect), as exophytic masses and cysts do;
    - contrast: 60 % solid hypo-attenuating (ductal adenocarcinoma: 25-60 HU below the parenchyma, with a smooth
      internal heterogeneity of 8 HU), 30 % cystic (0-25 HU, near water), 10 % hyper-enhancing (neuroendocrine
      tumour: 20-40 HU above the parenchyma).

    Noise is Gaussian (sigma 15 HU). Spacing is anisotropic (thick axial slices). Positions, sizes and orientation
    vary per case.
    """
    r = np.random.default_rng(seed)
    mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")).astype(np.float32)
    extent = np.array(shape) * np.array(spacing)
    centre = extent / 2
    image = np.full(shape, -1000.0, np.float32)
    body = _ellipsoid(mm, centre + [0, r.uniform(-3, 3), 0], np.array([0.46, 0.38, 10.0]) * extent, np.eye(3))
    image[body] = 40.0
    fat = body & ~_ellipsoid(mm, centre, np.array([0.40, 0.31, 10.0]) * extent, np.eye(3))
    image[fat] = -100.0
    spine = _ellipsoid(mm, centre + [0, 0.25 * extent[1], 0], np.array([8.0, 8.0, 1e3]), np.eye(3))
    image[spine] = 400.0
    label = np.zeros(shape, np.uint8)
    start = centre + [-r.uniform(0.3, 0.38) * extent[0], r.uniform(-8, 8), r.uniform(-8, 8)]
    direction = np.array([1.0, r.uniform(-0.4, 0.4), r.uniform(-0.3, 0.3)])
    bend = r.uniform(-0.01, 0.01)
    length = r.uniform(0.6, 0.75) * extent[0]
    for t in np.linspace(0, length, 13):  # head to tail: thickness tapers from 18-24 mm to 10-16 mm
        point = start + t * direction / np.linalg.norm(direction) + [0, bend * t * t, 0]
        head = 1.0 - t / length
        radii = np.array([r.uniform(6, 9), r.uniform(5, 8), r.uniform(5, 8)]) + 4.0 * head
        label[_ellipsoid(mm, point, radii, _rotation(r, 0.5)) & body & ~spine] = 1
    parenchyma = r.uniform(90, 130)
    image[label == 1] = parenchyma
    organ_mm = np.argwhere(label == 1) * np.array(spacing)
    if len(organ_mm):
        mass = _pancreatic_mass(r, mm, organ_mm, extent) & body & ~spine
        kind = r.choice(3, p=[0.6, 0.3, 0.1])
        hu = [parenchyma - r.uniform(25, 60), r.uniform(0, 25), parenchyma + r.uniform(20, 40)][kind]
        texture = 8.0 * _smooth_field(r, shape, 8) if kind == 0 else 0.0
        label[mass] = 2
        image[mass] = (hu + texture)[mass] if kind == 0 else hu
    image += r.normal(0, 15, shape).astype(np.float32)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def _save_nifti(array: np.ndarray, spacing, path: Path) -> None:
    import nibabel as nib

    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like scanner axes, as CT usually comes
    nib.save(nib.Nifti1Image(array, affine), str(path))


SYNTHETIC_META = {
    "name": "SyntheticPancreas",
    "description": "Synthetic abdominal CT slabs with a pancreas-like organ and tumour (generated)",
    "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
    "generator": "scripts.data.synthetic_case/2",
}


def generate_synthetic_dataset(
    dataset_dir: PathLike,
    num_cases: int = 24,
    num_test: int = 2,
    seed: int = 0,
    shape=(96, 96, 40),
    case: Callable[..., tuple] = synthetic_case,
    meta: Optional[dict] = None,
    spacing=(1.0, 1.0, 2.5),
) -> Path:
    """Write ``num_cases`` labelled and ``num_test`` unlabelled synthetic cases in MSD layout, atomically (into a
    temporary folder, then renamed), so an interrupted generation leaves nothing half-written. ``case(seed, shape,
    spacing) -> (image, label)`` makes one case (image ``shape`` or ``(*shape, channels)``, saved as a 4D NIfTI
    with channels last, as MSD does); ``meta`` gives its ``name``, ``description``, ``labels`` and, for other
    images than one CT channel, ``modality``."""
    dataset_dir = Path(dataset_dir)
    if (dataset_dir / "dataset.json").exists():
        raise DatasetError(f"{dataset_dir}: already holds a dataset; not overwriting it")
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}.", dir=dataset_dir.parent))
    try:
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / folder).mkdir()
        training, test = [], []
        for i in range(num_cases + num_test):
            image, label = case(seed * 100003 + i, shape, spacing)
            name = f"synthetic_{i:03d}.nii.gz"
            if i < num_cases:
                _save_nifti(image, spacing, tmp / "imagesTr" / name)
                _save_nifti(label, spacing, tmp / "labelsTr" / name)
                training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
            else:
                _save_nifti(image, spacing, tmp / "imagesTs" / name)
                test.append(f"./imagesTs/{name}")
        described = meta or SYNTHETIC_META
        modality = described.get("modality", {"0": "CT"})
        meta = {
            "name": described["name"],
            "description": described["description"],
            "tensorImageSize": "4D" if len(modality) > 1 else "3D",
            "modality": modality,
            "labels": described["labels"],
            "numTraining": num_cases,
            "numTest": num_test,
            "training": training,
            "test": test,
        }
        if "generator" in described:
            meta["generator"] = described["generator"]
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
        if dataset_dir.exists():
            dataset_dir.rmdir()  # an empty folder may stand in the way; a non-empty one raises
        os.replace(tmp, dataset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataset_dir
