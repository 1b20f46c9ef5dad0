"""A search variant against the search as configured, by the rule decided before any variant ran.

The rule (``docs/search_quality.md``, "How a variant is judged", decided on 2026-12-06). On each task, the variant's
report (``search_quality@<variant>.json``) is set beside the search as configured (``search_quality.json``, same
folder, same random architectures and ruler) on the issue's search targets that a variant's run measures:

- the searched networks at or above the random 75th percentile (2 of 3 search seeds);
- better than random search at equal compute by more than the noise floor (2 of 3);
- coarse Kendall τ ≥ 0.4, and above every cheap proxy's τ;
- the moonshot (searched mean at least the better of MONAI's UNet and SegResNet at equal wall time).

Beside them is the difference of the searched networks' mean over the search seeds, variant minus configured, with
its standard error ``sqrt(sd_v² / n_v + sd_c² / n_c)`` from each search's spread over its seeds. The variant
becomes the default search if, on every task, it meets at least the targets the search as configured meets and
its mean is not lower by more than one standard error, and, on at least one task, it meets a target more or its
mean is higher by more than one standard error; every search it ran must stay within ``--search_limit_s`` (2× the
search of 0.4.0 on the machine). A compute budget becomes a default only if it also finds networks of fewer
multiply-adds (``--fewer_gmacs``). MONAI has no comparison of search runs; this is that piece, kept to the rule.

    .venv/bin/python benchmarks/variant_comparison.py --variant finalists --search_limit_s 650 \\
        benchmarks/results/search_quality/amd_epyc_f26m2/cpu_profile/brain_mr \\
        benchmarks/results/search_quality/amd_epyc_f26m2/cpu_profile/tubes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_comparison import difference_se, report_command  # noqa: E402  (one standard error, one ending)

TARGETS = {  # the report's target name -> how this table names it
    "searched_at_or_above_random_q75_in_2_of_3": "searched ≥ random 75th percentile",
    "searched_beats_random_search_by_noise_floor": "beats random search by the noise floor",
    "coarse_kendall_tau_ge_0.4": "coarse τ ≥ 0.4",
    "coarse_tau_above_every_proxy": "coarse τ above every proxy",
    "moonshot_at_least_best_monai": "moonshot",
}
REPORT_KEYS = ("random", "training_seeds", "searched", "targets", "gmacs", "proxy_correlation", "noise")


def load_report(path: Path) -> Dict[str, Any]:
    """The report's ``figures``, with ``file``; raises ``ValueError`` naming the file when it is missing."""
    if not path.is_file():
        raise ValueError(f"{path}: no such report (run benchmarks/search_quality.py for it first)")
    report = json.loads(path.read_text())
    missing = [key for key in REPORT_KEYS if key not in report.get("figures", {})]
    if missing:
        raise ValueError(f"{path}: not a finished search-quality report (no {', '.join(missing)})")
    return {**report["figures"], "settings": report["settings"], "file": str(path)}


def target_results(figures: Dict[str, Any]) -> Dict[str, Optional[bool]]:
    """``TARGETS`` name -> met (None: not judged, e.g. the moonshot where a reference's training time was off), the
    coarse τ against the proxies recomputed from the report's correlations."""
    targets = figures["targets"]
    met = {name: targets[name]["met"] for name in TARGETS if name in targets}  # None: not judged in that run
    coarse_tau = targets["coarse_kendall_tau_ge_0.4"]["value"]
    proxies = [
        c["kendall_tau"] for c in figures["proxy_correlation"]["coarse"].values() if c["kendall_tau"] is not None
    ]
    met["coarse_tau_above_every_proxy"] = coarse_tau is not None and all(coarse_tau > t for t in proxies)
    return met


def searched_summary(figures: Dict[str, Any]) -> Dict[str, Any]:
    """Mean and standard deviation of the searched networks' Dice over search seeds, their multiply-adds per window
    and the longest search's wall time."""
    searched = figures["searched"]
    dice = [s["dice"] for s in searched.values()]
    return {
        "seeds": len(dice),
        "mean": statistics.fmean(dice),
        "std": statistics.stdev(dice) if len(dice) > 1 else 0.0,
        "gmacs": statistics.fmean(figures["gmacs"][f"searched{seed}"] for seed in searched),
        "search_wall_s_max": max(s["search_wall_s"] for s in searched.values()),
    }


def compare_task(folder: Path, variant: str) -> Dict[str, Any]:
    """The rule's figures on one task's records folder."""
    configured = load_report(folder / "search_quality.json")
    other = load_report(folder / f"search_quality@{variant}.json")
    if configured["random"] != other["random"] or configured["training_seeds"] != other["training_seeds"]:
        raise ValueError(
            f"{other['file']}: its random architectures or training seeds differ from {configured['file']}'s: "
            "not the same ruler"
        )
    sides = {"configured": configured, "variant": other}
    summary = {name: searched_summary(figures) for name, figures in sides.items()}
    met = {name: target_results(figures) for name, figures in sides.items()}
    difference = summary["variant"]["mean"] - summary["configured"]["mean"]
    se = difference_se([(s["std"], s["seeds"]) for s in summary.values()])
    lost = [t for t in TARGETS if met["configured"][t] and not met["variant"][t]]
    gained = [t for t in TARGETS if met["variant"][t] and not met["configured"][t]]
    return {
        "task": folder.name,
        "folder": str(folder),
        "noise_floor": {name: figures["noise"]["std"] for name, figures in sides.items()},
        "searched": summary,
        "targets": met,
        "difference": difference,
        "se": se,
        "lost": lost,
        "gained": gained,
        "holds": not lost and difference >= -se,
        "better": bool(gained) or difference > se,
    }


def judge(tasks: List[Dict[str, Any]], search_limit_s: float, fewer_gmacs: bool) -> Dict[str, Any]:
    """The verdict over every task: ``adopt`` when the rule holds on every task and is better on at least one."""
    within = all(t["searched"]["variant"]["search_wall_s_max"] <= search_limit_s for t in tasks)
    cheaper = all(t["searched"]["variant"]["gmacs"] < t["searched"]["configured"]["gmacs"] for t in tasks)
    adopt = all(t["holds"] for t in tasks) and any(t["better"] for t in tasks) and within
    return {
        "holds_on_every_task": all(t["holds"] for t in tasks),
        "better_on_a_task": any(t["better"] for t in tasks),
        "search_within_limit": within,
        "fewer_gmacs": cheaper,
        "adopt": adopt and (cheaper or not fewer_gmacs),
    }


def comparison(folders: Sequence[Path], variant: str, search_limit_s: float, fewer_gmacs: bool) -> Dict[str, Any]:
    """Every task's figures and the verdict."""
    tasks = [compare_task(Path(folder), variant) for folder in folders]
    verdict = judge(tasks, search_limit_s, fewer_gmacs)
    return {"variant": variant, "search_limit_s": search_limit_s, "tasks": tasks, "verdict": verdict}


def print_comparison(report: Dict[str, Any]) -> None:
    """A Markdown table per task, then the verdict."""
    word = {True: "met", False: "missed", None: "not judged"}
    for task in report["tasks"]:
        sides = task["searched"]["configured"], task["searched"]["variant"]
        floors = " / ".join(f"{task['noise_floor'][side]:.4f}" for side in ("configured", "variant"))
        print(f"\n{task['task']}: {report['variant']} against the search as configured (noise floor {floors})\n")
        print("| figure | as configured | variant |\n|---|---|---|")
        for name, label in TARGETS.items():
            print(f"| {label} | " + " | ".join(word[task["targets"][side][name]] for side in task["targets"]) + " |")
        rows = {
            f"searched mean over {sides[0]['seeds']} / {sides[1]['seeds']} search seeds (std)": [
                f"{s['mean']:.4f} ({s['std']:.4f})" for s in sides
            ],
            "searched GMACs per window (mean)": [f"{s['gmacs']:.3f}" for s in sides],
            "longest search": [f"{s['search_wall_s_max']:.0f} s" for s in sides],
        }
        for label, cells in rows.items():
            print(f"| {label} | {cells[0]} | {cells[1]} |")
        lost, gained = (", ".join(TARGETS[t] for t in task[key]) or "none" for key in ("lost", "gained"))
        print(
            f"\nvariant - configured {task['difference']:+.4f} (SE {task['se']:.4f}); targets lost: {lost}; "
            f"gained: {gained}; holds: {task['holds']}; better: {task['better']}"
        )
    verdict = report["verdict"]
    decision = "adopt" if verdict["adopt"] else "keep the search as configured"
    print(
        f"\nsearch within {report['search_limit_s']:.0f} s: {verdict['search_within_limit']}; fewer GMACs on every "
        f"task: {verdict['fewer_gmacs']}; verdict: {decision}"
    )


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="each task's search-quality records folder")
    parser.add_argument("--variant", required=True, help="the variant's name, e.g. finalists (its report's suffix)")
    parser.add_argument("--search_limit_s", type=float, required=True, help="2x the search of 0.4.0 on the machine")
    parser.add_argument("--fewer_gmacs", action="store_true", help="a compute budget: adopt only at fewer GMACs")
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    return report_command(
        "variant_comparison",
        partial(comparison, args.folders, args.variant, args.search_limit_s, args.fewer_gmacs),
        print_comparison,
        args.json,
    )


if __name__ == "__main__":
    main()
