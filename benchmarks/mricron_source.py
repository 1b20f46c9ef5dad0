"""Real anatomy for the benchmarks: a real MR scan and hand-drawn labels on the same grid, from a Debian package.

Debian's ``mricron-data`` package (MRIcron's templates) ships, on one 181 x 217 x 181 grid of 1 mm (MNI space):

- ``ch2.nii.gz``: "Colin27", the average of 27 T1-weighted MR scans of one healthy adult (Holmes et al., J Comput
  Assist Tomogr 22(2), 1998), a real head: skull, scalp and brain;
- ``aal.nii.gz``: the AAL atlas, 116 regions drawn by hand on that scan (Tzourio-Mazoyer et al., NeuroImage 15(1),
  2002), with their names in ``aal.nii.txt``.

The package's copyright file (kept beside the extracted files) puts its files under BSD-3-clause (MRIcron, Chris
Rorden). Nothing of it is in this repository: ``fetch`` brings the package with the ordinary package client
(``apt-get download``, where there is one; else the same file from Debian's archive over HTTPS), checks its sha256,
and extracts the three files into a cache folder (``$C2FNAS_DATA_CACHE``, default ``~/.cache/c2fnas``), once.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

PACKAGE, VERSION = "mricron-data", "1.2.20211006+dfsg-4"  # Debian 12 (bookworm)
DEB = f"{PACKAGE}_{VERSION}_all.deb"
SHA256 = "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f"  # of DEB, as Debian's Packages index lists
ARCHIVE_URL = f"https://deb.debian.org/debian/pool/main/m/mricron/{DEB}"
FILES = {  # what is kept: name in the cache -> path inside the package
    "ch2.nii.gz": "usr/share/mricron/templates/ch2.nii.gz",
    "aal.nii.gz": "usr/share/mricron/templates/aal.nii.gz",
    "aal.nii.txt": "usr/share/mricron/templates/aal.nii.txt",
    "copyright": "usr/share/doc/mricron-data/copyright",
}


def cache_dir() -> Path:
    return Path(os.environ.get("C2FNAS_DATA_CACHE", Path.home() / ".cache" / "c2fnas")) / f"{PACKAGE}_{VERSION}"


def _download(folder: Path) -> Path:
    """The package file in ``folder``: ``apt-get download`` when apt is there, else Debian's archive over HTTPS."""
    if shutil.which("apt-get"):
        done = subprocess.run(
            ["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=folder, capture_output=True, text=True, timeout=600
        )
        if done.returncode == 0 and (folder / DEB).is_file():
            return folder / DEB
    with urllib.request.urlopen(ARCHIVE_URL, timeout=120) as response, open(folder / DEB, "wb") as out:
        shutil.copyfileobj(response, out)
    return folder / DEB


def _ar_members(data: bytes) -> Dict[str, bytes]:
    """The members of a Unix ``ar`` archive (a ``.deb`` is one): name -> bytes."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def fetch(cache: Optional[Path] = None) -> Path:
    """The folder holding ``FILES`` (fetched, checked and extracted on first use; written whole or not at all)."""
    folder = Path(cache) if cache is not None else cache_dir()
    if all((folder / name).is_file() for name in FILES):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        deb = _download(Path(tmp))
        data = deb.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256:
            raise RuntimeError(f"{deb.name} from {ARCHIVE_URL}: sha256 {digest}, expected {SHA256}")
        (name,) = [n for n in _ar_members(data) if n.startswith("data.tar")]
        staged = Path(tmp) / "files"
        staged.mkdir()
        with tarfile.open(fileobj=io.BytesIO(_ar_members(data)[name])) as archive:
            for kept, inside in FILES.items():
                member = archive.extractfile(f"./{inside}")
                (staged / kept).write_bytes(member.read())
        if not folder.exists():
            os.replace(staged, folder)
    return folder


def load(cache: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[int, str]]:
    """``(t1 float32, atlas uint8, affine 4x4, {atlas value: region name})`` on the package's 1 mm grid."""
    import nibabel as nib

    folder = fetch(cache)
    t1, atlas = nib.load(str(folder / "ch2.nii.gz")), nib.load(str(folder / "aal.nii.gz"))
    if not np.allclose(t1.affine, atlas.affine) or t1.shape != atlas.shape:
        raise RuntimeError(f"{folder}: ch2 and aal are not on one grid")
    names = {}
    for line in (folder / "aal.nii.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            names[int(fields[0])] = fields[1]
    return np.asarray(t1.dataobj, np.float32), np.asarray(atlas.dataobj, np.uint8), t1.affine, names
