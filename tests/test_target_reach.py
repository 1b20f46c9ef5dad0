"""What the search targets ask of a search (``benchmarks/target_reach.py``): the exact random-search average, the
simulation's answers where they are known, and the committed reports."""

import itertools
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from benchmarks import search_quality as sq
from benchmarks import target_reach as tr

REPORTS = Path(__file__).resolve().parents[1] / "benchmarks/results/search_quality/amd_epyc_f26m2/cpu_profile"


def test_best_of_subsets_is_the_mean_over_every_subset():
    rng = np.random.default_rng(1)
    select, outcome = rng.random((3, 6)), rng.random((3, 6))
    for k in (1, 2, 4, 6):
        brute = [
            statistics.fmean(
                outcome[t, max(c, key=lambda i: select[t, i])] for c in itertools.combinations(range(6), k)
            )
            for t in range(3)
        ]
        assert tr.best_of_subsets(select, outcome, k) == pytest.approx(brute)
    mixed = 0.3 * tr.best_of_subsets(select, outcome, 2) + 0.7 * tr.best_of_subsets(select, outcome, 3)
    assert tr.best_of_subsets(select, outcome, 2.7) == pytest.approx(mixed)


def drawn(true_dice: list, noise: float, seeds: int = 3) -> list:
    """Each network's Dice per training seed: its true Dice plus normal training luck (a fixed draw)."""
    rng = np.random.default_rng(0)
    return [[float(d + noise * rng.standard_normal()) for _ in range(seeds)] for d in true_dice]


def write_report(folder: Path, per_seed: list, searched: tuple = (0.7, 0.72, 0.74)) -> Path:
    """A finished report whose random architectures trained ``per_seed`` (one list per network), with the fields
    ``benchmarks/search_quality.py`` writes."""
    runs = {f"random{i:02d}": r for i, r in enumerate(per_seed)}
    seeds = len(per_seed[0])
    nets = {
        n: {"per_seed": r, "mean": statistics.fmean(r), "first_seed": {"validation": r[0]}} for n, r in runs.items()
    }
    figures = {
        "ruler": "held-out",
        "random": {n: v["mean"] for n, v in nets.items()},
        "random_mean": statistics.fmean(v["mean"] for v in nets.values()),
        "networks": nets,
        "training_seeds": seeds,
        "noise": {"std": math.sqrt(statistics.fmean(statistics.variance(r) for r in runs.values()))},
        "ruler_reliability": {"random": sq.ruler_reliability(list(runs.values()))},
        "searched": {
            str(s): {"dice": d, "random_search_equal_compute": {"architectures_trained_mean": 2.0}}
            for s, d in enumerate(searched)
        },
        "baselines": {"panc": {"mean": 0.5}, "unet": {"mean": 0.72}, "segresnet": {"mean": 0.70}},
        "targets": {},
        "gmacs": {},
        "proxy_correlation": {},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "search_quality.json"
    path.write_text(json.dumps({"settings": {}, "figures": figures}))
    return path


def test_a_sharp_ruler_rewards_the_top_of_the_space(tmp_path):
    """Wide true spread, little noise: a search returning the space's top 1 % meets every target nearly always, one
    returning its median nearly never beats random search; every probability rises with the quantile."""
    true_dice = list(np.linspace(0.60, 0.80, 12))
    found = tr.target_reach(write_report(tmp_path, drawn(true_dice, noise=0.002)), trials=4000, seed=0)
    assert found["model"]["true_spread"] > 0.05
    top, median = found["probability"]["0.99"], found["probability"]["0.5"]
    assert top["random_q75"] > 0.95 and top["random_search"] > 0.9 and top["moonshot"] > 0.95
    assert median["random_search"] < 0.1
    for target in top:
        rows = [found["probability"][f"{q:g}"][target] for q in tr.QUANTILES]
        assert rows == sorted(rows)
    assert 0.5 < found["even_odds_quantile"]["random_q75"] < 0.9


def test_a_ruler_of_pure_noise_puts_the_targets_out_of_reach(tmp_path):
    """Every network's seed mean the same: no true spread, so whatever a search returns is a random pick and the
    75th percentile and random search targets are out of reach (no quantile gives even odds)."""
    offsets = [-0.03, 0.0, 0.03]
    per_seed = [[0.7 + offsets[(i + s) % 3] for s in range(3)] for i in range(12)]
    found = tr.target_reach(write_report(tmp_path, per_seed), trials=4000, seed=0)
    assert found["model"]["true_spread"] == 0.0 and found["model"]["noise"] == pytest.approx(0.03)
    assert found["even_odds_quantile"]["random_q75"] is None
    assert found["even_odds_quantile"]["random_search"] is None
    assert found["searched_quantile"] is None


def test_an_old_report_is_one_error_naming_it(tmp_path):
    path = write_report(tmp_path, drawn([0.7, 0.71, 0.72, 0.73], noise=0.01))
    report = json.loads(path.read_text())
    del report["figures"]["ruler_reliability"]
    path.write_text(json.dumps(report))
    with pytest.raises(SystemExit, match=f"target_reach: {path}.*ruler_reliability"):
        tr.main([str(path), "--trials", "200"])


@pytest.mark.parametrize("task", ["brain_mr", "tubes"])
def test_the_committed_reports(task, tmp_path):
    """Every figure of the committed reports' analysis is a probability, and the searched mean's quantile lies in
    its standard-error range."""
    report = REPORTS / task / "search_quality.json"
    (found,) = tr.main([str(report), "--trials", "2000"])
    for row in found["probability"].values():
        assert all(0.0 <= p <= 1.0 for p in row.values())
    low, high = found["searched_quantile_within_se"]
    assert low <= found["searched_quantile"] <= high
