"""One network against a reference over training seeds, from the training-reliability benchmark's records.

The decision rule of the benchmark's comparisons (``benchmarks/recipes/cases_10.json``: the few-case target; the
recipe probes): on each ruler (the validation cases, and the held-out cases where both were scored on them), the
difference of the mean Dice over seeds, network minus reference, against the standard error of that difference
(``sqrt(var_a / n_a + var_b / n_b)``, the seeds of two networks being independent trainings). The verdict is
``ahead`` above one standard error, ``behind`` below minus one, else ``tie``; the target holds where no ruler says
``behind``. The paired standard error (the same seeds of both) is printed beside it.

Both sides must stand on the same ruler: every record of both scored on the same held-out cases, else it stops
naming the record (0.6.7 found few-case records scored on 10 of their 20 held-out cases). MONAI has no statistics
over training seeds of its bundles; this is that piece, kept to what the rule needs.

    .venv/bin/python benchmarks/network_comparison.py --task tubes \\
        --network benchmarks/results/training_reliability/amd_epyc_f25m1/cpu_profile+cases_10:demo_searched \\
        --reference benchmarks/results/training_reliability/amd_epyc_f25m1/cpu_profile+cases_10+steps_2200:monai_unet
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

LEARNT = 0.5  # a class counts as learnt by a training when its Dice exceeds this (training_reliability reports it)


def difference_se(sides: Sequence[Tuple[float, int]]) -> float:
    """The standard error of the difference of two means of independent samples, ``sides`` being each one's
    ``(standard deviation, sample size)``: ``sqrt(sd_a² / n_a + sd_b² / n_b)``."""
    return math.sqrt(sum(sd**2 / n for sd, n in sides))


def report_command(
    tool: str, compute: Callable[[], Dict[str, Any]], show: Callable[[Dict[str, Any]], None], json_file: Optional[Path]
) -> Dict[str, Any]:
    """A comparison command's ending: ``compute`` the report (a ``ValueError`` or ``OSError`` becomes one line naming
    ``tool``, the record or folder, not a traceback), ``show`` it, also write it to ``json_file`` (atomically)."""
    try:
        report = compute()
    except (ValueError, OSError) as error:
        raise SystemExit(f"{tool}: {error}") from None
    show(report)
    if json_file is not None:
        from networks.fileio import atomic_write_json

        atomic_write_json(json_file, report)
    return report


def learnt_counts(runs: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """Per class (in the first run's order), how many of ``runs`` learnt it (class Dice above ``LEARNT``)."""
    classes = list(runs[0]["per_class"])
    return {c: sum(1 for r in runs if (r["per_class"][c] or 0.0) > LEARNT) for c in classes}


def load_runs(folder: Path, task: str, network: str) -> Dict[int, Dict[str, Any]]:
    """``seed -> result`` of every record ``<folder>/<task>/train_<network>_seed<k>.json``, each with ``file``."""
    runs = {}
    for path in sorted((folder / task).glob(f"train_{network}_seed*.json")):
        seed = path.stem.rsplit("seed", 1)[1]
        if seed.isdigit():
            runs[int(seed)] = {**json.loads(path.read_text())["result"], "file": str(path)}
    if len(runs) < 2:
        raise ValueError(f"{folder / task}: {len(runs)} record(s) of {network}; a comparison needs at least 2 seeds")
    return runs


def heldout_cases(runs: Dict[int, Dict[str, Any]]) -> Optional[List[str]]:
    """The held-out cases every run was scored on, or None when no run was scored on held-out cases. Raises
    ``ValueError`` naming the record when some runs were scored on other cases, or not at all."""
    cases = {seed: sorted(r["heldout"].get("per_case", {})) if "heldout" in r else None for seed, r in runs.items()}
    first = next(iter(cases.values()))
    for seed, scored in cases.items():
        if scored != first:
            raise ValueError(
                f"{runs[seed]['file']}: scored on {len(scored or [])} held-out case(s), another record of the "
                f"comparison on {len(first or [])}: not the same ruler"
            )
    return first


def ruler_figures(runs: Dict[int, Dict[str, Any]], ruler: str) -> Dict[int, Dict[str, Any]]:
    """``seed -> {"dice", "per_class"}`` on ``ruler`` (``validation`` or ``heldout``)."""
    return {seed: (r if ruler == "validation" else r["heldout"]) for seed, r in runs.items()}


def compare(network: Dict[int, Dict[str, Any]], reference: Dict[int, Dict[str, Any]]) -> Dict[str, Any]:
    """The rule on one ruler: each side's mean, standard deviation and per-class figures over seeds, the
    difference of the means, its standard error (independent and paired) and the verdict."""
    a = [r["dice"] for r in network.values()]
    b = [r["dice"] for r in reference.values()]
    difference = statistics.fmean(a) - statistics.fmean(b)
    se = difference_se([(statistics.stdev(a), len(a)), (statistics.stdev(b), len(b))])
    paired = [network[s]["dice"] - reference[s]["dice"] for s in sorted(set(network) & set(reference))]
    se_paired = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else None
    verdict = "ahead" if difference > se else "behind" if difference < -se else "tie"

    def side(runs: Dict[int, Dict[str, Any]], dice: List[float]) -> Dict[str, Any]:
        classes = list(next(iter(runs.values()))["per_class"])
        return {
            "seeds": sorted(runs),
            "mean_dice": statistics.fmean(dice),
            "std_dice": statistics.stdev(dice),
            "per_class": {c: statistics.fmean(r["per_class"][c] or 0.0 for r in runs.values()) for c in classes},
            "learnt": learnt_counts(list(runs.values())),
        }

    return {
        "network": side(network, a),
        "reference": side(reference, b),
        "difference": difference,
        "se": se,
        "se_paired": se_paired,
        "verdict": verdict,
    }


def comparison(task: str, network: str, reference: str) -> Dict[str, Any]:
    """The rule on every ruler both sides share; ``network`` and ``reference`` are ``FOLDER:NAME``."""
    sides = [load_runs(Path(spec.rsplit(":", 1)[0]), task, spec.rsplit(":", 1)[1]) for spec in (network, reference)]
    cases = [heldout_cases(runs) for runs in sides]
    if cases[0] is not None and cases[1] is not None and cases[0] != cases[1]:
        raise ValueError(
            f"{reference}: scored on {len(cases[1])} held-out case(s) of {task}, {network} on {len(cases[0])}: "
            "not the same ruler"
        )
    rulers = ["validation"] + (["heldout"] if cases[0] is not None and cases[1] is not None else [])
    report = {
        "task": task,
        "network": network,
        "reference": reference,
        "heldout_cases": len(cases[0]) if "heldout" in rulers else 0,
        "wall_s": [statistics.fmean(r["wall_s"] for r in runs.values()) for runs in sides],
        "rulers": {ruler: compare(*(ruler_figures(runs, ruler) for runs in sides)) for ruler in rulers},
    }
    report["target_holds"] = all(r["verdict"] != "behind" for r in report["rulers"].values())
    return report


def print_comparison(report: Dict[str, Any]) -> None:
    """One Markdown table, a row per side and ruler, then the verdict of each ruler."""
    print(f"\n{report['task']}: {report['network']} against {report['reference']}\n")
    print("| side | ruler | seeds | mean Dice | std | per class (seeds learning it) | train + evaluate |")
    print("|---|---|---|---|---|---|---|")
    for ruler, figures in report["rulers"].items():
        name = f"held-out ({report['heldout_cases']} cases)" if ruler == "heldout" else ruler
        for index, side in enumerate(("network", "reference")):
            row = figures[side]
            classes = ", ".join(
                f"{c} {v:.3f} ({row['learnt'][c]}/{len(row['seeds'])})" for c, v in row["per_class"].items()
            )
            print(
                f"| {side} | {name} | {len(row['seeds'])} | {row['mean_dice']:.4f} | {row['std_dice']:.4f} | "
                f"{classes} | {report['wall_s'][index]:.0f} s |"
            )
    for ruler, figures in report["rulers"].items():
        paired = "" if figures["se_paired"] is None else f", paired SE {figures['se_paired']:.4f}"
        print(f"{ruler}: network - reference {figures['difference']:+.4f} (SE {figures['se']:.4f}{paired}): "
              f"{figures['verdict']}")  # fmt: skip
    print(f"target (network at least the reference's, a shortfall within one SE a tie): "
          f"{'holds' if report['target_holds'] else 'missed'}")  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="the task's records folder name, e.g. embedded, tubes")
    parser.add_argument("--network", required=True, help="FOLDER:NAME, the records folder and the network's name")
    parser.add_argument("--reference", required=True, help="FOLDER:NAME of the reference (e.g. monai_unet)")
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    return report_command(
        "network_comparison", partial(comparison, args.task, args.network, args.reference), print_comparison, args.json
    )


if __name__ == "__main__":
    main()
