"""Generated MSD-layout tasks beside the bundle's embedded synthetic pancreas, for the benchmarks and the tests.

- ``tubes``: CT-like, 2 foreground classes told apart only by context along the slice axis (search quality).
- ``prostate_mr``: 2-channel MR-like 4D images (T2, ADC), 2 zones, anisotropic 0.6 × 0.6 × 3 mm.
- ``kidney_ct``: 1-channel CT-like, 1 contrast-enhanced organ (about 180 HU), 0.8 × 0.8 × 1.5 mm.
- ``brain_mr``: real anatomy: a real T1 MR head and its hand-drawn atlas (``benchmarks/mricron_source.py``, fetched
  from Debian's ``mricron-data`` at first use), 4 structures of different sizes, each case a random smooth
  deformation with its own intensities and noise, 2 mm. The tests do not use it.

``dataset(name, folder)`` generates one (24 labelled cases, 2 test images unless told) once into ``folder``.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"

TUBES_META = {
    "name": "SyntheticTubes",
    "description": "Bright tubes along the slice axis in a CT-like body; a tube's length decides its class (generated)",
    "labels": {"0": "background", "1": "short tube", "2": "long tube"},
}
PROSTATE_MR_META = {
    "name": "SyntheticProstateMR",
    "description": "Two-channel MR-like volumes (T2, ADC) with a peripheral and a transition zone (generated)",
    "modality": {"0": "T2", "1": "ADC"},
    "labels": {"0": "background", "1": "peripheral zone", "2": "transition zone"},
}
KIDNEY_CT_META = {
    "name": "SyntheticKidneyCT",
    "description": "CT-like volumes with one contrast-enhanced kidney-like organ (generated)",
    "labels": {"0": "background", "1": "kidney"},
}

BRAIN_MR_META = {
    "name": "ColinAALDeformed",
    "description": "Random smooth deformations of the Colin27 T1 MR head with its hand-drawn AAL atlas grouped into "
    "4 structures (Debian mricron-data, BSD-3-clause; generated)",
    "modality": {"0": "T1"},
    "labels": {"0": "background", "1": "cerebellum", "2": "basal ganglia", "3": "thalamus", "4": "hippocampus"},
}
# AAL region names (prefixes) of each class of BRAIN_MR_META; about 195, 37, 17 and 15 mL on the atlas
BRAIN_MR_CLASSES = {
    1: ("Cerebelum_", "Vermis_"),
    2: ("Caudate_", "Putamen_", "Pallidum_"),
    3: ("Thalamus_",),
    4: ("Hippocampus_",),
}
BRAIN_MR_CENTRE_MM = (1.5, -31.5, -17.5)  # centre of the 4 structures' bounding box on the atlas (MNI, mm)


def _grid(shape, spacing) -> List[np.ndarray]:
    return np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, spacing)], indexing="ij")


def tubes_case(seed: int, shape=(96, 96, 40), spacing=(1.0, 1.0, 2.5)) -> tuple:
    """Six enhanced tubes (110 HU) along the slice axis in a soft tissue body (40 HU, noise sigma 15 HU), three
    short (12-20 mm, class 1) and three long (40-60 mm, class 2). Their cross-sections (radius 3-4.5 mm) come from
    one distribution, so no single slice tells the classes apart: only context along the slice axis does, which
    the ops (2D, P3D, 3D) and the depth of a topology give in different amounts. ``(image int16 HU, label uint8)``
    of ``shape``."""
    r = np.random.default_rng(seed)
    x, y, z = _grid(shape, spacing)
    extent = np.array(shape) * np.array(spacing)
    cx, cy = extent[0] / 2, extent[1] / 2
    body = ((x - cx) / (0.46 * extent[0])) ** 2 + ((y - cy) / (0.38 * extent[1])) ** 2 <= 1
    image = np.where(body, 40.0, -1000.0).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    centres: List[tuple] = []
    for i in range(6):
        cls = 1 + i % 2
        for _ in range(200):  # in the body, at least 14 mm from the other tubes
            px, py = cx + r.uniform(-0.3, 0.3) * extent[0], cy + r.uniform(-0.22, 0.22) * extent[1]
            if all((px - qx) ** 2 + (py - qy) ** 2 >= 14**2 for qx, qy in centres):
                break
        centres.append((px, py))
        radius = r.uniform(3.0, 4.5)
        length = r.uniform(12, 20) if cls == 1 else r.uniform(40, 60)
        z0 = r.uniform(5, extent[2] - length - 5)
        tube = ((x - px) ** 2 + (y - py) ** 2 <= radius**2) & (z >= z0) & (z < z0 + length)
        label[tube], image[tube] = cls, 110.0
    image += r.normal(0, 15, shape).astype(np.float32)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def prostate_mr_case(seed: int, shape=(128, 128, 24), spacing=(0.6, 0.6, 3.0)) -> tuple:
    """A pelvis-like ellipse (zero outside, as MR is) holding a gland: a transition zone (class 2) in front of a
    crescent-shaped peripheral zone (class 1). Channel 0 (T2-like): body 300, transition zone 450, peripheral zone
    650; channel 1 (ADC-like): body 1000, transition 800, peripheral 1300; multiplicative bias field and Gaussian
    noise. ``(image float32 (*shape, 2), label uint8 shape)``."""
    r = np.random.default_rng(seed)
    x, y, z = _grid(shape, spacing)
    extent = np.array(shape) * np.array(spacing)
    c = extent / 2 + np.array([r.uniform(-4, 4), r.uniform(-4, 4), r.uniform(-6, 6)])
    body = ((x - extent[0] / 2) / (0.45 * extent[0])) ** 2 + ((y - extent[1] / 2) / (0.4 * extent[1])) ** 2 <= 1
    radii = np.array([r.uniform(14, 18), r.uniform(11, 14), r.uniform(14, 20)])
    gland = ((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2 <= 1
    inner = ((x - c[0]) / (0.65 * radii[0])) ** 2 + ((y - c[1] + 0.25 * radii[1]) / (0.6 * radii[1])) ** 2
    inner = gland & (inner + ((z - c[2]) / (0.8 * radii[2])) ** 2 <= 1)
    label = np.zeros(shape, np.uint8)
    label[gland & body] = 1
    label[inner & body] = 2
    bias = 1 + 0.15 * np.sin(x / extent[0] * np.pi + r.uniform(0, np.pi)) * np.cos(y / extent[1] * np.pi)
    channels = []
    for values, sigma in (((300.0, 650.0, 450.0), 30.0), ((1000.0, 1300.0, 800.0), 60.0)):
        channel = np.where(body, values[0], 0.0)
        channel[label == 1], channel[label == 2] = values[1], values[2]
        channel = channel * bias + body * r.normal(0, sigma, shape)
        channels.append(np.clip(channel, 0, None))
    return np.stack(channels, -1).astype(np.float32), label


def kidney_ct_case(seed: int, shape=(80, 80, 48), spacing=(0.8, 0.8, 1.5)) -> tuple:
    """An abdomen-like body (air -1000, fat -90, soft tissue 50 HU) with a bean-shaped, contrast-enhanced organ
    (cortex 190 HU, medulla 120 HU) and a bright bone (700 HU); noise sigma 20 HU. ``(image int16, label uint8)``."""
    r = np.random.default_rng(seed)
    x, y, z = _grid(shape, spacing)
    extent = np.array(shape) * np.array(spacing)
    cx, cy = extent[0] / 2, extent[1] / 2
    body = ((x - cx) / (0.47 * extent[0])) ** 2 + ((y - cy) / (0.42 * extent[1])) ** 2 <= 1
    image = np.where(body, 50.0, -1000.0)
    image[body & (((x - cx) / (0.47 * extent[0])) ** 2 + ((y - cy) / (0.42 * extent[1])) ** 2 > 0.8)] = -90.0
    image[((x - cx) ** 2 + (y - cy - 0.25 * extent[1]) ** 2 <= 36)] = 700.0
    k = np.array([cx + r.uniform(-14, -6), cy + r.uniform(-5, 5), extent[2] / 2 + r.uniform(-6, 6)])
    radii = np.array([r.uniform(9, 12), r.uniform(6, 8), r.uniform(16, 22)])
    organ = (((x - k[0]) / radii[0]) ** 2 + ((y - k[1]) / radii[1]) ** 2 + ((z - k[2]) / radii[2]) ** 2 <= 1) & body
    hilum = ((x - k[0] - radii[0]) / (0.5 * radii[0])) ** 2 + ((y - k[1]) / radii[1]) ** 2 <= 1
    organ &= ~hilum
    medulla = organ & (((x - k[0]) / radii[0]) ** 2 + ((y - k[1]) / radii[1]) ** 2 <= 0.35)
    image[organ], image[medulla] = 190.0, 120.0
    image += r.normal(0, 20, shape)
    return np.clip(image, -1024, 3071).astype(np.int16), organ.astype(np.uint8)


@lru_cache(maxsize=1)
def _brain_source() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1, class map, affine)`` on the source's 1 mm grid: the atlas's regions grouped by ``BRAIN_MR_CLASSES``."""
    from benchmarks import mricron_source

    t1, atlas, affine, names = mricron_source.load()
    lookup = np.zeros(256, np.uint8)
    for cls, prefixes in BRAIN_MR_CLASSES.items():
        for value, name in names.items():
            if name.startswith(prefixes):
                lookup[value] = cls
    return t1, lookup[atlas], affine


def bundle_importable() -> None:
    """The bundle's own ``scripts`` package importable in this process, as the bundle's ``initialize`` does."""
    if str(BUNDLE) not in sys.path:
        sys.path.insert(0, str(BUNDLE))


def brain_mr_case(seed: int, shape=(72, 72, 56), spacing=(2.0, 2.0, 2.0)) -> tuple:
    """The real T1 head and its atlas classes, resampled onto a ``shape`` grid of ``spacing`` mm centred on the
    structures, through a random deformation: rotation up to 8 degrees about each axis, scaling 0.92-1.08 per axis,
    a shift up to 4 mm and a smooth displacement field (standard deviation 2 mm per axis, on a grid of about 5
    nodes per axis). Intensities: a smooth multiplicative bias field (about ±25 %), a gamma of 0.8-1.25, a scale of
    400-900 and Gaussian noise of 1.5-4 % of its 99th percentile, as magnitude (non-negative). ``(image int16,
    label uint8)``; labels by nearest neighbour."""
    import torch

    bundle_importable()
    from scripts.data import _rotation, _smooth_field  # those of the synthetic CT cases

    t1, classes, affine = _brain_source()
    r = np.random.default_rng(seed)
    shape, spacing, centre = tuple(shape), np.asarray(spacing, float), np.asarray(BRAIN_MR_CENTRE_MM)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    points = centre + (index - (np.array(shape) - 1) / 2) * spacing  # output voxel centres in mm
    linear = _rotation(r, np.deg2rad(8)) @ np.diag(r.uniform(0.92, 1.08, size=3))
    displacement = 2.0 * np.stack([_smooth_field(r, shape, 5) for _ in range(3)], -1)
    source_mm = centre + (points - centre) @ linear.T + r.uniform(-4, 4, size=3) + displacement
    source_index = (source_mm - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    size = np.array(t1.shape, float)
    grid = torch.from_numpy((2 * source_index / (size - 1) - 1)[..., ::-1].copy()).float()[None]  # (1, X, Y, Z, 3)

    def sample(volume: np.ndarray, mode: str) -> np.ndarray:
        values = torch.from_numpy(volume.astype(np.float32))[None, None]
        return torch.nn.functional.grid_sample(values, grid, mode=mode, padding_mode="zeros", align_corners=True)[0, 0]

    image = sample(t1, "bilinear").numpy()
    label = sample(classes, "nearest").numpy().round().astype(np.uint8)
    bias = np.exp(0.125 * _smooth_field(r, shape, 4))
    image = np.clip(image / 110.0, 0, None) ** r.uniform(0.8, 1.25) * bias * r.uniform(400, 900)
    image = np.abs(image + r.normal(0, r.uniform(0.015, 0.04) * np.percentile(image, 99), shape))
    return np.clip(image, 0, 32767).astype(np.int16), label


TASKS: Dict[str, Dict[str, Any]] = {
    "tubes": {"case": tubes_case, "meta": TUBES_META, "shape": (96, 96, 40), "spacing": (1.0, 1.0, 2.5)},
    "prostate_mr": {
        "case": prostate_mr_case,
        "meta": PROSTATE_MR_META,
        "shape": (128, 128, 24),
        "spacing": (0.6, 0.6, 3.0),
    },
    "kidney_ct": {"case": kidney_ct_case, "meta": KIDNEY_CT_META, "shape": (80, 80, 48), "spacing": (0.8, 0.8, 1.5)},
    "brain_mr": {"case": brain_mr_case, "meta": BRAIN_MR_META, "shape": (72, 72, 56), "spacing": (2.0, 2.0, 2.0)},
}


def dataset(name: str, folder: Path, num_cases: int = 24, num_test: int = 2, seed: int = 0) -> Path:
    """Task ``name`` of ``TASKS`` in MSD layout, generated once into ``folder`` (reused when already there); another
    ``seed`` draws other cases (a held-out set)."""
    bundle_importable()
    from scripts.data import generate_synthetic_dataset

    task: Dict[str, Any] = TASKS[name]
    make: Callable[..., tuple] = task["case"]
    if not (Path(folder) / "dataset.json").exists():
        generate_synthetic_dataset(
            folder, num_cases, num_test, seed, task["shape"], make, task["meta"], task["spacing"]
        )
    return Path(folder)


def heldout_dataset(task: str, folder: Path, cases: int) -> Path:
    """``cases`` labelled cases of ``task`` (a generated task, or ``embedded``: the bundle's synthetic pancreas)
    never seen in training: the same generator with seed 1 (the training data is seed 0), generated once into
    ``folder/<task>_heldout<cases>``."""
    target = folder / f"{task}_heldout{cases}"
    if task != "embedded":
        return dataset(task, target, cases, 0, seed=1)
    if not (target / "dataset.json").exists():
        bundle_importable()
        from scripts.data import generate_synthetic_dataset

        generate_synthetic_dataset(target, cases, 0, seed=1)
    return target
