"""Label maps from class scores (networks.labels.argmax, scripts.transforms.AsDiscreted): torch's and MONAI's
results exactly, ties, NaN, memory formats and meta data included; and every config's argmax goes through them."""

import json

import numpy as np
import pytest
import torch
from helpers import CONFIGS
from monai.data import MetaTensor
from monai.transforms import AsDiscreted as MonaiAsDiscreted
from scripts.transforms import AsDiscreted

from networks.labels import argmax


def _scores(seed, classes, dtype, ties):
    generator = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: most voxels have a tie for the maximum
        scores = torch.randint(0, 3, (2, classes, 6, 7, 5), generator=generator).to(dtype)
    else:
        scores = torch.randn(2, classes, 6, 7, 5, generator=generator).to(dtype)
    scores[0, :, 0, 0, :3] = float("nan")  # a NaN in every class of some voxels
    scores[1, classes - 1, 2] = float("nan")  # a NaN in one class of a plane
    return scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("classes", [2, 3, 14])
def test_argmax_is_torch_argmax(dtype, ties, classes):
    scores = _scores(classes, classes, dtype, ties)
    for layout in (scores, scores.contiguous(memory_format=torch.channels_last_3d)):
        for dim in range(5):
            for keepdim in (False, True):
                expected = torch.argmax(layout, dim, keepdim=keepdim)
                got = argmax(layout, dim, keepdim)
                assert got.dtype == torch.int64 and torch.equal(got, expected), (dim, keepdim)
        case = layout[1]  # one case, channel first: (K, *S), the transforms' input
        assert torch.equal(argmax(case, 0, True), torch.argmax(case, 0, keepdim=True))


def _case(classes=3):
    scores = torch.randn(classes, 8, 9, 7, generator=torch.Generator().manual_seed(0))
    scores[:, 0, 0, 0] = 0.5  # a tie between every class
    affine = torch.diag(torch.tensor([2.0, 1.5, 3.0, 1.0]))
    meta = {"filename_or_obj": "case_7.nii.gz", "spatial_shape": np.array([8, 9, 7])}
    label = torch.randint(0, classes, (1, 8, 9, 7), generator=torch.Generator().manual_seed(1)).float()
    return {"pred": MetaTensor(scores, affine=affine, meta=dict(meta)), "label": MetaTensor(label, affine=affine)}


def _assert_same(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        assert type(got[key]) is type(expected[key]) and got[key].dtype == expected[key].dtype, key
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(expected[key])), key
        if isinstance(expected[key], MetaTensor):
            assert torch.equal(got[key].affine, expected[key].affine), key
            assert sorted(got[key].meta) == sorted(expected[key].meta), key
            assert got[key].meta.get("filename_or_obj") == expected[key].meta.get("filename_or_obj"), key
            assert got[key].applied_operations == expected[key].applied_operations, key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keys": "pred", "argmax": True},  # inference.json
        {"keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 3},  # train.json, training and validation
        {"keys": "pred", "argmax": True, "to_onehot": 3, "dtype": torch.uint8},
        {"keys": "pred", "argmax": True, "keepdim": False},
        {"keys": "label", "to_onehot": 3},  # no argmax: MONAI's path alone
    ],
)
def test_asdiscreted_gives_monais_result(kwargs):
    _assert_same(AsDiscreted(**kwargs)(_case()), MonaiAsDiscreted(**kwargs)(_case()))
    plain = {k: v.as_tensor() for k, v in _case().items()}  # plain tensors and numpy arrays, as MONAI takes them
    _assert_same(AsDiscreted(**kwargs)(dict(plain)), MonaiAsDiscreted(**kwargs)(dict(plain)))
    arrays = {k: v.numpy() for k, v in plain.items()}
    _assert_same(AsDiscreted(**kwargs)(dict(arrays)), MonaiAsDiscreted(**kwargs)(dict(arrays)))


def _targets(node):
    if isinstance(node, dict):
        yield from ([node] if "_target_" in node else [])
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def test_every_config_takes_the_fast_argmax():
    """An argmax of class scores in a config goes through the bundle's AsDiscreted, not MONAI's own."""
    found = 0
    for path in sorted(CONFIGS.glob("*.json")):
        for node in _targets(json.loads(path.read_text())):
            target = str(node["_target_"])
            if target.split(".")[-1] in ("AsDiscreted", "AsDiscrete"):
                assert target == "scripts.transforms.AsDiscreted", f"{path.name}: {target}"
                found += 1
    assert found >= 3  # train.json's training and validation post-processing, inference.json's
