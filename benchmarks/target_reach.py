"""What issue 27's search targets ask of a search, with a report's ruler: how good must the searched networks be to
meet them?

A search-quality report (``benchmarks/search_quality.py``) judges the searched networks against 12 random
architectures by a ruler that averages T training seeds. Its τ ceiling says how well a perfect ranker could
score against that ruler; this does the same for the other targets. Under the one-way random-effects model the
report's ruler reliability rests on (``search_quality.ruler_reliability``), a network's true Dice in the space is
normal (the random architectures' mean, their true spread), and each training adds its own normal luck (the
random architectures' pooled noise over seeds). A simulation (common random numbers, seeded) redraws the random
architectures, their trainings and the searched networks, and replays the report's rules on each draw:

- **75th percentile:** each searched network's T-seed mean at or above the 75th percentile of the random
  architectures' T-seed means, in at least 2 of 3 search seeds;
- **random search:** better than random search at equal compute by more than the report's noise floor, in at
  least 2 of 3 search seeds. Random search trains ``k`` random architectures (the report's mean count per search
  seed), keeps the one whose first training has the best validation Dice (the ruler's seed-0 Dice plus the
  report's own spread of validation minus held-out Dice) and scores it by its T-seed mean, averaged exactly over
  every ``k``-subset of the architectures, as the report averages over orders;
- **moonshot:** the mean over the search seeds at least the better of MONAI's references as measured (fixed).

A search is described by the quantile ``q`` of the space's true Dice that each of its seeds returns (3 independent
trainings each). For each target it reports the probability of meeting it at several ``q``, and the ``q`` a search
needs for even odds (none where even the space's best, ``q`` = 0.9999, has less): a target that asks for networks
better than the space holds, or that the ruler cannot tell from chance, cannot be met by any search. MONAI has no
such analysis; this is that piece.

    .venv/bin/python benchmarks/target_reach.py \\
        benchmarks/results/search_quality/amd_epyc_f26m2/cpu_profile/brain_mr/search_quality.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy import special, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_comparison import report_command  # noqa: E402  (one ending for the comparison commands)
from variant_comparison import load_report  # noqa: E402  (one way to read a finished report)

FORMAT = "c2fnas-target-reach/1"
QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)
SEARCH_SEEDS = 3
NEEDED = 2  # of the SEARCH_SEEDS
Q_MAX = 0.9999  # the space's best, for the bisection
# the true spread, estimated from 12 networks, moved by ±30 %: how much the answer hangs on it
SPREAD_SCALES = (0.7, 1.3)


def ruler_model(figures: Dict[str, Any]) -> Dict[str, Any]:
    """The random-effects model of a report's ruler: the space's true mean and spread, one training's noise, the
    spread of validation minus held-out Dice of one training, the architectures random search trains, the
    threshold of the random-search target and the better MONAI reference. Raises ``ValueError`` naming the report
    where it holds too little to model."""
    needed = ("networks", "random", "ruler_reliability", "baselines", "ruler", "random_mean", "training_seeds")
    missing = [key for key in needed if key not in figures]
    if missing:
        raise ValueError(f"{figures['file']}: a report before 0.8.0's seed-averaged ruler (no {', '.join(missing)})")
    names = sorted(figures["random"])
    nets = figures["networks"]
    reliability = figures["ruler_reliability"]["random"]
    if len(names) < 4 or figures["training_seeds"] < 2:
        raise ValueError(f"{figures['file']}: needs at least 4 random architectures and 2 training seeds")
    if figures["ruler"] == "held-out":
        gaps = [nets[n]["first_seed"]["validation"] - nets[n]["per_seed"][0] for n in names]
        selection_noise = statistics.stdev(gaps)
    else:  # the ruler is the validation Dice itself: random search selects on the ruler's seed 0
        selection_noise = 0.0
    trained = [s["random_search_equal_compute"]["architectures_trained_mean"] for s in figures["searched"].values()]
    baselines = {n: v["mean"] for n, v in figures["baselines"].items() if n != "panc"}
    return {
        "random_architectures": len(names),
        "training_seeds": figures["training_seeds"],
        "true_mean": figures["random_mean"],
        "true_spread": reliability["true_spread"],
        "noise": reliability["noise"],
        "selection_noise": selection_noise,
        "random_search_trains": statistics.fmean(trained),
        "noise_floor": figures["noise"]["std"],
        "best_reference": max(baselines.values()) if baselines else None,
    }


def best_of_subsets(select: np.ndarray, outcome: np.ndarray, k: float) -> np.ndarray:
    """Mean ``outcome`` of the best-``select`` member over every ``k``-subset of the last axis (``k`` fractional:
    the mix of its floor and ceiling). ``select``, ``outcome``: (trials, N) -> (trials,)."""
    n = select.shape[-1]
    order = np.argsort(-select, axis=-1)
    ranked = np.take_along_axis(outcome, order, axis=-1)
    result = np.zeros(select.shape[0])
    low = max(1, min(n, math.floor(k)))
    high = max(1, min(n, math.ceil(k)))
    for size, weight in ((low, 1.0 - (k - low) if high > low else 1.0), (high, k - low if high > low else 0.0)):
        if weight <= 0:
            continue
        # rank r (0: the best) is the best of a random size-subset with probability C(n-1-r, size-1) / C(n, size)
        p = np.array([special.comb(n - 1 - r, size - 1, exact=True) for r in range(n)], dtype=float)
        result += weight * ranked @ (p / special.comb(n, size, exact=True))
    return result


def simulate(model: Dict[str, Any], trials: int, seed: int) -> Callable[[float], Dict[str, float]]:
    """The draws shared by every ``q`` (common random numbers); returns ``q`` -> probability of each target."""
    rng = np.random.default_rng(seed)
    n, t = model["random_architectures"], model["training_seeds"]
    mean, spread, noise = model["true_mean"], model["true_spread"], model["noise"]
    true = mean + spread * rng.standard_normal((trials, n))
    luck = noise * rng.standard_normal((trials, n, t))
    measured = true + luck.mean(axis=-1)
    select = true + luck[..., 0] + model["selection_noise"] * rng.standard_normal((trials, n))
    q75 = np.quantile(measured, 0.75, axis=-1)  # statistics.quantiles(n=4, method="inclusive")[2], as the report
    random_search = best_of_subsets(select, measured, model["random_search_trains"])
    searched_luck = noise / math.sqrt(t) * rng.standard_normal((trials, SEARCH_SEEDS))

    def reach(q: float) -> Dict[str, float]:
        searched = mean + spread * stats.norm.ppf(q) + searched_luck
        found = {
            "random_q75": float(np.mean((searched >= q75[:, None]).sum(-1) >= NEEDED)),
            "random_search": float(
                np.mean((searched - random_search[:, None] > model["noise_floor"]).sum(-1) >= NEEDED)
            ),
        }
        if model["best_reference"] is not None:
            found["moonshot"] = float(np.mean(searched.mean(-1) >= model["best_reference"]))
        return found

    return reach


def even_odds(reach: Callable[[float], Dict[str, float]], target: str) -> Optional[float]:
    """The smallest ``q`` at which ``target`` is met with probability 0.5 (bisection; monotone in ``q`` under
    common random numbers), None where even ``Q_MAX`` falls short."""
    if reach(Q_MAX)[target] < 0.5:
        return None
    low, high = 1e-4, Q_MAX
    if reach(low)[target] >= 0.5:
        return low
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (low, middle) if reach(middle)[target] >= 0.5 else (middle, high)
    return high


def target_reach(report: Path, trials: int, seed: int) -> Dict[str, Any]:
    """The model, each target's probability at ``QUANTILES`` and the quantile for even odds, for one report."""
    figures = load_report(report)
    model = ruler_model(figures)
    reach = simulate(model, trials, seed)
    targets = list(reach(0.5))
    dice = [s["dice"] for s in figures["searched"].values()]
    searched = statistics.fmean(dice)
    searched_se = statistics.stdev(dice) / math.sqrt(len(dice)) if len(dice) > 1 else 0.0
    spread = model["true_spread"]

    def quantile(value: float) -> Optional[float]:
        return None if spread == 0 else float(stats.norm.cdf((value - model["true_mean"]) / spread))

    return {
        "format": FORMAT,
        "report": str(report),
        "settings": {"trials": trials, "seed": seed, "search_seeds": SEARCH_SEEDS, "needed": NEEDED},
        "model": model,
        "probability": {f"{q:g}": reach(q) for q in QUANTILES},
        "even_odds_quantile": {target: even_odds(reach, target) for target in targets},
        "even_odds_quantile_if_true_spread_scaled": {
            f"{scale:g}": {
                target: even_odds(simulate({**model, "true_spread": spread * scale}, trials, seed), target)
                for target in targets
            }
            for scale in SPREAD_SCALES
        },
        "reference_quantile": None if model["best_reference"] is None else quantile(model["best_reference"]),
        "searched_mean": searched,
        "searched_se": searched_se,
        "searched_quantile": quantile(searched),
        "searched_quantile_within_se": [quantile(searched - searched_se), quantile(searched + searched_se)],
    }


def print_reach(found: Dict[str, Any]) -> None:
    """The model line, then one Markdown table: a row per quantile, a column per target."""
    m = found["model"]
    print(
        f"{found['report']}: space's true Dice {m['true_mean']:.4f} ± {m['true_spread']:.4f}, one training's noise "
        f"{m['noise']:.4f} (validation − held-out {m['selection_noise']:.4f}), {m['random_architectures']} random "
        f"architectures × {m['training_seeds']} seeds, random search trains {m['random_search_trains']:.2f}, "
        f"noise floor {m['noise_floor']:.4f}"
    )
    targets = list(found["even_odds_quantile"])
    print("| quantile of the space each search seed returns | " + " | ".join(targets) + " |")
    print("|---" * (len(targets) + 1) + "|")
    for q, row in found["probability"].items():
        print(f"| {q} | " + " | ".join(f"{row[t]:.2f}" for t in targets) + " |")
    odds = [("none (out of reach)" if v is None else f"{v:.3f}") for v in found["even_odds_quantile"].values()]
    print("| needed for even odds | " + " | ".join(odds) + " |")
    for scale, row in found["even_odds_quantile_if_true_spread_scaled"].items():
        odds = [("none" if v is None else f"{v:.3f}") for v in row.values()]
        print(f"| needed, true spread × {scale} | " + " | ".join(odds) + " |")
    if found["reference_quantile"] is not None:
        print(f"the better MONAI reference sits at the space's quantile {found['reference_quantile']:.3f}")
    if found["searched_quantile"] is not None:
        low, high = found["searched_quantile_within_se"]
        print(
            f"the searched mean {found['searched_mean']:.4f} (standard error {found['searched_se']:.4f}) sits at the "
            f"space's quantile {found['searched_quantile']:.3f} ({low:.3f}–{high:.3f} within one standard error)"
        )


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", help="finished search-quality reports (search_quality*.json)")
    parser.add_argument("--trials", type=int, default=20000, help="simulated draws (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    parser.add_argument("--write", action="store_true", help="also write target_reach.json beside each report")
    args = parser.parse_args(argv)
    if args.trials < 100:
        parser.error(f"--trials {args.trials}: at least 100 draws are needed")
    return [
        report_command(
            "target_reach",
            partial(target_reach, report, args.trials, args.seed),
            print_reach,
            report.parent / report.name.replace("search_quality", "target_reach") if args.write else None,
        )
        for report in args.reports
    ]


if __name__ == "__main__":
    main()
