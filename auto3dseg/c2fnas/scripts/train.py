"""Train C2FNAS for Auto3DSeg: coarse search, fine search, training and evaluation, each the bundle's own stage.

``BundleAlgo.train`` runs ``python scripts/train.py run --config_file <configs> [--key value ...]``. Each stage is
``python -m monai.bundle run`` over the bundle's ``common.json``, the stage config, the chosen profile and a layer
written here (the fold's split, the plan), into ``<algo_dir>/outputs``. Every stage resumes from its own state when
the same command runs again (a killed AutoRunner started again continues), and refuses a state made with other
settings. Each stage's output goes to ``<algo_dir>/outputs/logs/<stage>.log`` (appended to). The evaluation's mean
Dice of the trained network (its best checkpoint, on the fold's validation cases) goes to
``<ckpt_path>/progress.yaml`` for ``BundleAlgo.get_score``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Sequence, Union

import yaml
from monai.bundle import ConfigParser

from networks.fileio import atomic_write, atomic_write_json

TRAINING_STAGES = ("search_coarse", "search_fine", "train", "evaluate")  # of the bundle's stage chain, in order
SETTINGS = ("bundle_root", "algo_dir", "data_stats_file", "data_list_file", "data_root", "modality", "fold", "profile")


def stage_chain(bundle_root: Path) -> ModuleType:
    """The bundle's stage chain (``scripts/stage_chain.py``: stages, config layers, hand-offs), loaded by its path,
    since this template's own package is also called ``scripts``."""
    name = "c2fnas_stage_chain"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(bundle_root) / "scripts" / "stage_chain.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def bundle_importable(bundle_root: Union[str, Path]) -> None:
    """Put the bundle root on ``sys.path`` (once), so that the bundle's ``scripts`` modules import by name."""
    if str(bundle_root) not in sys.path:
        sys.path.insert(0, str(bundle_root))


def hyper_parameters(config_file: Union[str, Sequence[str]], override: Dict[str, Any]) -> ConfigParser:
    """The algorithm's settings: ``hyper_parameters.yaml`` (and any other config given) with ``override``."""
    parser = ConfigParser()
    parser.read_config([config_file] if isinstance(config_file, str) else list(config_file))
    for key, value in override.items():
        parser[key] = value
    return parser


def _profile(bundle_root: Path, profile: str) -> List[str]:
    if profile == "auto":
        import torch

        profile = "gpu" if torch.cuda.is_available() else "cpu"
    if profile == "gpu":
        return []
    if profile == "cpu":
        return [str(bundle_root / "configs" / "cpu_profile.json")]
    if not Path(profile).is_file():
        raise FileNotFoundError(f"C2FNAS algorithm: profile {profile!r} is not gpu, cpu, auto or a profile file")
    return [str(Path(profile).resolve())]


def task_view(settings: Dict[str, Any]) -> Path:
    """``<algo_dir>/task``: the fold's split as the bundle reads data (an MSD ``dataset.json`` with absolute paths,
    and ``fold.json``, a config layer that hands the stages this fold's training and validation cases)."""
    datalist = json.loads(Path(settings["data_list_file"]).read_text())
    root = Path(settings["data_root"])
    bundle_importable(settings["bundle_root"])
    from scripts.data import check_distinct_cases  # the bundle's: one case listed twice could be in two folds

    def absolute(item: Dict[str, Any]) -> Dict[str, str]:
        return {k: str(root / item[k]) if not os.path.isabs(item[k]) else item[k] for k in ("image", "label")}

    check_distinct_cases([absolute(d) for d in datalist["training"]], settings["data_list_file"])
    stats = ConfigParser.load_config_file(settings["data_stats_file"])
    summary = stats["stats_summary"]
    labels = datalist.get("labels") or {
        str(int(v)): "background" if int(v) == 0 else f"class {int(v)}" for v in summary["label_stats"]["labels"]
    }
    channels = int(summary["image_stats"]["channels"]["max"])
    modality = datalist.get("modality") or {str(c): settings["modality"] for c in range(channels)}

    fold = int(settings["fold"])
    training = [absolute(d) for d in datalist["training"] if int(d.get("fold", -1)) != fold]
    validation = [absolute(d) for d in datalist["training"] if int(d.get("fold", -1)) == fold]
    if not training or not validation:
        raise ValueError(f"{settings['data_list_file']}: fold {fold} leaves {len(training)} training and "
                         f"{len(validation)} validation cases; each needs at least one")  # fmt: skip
    view = Path(settings["algo_dir"]) / "task"
    meta = {"name": datalist.get("name", "auto3dseg"), "labels": labels, "modality": modality}
    meta.update({"training": training + validation, "test": []})
    split = "$SplitList(@fold_{})"  # the bundle's own split type: a stage then resumes its state
    layer = {
        "+imports": ["$from scripts.data import SplitList"],
        "fold_training": training,
        "fold_validation": validation,
    }
    layer.update({"train_datalist": split.format("training"), "val_datalist": split.format("validation")})
    atomic_write_json(view / "dataset.json", meta)
    atomic_write_json(view / "fold.json", layer)
    return view


def task_plan(settings: Dict[str, Any], view: Path, configs: List[str], budgets: Dict[str, Any]) -> Path:
    """``<algo_dir>/outputs/plan.json``: the plan from Auto3DSeg's data stats by the bundle's own ``plan_from_stats``,
    with the profile's planning settings (``plan_min_spacing``, ``plan_max_roi_size``). Written once; the stages
    read it as given (a plan without ``made_from``)."""
    plan_file = Path(settings["algo_dir"]) / "outputs" / "plan.json"
    if plan_file.exists():
        return plan_file
    bundle_importable(settings["bundle_root"])
    from scripts.planning import plan_from_stats, save_plan

    merged = ConfigParser(ConfigParser.load_config_files(configs))
    for key, value in budgets.items():
        merged[key] = value
    summary_file = Path(settings["data_stats_file"])
    by_case_file = summary_file.with_name(summary_file.stem + "_by_case" + summary_file.suffix)
    stats = {
        "stats_summary": ConfigParser.load_config_file(str(summary_file))["stats_summary"],
        "stats_by_cases": ConfigParser.load_config_file(str(by_case_file))["stats_by_cases"],
    }
    meta = json.loads((view / "dataset.json").read_text())
    plan = plan_from_stats(stats, meta, view / "dataset.json", merged["plan_min_spacing"], merged["plan_max_roi_size"])
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    return save_plan(plan, plan_file)


def _value(value: Any) -> Any:
    """A training parameter as the bundle's settings take it: Auto3DSeg writes a list as ``32,32,32``, which
    arrives as that string or as a tuple; both become a list."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return list(value) if isinstance(value, tuple) else value


def run(config_file: Union[str, Sequence[str]], **override: Any) -> None:
    """Run (or resume) the four stages; ``override``: hyper-parameters and budget ids of the bundle."""
    parser = hyper_parameters(config_file, {k: v for k, v in override.items() if k in SETTINGS})
    settings = {k: parser.get_parsed_content(k) for k in SETTINGS}
    bundle_root, algo_dir = Path(settings["bundle_root"]), Path(settings["algo_dir"])
    view = task_view(settings)
    out = algo_dir / "outputs"
    chain = stage_chain(bundle_root)
    layers = _profile(bundle_root, str(settings["profile"])) + [str(view / "fold.json")]
    # AutoRunner gives every algorithm the same training parameters: keep the bundle's own ids, skip the others
    stage_files = sorted({f for name in TRAINING_STAGES for f in chain.config_files(name, bundle_root)})
    known = {k.lstrip("+") for f in stage_files for k in ConfigParser.load_config_file(f)}
    budgets = {k: _value(v) for k, v in override.items() if k not in SETTINGS and k in known}
    ignored = sorted(k for k in override if k not in SETTINGS and k not in known)
    if ignored:
        print(f"C2FNAS algorithm: training parameters that are not C2FNAS settings, left to other algorithms: "
              f"{', '.join(ignored)}", flush=True)  # fmt: skip
    plan_file = task_plan(settings, view, [str(bundle_root / chain.COMMON)] + layers[:-1], budgets)
    where = {"bundle_root": str(bundle_root), "dataset_dir": str(view), "output_dir": str(out)}
    where["plan_file"] = str(plan_file)
    used = {"layers": layers, "overrides": {**where, **budgets}}  # what infer.py builds the same network from
    atomic_write_json(out / "c2fnas_run.json", used)
    for stage in TRAINING_STAGES:
        argv = chain.command(stage, bundle_root, layers, {**where, **budgets})
        log = out / "logs" / f"{stage}.log"  # appended to: a resumed stage logs beside its first attempt
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"C2FNAS algorithm: {stage} (log: {log})", flush=True)
        with open(log, "a") as f:
            done = subprocess.run(argv, cwd=str(bundle_root), stdout=f, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            last = [line for line in log.read_text().splitlines() if line.strip()][-1:]
            raise RuntimeError(f"C2FNAS algorithm: the {stage} stage failed (exit {done.returncode}); {log}: {last}")
    report = json.loads((out / "eval" / "dice_per_class.json").read_text())
    progress = [{"best_avg_dice_score": float(report["mean_dice"]), "per_class": report["per_class"]}]
    ckpt_path = Path(parser.get_parsed_content("ckpt_path"))
    atomic_write(ckpt_path / "progress.yaml", lambda f: yaml.safe_dump(progress, f), mode="w")


if __name__ == "__main__":
    import fire

    fire.Fire({"run": run})
