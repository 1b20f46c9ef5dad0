"""The training augmentation without MONAI's meta-data tracking (scripts.transforms.UntrackedRandomCompose): the same
patches as MONAI's Compose, meta data kept up to the first random transform (the cache), the process-wide switch
restored however a call ends, and the configs' training pipelines built on it."""

import numpy as np
import pytest
import torch
from helpers import BUNDLE
from monai.bundle import ConfigParser
from monai.data import CacheDataset, MetaTensor, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambdad,
    RandCropByLabelClassesd,
    RandFlipd,
    RandRotate90d,
    ScaleIntensityd,
    SpatialPadd,
)
from scripts import stage_chain
from scripts.transforms import UntrackedRandomCompose

KEYS = ["image", "label"]


def _case(seed):
    r = np.random.default_rng(seed)
    label = np.zeros((1, 20, 18, 16), dtype=np.float32)
    label[0, 5:12, 4:9, 3:10] = 1
    label[0, 8:10, 6:8, 5:7] = 2
    image = r.standard_normal(label.shape).astype(np.float32) + label
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    return {"image": MetaTensor(image, affine=affine), "label": MetaTensor(label, affine=affine)}


def _transforms():
    """Deterministic transforms (what a cache keeps), then random ones, a multi-patch crop among them."""
    return [
        EnsureTyped(keys=KEYS),
        ScaleIntensityd(keys="image"),
        SpatialPadd(keys=KEYS, spatial_size=(8, 8, 8)),
        RandCropByLabelClassesd(KEYS, "label", (8, 8, 8), ratios=[1, 2, 2], num_classes=3, num_samples=3, warn=False),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
        RandRotate90d(keys=KEYS, prob=0.5, spatial_axes=(0, 1)),
    ]


def _plain(patches):
    return [{k: p[k].as_subclass(torch.Tensor) for k in KEYS} for p in patches]


def _assert_same_patches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(_plain(got), _plain(expected)):
        for key in KEYS:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_patches_as_monais_compose_as_plain_tensors(seed):
    tracked, untracked = Compose(_transforms()), UntrackedRandomCompose(_transforms())
    for compose in (tracked, untracked):
        compose.set_random_state(seed=seed)
    for case in range(3):
        expected, got = tracked(_case(case)), untracked(_case(case))
        _assert_same_patches(got, expected)
        assert all(isinstance(p[k], MetaTensor) for p in expected for k in KEYS)
        assert not any(isinstance(p[k], MetaTensor) for p in got for k in KEYS)
    assert get_track_meta()


def test_the_part_before_the_first_random_transform_keeps_its_meta_data():
    """As a CacheDataset runs it: the cached part (``end``) with meta data, the rest (``start``) untracked."""
    untracked, tracked = UntrackedRandomCompose(_transforms()), Compose(_transforms())
    first_random = 3
    cached = untracked(_case(0), end=first_random)
    assert isinstance(cached["image"], MetaTensor) and len(cached["image"].applied_operations) >= 1
    np.testing.assert_allclose(cached["image"].affine.numpy(), np.diag([1.5, 1.5, 2.0, 1.0]))
    for compose in (tracked, untracked):
        compose.set_random_state(seed=5)
    _assert_same_patches(untracked(dict(cached), start=first_random), tracked(dict(cached), start=first_random))

    data = [_case(i) for i in range(4)]
    datasets = [CacheDataset(data, transform=c, progress=False) for c in (Compose(_transforms()), untracked)]
    for dataset in datasets:
        dataset.transform.set_random_state(seed=9)
    for i in range(len(data)):
        assert isinstance(datasets[1]._cache[i]["label"], MetaTensor)  # the cache keeps meta data
        _assert_same_patches(datasets[1][i], datasets[0][i])


def test_tracking_is_restored_after_an_error_and_left_off_where_it_was_off():
    def fail(image):
        raise RuntimeError("a failing random transform")

    failing = UntrackedRandomCompose([EnsureTyped(keys=KEYS), RandFlipd(keys=KEYS, prob=1.0), Lambdad("image", fail)])
    with pytest.raises(RuntimeError) as raised:
        failing(_case(0))
    assert "a failing random transform" in str(raised.value.__cause__)  # MONAI's apply_transform wraps it
    assert get_track_meta()
    set_track_meta(False)
    try:
        UntrackedRandomCompose(_transforms())(_case(0))
        assert not get_track_meta()
    finally:
        set_track_meta(True)


def test_only_deterministic_transforms_run_tracked():
    compose = UntrackedRandomCompose([EnsureTyped(keys=KEYS), ScaleIntensityd(keys="image")])
    assert isinstance(compose(_case(0))["image"], MetaTensor)


def test_the_configs_training_pipelines_are_untracked(tmp_path):
    """The search's augmentation and the trainer's pipeline (preprocessing then augmentation, cached up to the first
    random transform) as the configs build them."""
    files = stage_chain.config_files("train", BUNDLE, [BUNDLE / stage_chain.CPU_PROFILE])
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in files]))
    parser["bundle_root"], parser["output_dir"] = str(BUNDLE), str(tmp_path)
    for name in ("augmentation", "train#preprocessing"):
        assert isinstance(parser.get_parsed_content(name), UntrackedRandomCompose), name
