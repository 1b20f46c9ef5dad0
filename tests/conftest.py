"""Shared fixtures: one synthetic MSD dataset and the unpacked release zip. The MONAI Label tests need the real
monailabel, which lives in its own environment (`make label-setup`, run by `make test-label`); the default
environment skips collecting them."""

import importlib.util
import zipfile

import pytest

collect_ignore = [] if importlib.util.find_spec("monailabel") else ["test_monailabel.py"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """The embedded synthetic dataset in MSD layout, small: 6 labelled cases and 1 test image. Tests that break it
    work on a copy."""
    from scripts.data import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "msd", num_cases=6, num_test=1)


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """``(zip path, sha1, unpacked bundle folder)`` of the release built from this repository."""
    from helpers import BUNDLE

    from release import NAME, build

    zip_path, sha1 = build(BUNDLE, tmp_path_factory.mktemp("dist"))
    unpacked = tmp_path_factory.mktemp("released")
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(unpacked)
    return zip_path, sha1, unpacked / NAME
