"""The generated benchmark tasks' real-anatomy source and generator (benchmarks/mricron_source.py, ``brain_mr`` of
benchmarks/tasks.py), without the network: a package file built here stands in for Debian's download, and a
phantom for the real scan. The real package is fetched only by the benchmarks."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from benchmarks import mricron_source, tasks


def _ar(members):
    """A Unix ar archive (the .deb format) of ``{name: bytes}``."""
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return bytes(out)


def _package():
    files = io.BytesIO()
    with tarfile.open(fileobj=files, mode="w:xz") as archive:
        for kept, inside in mricron_source.FILES.items():
            content = f"{kept} content".encode()
            info = tarfile.TarInfo(f"./{inside}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": files.getvalue()})


def test_fetch_checks_the_package_and_extracts_its_files_once(tmp_path, monkeypatch):
    package = _package()
    downloads = []

    def download(folder):
        downloads.append(folder)
        (folder / mricron_source.DEB).write_bytes(package)
        return folder / mricron_source.DEB

    monkeypatch.setattr(mricron_source, "_download", download)
    monkeypatch.setattr(mricron_source, "SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match=f"sha256 {hashlib.sha256(package).hexdigest()}, expected 0000"):
        mricron_source.fetch(tmp_path / "cache")
    assert not (tmp_path / "cache").exists(), "nothing kept from a package that fails its check"

    monkeypatch.setattr(mricron_source, "SHA256", hashlib.sha256(package).hexdigest())
    folder = mricron_source.fetch(tmp_path / "cache")
    assert {p.name: p.read_text() for p in folder.iterdir()} == {k: f"{k} content" for k in mricron_source.FILES}
    assert mricron_source.fetch(tmp_path / "cache") == folder and len(downloads) == 2, "fetched once it passed"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"], "no temporary folder left"


def _phantom():
    """A 1 mm 'head' on the atlas grid with one sphere per region group of BRAIN_MR_CLASSES."""
    shape = (181, 217, 181)
    affine = np.array([[1.0, 0, 0, -90], [0, 1, 0, -125], [0, 0, 1, -71], [0, 0, 0, 1]])
    mm = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) + affine[:3, 3]
    t1 = np.where(np.linalg.norm(mm - [0, -20, 0], axis=-1) < 80, 90.0, 0.0).astype(np.float32)
    classes = np.zeros(shape, np.uint8)
    centres = {1: ([0, -70, -40], 22), 2: ([-20, 5, 0], 10), 3: ([12, -18, 6], 8), 4: ([25, -25, -12], 7)}
    for cls, (centre, radius) in centres.items():
        classes[np.linalg.norm(mm - centre, axis=-1) < radius] = cls
    return t1, classes, affine


def test_brain_mr_cases_are_seeded_deformations_holding_every_class(monkeypatch):
    monkeypatch.setattr(tasks, "_brain_source", _phantom)
    image, label = tasks.brain_mr_case(0)
    assert image.shape == label.shape == (72, 72, 56) and image.dtype == np.int16 and label.dtype == np.uint8
    assert image.min() >= 0, "magnitude MR"
    counts = np.bincount(label.ravel(), minlength=5)
    assert len(counts) == 5 and (counts[1:] > 0).all(), counts
    again, label_again = tasks.brain_mr_case(0)
    assert np.array_equal(image, again) and np.array_equal(label, label_again), "one case per seed"
    other, label_other = tasks.brain_mr_case(1)
    assert not np.array_equal(label, label_other), "another seed deforms the anatomy differently"
    # a deformation of the same anatomy: the scaling alone changes a volume by 0.78-1.26x
    volumes = np.array([np.bincount(tasks.brain_mr_case(seed)[1].ravel(), minlength=5)[1:] for seed in range(4)])
    assert (volumes > 0.6 * volumes.mean(0)).all() and (volumes < 1.6 * volumes.mean(0)).all(), volumes


def test_brain_mr_classes_are_named_by_atlas_regions():
    assert set(tasks.BRAIN_MR_CLASSES) == {int(k) for k in tasks.BRAIN_MR_META["labels"] if k != "0"}
    assert tasks.TASKS["brain_mr"]["meta"] is tasks.BRAIN_MR_META
