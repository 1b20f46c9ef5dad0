"""Transforms the bundle needs beyond MONAI core."""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping

from monai.transforms import Spacingd

__all__ = ["SafeSpacingd"]


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
