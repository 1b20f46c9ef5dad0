"""C2FNAS as an Auto3DSeg algorithm: the ``BundleAlgo`` that ``BundleGen`` fills and ``AutoRunner`` trains.

The template runs the C2FNAS bundle itself (coarse search, fine search, training, evaluation: ``scripts/train.py``)
and predicts with it (``scripts/infer.py``); it copies no network or search code. The plan (spacing, intensity,
classes, channels, patch) comes from Auto3DSeg's data-stats file through the bundle's own
``scripts.planning.plan_from_stats``, the code its plan stage runs on ``DataAnalyzer``'s statistics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from monai.apps.auto3dseg import BundleAlgo
from monai.bundle import ConfigParser

__all__ = ["C2fnasAlgo", "c2fnas_bundle_root"]


def c2fnas_bundle_root() -> Path:
    """The C2FNAS bundle of this environment: beside the installed ``networks`` package (the project's checkout,
    ``<repo>/bundle``) or around it (a released bundle, whose ``networks`` sits in its root)."""
    import networks

    here = Path(networks.__file__).resolve().parents[1]
    for root in (here / "bundle", here):
        if (root / "configs" / "common.json").is_file() and (root / "scripts" / "planning.py").is_file():
            return root
    raise FileNotFoundError(f"no C2FNAS bundle beside {here} (configs/common.json and scripts/planning.py)")


class C2fnasAlgo(BundleAlgo):
    """Fills ``configs/hyper_parameters.yaml`` with the paths the C2FNAS stages need; budgets stay overridable."""

    def fill_template_config(self, data_stats_filename: str, output_path: str, **kwargs: Any) -> Dict[str, Any]:
        if not data_stats_filename or not os.path.isfile(data_stats_filename):
            raise FileNotFoundError(f"C2FNAS algorithm: data stats file {data_stats_filename!r} not found")
        source = ConfigParser.load_config_file(self.data_list_file)
        for key in ("datalist", "dataroot"):
            if key not in source:
                raise ValueError(f"C2FNAS algorithm: {self.data_list_file} has no {key!r}")
        config_file = os.path.join(output_path, "configs", "hyper_parameters.yaml")
        config = ConfigParser.load_config_file(config_file)
        filled = {
            "bundle_root": str(c2fnas_bundle_root()),
            "algo_dir": str(Path(output_path).resolve()),
            "data_stats_file": str(Path(data_stats_filename).resolve()),
            "data_list_file": str(Path(source["datalist"]).resolve()),
            "data_root": str(Path(source["dataroot"]).resolve()),
            "modality": str(source.get("modality", "CT")),
            "fold": int(kwargs.pop("fold", config.get("fold", 0))),
        }
        filled.update({k: v for k, v in kwargs.items() if k in config})  # BundleGen's fill_with_datastats extras
        config.update(filled)
        ConfigParser.export_config_file(config, config_file, fmt="yaml", default_flow_style=None, sort_keys=False)
        return {"hyper_parameters.yaml": filled}
