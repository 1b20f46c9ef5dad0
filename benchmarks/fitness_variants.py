"""Fitness variants: would another supernet fitness rank the architectures better than the search's?

Reads a finished search-quality run (``benchmarks/search_quality.py``; its ``--work_dir``, which holds the kept
supernets and every stand-alone Dice) and scores its architectures again with the same supernets and the same
validation cases, in several ways:

- ``dice``: the search's fitness, the project's mean Dice (``search.dice``) of the argmax prediction;
- ``soft_dice``: the same formula on the softmax probabilities (``search.dice.dice_per_case`` of the probabilities
  and the one-hot label), which sees a class the argmax never predicts;
- ``dice <class>`` and ``soft_dice <class>``: one foreground class alone;
- ``neg_loss``: minus the search's training loss (the loss config) over the whole validation volume.

For each variant it prints Kendall tau and Spearman rho against the stand-alone Dice: coarse (each seed's coarse
supernets, the random architectures with their own ops) and fine (seed 0's fine supernet, the op assignments). No
supernet is trained again, so this measures only the fitness, not the supernet training. ``--overrides`` (JSON)
changes the searchers' settings for the scoring, for example the evaluation budget
(``{"search_overlap": 0.0, "search_val_cases": 3}``), so two runs compare fitness budgets on the same supernets.
``--finetune_steps K`` scores each architecture as the search setting ``search_finetune_steps`` K rates it
(``SearchStage.finetuned``: a copy of its path trained K steps from the supernet's weights; the kept supernets are
not changed): a fitness that asks how well a path adapts, not only how well it does with weights it shares.
A search variant's run (``search_quality.py --search_layers``) is read with the same ``--search_layers``: its
report and supernets carry the variant's name. Writes ``fitness_variants[@<variant>][_<tag>].json`` into the work
dir.

    .venv/bin/python benchmarks/fitness_variants.py [--work_dir runs/search_quality] [--overrides JSON --tag NAME]
        [--search_layers benchmarks/recipes/coarse_2600_steps.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_quality as sq  # noqa: E402  (the benchmark beside this file: its configs and parts)


def variant_scores(searcher: Any, network: Any, class_names: Sequence[str]) -> Dict[str, float]:
    """Every variant's score of ``network`` on ``searcher``'s validation cases (``DiceEvaluator.cases``)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.utils import one_hot

    from networks.labels import argmax
    from search.dice import dice_per_case, reduce_dice

    evaluator = searcher.evaluator
    hard_rows, soft_rows, losses = [], [], []
    network.eval()
    with torch.inference_mode():
        for image, label in evaluator.cases:
            logits = sliding_window_inference(
                image[None].to(evaluator.device),
                evaluator.roi_size,
                evaluator.sw_batch_size,
                network,
                overlap=evaluator.overlap,
            )
            truth = one_hot(label[None].to(evaluator.device).long(), evaluator.num_classes)
            hard = one_hot(argmax(logits, 1, keepdim=True), evaluator.num_classes)
            hard_rows.append(dice_per_case(hard, truth).cpu())
            soft_rows.append(dice_per_case(logits.softmax(1), truth).cpu())
            losses.append(float(searcher.loss_function(logits, label[None].to(evaluator.device))))
    scores = {}
    for kind, rows in (("dice", hard_rows), ("soft_dice", soft_rows)):
        mean, per_class = reduce_dice(torch.cat(rows))
        scores[kind] = mean
        scores.update({f"{kind} {name}": value for name, value in zip(class_names, per_class)})
    scores["neg_loss"] = -statistics.fmean(losses)
    return {k: (0.0 if v != v else v) for k, v in scores.items()}  # NaN (no value anywhere) counts as 0, as the search


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, default=sq.ROOT / "runs" / "search_quality", help="a finished run")
    parser.add_argument("--overrides", type=json.loads, default={}, help="settings of the scoring searchers (JSON)")
    parser.add_argument("--tag", default="", help="written as fitness_variants_<tag>.json")
    parser.add_argument("--finetune_steps", type=int, default=0, help="train each path this many steps first")
    parser.add_argument(
        "--search_layers", default="", help="the search variant's layers, as the run was given them (comma-separated)"
    )
    args = parser.parse_args(argv)
    if args.finetune_steps < 0:
        parser.error(f"--finetune_steps {args.finetune_steps}: need 0 or more steps")
    if args.finetune_steps:  # one more searcher setting, as --overrides gives them
        args.overrides["search_finetune_steps"] = args.finetune_steps
    layers = [Path(f) for f in args.search_layers.split(",") if f]
    variant = sq.variant_name(layers)
    report_file = args.work_dir / f"search_quality{variant}.json"
    if not report_file.exists():
        parser.error(f"--work_dir {args.work_dir}: no {report_file.name} (run benchmarks/search_quality.py first)")
    sq.bundle_importable()
    from networks import Architecture

    report = json.loads(report_file.read_text())
    settings, archs, nets = report["settings"], report["architectures"], report["figures"]["networks"]
    task = settings.get("task", "embedded")
    dataset_dir: Optional[Path] = Path(settings["dataset_dir"])
    if task == "embedded" and dataset_dir == sq.BUNDLE / "data" / "synthetic":
        dataset_dir = None  # as the benchmark ran it: the bundle's default
    bench = sq.Bench(args.work_dir, dataset_dir, Path(settings["profile"]), True)
    if layers:
        bench.use_search_layers(layers)
    names = sq.parsed(
        bench.config_files("search_coarse"), bench.overrides(args.work_dir / "runs" / sq.search_name(bench, 0))
    ).get_parsed_content("class_names")
    random_names = sorted(n for n in archs if n.startswith("random"))
    ops_names = sorted(n for n in archs if n.startswith("ops"))

    def arch(name: str) -> Architecture:
        return Architecture(tuple(archs[name]["levels"]), tuple(archs[name]["ops"]))

    scores: Dict[str, Dict[str, Dict[str, float]]] = {}
    started = time.perf_counter()
    for seed in sorted(report["search"], key=int):
        folder = args.work_dir / "runs" / sq.search_name(bench, int(seed))
        overrides = bench.overrides(folder, seed=int(seed), **args.overrides)
        coarse = sq.parsed(bench.config_files("search_coarse"), overrides)
        searcher = coarse.get_parsed_content("searcher")
        scores[f"coarse {seed}"] = {}
        for n in random_names:
            if not sq.in_coarse_space(searcher, archs[n]["levels"]):
                continue  # a compute budget rules its topology out: no supernet holds it (as the benchmark's fitness)
            supernet = searcher.kept_supernet(f"cluster{searcher.space.cluster_of(arch(n).levels)}")
            scores[f"coarse {seed}"][n] = variant_scores(searcher, searcher.rated_network(supernet, arch(n)), names)
        if seed == "0" and ops_names:  # a variant's run draws no op assignments: no fine figures
            fine = sq.parsed(bench.config_files("search_fine"), overrides)
            searcher = fine.get_parsed_content("searcher")
            supernet = searcher.kept_supernet("ops")
            scores["fine 0"] = {
                n: variant_scores(searcher, searcher.rated_network(supernet, arch(n)), names) for n in ops_names
            }
        print(f"seed {seed} scored ({time.perf_counter() - started:.0f} s)", flush=True)

    variants = list(next(iter(scores["coarse 0"].values())))
    correlation: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for stage, by_name in scores.items():
        members = sorted(by_name)
        standalone = [nets[n]["mean"] for n in members]  # the benchmark's ruler: the mean over training seeds
        correlation[stage] = {v: sq.kendall_spearman([by_name[n][v] for n in members], standalone) for v in variants}
    coarse_stages = [s for s in correlation if s.startswith("coarse")]
    summary: Dict[str, Dict[str, Optional[float]]] = {}
    for v in variants:
        taus: List[Optional[float]] = [correlation[s][v]["kendall_tau"] for s in coarse_stages]
        summary[v] = {
            "coarse_tau_mean": statistics.fmean(taus) if all(t is not None for t in taus) else None,
            "fine_tau": correlation.get("fine 0", {}).get(v, {}).get("kendall_tau"),
        }
    result = {"work_dir": str(args.work_dir), "task": task, "overrides": args.overrides, "scores": scores}
    finetune_steps = args.overrides.get("search_finetune_steps", 0)  # the flag's or --overrides'
    result.update(finetune_steps=finetune_steps, seconds=round(time.perf_counter() - started, 1))
    result["correlation"] = correlation
    result["summary"] = summary
    sq.atomic_json(args.work_dir / f"fitness_variants{variant}{'_' + args.tag if args.tag else ''}.json", result)

    header = " | ".join(f"coarse τ seed {s.split()[1]}" for s in coarse_stages)
    print(f"\n| fitness variant | {header} | coarse τ mean | fine τ |\n|---|{'---|' * (len(coarse_stages) + 2)}")
    for v in variants:
        cells = " | ".join(sq._fmt(correlation[s][v]["kendall_tau"]) for s in coarse_stages)
        print(f"| {v} | {cells} | {sq._fmt(summary[v]['coarse_tau_mean'])} | {sq._fmt(summary[v]['fine_tau'])} |")
    return result


if __name__ == "__main__":
    main()
