"""The stage chain of the method, declared once: the stages in the order they run, the config layers each one merges
over ``configs/common.json``, and what each takes from the stages before it.

The hand-offs are config ids defined once in ``common.json``: ``searched_arch_file`` (the fine search's result) and
``trained_ckpt_file`` (the weights training keeps), so a stage names its predecessor's output by id under any
``output_dir``. The Makefile (``make demo``), the Auto3DSeg template, the tests and the benchmarks run the stages from
here. From the bundle root::

    python -m scripts.stage_chain --profile configs/cpu_profile.json            # every stage, in order
    python -m scripts.stage_chain --stages train,evaluate --dry_run True          # print the commands only
    python -m scripts.stage_chain --dataset_dir /data/Task07_Pancreas           # any other id: an override

MONAI's bundle runs one config at a time and has no notion of a chain of stages; this module is only that list and
the ``python -m monai.bundle run`` command line it gives. It imports nothing from the bundle, so the Auto3DSeg
template (whose own package is also called ``scripts``) can load it by file path.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "COMMON",
    "CPU_PROFILE",
    "Stage",
    "STAGES",
    "stage",
    "config_files",
    "override_args",
    "command",
    "required_layers",
    "check_layers",
    "outputs",
    "main",
]

COMMON = "configs/common.json"
CPU_PROFILE = "configs/cpu_profile.json"
SEARCHED = {"arch_file": "@searched_arch_file"}
TRAINED = {**SEARCHED, "ckpt_file": "@trained_ckpt_file"}
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Stage:
    """One stage: its config ``layers`` (relative to the bundle root, merged over ``COMMON`` in this order) and its
    ``handoff``, the overrides that point it at the outputs of the stages before it."""

    name: str
    layers: Tuple[str, ...]
    handoff: Mapping[str, str] = field(default_factory=dict)


STAGES: Tuple[Stage, ...] = (
    Stage("search_coarse", ("configs/search_coarse.json",)),
    Stage("search_fine", ("configs/search_fine.json",)),
    Stage("train", ("configs/train.json",), SEARCHED),
    Stage("evaluate", ("configs/train.json", "configs/evaluate.json"), TRAINED),
    Stage("inference", ("configs/inference.json",), TRAINED),
)


def stage(name: str) -> Stage:
    """The stage called ``name``; ``ValueError`` names the stages there are."""
    for found in STAGES:
        if found.name == name:
            return found
    raise ValueError(f"no stage {name!r} in the chain; the stages are {', '.join(s.name for s in STAGES)}")


def config_files(name: str, bundle_root: PathLike = ".", extra: Sequence[PathLike] = ()) -> List[str]:
    """The config files stage ``name`` merges: ``COMMON``, its layers (under ``bundle_root``), then ``extra`` (a
    profile, a torchrun override, a split layer; paths as given)."""
    root = os.fspath(bundle_root)
    layers = [f if root == "." else os.path.join(root, f) for f in (COMMON, *stage(name).layers)]
    return layers + [os.fspath(f) for f in extra]


def override_args(overrides: Mapping[str, Any]) -> List[str]:
    """``--key value`` arguments for ``monai.bundle run`` (which reads values as Python literals through fire):
    strings as they are, booleans and None as Python writes them, everything else as JSON."""
    args: List[str] = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else repr(value) if value is None or isinstance(value, bool) else None
        args += [f"--{key}", json.dumps(value) if text is None else text]
    return args


def command(
    name: str,
    bundle_root: PathLike = ".",
    extra: Sequence[PathLike] = (),
    overrides: Optional[Mapping[str, Any]] = None,
    python: str = sys.executable,
) -> List[str]:
    """The command line that runs stage ``name``: ``python -m monai.bundle run --config_file [...]`` with the stage's
    hand-off and then ``overrides`` (which win)."""
    files = config_files(name, bundle_root, extra)
    argv = [python, "-m", "monai.bundle", "run", "--config_file", json.dumps(files)]
    return argv + override_args({**stage(name).handoff, **(overrides or {})})


def required_layers(last: str) -> List[str]:
    """The config files a config ``last`` needs beneath it: its stage's (``COMMON`` and the stage's layers up to
    ``last``), or ``COMMON`` and ``last`` for a config outside the chain (``configs/plan.json``)."""
    for found in STAGES:
        if found.layers[-1] == last:
            return [COMMON, *found.layers]
    return [COMMON, last]


def check_layers(config_layers: Sequence[str]) -> bool:
    """The first step of every stage config's ``run``: stop at once, in one line naming the command to use, when the
    config was run without the layers beneath it. ``config_layers`` is what the run merged: ``common.json`` starts
    the list and each stage config adds itself with ``+config_layers`` (alone, MONAI copies its own entry)."""
    needed = required_layers(config_layers[-1])
    if list(config_layers) == needed:
        return True
    from scripts.errors import SettingsError  # the bundle's one-line error (this module imports nothing at load)

    missing = [f for f in needed if f not in config_layers]
    raise SettingsError(
        f"{config_layers[-1]} is a layer over {', '.join(missing)} and does not run alone; run, from the bundle "
        f"root: python -m monai.bundle run --config_file '{json.dumps(needed)}' (the whole chain: python -m "
        "scripts.stage_chain; the model card lists every stage's command)"
    )


def main(stages: str = "all", profile: Optional[str] = None, dry_run: bool = False, **overrides: Any) -> None:
    """Run ``stages`` (comma-separated names, or ``all``) in order from the current directory (the bundle root),
    each with ``profile`` as its last layer and the other options as overrides; print each command first."""
    names = [s.name for s in STAGES] if stages == "all" else [n.strip() for n in str(stages).split(",")]
    extra = [profile] if profile else []
    commands = [(name, command(name, ".", extra, overrides)) for name in names]  # unknown names fail before any run
    for name, argv in commands:
        print(f"stage {name}: {shlex.join(argv)}", flush=True)
        if not dry_run:
            done = subprocess.run(argv)
            if done.returncode != 0:
                sys.exit(f"stage {name} failed (exit {done.returncode}); running the same command again resumes it")
    if not dry_run:
        for line in outputs(names[-1], extra, overrides):
            print(line, flush=True)


def outputs(name: str, extra: Sequence[PathLike] = (), overrides: Optional[Mapping[str, Any]] = None) -> List[str]:
    """What the chain left, as lines for a person: the searched architecture, the evaluation's Dice per class and
    the segmentations, where they exist (paths from the config ids of stage ``name``, from the bundle root)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files(config_files(name, ".", extra)))
    for key, value in (overrides or {}).items():
        parser[key] = value
    found = {k: os.path.abspath(parser.get_parsed_content(k)) for k in ("searched_arch_file", "eval_dir", "output_dir")}
    lines = []
    if os.path.isfile(found["searched_arch_file"]):
        lines.append(f"searched architecture: {found['searched_arch_file']} (picture beside it, .png)")
    report = os.path.join(found["eval_dir"], "dice_per_class.json")
    if os.path.isfile(report):
        with open(report) as f:
            dice = json.load(f)
        lines.append(f"validation Dice ({report}): mean {dice['mean_dice']}, per class {json.dumps(dice['per_class'])}")
    if os.path.isdir(os.path.join(found["output_dir"], "inference")):
        lines.append(f"segmentations: {os.path.join(found['output_dir'], 'inference')}")
    return lines


if __name__ == "__main__":
    import fire

    fire.Fire(main)
