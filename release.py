"""Build the model-zoo release of the bundle: ``dist/<name>_v<version>.zip`` and print its sha1.

The zip holds one top folder named after the bundle (as ``monai.bundle download --url`` expects) with configs,
docs, models, LICENSE and the custom code: ``scripts/`` and, beside it, copies of the project's ``networks`` and
``search`` packages, which the configs import under those names (the bundle root is on ``sys.path`` when it runs).
In the repository every stage config is merged over ``configs/common.json``; single-file readers (model-zoo's CI,
MONAI Label, ``monai.bundle load``) read one file, so the zip's stage configs are those merges, made by MONAI's own
``ConfigParser``, and ``common.json`` ships too (merging it again changes nothing).
Its bytes are deterministic: sorted entries, fixed timestamps and permissions, no caches or run outputs.
As model-zoo's release does, the files listed in ``large_files.yml`` go into the zip and the list itself does not;
each must be present and match its recorded hash, or no zip is written.

    python release.py [--bundle_dir bundle] [--dist_dir dist]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Iterator, Tuple

from networks.fileio import atomic_write

NAME = "pancreas_ct_c2fnas_segmentation"
INCLUDE = ("LICENSE", "configs", "docs", "models", "scripts")
PACKAGES = ("networks", "search")  # from the repository root, beside scripts/
COMMON = "configs/common.json"
STAGES = ("plan.json", "train.json", "inference.json", "search_coarse.json", "search_fine.json")  # merged over COMMON
LARGE_FILES = "large_files.yml"
SKIP_PARTS = {"__pycache__", ".pytest_cache"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def bundle_files(bundle_dir: Path) -> Iterator[Tuple[str, Path]]:
    """(path inside the bundle, real file) for every file that ships, in sorted order: the bundle's own files and
    the ``PACKAGES`` from the repository root beside ``bundle_dir``."""
    packages_dir = Path(bundle_dir).resolve().parent
    roots = [(top, bundle_dir / top) for top in INCLUDE] + [(top, packages_dir / top) for top in PACKAGES]
    found = []
    for top, root in roots:
        if root.is_file():
            found.append((top, root))
            continue
        base = root.parent
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_PARTS]
            for filename in filenames:
                if filename.endswith((".pyc", ".tmp")) or filename.startswith("."):
                    continue
                path = Path(dirpath) / filename
                found.append((path.relative_to(base).as_posix(), path))
    return iter(sorted(found))


class ReleaseError(RuntimeError):
    """The bundle cannot be released as it is (a large file is missing or does not match its hash)."""


def verify_large_files(bundle_dir: Path) -> None:
    """Check every entry of ``large_files.yml`` (``path``, ``url``, ``hash_val``, ``hash_type``) against the file."""
    listing = bundle_dir / LARGE_FILES
    if not listing.is_file():
        return
    import yaml

    for entry in yaml.safe_load(listing.read_text())["large_files"]:
        path = bundle_dir / entry["path"]
        if not path.is_file():
            raise ReleaseError(f"{listing}: {entry['path']} is missing; fetch it from {entry['url']}")
        actual = hashlib.new(entry.get("hash_type", "md5"), path.read_bytes()).hexdigest()
        if entry.get("hash_val") and actual != entry["hash_val"]:
            raise ReleaseError(
                f"{listing}: {entry['path']} has {entry.get('hash_type', 'md5')} {actual}, not {entry['hash_val']}"
            )


def merged_config(bundle_dir: Path, stage: str) -> bytes:
    """``configs/<stage>`` merged over ``configs/common.json`` by MONAI's ``ConfigParser`` (as ``--config_file``
    lists are merged), as 4-space JSON."""
    from monai.bundle import ConfigParser

    files = [str(bundle_dir / COMMON), str(bundle_dir / "configs" / stage)]
    return (json.dumps(ConfigParser.load_config_files(files), indent=4) + "\n").encode()


def build(bundle_dir: Path, dist_dir: Path) -> Tuple[Path, str]:
    """Write the zip atomically; return its path and sha1."""
    verify_large_files(bundle_dir)
    version = json.loads((bundle_dir / "configs" / "metadata.json").read_text())["version"]
    target = dist_dir / f"{NAME}_v{version}.zip"

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for relative, path in bundle_files(bundle_dir):
                stage = relative.split("/", 1)[1] if relative.startswith("configs/") else ""
                data = merged_config(bundle_dir, stage) if stage in STAGES else path.read_bytes()
                info = zipfile.ZipInfo(f"{NAME}/{relative}", date_time=FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, data, compresslevel=9)

    atomic_write(target, write)
    return target, hashlib.sha1(target.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent
    parser.add_argument("--bundle_dir", type=Path, default=root / "bundle")
    parser.add_argument("--dist_dir", type=Path, default=root / "dist")
    args = parser.parse_args()
    path, sha1 = build(args.bundle_dir, args.dist_dir)
    print(f"{path}\nsha1 {sha1}")


if __name__ == "__main__":
    main()
