"""Inference precision: the same trained weights scored in float32 and in bfloat16, side by side.

For each trained network, ``evaluate.json`` scores its weights with ``inference_runtime`` ``openvino`` (float32) and
``openvino_bf16`` on the validation cases and on never-seen cases (``--heldout``, the generator's seed 1, as
``training_reliability.py --heldout``), each Dice per case and class from ``val_mean_dice_raw.csv``. The report
gives, per network, case set and class, both precisions' mean Dice, their paired difference (mean, its standard
error, the largest per case) and each scoring's wall time. The networks:

- every training of ``training_reliability.py`` under ``--trainings`` (a task's ``runs/train_<network>_seed<k>``
  folders: its weights, architecture and plan), scored with the profile they were trained with (``--profile``);
- ``--shipped``: the bundle's own weights (``models/model.pt``), scored with the configs' defaults (no profile).

Every scoring is a part (``search_quality.Bench``): its record under ``--records_dir`` (default
``benchmarks/results/inference_precision/<machine>/``) depends on the weights' digest, the configs, the code and the
machine, and a re-run reuses it; the report is also written to ``--work_dir``/report.json. ``--quick`` (a test): the
shipped weights on 2 held-out cases, a coarse grid, 32^3 windows.

    .venv/bin/python benchmarks/inference_precision.py --trainings runs/training_reliability/embedded/runs \\
        --shipped --heldout 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402

PRECISIONS = {"float32": "openvino", "bfloat16": "openvino_bf16"}  # name -> inference_runtime
INFERENCE_CODE = ["networks", "bundle/scripts"]
RULE = 0.005  # the adoption rule (docs/benchmarks.md, benchmark 9): |mean Dice change| per class at most this


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def trained_networks(folder: Path) -> Dict[str, Path]:
    """``name -> run folder`` of the trainings under ``folder`` that finished (weights and architecture present)."""
    found = {}
    for run in sorted(folder.glob("train_*")):
        if (run / "models" / "model.pt").is_file() and (run / "architecture.json").is_file():
            found[run.name[len("train_") :]] = run
    return found


def score_part(bench: sq.Bench, name: str, weights: Path, arch: Path, cases: str, precision: str) -> Dict[str, Any]:
    """Dice per case and class of ``weights`` on the validation cases (``cases`` ``validation``) or on all of
    ``bench.heldout``'s, scored by ``evaluate.json`` with the runtime of ``precision``; and its wall time."""

    def run(folder: Path) -> Dict[str, Any]:
        overrides = bench.overrides(folder, arch_file=str(arch), ckpt_file=str(weights))
        overrides["inference_runtime"] = PRECISIONS[precision]
        if cases == "heldout":
            overrides.update({"dataset_dir": str(bench.heldout[0]), "val_fraction": 1.0, "max_cases": 0})
        wall = bench.bundle_run(folder / "evaluate.log", "evaluate", overrides)
        report = json.loads((folder / "eval" / "dice_per_class.json").read_text())
        per_case = sq.per_case_dice(folder / "eval" / "val_mean_dice_raw.csv", list(report["per_class"]))
        return {"dice": report["mean_dice"], "per_class": report["per_class"], "per_case": per_case, "wall_s": wall}

    inputs = {
        "weights": file_digest(weights),
        "architecture": json.loads(arch.read_text()),
        "configs": sq.config_inputs(bench.config_files("evaluate"), drop_search=True),
        "cases": cases if cases == "validation" else bench.heldout[1],
        "runtime": PRECISIONS[precision],
        "code": sq.code_digest(INFERENCE_CODE),
    }
    return bench.part(f"{name}_{cases}_{precision}", inputs, run)


def compare(scored: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per class: each precision's mean Dice over the cases and the paired bfloat16 - float32 difference."""
    base, other = scored["float32"]["per_case"], scored["bfloat16"]["per_case"]
    classes = list(scored["float32"]["per_class"])
    out: Dict[str, Any] = {"cases": len(base), "classes": {}}
    for c in classes:
        pairs = [(base[k][c], other[k][c]) for k in base if base[k].get(c) is not None and other[k].get(c) is not None]
        diffs = [b - a for a, b in pairs]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
        out["classes"][c] = {
            "float32": statistics.mean(a for a, _ in pairs) if pairs else None,
            "bfloat16": statistics.mean(b for _, b in pairs) if pairs else None,
            "change": statistics.mean(diffs) if diffs else None,
            "change_se": se,
            "largest_case_change": max(diffs, key=abs) if diffs else None,
        }
    out["wall_s"] = {p: scored[p]["wall_s"] for p in PRECISIONS}
    changes = [abs(v["change"]) for v in out["classes"].values() if v["change"] is not None]
    out["within_rule"] = bool(changes) and max(changes) <= RULE
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainings", type=Path, default=None, help="a task's runs/ folder of training_reliability")
    parser.add_argument("--profile", type=Path, default=sq.CONFIGS / "cpu_profile.json", help="the trainings' profile")
    parser.add_argument("--shipped", action="store_true", help="also score the bundle's own weights (no profile)")
    parser.add_argument("--heldout", type=int, default=20, help="never-seen cases of the embedded task (0: none)")
    parser.add_argument("--records_dir", type=Path, default=None)
    parser.add_argument("--work_dir", type=Path, default=sq.ROOT / "runs" / "inference_precision")
    parser.add_argument("--quick", action="store_true", help="the shipped weights on 2 small cases: that it runs")
    args = parser.parse_args(argv)
    work_dir = args.work_dir.resolve()
    missing = [str(f) for f in [args.profile] if not f.is_file()]
    if args.trainings is not None and not args.trainings.is_dir():
        missing.append(str(args.trainings))
    if missing:
        parser.error(f"{', '.join(missing)}: do not exist")
    if args.quick:
        args.shipped, args.heldout, args.trainings = True, 2, None
    machine = sq.machine()
    slug = machine["slug"]
    records = (args.records_dir or (work_dir / "records" if args.quick else sq.ROOT / "benchmarks" / "results"
                                    / "inference_precision" / slug)).resolve()  # fmt: skip
    heldout = None
    if args.heldout:
        heldout = (sq.heldout_dataset("embedded", work_dir / "data", args.heldout), {"cases": args.heldout, "seed": 1})
    key = sq.generator_key("embedded")
    networks: List[tuple] = []  # (name, bench, weights, architecture)
    if args.trainings is not None:
        bench = sq.Bench(work_dir / "trained", None, args.profile.resolve(), True, None, records, key)
        for name, run in trained_networks(args.trainings.resolve()).items():
            networks.append((name, bench, run / "models" / "model.pt", run / "architecture.json"))
    if args.shipped:
        # the configs' defaults (an empty layer in the profile's place); at --quick the shipped width (its weights)
        # on a coarse grid with small windows
        quick = {"plan_max_roi_size": [32, 32, 32], "plan_min_spacing": [4.0, 4.0, 4.0], "num_workers": 0}
        shipped_layer = work_dir / "shipped_layer.json"
        shipped_layer.parent.mkdir(parents=True, exist_ok=True)
        shipped_layer.write_text(json.dumps(quick if args.quick else {}, indent=4) + "\n")
        bench = sq.Bench(work_dir / "shipped", None, shipped_layer, True, None, records, key)
        networks.append(
            ("shipped", bench, sq.BUNDLE / "models" / "model.pt", sq.BUNDLE / "models" / "architecture.json")
        )
    if not networks:
        parser.error("nothing to score: give --trainings with finished trainings, or --shipped")
    report: Dict[str, Any] = {"machine": machine, "rule": RULE, "networks": {}}
    for name, bench, weights, arch in networks:
        bench.heldout = heldout
        for cases in ([] if args.quick else ["validation"]) + (["heldout"] if heldout else []):
            scored = {p: score_part(bench, name, weights, arch, cases, p) for p in PRECISIONS}
            report["networks"].setdefault(name, {})[cases] = compare(scored)
    sq.atomic_json(work_dir / "report.json", report)
    print_report(report)
    return report


def print_report(report: Dict[str, Any]) -> None:
    cpu = f"{report['machine']['cpu']} ({report['machine']['cpu_id']})"
    print(f"# {cpu}; float32 = OpenVINO f32, bfloat16 = OpenVINO bf16; rule |change| <= {RULE}")
    print("| network | cases | class | float32 | bfloat16 | change (SE) | largest case change | scoring s f32 / bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, sets in report["networks"].items():
        for cases, row in sets.items():
            for c, v in row["classes"].items():
                se = "" if v["change_se"] is None else f" ({v['change_se']:.4f})"
                print(f"| {name} | {cases} ({row['cases']}) | {c} | {v['float32']:.4f} | {v['bfloat16']:.4f} | "
                      f"{v['change']:+.4f}{se} | {v['largest_case_change']:+.4f} | "
                      f"{row['wall_s']['float32']:.0f} / {row['wall_s']['bfloat16']:.0f} |")  # fmt: skip
    verdicts = [row["within_rule"] for sets in report["networks"].values() for row in sets.values()]
    print(f"within the rule: {sum(verdicts)} of {len(verdicts)} (network, case set) pairs")


if __name__ == "__main__":
    main()
