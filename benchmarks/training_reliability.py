"""Training reliability: is one training by the bundle's ``train.json`` a measurement?

For each task and each network, the bundle's own stage chain trains (``train``) and scores (``evaluate``) the network
with ``T`` training seeds (``seed``) on one split (``split_seed`` 0), at the profile's budget. The networks:
C2FNAS-Panc at the profile's width, the architecture ``make demo``'s search found in 0.6 and 0.8.3 (and, when named
with ``--networks``, ``demo_searched_084``, what it finds since 0.8.4), ``R`` architectures drawn from the
profile's search space (seeded, the same draw as the search-quality benchmark's), and MONAI's ``UNet`` as a
reference (a ``network_def`` layer over ``train.json``). The tasks: the embedded synthetic pancreas and the generated
tasks of ``benchmarks/tasks.py``.

It reports, per task and network: the mean and standard deviation over seeds of the mean Dice (the bundle's Dice),
per class how many seeds learnt it (class Dice > 0.5), the wall time of a training and its evaluation, and each
network's multiply-adds per window (the plan's patch, batch 1). It writes ``training_reliability.json``,
``training_reliability.png`` (every seed's mean Dice) and ``dice_vs_gmacs.png`` (mean Dice against multiply-adds,
with the Pareto front) into the records folder.

Each finished training is a small JSON record with what it depends on (the merged configs without the search's ids,
the architecture, the seed, the digest of the code it runs, the task's generator, the CPU model), kept under
``--records_dir`` (default ``benchmarks/results/training_reliability/<profile>/``, committed to the repository).
A run reuses every record whose inputs are unchanged, so it continues after an interruption, or on another machine
with the same CPU model; scratch outputs go to ``--work_dir``. After a change of the code, the configs or the data
generator, a network's first seed trains again; if it reproduces its record exactly, the other seeds' records are
carried over (``search_quality.Bench.part``), else they train again too.

    .venv/bin/python benchmarks/training_reliability.py [--tasks embedded,tubes] [--seeds 5] [--random 3] [--quick]
        [--networks demo_searched,monai_unet] [--layers benchmarks/recipes/adamw.json] [--heldout 20]

``--heldout N`` also scores every trained network on N never-seen cases of its task (the generator's seed 1), all
of them, not the 5 validation cases that chose its checkpoint: a ruler with less case-sampling noise.

``--layers`` merges recipe variants (config layers in ``benchmarks/recipes/``) after the profile; their records go to
a folder named after the profile and the layers, so each variant's figures stand beside the profile's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402  (the benchmark that runs the bundle's stages and keeps their records)
from network_comparison import LEARNT, learnt_counts  # noqa: E402  (class learnt: its Dice above LEARNT)

FORMAT = "c2fnas-training-reliability/1"
# what ``make demo`` found on the embedded data (search seed 0, CPU profile with bfloat16 training, 0.5.2, machine
# X; in float32, 0.5.0-0.5.1 found the same topology with ops 3D,P3D,3D,P3D,P3D,2D,P3D,3D)
DEMO_SEARCHED = {"levels": [2, 2, 3, 3, 3, 2, 1, 1], "ops": ["P3D", "P3D", "P3D", "P3D", "2D", "P3D", "P3D", "2D"]}
# what make demo's search finds since 0.8.4 (its coarse clusters trained side by side, one thread each); trained only
# when named (--networks), so the default run's set and cost stay as they were
DEMO_SEARCHED_084 = {"levels": [1, 2, 2, 2, 3, 2, 2, 1], "ops": ["2D", "2D", "2D", "2D", "2D", "3D", "3D", "3D"]}
ON_REQUEST = {"demo_searched_084"}
TASKS = ["embedded", *sq.TASKS]


def networks(bench: sq.Bench, num_random: int) -> Dict[str, Dict[str, Any]]:
    """``name -> {"arch": dict or None, "extra": [configs]}``: C2FNAS-Panc, the demo's searched architecture,
    ``num_random`` architectures of the profile's space and MONAI's UNet."""
    from networks import default_architecture

    panc = default_architecture()
    found: Dict[str, Dict[str, Any]] = {
        "c2fnas_panc": {"arch": {"levels": list(panc.levels), "ops": list(panc.ops)}, "extra": []},
        "demo_searched": {"arch": DEMO_SEARCHED, "extra": []},
        "demo_searched_084": {"arch": DEMO_SEARCHED_084, "extra": []},
    }
    drawn = sq.sample_architectures(bench, num_random, 0, (), seed=0)
    found.update({name: {"arch": arch, "extra": []} for name, arch in drawn.items()})
    found["monai_unet"] = {"arch": None, "extra": [sq.baseline_config(bench, "unet")]}
    return found


def summarise(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean and standard deviation over seeds of the mean Dice, seeds that learnt each class, mean wall time; the
    same figures on the held-out cases (``heldout``) when every run was scored on them."""
    dice = [r["dice"] for r in runs]
    learnt = learnt_counts(runs)
    heldout = {}
    if all("heldout" in r for r in runs):
        scored = summarise([{**r["heldout"], "wall_s": r["wall_s"]} for r in runs])
        heldout = {"heldout": {k: v for k, v in scored.items() if k != "wall_s"}}
    return {
        **heldout,
        "seeds": len(runs),
        "mean_dice": statistics.fmean(dice),
        "std_dice": statistics.stdev(dice) if len(dice) > 1 else 0.0,
        "min_dice": min(dice),
        "max_dice": max(dice),
        "per_seed": dice,
        "learnt": learnt,
        "wall_s": statistics.fmean(r["wall_s"] for r in runs),
    }


def class_volumes(dataset_dir: Path) -> Dict[str, List[float]]:
    """``case -> labelled volume in mL of each foreground label value (1, 2, ...)`` of every labelled case of
    ``dataset_dir`` (MSD layout)."""
    import nibabel as nib
    import numpy as np

    meta = json.loads((dataset_dir / "dataset.json").read_text())
    num_classes = max(int(k) for k in meta["labels"])
    volumes = {}
    for item in meta["training"]:
        label = nib.load(str(dataset_dir / item["label"]))
        counts = np.bincount(np.asarray(label.dataobj).astype(np.int64).ravel(), minlength=num_classes + 1)
        voxel_ml = float(np.prod(label.header.get_zooms()[:3])) / 1000.0
        volumes[sq.case_name(item["image"])] = [float(n) * voxel_ml for n in counts[1 : num_classes + 1]]
    return volumes


def dice_by_size(runs: Sequence[Dict[str, Any]], volumes: Dict[str, List[float]], bins: int = 3) -> Dict[str, Any]:
    """Per class, the held-out cases holding it split into ``bins`` groups of rising labelled volume: each group's
    volume range (mL), and its mean Dice over cases and seeds. Whether a class is missed because it is small."""
    scored = [r["heldout"]["per_case"] for r in runs if "per_case" in r.get("heldout", {})]
    if not scored:
        return {}
    report = {}
    for index, name in enumerate(next(iter(scored[0].values()))):  # the classes in label order
        cases = sorted((v[index], c) for c, v in volumes.items() if v[index] > 0 and c in scored[0])
        groups = [cases[i * len(cases) // bins : (i + 1) * len(cases) // bins] for i in range(bins)]
        report[name] = [
            {
                "volume_ml": [group[0][0], group[-1][0]],
                "cases": len(group),
                "mean_dice": statistics.fmean(s[c][name] or 0.0 for s in scored for _, c in group),
            }
            for group in groups
            if group
        ]
    return {"seeds": len(scored), "classes": report}


def _panels(report: Dict[str, Any], path: Path, draw: Callable[[Any, Dict[str, Any]], None], title: str) -> Path:
    """One panel per task, ``draw(axes, rows)`` filling each, saved atomically as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from networks.fileio import atomic_write

    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.0, 5.0 * len(tasks)), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        draw(ax, report["tasks"][task])
        ax.set_title(task)
    fig.suptitle(f"{title} ({report['profile']})", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_cost(report: Dict[str, Any], path: Path) -> Path:
    """Mean Dice (± std over seeds) against multiply-adds per window, one panel per task, the Pareto front drawn."""

    def draw(ax: Any, rows: Dict[str, Any]) -> None:
        names = list(rows)
        points = [(rows[n]["gmacs"], rows[n]["mean_dice"]) for n in names]
        for name, (cost, dice) in zip(names, points):
            ax.errorbar(cost, dice, yerr=rows[name]["std_dice"], fmt="o", capsize=3)
            ax.annotate(name, (cost, dice), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = sq.pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
        ax.set_xlabel("GMACs per window")
        ax.set_ylabel("mean Dice over seeds (validation)")
        ax.legend(fontsize=8)

    return _panels(report, path, draw, "Dice against compute")


def plot(report: Dict[str, Any], path: Path) -> Path:
    """Every seed's mean Dice per network, one panel per task."""

    def draw(ax: Any, rows: Dict[str, Any]) -> None:
        for i, (name, row) in enumerate(rows.items()):
            ax.scatter([i] * len(row["per_seed"]), row["per_seed"], s=18, alpha=0.7)
            ax.errorbar(i + 0.25, row["mean_dice"], yerr=row["std_dice"], fmt="k_", capsize=3)
        ax.set_xticks(range(len(rows)), list(rows), rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean Dice (validation)")

    return _panels(report, path, draw, "each training seed's Dice, mean ± std")


def keep_earlier_entries(report: Dict[str, Any], earlier_file: Path) -> None:
    """Keep in ``report`` the entries of the folder's earlier report (same format, profile and layers) for the tasks
    and networks this run did not train, listed under ``kept_from_earlier_run``, so that runs over some tasks or
    networks add to the folder's report instead of replacing it."""
    if not earlier_file.exists():
        return
    earlier = json.loads(earlier_file.read_text())
    if [earlier.get(k) for k in ("format", "profile", "layers")] != [
        report[k] for k in ("format", "profile", "layers")
    ]:
        return
    kept = []
    for task, entries in earlier.get("tasks", {}).items():
        for name, entry in entries.items():
            if name not in report["tasks"].get(task, {}):
                report["tasks"].setdefault(task, {})[name] = entry
                kept.append(f"{task}/{name}")
    if kept:
        report["kept_from_earlier_run"] = kept


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--profile", type=Path, default=sq.CONFIGS / "cpu_profile.json", help="budget profile")
    parser.add_argument("--seeds", type=int, default=5, help="T: training seeds per network")
    parser.add_argument("--random", type=int, default=3, help="R: architectures drawn from the search space")
    parser.add_argument("--records_dir", type=Path, default=None, help="default: benchmarks/results/...")
    parser.add_argument("--work_dir", type=Path, default=sq.ROOT / "runs" / "training_reliability")
    parser.add_argument("--quick", action="store_true", help="tiny profile, embedded data, T=2, R=1: that it runs")
    parser.add_argument("--no_reuse", action="store_true", help="train everything again")
    parser.add_argument("--networks", default=None, help="comma-separated subset of the networks (default: all)")
    parser.add_argument(
        "--heldout", type=int, default=0, help="also score every training on this many never-seen generated cases"
    )
    parser.add_argument(
        "--layers", default="", help="comma-separated config files merged after the profile: a recipe variant"
    )
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    layers = [Path(f.strip()).resolve() for f in args.layers.split(",") if f.strip()]
    missing = [str(f) for f in layers if not f.is_file()]
    if missing:
        parser.error(f"--layers: {', '.join(missing)} do not exist")
    if args.quick:
        args.seeds, args.random, tasks = 2, 1, ["embedded"]
        args.profile = sq.ROOT / "tests" / "data" / "tiny_profile.json"
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks {args.tasks}: unknown {unknown}; choose from {', '.join(TASKS)}")
    if args.seeds < 2 or args.random < 1:
        parser.error("need --seeds >= 2 (a spread) and --random >= 1")
    if not args.profile.is_file():
        parser.error(f"--profile {args.profile}: does not exist")
    profile = args.profile.resolve()
    work_dir = args.work_dir.resolve()
    if args.records_dir is None:
        base = work_dir / "records" if args.quick else sq.ROOT / "benchmarks" / "results" / "training_reliability"
        args.records_dir = base / "+".join([profile.stem, *(f.stem for f in layers)])
    records = args.records_dir.resolve()
    start = time.perf_counter()
    report: Dict[str, Any] = {"format": FORMAT, "profile": profile.name, "learnt_above": LEARNT, "tasks": {}}
    report["layers"] = [f.name for f in layers]
    machine = None
    for task in tasks:
        dataset_dir = None if task == "embedded" else sq.task_dataset(task, work_dir / "data" / task)
        key = sq.generator_key(task)
        bench = sq.Bench(work_dir / task, dataset_dir, profile, not args.no_reuse, None, records / task, key)
        if args.heldout:
            heldout = sq.heldout_dataset(task, work_dir / "data", args.heldout)
            bench.heldout = (heldout, {"cases": args.heldout, "seed": 1})
            heldout_volumes = class_volumes(bench.heldout[0])
        machine = bench.machine
        report["tasks"][task] = {}
        chosen = networks(bench, args.random)
        default = [n for n in chosen if n not in ON_REQUEST]
        wanted = default if args.networks is None else [n.strip() for n in args.networks.split(",")]
        if set(wanted) - set(chosen):
            parser.error(f"--networks {args.networks}: unknown {sorted(set(wanted) - set(chosen))}; of {list(chosen)}")
        for name in wanted:
            network = chosen[name]
            extra = [*network["extra"], *layers]
            runs: List[Dict[str, Any]] = []
            for seed in range(args.seeds):
                t = time.perf_counter()
                result = sq.train_part(bench, f"{name}_seed{seed}", network["arch"], seed=seed, extra=extra)
                runs.append(result)
                print(
                    f"[{time.perf_counter() - start:7.0f} s] {task} {name} seed {seed}: Dice {result['dice']:.4f} "
                    f"{json.dumps(result['per_class'])} ({time.perf_counter() - t:.0f} s)",
                    flush=True,
                )
            cost = sq.window_gmacs(bench, network["arch"], extra)
            report["tasks"][task][name] = {"arch": network["arch"], "gmacs": cost, **summarise(runs)}
            if args.heldout:
                by_size = dice_by_size(runs, heldout_volumes)
                report["tasks"][task][name]["heldout"]["by_size"] = by_size
        if bench.carried:
            report.setdefault("carried_over", {})[task] = {"parts": bench.carried, "verified_by": bench.reproduced}
            print(f"{task}: {len(bench.carried)} records carried over a code change, verified by {bench.reproduced}")
    report["machine"] = machine
    report["wall_s"] = time.perf_counter() - start
    keep_earlier_entries(report, records / "training_reliability.json")
    sq.atomic_json(records / "training_reliability.json", report)
    plot(report, records / "training_reliability.png")
    plot_cost(report, records / "dice_vs_gmacs.png")
    print_report(report)
    return report


def print_report(report: Dict[str, Any]) -> None:
    """One Markdown table per task."""
    for task, rows in report["tasks"].items():
        print(f"\n{task} ({report['profile']}; learnt: class Dice > {report['learnt_above']})\n")
        print("| network | mean Dice over seeds | std | range | seeds learning each class | GMACs per window | "
              "train + evaluate |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            print(f"| {name} | {_dice_cells(row)} | {row['gmacs']:.3f} | {row['wall_s']:.0f} s |")
            if "heldout" in row:  # the same trainings scored on the never-seen cases
                print(f"| {name}, held-out cases | {_dice_cells(row['heldout'])} | | |")
        for name, row in rows.items():
            by_size = row.get("heldout", {}).get("by_size")
            for cls, groups in (by_size or {}).get("classes", {}).items():
                text = ", ".join(
                    f"{g['volume_ml'][0]:.1f}-{g['volume_ml'][1]:.1f} mL {g['mean_dice']:.3f}" for g in groups
                )
                print(f"{name}, held-out {cls} Dice by its volume ({by_size['seeds']} seeds): {text}")


def _dice_cells(row: Dict[str, Any]) -> str:
    """A summary's table cells: mean, std, range, seeds learning each class."""
    learnt = ", ".join(f"{c} {n}/{row['seeds']}" for c, n in row["learnt"].items())
    return f"{row['mean_dice']:.4f} | {row['std_dice']:.4f} | {row['min_dice']:.3f}–{row['max_dice']:.3f} | {learnt}"


if __name__ == "__main__":
    main()
