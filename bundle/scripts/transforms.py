"""Transforms the bundle needs beyond MONAI core."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Dict, Hashable, Mapping, Optional, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter, get_track_meta, set_track_meta
from monai.transforms import AsDiscrete as MonaiAsDiscrete
from monai.transforms import AsDiscreted as MonaiAsDiscreted
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    NormalizeIntensity,
    RandomizableTrait,
    SaveImaged,
    ScaleIntensityRange,
    Spacingd,
    Transform,
)
from scripts.data import check_image_file
from scripts.errors import DatasetError, NonFiniteError, OutputError, one_line

from networks.fileio import remove_stale_temporaries
from networks.labels import argmax as label_argmax


def _source(data: Mapping[Hashable, Any], key: str = "image") -> str:
    """The file a case came from (its image's meta data), for messages."""
    value = data.get(key)
    meta = value.meta if isinstance(value, MetaTensor) else data.get(f"{key}_meta_dict", {})
    return str(meta.get("filename_or_obj", "<array>")) if isinstance(meta, Mapping) else "<array>"


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` that checks each file it reads, so an image given by any route (dataset.json,
    ``--dataset#data``, MONAI Label) fails with one line naming it: before reading, the header
    (``scripts.data.check_image_file``: missing, a symbolic link loop, RGB or complex, a singular affine); after,
    the voxels (``check_loaded``: a volume that is not 3D or 4D with channels last, NaN or Inf). MONAI's loader
    fails on the first kinds with a long traceback through its reader fallbacks, or (a zero affine) loads them with
    a meaningless spacing; a NaN voxel would surface as a non-finite network output, blaming the weights."""

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> Dict[Hashable, Any]:
        paths = {}
        for key in self.key_iterator(dict(data)):
            if isinstance(data[key], (str, os.PathLike)):
                check_image_file(data[key], what=str(key))
                paths[key] = data[key]
        d = super().__call__(data, reader)
        for key, path in paths.items():
            check_loaded(d[key], path, what=str(key))
        return d


def check_loaded(volume: Any, path: Any, what: str = "image") -> None:
    """Raise ``DatasetError`` naming ``path`` unless ``volume`` (as read, channels last) is 3D, or 4D with its
    channels on the last axis (MSD), and holds only finite values."""
    shape = tuple(volume.shape)
    if len(shape) not in (3, 4):
        raise DatasetError(f"{path}: {what} has shape {shape}; a 3D volume (or 4D, channels last) is expected")
    values = torch.as_tensor(volume)
    if values.is_floating_point():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            raise DatasetError(f"{path}: {what} holds {bad} NaN or Inf voxels")


class OriginalLabeld(MapTransform):
    """Each key's label as drawn: read again (``CheckedLoadImaged``, channel first) from the file its metadata names,
    on the case's own grid and orientation, replacing the label the preprocessing resampled to the plan's grid.

    Scoring a prediction mapped back with ``Invertd`` against it scores the segmentation a user gets from
    ``inference.json`` against the reference annotation. MONAI's ``Invertd`` can only map the resampled label back,
    which keeps what resampling to a coarser grid lost (a 5 mm mass is 2 or 3 voxels at 2 mm)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = CheckedLoadImaged(keys, image_only=True)
        self.channel_first = EnsureChannelFirstd(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key].meta.get("filename_or_obj") if isinstance(d[key], MetaTensor) else None
            if not path:
                raise DatasetError(f"{key}: the label's metadata names no file, so its original grid is unknown")
            d[key] = self.channel_first(self.loader({key: path}))[key]
        return d


__all__ = [
    "CheckedLoadImaged",
    "check_loaded",
    "OriginalLabeld",
    "SafeSpacingd",
    "PlanIntensityd",
    "CheckFinited",
    "AtomicNibabelWriter",
    "SaveSegmentationd",
]


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
                raise DatasetError(
                    f"{_source(d, key)}: {key} has {image.shape[0]} channels; the network and its plan take "
                    f"{len(self.channels)} (dataset.json 'modality')"
                )
            image = image.float()
            d[key] = torch.cat([t(image[c : c + 1]) for c, t in enumerate(self.channels)], 0)
        return d


class CheckFinited(MapTransform):
    """Stop with one ``NonFiniteError`` naming the case when a network output holds NaN or Inf (MONAI's pipeline
    would turn it into an all-background mask or a Dice of 0 without a word)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = torch.as_tensor(d[key])
            if value.is_floating_point() and not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).sum())
                raise NonFiniteError(
                    f"{_source(d)}: the network's output '{key}' holds {bad} NaN or Inf values (unstable weights, "
                    "an overflow under AMP, or a diverged training); no result is written for it"
                )
        return d


class _AsDiscrete(MonaiAsDiscrete):
    """MONAI's ``AsDiscrete`` whose ``argmax`` is :func:`networks.labels.argmax`; the rest is MONAI's."""

    def __call__(
        self, img: Any, argmax: Any = None, to_onehot: Any = None, threshold: Any = None, rounding: Any = None
    ):
        if self.argmax if argmax is None else argmax:
            dim, keepdim = self.kwargs.get("dim", 0), self.kwargs.get("keepdim", True)
            img = label_argmax(torch.as_tensor(img), dim, keepdim)  # int64; a MetaTensor keeps its meta data
        return super().__call__(img, False, to_onehot, threshold, rounding)


class AsDiscreted(MonaiAsDiscreted):
    """MONAI's ``AsDiscreted`` (the same arguments, the same result) with a fast ``argmax``.

    What MONAI lacks: its ``argmax`` calls ``torch.argmax`` over the class axis, which torch's CPU kernel runs about
    30 times slower than the labels need (``networks/labels.py``): 6 ms per 3 x 32^3 crop made a fifth of a CPU
    profile training iteration, and a 3 x 128^3 case took 384 ms (12 ms this way) on machine X.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        converter = _AsDiscrete()
        converter.kwargs = self.converter.kwargs
        self.converter = converter


class UntrackedRandomCompose(Compose):
    """MONAI's ``Compose`` (same arguments) that runs its random transforms, from the first one on (where a
    ``CacheDataset`` resumes from its cache), with MONAI's meta-data tracking off; the transforms before run as usual.

    The training patches need no meta data, yet on the CPU profile's small cases MONAI's tracking (each flip and crop
    copying the meta data and recording itself) took 60 % of the augmentation's time. MONAI has only the
    process-wide switch (``set_track_meta``), which the evaluation's meta data must not lose, so this turns it off
    for the random transforms alone and back on after them. The same random draws give the same patches, as plain
    tensors. The switch is process-wide: do not run one from several threads at once (data-loader worker processes
    are fine).
    """

    def __call__(
        self,
        input_: Any,
        start: int = 0,
        end: Optional[int] = None,
        threading: bool = False,
        lazy: Optional[bool] = None,
    ) -> Any:
        first_random = self.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
        )
        split = len(self.transforms) if first_random is None else max(first_random, start)
        stop = len(self.transforms) if end is None else end
        data = input_
        if start < min(split, stop):
            data = super().__call__(data, start=start, end=min(split, stop), threading=threading, lazy=lazy)
        if split >= stop:
            return data
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(data, start=split, end=stop, threading=threading, lazy=lazy)
        finally:
            set_track_meta(tracking)


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` whose file appears complete or not at all.

    MONAI writes the segmentation in place, so a run killed or failing mid-write (SIGKILL, a full disk) leaves a
    truncated ``*_seg.nii.gz``. This one writes a hidden temporary file beside it (same extension, so nibabel
    compresses it the same way) and renames it over the target; temporaries left by a killed writer are removed
    first. Used by ``SaveSegmentationd`` (inference.json).
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


class SaveSegmentationd(SaveImaged):
    """``SaveImaged`` writing with ``AtomicNibabelWriter``, one name per output, errors that name their cause.

    What MONAI lacks: ``SaveImage`` catches every writer failure and raises "cannot find a suitable writer", with
    the cause (no space left, a read-only folder) buried in the text, and it silently overwrites a segmentation it
    wrote earlier in the same run when two inputs share a file name. Here the writer's ``OSError`` becomes one
    ``OutputError`` naming the file and the cause, and a second input with the same output name is refused. And
    MONAI squeezes every trailing singleton axis (an image of 64 x 64 x 1 voxels gave a 64 x 64 segmentation);
    here a one-channel output ``(1, *spatial)`` is written with exactly the input's spatial shape.
    Arguments as ``SaveImaged`` (its ``writer`` is this bundle's).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **{**kwargs, "writer": AtomicNibabelWriter})
        self.written: Dict[str, str] = {}  # output file -> the input it was made from, in this run

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        saver = self.saver
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            image = d[key]
            meta = image.meta if isinstance(image, MetaTensor) else d.get(meta_key or f"{key}_{meta_key_postfix}")
            target = saver.folder_layout.filename(**saver.fname_formatter(meta, saver))
            source = str((meta or {}).get("filename_or_obj", "<array>"))
            if self.written.get(target, source) != source:
                raise OutputError(
                    f"{target}: already written in this run from {self.written[target]}; {source} has the same "
                    "name, so its segmentation would replace it (rename one of them)"
                )
            writer = AtomicNibabelWriter(**saver.init_kwargs)
            one_channel = image.ndim == 4 and image.shape[0] == 1
            if one_channel:  # (X, Y, Z, 1), channels last as the writer expects, keeping axes of 1 voxel
                writer.set_data_array(data_array=image, channel_dim=0, squeeze_end_dims=False)
            else:
                writer.set_data_array(data_array=image, **saver.data_kwargs)
            writer.set_metadata(meta_dict=meta, **saver.meta_kwargs)
            if one_channel:  # then drop the channel axis only: (X, Y, Z)
                writer.data_obj = writer.data_obj[..., 0]
            try:
                writer.write(target, **saver.write_kwargs)
            except OSError as e:
                raise OutputError(f"{target}: cannot write the segmentation ({e.strerror or one_line(e)})") from None
            self.written[target] = source
        return d
