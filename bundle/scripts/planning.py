"""The plan: what every stage needs to know about a task, decided from its data by MONAI's ``DataAnalyzer``.

``task_plan`` makes the plan from the training split of an MSD dataset on first use (``save_plan`` writes it, as the
first step of a stage's ``run``) and checks, on every later use, that the saved one was made from the same data and
planning settings. The bundle's embedded default data takes the shipped recipe instead (``models/plan.json``, adapted
to the profile): the shipped weights were trained on it. ``load_plan`` reads the plan that weights were trained
with. A plan (format ``c2fnas-plan/1``, schema ``plan.schema.json`` beside this file) holds the classes, channels,
spacing, patch and intensity normalisation of a task; the rules that decide each are described once, in
``docs/method.md`` ("The plan"), and made here.

``plan_from_stats`` turns ``DataAnalyzer``'s output into a plan; it is the one place those decisions are made.
MONAI has the statistics (``DataAnalyzer``) but no such planner outside Auto3DSeg's algorithm templates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
from scripts.data import dataset_classes, dataset_modalities
from scripts.errors import DatasetError, PlanError, SettingsError, one_line
from scripts.settings import PATCH_SIDE

from networks import PATCH_DIVISOR

__all__ = ["PLAN_FORMAT", "ANISOTROPY", "task_plan", "load_plan", "save_plan", "analyse", "plan_from_stats"]

PLAN_FORMAT = "c2fnas-plan/1"
ANISOTROPY = 3.0  # nnU-Net's threshold for a low-resolution axis
SCHEMA_FILE = Path(__file__).with_name("plan.schema.json")
PathLike = Union[str, os.PathLike]
logger = logging.getLogger("c2fnas.plan")


def _fingerprint(dataset_dir: Path, datalist: Sequence[Dict[str, str]], settings: Dict[str, Any]) -> Dict[str, Any]:
    """What a plan was made from: dataset.json's digest, the training cases (paths relative to the dataset, sizes)
    and the planning settings."""
    cases = []
    for item in datalist:
        for key in ("image", "label"):
            path = Path(item[key])
            relative = os.path.relpath(path, dataset_dir)
            cases.append(f"{relative}:{path.stat().st_size}")
    return {
        "dataset_json_sha256": hashlib.sha256((dataset_dir / "dataset.json").read_bytes()).hexdigest(),
        "training_cases": len(datalist),
        "training_cases_sha256": hashlib.sha256("\n".join(cases).encode()).hexdigest(),
        "settings": settings,
    }


def analyse(dataset_dir: PathLike, datalist: Sequence[Dict[str, str]], num_workers: int = 0) -> Dict[str, Any]:
    """``DataAnalyzer``'s statistics (``stats_summary`` and ``stats_by_cases``) of the labelled cases ``datalist``
    (absolute paths), on the CPU."""
    from monai.apps.auto3dseg import DataAnalyzer

    analyzer = DataAnalyzer(
        {"training": [dict(item) for item in datalist]},
        str(dataset_dir),
        output_path="",
        device="cpu",
        worker=num_workers,
        hist_bins=0,
    )
    return analyzer.get_all_case_stats()


def _anisotropic_spacing(stats: Dict[str, Any]) -> tuple:
    """``(target spacing, whether the low-resolution rule applied)`` from the spacing and shape statistics."""
    image = stats["stats_summary"]["image_stats"]
    target = np.array(image["spacing"]["median"], float)
    shape = np.array(image["shape"]["median"], float)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > ANISOTROPY * max(target[others])
    aniso_voxels = shape[worst] * ANISOTROPY < min(shape[others])
    if not (aniso_spacing and aniso_voxels):
        return target, False
    spacings = np.array([case["image_stats"]["spacing"] for case in stats["stats_by_cases"]], float)
    low = float(np.percentile(spacings[:, worst], 10))
    target[worst] = max(low, float(max(target[others])) + 1e-5)
    return target, True


def _channel_intensity(stats: Dict[str, Any], channel: int, modality: str) -> Dict[str, Any]:
    """The normalisation of one channel. CT: the foreground percentiles and mean/std, each the mean over cases of
    ``DataAnalyzer``'s per-case value (as its summary averages them)."""
    if "CT" not in modality.upper():
        return {"channel": channel, "modality": modality, "scheme": "zscore_nonzero"}
    per_case = [case["image_foreground_stats"]["intensity"][channel] for case in stats["stats_by_cases"]]
    mean_of = {
        k: float(np.mean([c[k] for c in per_case])) for k in ("percentile_00_5", "percentile_99_5", "mean", "stdev")
    }
    return {
        "channel": channel,
        "modality": modality,
        "scheme": "ct_foreground",
        "clip": [mean_of["percentile_00_5"], mean_of["percentile_99_5"]],
        "mean": mean_of["mean"],
        "std": max(mean_of["stdev"], 1e-8),
    }


def plan_from_stats(
    stats: Dict[str, Any],
    dataset_meta: Dict[str, Any],
    source: PathLike = "dataset.json",
    min_spacing: Optional[Sequence[float]] = None,
    max_roi_size: Sequence[int] = (96, 96, 96),
) -> Dict[str, Any]:
    """The plan (without ``made_from``) from ``DataAnalyzer``'s ``stats`` and the dataset's dataset.json
    ``dataset_meta``; ``source`` names that file in errors. Raises ``DatasetError`` for data it cannot serve."""
    classes = dataset_classes(dataset_meta, source)
    modalities = dataset_modalities(dataset_meta, source)
    summary, by_case = stats["stats_summary"], stats["stats_by_cases"]
    channels = {int(case["image_stats"]["channels"]) for case in by_case}
    if channels != {len(modalities)}:
        raise DatasetError(f"{source}: 'modality' lists {len(modalities)} channels; the images hold {sorted(channels)}")
    found = {int(v) for case in by_case for v in case["label_stats"]["labels"]}
    missing = [f"{v} ({classes[v]})" for v in sorted(classes) if v > 0 and v not in found]
    if missing:
        raise DatasetError(
            f"{source}: 'labels' class {', '.join(missing)} is in no training label ({len(by_case)} cases); "
            "a class never seen cannot be learnt"
        )
    spacing, anisotropic = _anisotropic_spacing(stats)
    pixdim = spacing if min_spacing is None else np.maximum(spacing, np.array(min_spacing, float))
    for case in by_case:
        resampled = np.array(case["image_stats"]["sizemm"], float) / pixdim
        if (resampled < PATCH_DIVISOR).any():
            raise DatasetError(
                f"{case['image_filepath']}: {np.round(resampled, 1).tolist()} voxels at "
                f"{np.round(pixdim, 3).tolist()} mm,"
                f" smaller than the smallest patch the network takes ({PATCH_DIVISOR} voxels a side); use finer "
                "spacing (plan_min_spacing) or leave the case out"
            )
    median_shape = np.array(summary["image_stats"]["sizemm"]["median"], float) / pixdim
    roi = [
        int(min(max(PATCH_DIVISOR * (s // PATCH_DIVISOR), PATCH_DIVISOR), m))
        for s, m in zip(median_shape, max_roi_size)
    ]
    if all(side == PATCH_DIVISOR for side in roi):  # one voxel at the deepest level: instance norm cannot train on it
        if all(side <= PATCH_DIVISOR for side in max_roi_size):
            raise SettingsError(
                f"setting 'plan_max_roi_size' {list(max_roi_size)}: a patch needs one side above {PATCH_DIVISOR}"
            )
        axis = max((i for i in range(3) if max_roi_size[i] > PATCH_DIVISOR), key=lambda i: median_shape[i])
        roi[axis] = 2 * PATCH_DIVISOR
    fractions = summary["label_stats"]["label"]
    return {
        "format": PLAN_FORMAT,
        "labels": {str(v): classes[v] for v in sorted(classes)},
        "class_names": [classes[v] for v in sorted(classes) if v > 0],
        "modalities": modalities,
        "in_channels": len(modalities),
        "spacing": {
            "median": [round(float(s), 6) for s in summary["image_stats"]["spacing"]["median"]],
            "target": [round(float(s), 6) for s in spacing],
            "anisotropic_rule": anisotropic,
        },
        "pixdim": [round(float(s), 6) for s in pixdim],
        "roi_size": roi,
        "intensity": [_channel_intensity(stats, c, m) for c, m in enumerate(modalities)],
        "summary": {
            "cases": int(summary["n_cases"]),
            "shape": {k: summary["image_stats"]["shape"][k] for k in ("min", "median", "max")},
            "spacing": {k: summary["image_stats"]["spacing"][k] for k in ("min", "median", "max")},
            "resampled_median_shape": [round(float(s), 1) for s in median_shape],
            "class_voxel_fraction": {
                classes[v]: float(fractions[i]["foreground_percentage"]["mean"])
                for i, v in enumerate(summary["label_stats"]["labels"])
                if i < len(fractions) and int(v) in classes
            },
        },
    }


def describe(plan: Dict[str, Any], plan_file: PathLike = "plan") -> str:
    """One line of what ``plan`` decides (logged by every stage that reads it); returns the line."""
    schemes = ", ".join(f"{c.get('modality', c['channel'])}: {c['scheme']}" for c in plan["intensity"])
    line = (
        f"plan {plan_file}: classes {', '.join(plan['class_names'])}; {plan['in_channels']} channel(s) "
        f"({schemes}); spacing {plan['pixdim']} mm; patch {plan['roi_size']}"
    )
    logger.info(line)
    return line


def _schema() -> Dict[str, Any]:
    """``plan.schema.json`` with the patch side rule of the settings (a multiple of the network's divisor)."""
    schema = json.loads(SCHEMA_FILE.read_text())
    schema["properties"]["roi_size"]["items"] = PATCH_SIDE
    return schema


def load_plan(plan_file: PathLike, dataset_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """A plan read from ``plan_file`` and checked against the schema; ``PlanError`` names the file and problem.
    With ``dataset_dir``, also that the dataset's classes and channels (dataset.json) are the plan's."""
    import jsonschema

    path = Path(plan_file)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(
            f"{path}: missing; a stage that loads weights reads the plan they were trained with (train.json writes it "
            "beside model.pt); give another with --plan_file"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"{path}: cannot read this plan ({one_line(e)})") from None
    if isinstance(plan, dict) and plan.get("format") != PLAN_FORMAT:
        raise PlanError(f"{path}: format {plan.get('format')!r}; this bundle reads {PLAN_FORMAT!r}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(_schema()).iter_errors(plan))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "the top level"
        raise PlanError(f"{path}: not a valid plan at {where}: {error.message}")
    if len(plan["class_names"]) != len(plan["labels"]) - 1 or len(plan["intensity"]) != plan["in_channels"]:
        raise PlanError(f"{path}: class_names must match labels and intensity must have one entry per channel")
    if dataset_dir is not None:
        source = Path(dataset_dir) / "dataset.json"
        meta = json.loads(source.read_text())
        classes, modalities = dataset_classes(meta, source), dataset_modalities(meta, source)
        if len(classes) != len(plan["labels"]) or len(modalities) != plan["in_channels"]:
            raise PlanError(
                f"{path}: plans {len(plan['labels'])} classes and {plan['in_channels']} channel(s); {source} has "
                f"{len(classes)} classes and {len(modalities)} channel(s): these weights were trained for another task"
            )
    describe(plan, path)
    return plan


def save_plan(plan: Dict[str, Any], plan_file: PathLike) -> Path:
    """Write ``plan`` to ``plan_file`` atomically (a temporary file renamed over it) unless the file already holds
    it (a shipped plan given as ``plan_file`` is never rewritten); returns the path."""
    from networks.fileio import atomic_write_json

    path = Path(plan_file)
    try:
        if json.loads(path.read_text()) == plan:
            return path
    except (OSError, ValueError):
        pass
    return atomic_write_json(path, plan)


def _recipe_plan(
    recipe_file: Path, min_spacing: Optional[Sequence[float]], max_roi_size: Sequence[int], made_from: Dict[str, Any]
) -> Dict[str, Any]:
    """A shipped recipe, adapted to the planning settings as a data plan is (spacing coarsened to ``min_spacing``,
    patch at most ``max_roi_size``)."""
    plan = {k: v for k, v in load_plan(recipe_file).items() if k != "made_from"}
    if min_spacing is not None:
        plan["pixdim"] = [max(float(a), float(b)) for a, b in zip(plan["pixdim"], min_spacing)]
    plan["roi_size"] = [min(int(a), int(b)) for a, b in zip(plan["roi_size"], max_roi_size)]
    plan["made_from"] = made_from
    return plan


def task_plan(
    plan_file: PathLike,
    dataset_dir: PathLike,
    synthetic_dir: Optional[PathLike] = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    max_cases: int = 0,
    recipe_file: Optional[PathLike] = None,
    min_spacing: Optional[Sequence[float]] = None,
    max_roi_size: Sequence[int] = (96, 96, 96),
    num_workers: int = 0,
) -> Dict[str, Any]:
    """The plan in ``plan_file``, or, when the file does not exist yet, a new one (``save_plan`` writes it): made from
    the training split of ``dataset_dir`` (``split_datalist`` with ``val_fraction``, ``split_seed``, ``max_cases``),
    or, with ``recipe_file``, that shipped recipe adapted to the planning settings (the data is then not read). An
    existing plan made from other data, recipe or settings is refused (``PlanError``); a plan without ``made_from``
    (a shipped recipe given as ``plan_file``) is used as it is."""
    from scripts.data import ensure_dataset, split_datalist

    path = Path(plan_file)
    settings = {
        "min_spacing": None if min_spacing is None else [float(s) for s in min_spacing],
        "max_roi_size": [int(s) for s in max_roi_size],
    }
    if recipe_file is not None:
        recipe = Path(recipe_file)
        made_from = {"recipe": recipe.name, "recipe_sha256": hashlib.sha256(recipe.read_bytes()).hexdigest()}
        made_from["settings"] = settings
    else:
        dataset_dir = ensure_dataset(dataset_dir, synthetic_dir)
        datalist = split_datalist(dataset_dir, "training", val_fraction, split_seed, max_cases)
        made_from = _fingerprint(dataset_dir, datalist, settings)
    if path.exists():
        plan = load_plan(path)
        saved = plan.get("made_from")
        if saved is not None and saved != made_from:
            differs = [k for k in sorted(set(made_from) | set(saved)) if saved.get(k) != made_from.get(k)]
            raise PlanError(
                f"{path}: made from other data or settings ({', '.join(differs)} differ); delete it to plan again "
                "from this data, or give another --plan_file"
            )
        return plan
    if recipe_file is not None:
        plan = _recipe_plan(recipe, min_spacing, max_roi_size, made_from)
    else:
        source = Path(dataset_dir) / "dataset.json"
        meta = json.loads(source.read_text())  # its labels and modality were checked by split_datalist
        stats = analyse(dataset_dir, datalist, num_workers)
        plan = plan_from_stats(stats, meta, source, min_spacing, max_roi_size)
        plan["made_from"] = made_from
    describe(plan, f"{path} (new)")
    return plan
