"""The search-quality benchmark (benchmarks/search_quality.py) end to end at --quick on the tests' tiny profile, on
the generated 2-channel MR-like task (benchmarks/tasks.py ``prostate_mr``, 6 cases)."""

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
from helpers import CONFIGS, PNG_MAGIC, TINY_PROFILE, launch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "search_quality.py"


def _finite(value, low=-math.inf, high=math.inf):
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high


@pytest.fixture(scope="module")
def benchmark():
    """``benchmarks/search_quality.py`` as a module (benchmarks/ is not a package on the tests' path)."""
    spec = importlib.util.spec_from_file_location("search_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    from benchmarks.tasks import dataset

    mr = dataset("prostate_mr", tmp_path_factory.mktemp("data") / "prostate_mr", num_cases=6, num_test=1)
    work_dir = tmp_path_factory.mktemp("search_quality")
    args = [BENCHMARK, "--quick", "--profile", TINY_PROFILE, "--dataset_dir", mr, "--work_dir", work_dir]
    done = launch(args, ROOT, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work_dir, json.loads((work_dir / "search_quality.json").read_text()), done.stdout, args


@pytest.mark.slow  # the quick benchmark trains 24 networks: about 10 min on 2 cores
def test_quick_benchmark_reports_every_figure(quick_report, benchmark):
    work_dir, report, stdout, _ = quick_report
    assert report["format"] == "c2fnas-search-quality/1" and report["machine"]["cores"] >= 1
    plan = json.loads((work_dir / "runs" / "train_random00_seed0" / "plan.json").read_text())
    assert plan["in_channels"] == 2 and plan["class_names"] == ["peripheral zone", "transition zone"]
    settings = report["settings"]
    assert (settings["seeds"], settings["random"], settings["ops"], settings["training_seeds"]) == (2, 4, 3, 2)
    networks = {f"random{i:02d}" for i in range(4)} | {f"ops{i:02d}" for i in range(3)}
    networks |= {"searched0", "searched1", "panc", "unet", "segresnet"}
    assert set(report["train"]) == {f"{n}_seed{t}" for n in networks for t in (0, 1)}, "every network, every seed"
    for name, result in report["train"].items():
        assert _finite(result["dice"], 0, 1) and _finite(result["wall_s"], 0) and result["wall_s"] > 0, name
    # the op assignments share seed 0's searched topology; the random architectures come from the whole space
    levels = report["search"]["0"]["arch"]["levels"]
    assert all(report["architectures"][f"ops{i:02d}"]["levels"] == levels for i in range(3))
    assert len({tuple(a["ops"]) for n, a in report["architectures"].items() if n.startswith("ops")}) == 3

    figures = report["figures"]
    assert figures["ruler"] == "validation" and figures["training_seeds"] == 2  # --dataset_dir: no held-out cases
    for name, net in figures["networks"].items():  # the ruler: the mean over the training seeds
        seeds = [report["train"][f"{name}_seed{t}"]["dice"] for t in (0, 1)]
        assert net["per_seed"] == seeds and net["mean"] == pytest.approx(sum(seeds) / 2), name
        assert _finite(net["std"], 0) and _finite(figures["gmacs"][name], 0) and figures["gmacs"][name] > 0, name
    stds = [net["std"] for net in figures["networks"].values()]
    assert figures["noise"]["std"] == pytest.approx(math.sqrt(sum(v * v for v in stds) / len(stds)))
    for group, reliability in figures["ruler_reliability"].items():  # how much of the spread is not training luck
        assert reliability["seeds"] == 2 and _finite(reliability["noise"], 0) and _finite(reliability["spread"], 0)
        assert reliability["reliability"] is None or _finite(reliability["reliability"], 0, 1), group
        assert reliability["tau_ceiling"] is None or _finite(reliability["tau_ceiling"], 0, 1), group
    for s in ("0", "1"):
        searched = figures["searched"][s]
        assert searched["dice"] == figures["networks"][f"searched{s}"]["mean"]
        assert _finite(searched["percentile_among_random"], 0, 100) and _finite(searched["search_wall_s"], 0)
        random_search = searched["random_search_equal_compute"]
        assert _finite(random_search["dice_mean"], 0, 1) and _finite(random_search["dice_std"], 0)
        assert 1 <= random_search["architectures_trained_mean"] <= 4
        for kind in ("architecture", "topology"):
            correlation = figures["correlation"]["coarse"][s][kind]
            assert _finite(correlation["kendall_tau"], -1, 1) and _finite(correlation["spearman_rho"], -1, 1)
            assert correlation["points"] == 4
    assert _finite(figures["correlation"]["fine"]["0"]["kendall_tau"], -1, 1)
    assert figures["correlation"]["fine"]["0"]["points"] == 3
    for stage, points in (("coarse", 4), ("fine", 3)):
        assert set(figures["proxy_correlation"][stage]) == {"parameters", "gmacs", "synflow"}
        assert all(c["points"] == points for c in figures["proxy_correlation"][stage].values())
    assert _finite(figures["random_q75"], 0, 1) and _finite(figures["searched_spread"]["std"], 0)
    for name in ("panc", "unet", "segresnet"):
        assert _finite(figures["baselines"][name]["mean"], 0, 1)
    for name in ("unet", "segresnet"):
        epochs = figures["baseline_epochs"][name]
        assert _finite(epochs["epoch_time_ratio"], 0) and epochs["max_epochs"] % epochs["val_interval"] == 0
    targets = figures["targets"]
    assert len(targets) == 6 and all(isinstance(t["met"], bool) for n, t in targets.items() if not n.startswith("moon"))
    off = any(abs(r - 1) > benchmark.EQUAL_TIME_TOLERANCE for r in figures["baseline_wall_ratio"].values())
    assert (
        targets["moonshot_at_least_best_monai"]["met"] is None
        if off
        else isinstance(targets["moonshot_at_least_best_monai"]["met"], bool)
    )
    assert all(_finite(report["wall_s"][k], 0) for k in ("search", "fitness", "train", "this_run"))
    ran_on = report["parts_ran_on"]  # which machine and when, for every part (MONAI's networks: + their probe)
    assert len(ran_on) == 2 + 1 + 1 + 1 + len(report["train"]) + 2
    assert all(v["machine"] == report["machine"]["slug"] and v["finished"].startswith("20") for v in ran_on.values())
    for picture in ("fitness_vs_standalone.png", "searched_vs_random.png", "dice_vs_gmacs.png"):
        assert (work_dir / picture).read_bytes()[:8] == PNG_MAGIC
    assert "| fine_kendall_tau_ge_0.5 |" in stdout and "| synflow (random architectures) |" in stdout


@pytest.mark.slow  # the quick benchmark trains 24 networks: about 10 min on 2 cores
def test_quick_benchmark_run_again_reuses_every_part(quick_report):
    """Finished parts are kept with their inputs: the same command again trains and searches nothing."""
    work_dir, report, _, args = quick_report
    done = launch(args, ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((work_dir / "search_quality.json").read_text())
    parts = {p.stem for p in (work_dir / "parts").glob("*.json")}
    assert set(again["reused_parts"]) == parts and len(parts) == 2 + 1 + 1 + 1 + len(report["train"]) + 2
    assert again["figures"] == report["figures"]


@pytest.mark.slow  # the quick benchmark trains 24 networks: about 10 min on 2 cores
def test_fitness_variants_rescore_the_search_fitness(quick_report):
    """benchmarks/fitness_variants.py scores the architectures again with the kept supernets: its ``dice`` variant is
    the search's own fitness, so it gives back the benchmark's fitness and Kendall tau; every variant is finite."""
    work_dir, report, _, _ = quick_report
    done = launch([ROOT / "benchmarks" / "fitness_variants.py", "--work_dir", work_dir], ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    variants = json.loads((work_dir / "fitness_variants.json").read_text())
    for s in ("0", "1"):
        for name, scores in variants["scores"][f"coarse {s}"].items():
            assert scores["dice"] == pytest.approx(report["fitness"]["coarse"][s][name]["architecture"], abs=1e-6)
            assert {"dice", "soft_dice", "neg_loss"} <= set(scores) and all(map(_finite, scores.values()))
        recorded = report["figures"]["correlation"]["coarse"][s]["architecture"]["kendall_tau"]
        assert variants["correlation"][f"coarse {s}"]["dice"]["kendall_tau"] == pytest.approx(recorded, abs=1e-9)
    assert set(variants["scores"]["fine 0"]) == {f"ops{i:02d}" for i in range(3)}
    assert "| soft_dice |" in done.stdout
    args = [ROOT / "benchmarks" / "fitness_variants.py", "--work_dir", work_dir, "--finetune_steps", "2", "--tag", "ft"]
    done = launch(args, ROOT, timeout=600)  # each path trained 2 steps first: other scores, the supernets unchanged
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tuned = json.loads((work_dir / "fitness_variants_ft.json").read_text())
    pairs = [
        (tuned["scores"][k][n]["soft_dice"], v["soft_dice"])
        for k in variants["scores"]
        for n, v in variants["scores"][k].items()
    ]
    assert tuned["finetune_steps"] == 2 and all(map(_finite, (a for a, _ in pairs))) and any(a != b for a, b in pairs)


@pytest.mark.slow  # the quick benchmark trains 24 networks: about 10 min on 2 cores
def test_quick_benchmark_other_training_budget_reuses_the_searches(quick_report):
    """--max_epochs N: the searches and the supernet scoring are reused, every network is trained again for N epochs
    (parts and report tagged _eN), and the profile-budget report is left alone."""
    work_dir, report, _, args = quick_report
    before = (work_dir / "search_quality.json").read_text()
    done = launch([*args, "--max_epochs", "3"], ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    other = json.loads((work_dir / "search_quality_e3.json").read_text())
    assert set(other["reused_parts"]) == {"search_seed0", "search_seed1", "fitness", "proxies"}
    assert other["settings"]["max_epochs"] == 3 and set(other["train"]) == set(report["train"])
    assert other["figures"]["baseline_epochs"]["searched"]["max_epochs"] == 3
    log = (work_dir / "runs" / "train_random00_seed0_e3" / "train.log").read_text()
    assert "Epoch[3] Complete" in log and "Epoch[4]" not in log
    assert (work_dir / "search_quality.json").read_text() == before
    assert (work_dir / "searched_vs_random_e3.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow  # the quick benchmark trains 24 networks: about 10 min on 2 cores; the variant 8 more
def test_quick_search_variant_shares_the_random_architectures_and_trains_only_what_it_finds(quick_report, tmp_path):
    """--search_layers: a search variant runs its own searches and trains what depends on them (its searched
    networks, MONAI's networks at their wall time), reuses the random architectures' and C2FNAS-Panc's trainings,
    draws no op assignments, and leaves the search as configured's report alone."""
    work_dir, report, _, args = quick_report
    layer = tmp_path / "longer_clusters.json"
    layer.write_text(json.dumps({"cluster_iterations": 4}))  # the tiny profile's 3, +1
    before = (work_dir / "search_quality.json").read_text()
    done = launch([*args, "--search_layers", layer], ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    other = json.loads((work_dir / "search_quality@longer_clusters.json").read_text())
    shared = {f"train_{n}_seed{t}" for n in (*(f"random{i:02d}" for i in range(4)), "panc") for t in (0, 1)}
    assert set(other["reused_parts"]) == shared
    own = {f"search@longer_clusters_seed{s}" for s in (0, 1)} | {"fitness@longer_clusters", "proxies@longer_clusters"}
    own |= {"calibration@longer_clusters"} | {
        f"train_{n}@longer_clusters_calibrated_seed0" for n in ("unet", "segresnet")
    }
    own |= {
        f"train_{n}@longer_clusters_seed{t}" for n in ("searched0", "searched1", "unet", "segresnet") for t in (0, 1)
    }
    assert set(other["parts_ran_on"]) == shared | own
    assert other["settings"]["ops"] == 0 and not any(n.startswith("ops") for n in other["architectures"])
    assert other["search"]["0"]["arch"]["provenance"]["topology_provenance"]["cluster_iterations"] == 4
    assert other["figures"]["targets"]["fine_kendall_tau_ge_0.5"]["met"] is None
    assert "not measured in this run" in done.stdout
    assert (work_dir / "search_quality.json").read_text() == before
    assert (work_dir / "searched_vs_random@longer_clusters.png").read_bytes()[:8] == PNG_MAGIC
    # fitness_variants.py reads the variant's report and supernets with the same layers: coarse only (no op assignments)
    script = ROOT / "benchmarks" / "fitness_variants.py"
    done = launch([script, "--work_dir", work_dir, "--search_layers", layer], ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    variants = json.loads((work_dir / "fitness_variants@longer_clusters.json").read_text())
    assert set(variants["scores"]) == {"coarse 0", "coarse 1"}
    for name, scores in variants["scores"]["coarse 0"].items():
        assert scores["dice"] == pytest.approx(other["fitness"]["coarse"]["0"][name]["architecture"], abs=1e-6)


def test_ruler_reliability_separates_real_spread_from_training_noise(benchmark):
    """The part of the spread among seed means that is real: 1 where networks differ far beyond their seeds' noise,
    0 where the means spread no more than the noise over T seeds predicts; the seeds needed grow with the noise."""
    apart = benchmark.ruler_reliability([[0.50, 0.52, 0.48], [0.70, 0.72, 0.68], [0.90, 0.92, 0.88]])
    assert apart["noise"] == pytest.approx(0.02) and apart["spread"] == pytest.approx(0.2)
    assert apart["reliability"] == pytest.approx(1 - 0.02**2 / 3 / 0.2**2) and apart["seeds_for_target"] == 1
    assert 0.95 < apart["tau_ceiling"] < 1  # the ruler is nearly the truth: a perfect ranker scores nearly 1
    # three networks alike in truth: their means differ by less than the noise over 3 seeds predicts
    alike = benchmark.ruler_reliability([[0.70, 0.74, 0.66], [0.72, 0.68, 0.70], [0.66, 0.74, 0.71]])
    assert alike["true_spread"] == 0 and alike["reliability"] == 0 and alike["seeds_for_target"] is None
    assert alike["tau_ceiling"] == 0  # the ruler is all training luck: no ranker can show it ranks
    # a real spread of 0.01 under a noise of 0.03: reliability 0.25 at 3 seeds, 0.8 takes 36
    high = 0.70 + 0.02 * math.sqrt(2)  # means 0.0283 apart: a spread of 0.02 = sqrt(0.01 ** 2 + 0.03 ** 2 / 3)
    noisy = benchmark.ruler_reliability([[0.67, 0.70, 0.73], [high - 0.03, high, high + 0.03]])
    assert noisy["noise"] == pytest.approx(0.03) and noisy["true_spread"] == pytest.approx(0.01)
    assert noisy["reliability"] == pytest.approx(0.25) and noisy["seeds_for_target"] == 36
    # correlation of truth and ruler sqrt(0.25) = 0.5, so a perfect ranker's tau is 2/pi * asin(0.5) = 1/3
    assert noisy["tau_ceiling"] == pytest.approx(1 / 3)


def _made_up_parts(ops: int) -> dict:
    """What a finished run's parts hold for 4 random architectures, ``ops`` op assignments, 2 search seeds and 2
    training seeds, with made-up figures drawn per network name (the same network gets the same figures)."""
    import random

    random_names, ops_names = [f"random{i:02d}" for i in range(4)], [f"ops{i:02d}" for i in range(ops)]
    names = random_names + ops_names + ["searched0", "searched1", "panc", "unet", "segresnet"]
    draw = {n: random.Random(n) for n in names}
    train = {}
    for n in names:
        for t in (0, 1):
            dice = draw[n].uniform(0.5, 0.8)
            held = {"dice": dice - 0.01, "per_class": {"organ": dice - 0.01}}
            train[f"{n}_seed{t}"] = {"dice": dice, "per_class": {"organ": dice}, "wall_s": 10.0, "heldout": held}
    arch = {"levels": [1, 2, 2, 2, 2, 2, 2, 1], "ops": ["3D"] * 8}
    return {
        "search": {s: {"arch": arch, "wall_s": {"coarse": 5.0, "fine": 5.0}} for s in ("0", "1")},
        "train": train,
        "networks": names,
        "fitness": {
            "coarse": {
                s: {n: {"architecture": draw[n].random(), "topology": draw[n].random()} for n in random_names}
                for s in ("0", "1")
            },
            "fine": {n: {"architecture": draw[n].random()} for n in ops_names + ["searched0"]},
            "wall_s": 1.0,
        },
        "proxies": {"proxies": {n: {p: draw[n].random() for p in ("parameters", "gmacs", "synflow")} for n in names}},
        "baseline_epochs": {n: {"max_epochs": 10, "val_interval": 5} for n in ("unet", "segresnet")},
        "gmacs": {n: 0.1 + draw[n].random() for n in names},
    }


def _made_up_report(fitness: dict, figures: dict, tag: str) -> dict:
    """A finished run's report around ``fitness`` and ``figures``, as ``print_report`` and ``plot`` read it."""
    return {
        "machine": {"cpu": "test CPU", "cpu_id": "f0m0", "cores": 2, "torch": "test"},
        "settings": {"task": "tubes", "tag": tag},
        "fitness": fitness,
        "figures": figures,
        "wall_s": {"search": 20.0, "fitness": 1.0, "train": 220.0, "this_run": 1.0},
        "reused_parts": [],
        "parts_ran_on": {},
    }


def test_a_search_variant_runs_no_op_assignments_and_reports_the_fine_stage_as_not_measured(
    benchmark, tmp_path, capsys
):
    """The op assignments measure the fine stage's ranking: the search as configured draws 6, a search variant none
    unless asked (``--ops``). Without them the coarse figures stand as they are and every fine-stage figure and
    target reads 'not measured', in the figures, the printed report and the pictures."""
    parser = benchmark.build_parser()
    variant = ["--task", "tubes", "--search_layers", "benchmarks/recipes/finalists.json"]
    assert benchmark.parse_args(parser, ["--task", "tubes"]).ops == 6
    assert benchmark.parse_args(parser, variant).ops == 0
    assert benchmark.parse_args(parser, [*variant, "--ops", "4"]).ops == 4
    assert benchmark.parse_args(parser, ["--quick"]).ops == 3
    assert benchmark.parse_args(parser, ["--quick", *variant]).ops == 0
    with pytest.raises(SystemExit):
        benchmark.parse_args(parser, ["--task", "tubes", "--ops", "1"])  # one point ranks nothing
    assert "--ops 0 or >= 2" in capsys.readouterr().err

    args = benchmark.argparse.Namespace(training_seeds=2, orders=50)
    measured, variant_figures = (benchmark.analyse(_made_up_parts(ops), args) for ops in (3, 0))
    assert measured["correlation"]["fine"]["0"]["points"] == 3 and set(measured["proxy_correlation"]) == {
        "coarse",
        "fine",
    }
    assert all(isinstance(t["met"], bool) for t in measured["targets"].values())
    assert variant_figures["correlation"]["fine"] == {} and set(variant_figures["proxy_correlation"]) == {"coarse"}
    assert set(variant_figures["ruler_reliability"]) == {"random"} and variant_figures["ops"] == {}
    targets = variant_figures["targets"]
    assert targets["fine_kendall_tau_ge_0.5"] == {"value": None, "met": None}
    assert targets["supernet_tau_above_every_proxy"]["met"] is None
    assert targets["supernet_tau_above_every_proxy"]["value"].endswith("fine not measured")
    for name in ("coarse_kendall_tau_ge_0.4", "searched_at_or_above_random_q75_in_2_of_3"):
        assert targets[name] == measured["targets"][name], "the op assignments change no coarse figure"
    assert variant_figures["correlation"]["coarse"] == measured["correlation"]["coarse"]

    report = _made_up_report(_made_up_parts(0)["fitness"], variant_figures, "@finalists")
    benchmark.print_report(report)
    printed = capsys.readouterr().out
    assert "| fine_kendall_tau_ge_0.5 | n/a | not measured in this run |" in printed
    assert "| fine supernet" not in printed and "(op assignments)" not in printed
    pictures = benchmark.plot(report, tmp_path)
    assert [p.name for p in pictures] == [
        "fitness_vs_standalone@finalists.png",
        "searched_vs_random@finalists.png",
        "dice_vs_gmacs@finalists.png",
    ]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pictures)


def test_a_compute_budget_scores_only_the_random_architectures_its_supernets_hold(benchmark, tmp_path, capsys):
    """Under ``max_gmacs`` the coarse supernets hold only the topologies whose cheapest ops fit (``in_coarse_space``);
    the random architectures outside have no fitness. The coarse τ and the proxies' τ are then taken over the ones
    inside, named in the figures and the report; the random baselines (q75, random search) keep all of them."""
    from helpers import small_stage

    probe = small_stage("coarse", tmp_path / "probe")
    assert all(benchmark.in_coarse_space(probe, t) for t in probe.space.topologies), "no budget: the whole space"
    cheapest = {t: probe.gmacs(probe.cheapest(t)) for t in probe.space.topologies}
    budget = sorted(cheapest.values())[len(cheapest) // 2]
    budgeted = small_stage("coarse", tmp_path / "budget", max_gmacs=budget)
    inside = {t for t in probe.space.topologies if benchmark.in_coarse_space(budgeted, t)}
    assert inside == {t for t, g in cheapest.items() if g <= budget} and 0 < len(inside) < len(cheapest)

    args = benchmark.argparse.Namespace(training_seeds=2, orders=50)
    parts, whole = _made_up_parts(0), benchmark.analyse(_made_up_parts(0), args)
    for scores in parts["fitness"]["coarse"].values():
        del scores["random01"]
    figures = benchmark.analyse(parts, args)
    assert figures["coarse_scored"] == {"random": ["random00", "random02", "random03"], "outside_space": ["random01"]}
    assert whole["coarse_scored"]["outside_space"] == []
    dice = [figures["networks"][n]["mean"] for n in figures["coarse_scored"]["random"]]
    for s, scores in parts["fitness"]["coarse"].items():
        fitness = [scores[n]["architecture"] for n in figures["coarse_scored"]["random"]]
        assert figures["correlation"]["coarse"][s]["architecture"] == benchmark.kendall_spearman(fitness, dice)
    gmacs = [parts["proxies"]["proxies"][n]["gmacs"] for n in figures["coarse_scored"]["random"]]
    assert figures["proxy_correlation"]["coarse"]["gmacs"] == benchmark.kendall_spearman(gmacs, dice)
    assert figures["proxy_correlation"]["coarse"]["gmacs"]["points"] == 3
    assert figures["random_q75"] == whole["random_q75"] and figures["searched"] == whole["searched"]

    report = _made_up_report(parts["fitness"], figures, "@budget")
    benchmark.print_report(report)
    assert "over the 3 random architectures in the supernets' space; outside it" in capsys.readouterr().out
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in benchmark.plot(report, tmp_path))


@pytest.mark.parametrize("unet_wall_s, judged", [(10.5, True), (8.5, False)])
def test_the_moonshot_is_judged_only_at_equal_measured_wall_time(benchmark, unet_wall_s, judged):
    """MONAI's networks get the searched network's training time from a calibration; where a reference's trainings
    took more than ``EQUAL_TIME_TOLERANCE`` more or less time than seed 0's searched network's, the moonshot is not
    judged (met None), and its figures say by how much."""
    parts = _made_up_parts(0)
    for t in (0, 1):
        parts["train"][f"unet_seed{t}"]["wall_s"] = unet_wall_s  # the searched network's: 10 s
    args = benchmark.argparse.Namespace(training_seeds=2, orders=50)
    figures = benchmark.analyse(parts, args)
    assert figures["baseline_wall_ratio"] == pytest.approx({"unet": unet_wall_s / 10, "segresnet": 1.0})
    moonshot = figures["targets"]["moonshot_at_least_best_monai"]
    assert moonshot["wall_ratio"] == figures["baseline_wall_ratio"]
    assert isinstance(moonshot["met"], bool) if judged else moonshot["met"] is None


def test_equal_time_budget_keeps_the_validations_where_it_can(benchmark):
    """A corrected budget keeps the number of validations where whole intervals come within 2 % of the epochs wanted,
    else changes it by as little as it must (at most 2)."""
    assert benchmark.equal_time_budget({"max_epochs": 228, "val_interval": 19}, 268) == {
        "max_epochs": 264,
        "val_interval": 22,
    }
    # 12 validations give 84 or 96 for 89: 11 of 8 epochs give 88
    assert benchmark.equal_time_budget({"max_epochs": 72, "val_interval": 6}, 89.2) == {
        "max_epochs": 88,
        "val_interval": 8,
    }
    assert benchmark.equal_time_budget({"max_epochs": 4, "val_interval": 2}, 0.3) == {
        "max_epochs": 1,
        "val_interval": 1,
    }


def test_epoch_seconds_leaves_out_the_epochs_that_validated(benchmark, tmp_path):
    """The median epoch of a train.json ignite log counts only epochs without a validation (the evaluator logged
    none for them) after the first, whatever the interval; validations are timed by the evaluator's runs."""
    line = "2026-12-06 10:00:00,000 - ignite.engine.engine.{} - INFO - {}. Time taken: 00:00:{:06.3f}"
    lines = [line.format("SupervisedTrainer", "Epoch[1] Complete", 9.0)]
    for epoch in range(2, 8):
        if epoch % 3 == 0:  # a validating epoch: the evaluator's lines come first, and the trainer's epoch is longer
            lines += [line.format("SupervisedEvaluator", f"Epoch[{epoch}] Complete", 0.5 + epoch / 100)]
            lines += [line.format("SupervisedEvaluator", "Engine run finished", 0.5 + epoch / 100)]
        lines += [line.format("SupervisedTrainer", f"Epoch[{epoch}] Complete", 1.0 + epoch / 10 + (epoch % 3 == 0))]
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines))
    assert benchmark.epoch_seconds(log) == pytest.approx({"epoch": 1.45, "validation": 0.545})  # epochs 2, 4, 5, 7


def test_training_parts_do_not_depend_on_search_budgets(benchmark):
    """Changing a search budget in a profile re-runs the searches, not the trainings."""
    config_inputs = benchmark.config_inputs
    files = [CONFIGS / "common.json", CONFIGS / "train.json", CONFIGS / "cpu_profile.json"]
    training = config_inputs(files, drop_search=True)
    assert {"max_epochs", "roi_size", "base_channels", "seed", "network_def", "train"} <= set(training)
    assert not {"num_clusters", "cluster_iterations", "fine_iterations", "population_size", "search_settings"} & set(
        training
    )


@pytest.mark.parametrize("reproduced", [True, False])
def test_records_carry_over_a_code_change_only_when_a_rerun_reproduces_one(benchmark, tmp_path, reproduced):
    """A code or config change that leaves a training's result unchanged keeps a network's seed records: the first
    seed runs again, and only if it gives the same Dice are the other seeds carried over (not run); otherwise all
    run."""
    ran = []

    def parts(code, configs, dice):
        bench = benchmark.Bench(tmp_path / "work", None, TINY_PROFILE, True, records_dir=tmp_path / "records")
        for seed in range(3):
            result = {"dice": dice + seed, "per_class": {"organ": dice + seed}, "wall_s": 1.0}
            run = lambda folder, result=result, seed=seed: ran.append((code, seed)) or result  # noqa: E731
            inputs = {"code": code, "configs": configs, "seed": seed}
            assert bench.part(f"train_net_seed{seed}", inputs, run, group="train_net") == result
        return bench

    old_configs, new_configs = {"train": {"lr": 0.1}}, {"train": {"lr": 0.1}, "evaluate": {"report": "per case"}}
    parts("old", old_configs, 0.5)
    assert ran == [("old", 0), ("old", 1), ("old", 2)]
    bench = parts("new", new_configs, 0.5 if reproduced else 0.25)
    if reproduced:
        assert ran[3:] == [("new", 0)] and bench.carried == ["train_net_seed1", "train_net_seed2"]
        record = json.loads((tmp_path / "records" / "train_net_seed2.json").read_text())
        assert record["carried_over"] == {
            "from": {"code": "old", "dataset_dir": "None", "configs": benchmark._short(old_configs)},
            "verified_by": "train_net_seed0",
        }
    else:
        assert ran[3:] == [("new", 0), ("new", 1), ("new", 2)] and bench.carried == []
    assert benchmark.Bench(tmp_path / "work", None, TINY_PROFILE, True, records_dir=tmp_path / "records").part(
        "train_net_seed1",
        {"code": "new", "configs": new_configs, "seed": 1},
        lambda folder: pytest.fail("ran"),
        group="train_net",
    ), "carried or rerun records are reused as they are"


def test_proxy_baselines_rank_a_report_without_training(tmp_path):
    """benchmarks/proxy_baselines.py: parameters, multiply-adds and SynFlow of a report's architectures, each
    proxy's Kendall tau against their stand-alone Dice beside the supernets' own, written next to the report."""
    spec = importlib.util.spec_from_file_location("proxy_baselines", ROOT / "benchmarks" / "proxy_baselines.py")
    proxies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proxies)
    levels = [[1, 2, 2, 1], [1, 1, 2, 1], [1, 2, 1, 1]]
    archs = {f"random{i:02d}": {"levels": t, "ops": ["3D", "2D", "P3D", "3D"]} for i, t in enumerate(levels)}
    archs.update({f"ops{i:02d}": {"levels": [1, 2, 2, 1], "ops": [op] * 4} for i, op in enumerate(["2D", "3D"])})
    correlation = {"coarse": {"0": {"architecture": {"kendall_tau": 0.5}}}, "fine": {"0": {"kendall_tau": -1.0}}}
    figures = {"random": {"random00": 0.5, "random01": 0.7, "random02": 0.6}, "ops": {"ops00": 0.4, "ops01": 0.8}}
    report = tmp_path / "search_quality.json"
    report.write_text(json.dumps({"architectures": archs, "figures": {**figures, "correlation": correlation}}))
    found = proxies.main([str(report), "--base_channels", "2", "--roi_size", "16", "16", "16"])
    assert json.loads((tmp_path / "proxy_baselines.json").read_text())["correlation"] == found["correlation"]
    values = found["proxies"]
    assert all(_finite(v[k], 0) and v[k] > 0 for v in values.values() for k in ("parameters", "gmacs", "synflow"))
    assert (
        values["ops01"]["gmacs"] > values["ops00"]["gmacs"]
        and values["ops01"]["parameters"] > values["ops00"]["parameters"]
    ), "3D cells cost more than 2D ones"
    assert found["correlation"]["fine"]["gmacs"]["kendall_tau"] == 1.0  # the costlier assignment has the higher Dice
    assert found["correlation"]["coarse"]["supernet (mean over search seeds)"]["kendall_tau"] == 0.5


def test_code_digest_counts_what_the_code_computes(benchmark, tmp_path):
    """Records depend on the code's digest: a docstring, comment or formatting change keeps it, so records stay
    valid; a changed statement, constant or config value changes it, so they do not."""
    package = tmp_path / "pkg"
    package.mkdir()
    module, config = package / "m.py", package / "c.json"

    def digest(source, settings):
        module.write_text(source)
        config.write_text(settings)
        return benchmark.code_digest(["pkg"], root=tmp_path)

    base = digest('"""Doc."""\n\n\ndef f(x):\n    """Twice."""\n    return 2 * x\n', '{"a": 1, "b": [1, 2]}')
    assert (
        digest('"""Other doc."""\n\n\ndef f(x):  # note\n    return 2*x\n', '{\n    "b": [1, 2],\n    "a": 1\n}')
        == base
    )
    assert digest('"""Doc."""\n\n\ndef f(x):\n    return 3 * x\n', '{"a": 1, "b": [1, 2]}') != base
    assert digest('"""Doc."""\n\n\ndef f(x):\n    return 2 * x\n', '{"a": 1, "b": [2, 1]}') != base


def test_search_records_carry_over_when_seed_0_finds_the_same(benchmark, tmp_path):
    """A change to the search code re-runs seed 0's search; only if it finds the same architecture with the same
    fitness in both stages are the other seeds' search records kept."""

    def found(levels, fitness):
        coarse = {"fitness": fitness - 0.1}
        return {
            "arch": {
                "levels": levels,
                "ops": ["2D"] * 3,
                "provenance": {"fitness": fitness, "topology_provenance": coarse},
            }
        }

    same = benchmark._same_search
    assert same(found([1, 2, 1], 0.5), found([1, 2, 1], 0.5 + 1e-9))
    assert not same(found([1, 2, 1], 0.5), found([1, 1, 1], 0.5)) and not same(
        found([1, 2, 1], 0.5), found([1, 2, 1], 0.6)
    )
    ran = []

    def searches(code, seed0):
        bench = benchmark.Bench(tmp_path / "work", None, TINY_PROFILE, True, records_dir=tmp_path / "records")
        for seed in range(3):
            result = found([1, 2, 1], seed0 if seed == 0 else 0.4)
            run = lambda folder, result=result, seed=seed: ran.append((code, seed)) or result  # noqa: E731
            inputs = {"code": code, "configs": {}, "seed": seed}
            bench.part(f"search_seed{seed}", inputs, run, group="search", same=benchmark._same_search)
        return bench

    searches("old", 0.5)
    assert searches("new", 0.5).carried == ["search_seed1", "search_seed2"] and ran[3:] == [("new", 0)]
    searches("newer", 0.7)
    assert ran[4:] == [("newer", 0), ("newer", 1), ("newer", 2)], "seed 0 found another fitness: every seed runs"


def test_the_planned_search_variants_change_only_the_search(benchmark, tmp_path):
    """Every search variant ``make search-quality`` runs (the Makefile's SEARCH_VARIANTS) is accepted as a search
    layer at the CPU profile and names its parts after itself; a layer that changes the training is refused, naming
    what it changes."""
    line = re.search(r"^SEARCH_VARIANTS :=((?:.*\\\n)*.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    variants = re.sub(r"\\\n", " ", line).replace('"', "").split()
    assert variants and all(v.startswith("benchmarks/recipes/") for v in variants)
    for variant in variants:
        bench = benchmark.Bench(tmp_path, None, CONFIGS / "cpu_profile.json", True)
        bench.use_search_layers([ROOT / variant])
        assert bench.variant == "@" + Path(variant).stem and bench.search_layers == [ROOT / variant]
    layer = tmp_path / "search_and_width.json"
    layer.write_text(json.dumps({"cluster_iterations": 10, "base_channels": 4}))
    bench = benchmark.Bench(tmp_path, None, CONFIGS / "cpu_profile.json", True)
    with pytest.raises(ValueError, match=r"changes the training.*base_channels") as refused:
        bench.use_search_layers([layer])
    assert "cluster_iterations" not in str(refused.value) and bench.variant == "" and not bench.search_layers


def test_search_layers_may_change_only_the_search(tmp_path):
    """--search_layers names a search variant; a layer that changes the training is refused before any work."""
    layer = tmp_path / "more_epochs.json"
    layer.write_text(json.dumps({"max_epochs": 3}))
    args = [BENCHMARK, "--quick", "--search_layers", layer, "--work_dir", tmp_path / "work"]
    done = launch(args, ROOT, timeout=300)
    assert done.returncode == 2 and "changes the training, not only the search" in done.stderr
    assert not (tmp_path / "work" / "runs").exists()


def test_a_training_with_the_inputs_of_another_record_reuses_it(benchmark, tmp_path):
    """A training recorded under another name with exactly the same inputs (a search variant finding the network the
    search as configured found) is not run again: its record names the twin. Other inputs, or a part that is not a
    training, run."""
    ran = []

    def run(folder, value=0.7):
        ran.append(folder.name)
        return {"dice": value, "per_class": {"organ": value}, "wall_s": 1.0}

    inputs = {"code": "c", "configs": {"train": {"lr": 0.1}}, "arch": {"levels": [1, 2]}, "seed": 0}
    bench = benchmark.Bench(tmp_path / "work", None, TINY_PROFILE, True, records_dir=tmp_path / "records")
    bench.part("train_searched1_seed0", inputs, run, group="train_searched1")
    assert bench.part("train_searched1@v_seed0", inputs, run, group="train_searched1@v")["dice"] == 0.7
    assert ran == ["train_searched1_seed0"] and bench.twins == ["train_searched1@v_seed0"]
    record = json.loads((tmp_path / "records" / "train_searched1@v_seed0.json").read_text())
    original = json.loads((tmp_path / "records" / "train_searched1_seed0.json").read_text())
    assert record["same_inputs_as"] == "train_searched1_seed0" and record["key"] == original["key"]
    assert record["machine"] == original["machine"] and record["finished"] == original["finished"]

    again = benchmark.Bench(tmp_path / "work", None, TINY_PROFILE, True, records_dir=tmp_path / "records")
    again.part("train_searched1@v_seed0", inputs, lambda folder: pytest.fail("ran"), group="train_searched1@v")
    assert again.reused == ["train_searched1@v_seed0"], "the twin's record is then its own"
    again.part("train_searched0@v_seed0", {**inputs, "seed": 1}, run, group="train_searched0@v")
    again.part("search@v_seed0", inputs, run)  # a search keeps its own run folder (supernets): no twin
    assert ran[1:] == ["train_searched0@v_seed0", "search@v_seed0"]


def test_records_of_another_cpu_kind_are_continued_only_when_asked(benchmark, tmp_path, capsys):
    """A records folder named on the command line whose records all ran on another CPU kind is refused before any
    work (their keys name the CPU model, which two generations share); one record of this kind lets it continue."""
    records, this = tmp_path / "records", benchmark.machine()["slug"]
    records.mkdir()
    (records / "search_seed0.json").write_text(json.dumps({"key": "k", "machine": "other_cpu_f1m1", "result": {}}))
    argv = ["--task", "embedded", "--profile", str(TINY_PROFILE), "--work_dir", str(tmp_path / "work")]
    with pytest.raises(SystemExit):
        benchmark.main([*argv, "--records_dir", str(records)])
    error = capsys.readouterr().err
    assert str(records) in error and "other_cpu_f1m1" in error and this in error and "--other_kind" in error
    assert not (tmp_path / "work").exists()  # refused before any work
    (records / "train_x_seed0.json").write_text(json.dumps({"key": "k", "machine": this, "result": {}}))
    assert benchmark.other_kinds(records, this) == []
    assert benchmark.other_kinds(records, "third_cpu_f2m2") == sorted(["other_cpu_f1m1", this])
    assert benchmark.other_kinds(tmp_path / "none", this) == []


def test_another_kind_continues_records_in_their_seconds_only_after_reproducing_one(benchmark, tmp_path):
    """Records of one CPU kind continued on another: a forced re-run of a recorded part must reproduce it exactly;
    the record keeps its result and notes the reproduction, whose time against the record's is the other kind's
    speed, by which the report converts that kind's wall times. A re-run that does not reproduce is refused, its
    record kept; a part of a kind never timed cannot be converted."""
    records = tmp_path / "records"

    def bench_on(kind):
        bench = benchmark.Bench(tmp_path / "work", None, TINY_PROFILE, True, records_dir=records)
        bench.machine = {**bench.machine, "slug": kind}
        return bench

    def result(dice, wall_s):
        return {"dice": dice, "per_class": {"organ": dice}, "wall_s": wall_s}

    home = bench_on("home_cpu_f1m1")
    for seed, wall in ((0, 200.0), (1, 100.0)):
        home.part(f"train_net_seed{seed}", {"seed": seed}, lambda folder, w=wall: result(0.5, w), group="train_net")
    slow = bench_on("slow_cpu_f2m2")
    assert slow.home == "home_cpu_f1m1" and slow.speed == {}
    with pytest.raises(RuntimeError, match="train_net_seed1.*did not reproduce"):
        slow.part("train_net_seed1", {"seed": 1}, lambda folder: result(0.4, 300.0), group="train_net", force=True)
    assert "reproductions" not in json.loads((records / "train_net_seed1.json").read_text())
    kept = slow.part("train_net_seed0", {"seed": 0}, lambda folder: result(0.5, 400.0), group="train_net", force=True)
    record = json.loads((records / "train_net_seed0.json").read_text())
    assert kept == result(0.5, 200.0) == record["result"] and record["machine"] == "home_cpu_f1m1"
    assert [r["machine"] for r in record["reproductions"]] == ["slow_cpu_f2m2"]
    assert slow.speed["slow_cpu_f2m2"]["factor"] == pytest.approx(0.5)
    unnamed = json.loads((records / "train_net_seed1.json").read_text())  # a record from before records named one
    del unnamed["machine"]
    (records / "train_net_seed1.json").write_text(json.dumps(unnamed))
    slow.part("train_net_seed1", {"seed": 1}, lambda folder: result(0.5, 250.0), group="train_net", force=True)
    assert slow.speed["slow_cpu_f2m2"]["factor"] == pytest.approx((200.0 + 100.0) / (400.0 + 250.0))
    assert set(slow.speed["slow_cpu_f2m2"]["parts"]) == {"train_net_seed0", "train_net_seed1"}
    assert slow.home_seconds("train_net_seed0", 200.0) == 200.0  # ran on the records' kind
    new = slow.part("train_other_seed0", {"seed": 0, "net": "other"}, lambda folder: result(0.6, 300.0))
    converted = slow.in_home_time("train_other_seed0", new)
    assert converted["wall_s"] == pytest.approx(300.0 * 300 / 650) and converted["measured_wall_s"] == 300.0
    assert converted["ran_on"] == "slow_cpu_f2m2" and new["wall_s"] == 300.0  # the record keeps what it measured
    search = {"arch": {}, "wall_s": {"coarse": 100.0, "fine": 60.0}}
    slow.part("search_seed0", {"seed": 0}, lambda folder: search)
    home_search = slow.in_home_time("search_seed0", search)["wall_s"]
    assert home_search == pytest.approx({"coarse": 100.0 * 300 / 650, "fine": 60.0 * 300 / 650})
    slow.in_home_time("train_net_seed0", kept)  # ran on the records' kind: nothing to convert
    assert slow.converted == ["train_other_seed0", "search_seed0"]
    third = bench_on("third_cpu_f3m3")
    third.part("train_third_seed0", {"net": "third"}, lambda folder: result(0.6, 10.0))
    with pytest.raises(RuntimeError, match="train_third_seed0 ran on third_cpu_f3m3.*never measured"):
        third.home_seconds("train_third_seed0", 10.0)
