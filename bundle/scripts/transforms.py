"""Transforms the bundle needs beyond MONAI core."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Dict, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRange, Spacingd

from networks.fileio import remove_stale_temporaries

__all__ = ["SafeSpacingd", "PlanIntensityd", "AtomicNibabelWriter"]


class SafeSpacingd(Spacingd):
    """``Spacingd`` that tolerates string entries named ``<key>_*`` (MONAI Label adds ``image_path``).

    monai 1.6.1's ``Spacingd`` updates every ``<key>_*`` entry as a meta dict and fails on a string; this removes
    such non-dict entries around the call and puts them back.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> Dict[Hashable, Any]:
        d = dict(data)
        held = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str)
            and any(k.startswith(f"{key}_") for key in self.keys)
            and not isinstance(d[k], Mapping)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(held)
        return out


class PlanIntensityd(MapTransform):
    """The plan's intensity normalisation, one scheme per image channel (``intensity`` of plan.json).

    MONAI's intensity transforms apply one scheme to every channel; a plan may give each channel its own (a CT
    channel beside MR ones). Schemes, each a MONAI transform on that channel:

    - ``ct_foreground``: clip to ``clip`` (the foreground 0.5-99.5 percentiles), then ``(x - mean) / std``
      (``ScaleIntensityRange`` between the clip bounds and their z-scores);
    - ``zscore_nonzero``: ``(x - mean) / std`` over the channel's non-zero voxels of this image
      (``NormalizeIntensity(nonzero=True)``);
    - ``window``: clip to ``[a_min, a_max]`` and scale to ``[0, 1]`` (``ScaleIntensityRange``).

    Input ``(C, *spatial)`` with ``C == len(intensity)``; output float32 of the same shape.
    """

    def __init__(self, keys: KeysCollection, intensity: Sequence[Mapping[str, Any]], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.channels = [self._channel_transform(c) for c in intensity]

    @staticmethod
    def _channel_transform(channel: Mapping[str, Any]):
        scheme = channel["scheme"]
        if scheme == "ct_foreground":
            (low, high), mean, std = channel["clip"], channel["mean"], channel["std"]
            return ScaleIntensityRange(low, high, (low - mean) / std, (high - mean) / std, clip=True)
        if scheme == "window":
            return ScaleIntensityRange(channel["a_min"], channel["a_max"], 0.0, 1.0, clip=True)
        if scheme == "zscore_nonzero":
            return NormalizeIntensity(nonzero=True)
        raise ValueError(f"unknown intensity scheme {scheme!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]) if not isinstance(d[key], torch.Tensor) else d[key]
            if image.shape[0] != len(self.channels):
                raise ValueError(f"{key}: {image.shape[0]} channels; the plan normalises {len(self.channels)}")
            image = image.float()
            d[key] = torch.cat([t(image[c : c + 1]) for c, t in enumerate(self.channels)], 0)
        return d


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` whose file appears complete or not at all.

    MONAI writes the segmentation in place, so a run killed or failing mid-write (SIGKILL, a full disk) leaves a
    truncated ``*_seg.nii.gz``. This one writes a hidden temporary file beside it (same extension, so nibabel
    compresses it the same way) and renames it over the target; temporaries left by a killed writer are removed
    first. Used by ``SaveImaged`` in inference.json (``writer``).
    """

    def write(self, filename: os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        path = Path(filename)
        extension = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
        remove_stale_temporaries(path, suffix=f".tmp{extension}")
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{extension}")
        try:
            super().write(str(tmp), verbose=False, **obj_kwargs)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if verbose:
            logging.getLogger("c2fnas.inference").info(f"wrote {path}")
