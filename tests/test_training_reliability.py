"""The training-reliability benchmark (benchmarks/training_reliability.py) end to end at --quick on the tests' tiny
profile: every figure present and finite, and a second run reuses every record instead of training again."""

import json
import math
from pathlib import Path

import pytest
from helpers import PNG_MAGIC, launch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "training_reliability.py"


@pytest.mark.slow  # 10 tiny trainings and their evaluations: about 4 min on 2 cores
def test_quick_benchmark_reports_every_figure_and_reuses_its_records(tmp_path):
    records = tmp_path / "records"
    args = [BENCHMARK, "--quick", "--work_dir", tmp_path / "work", "--records_dir", records]
    done = launch(args, ROOT, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((records / "training_reliability.json").read_text())
    assert report["format"] == "c2fnas-training-reliability/1" and report["profile"] == "tiny_profile.json"
    rows = report["tasks"]["embedded"]
    assert set(rows) == {"c2fnas_panc", "demo_searched", "random00", "monai_unet"}
    for name, row in rows.items():
        assert row["seeds"] == 2 and len(row["per_seed"]) == 2, name
        for key in ("mean_dice", "std_dice", "min_dice", "max_dice"):
            assert math.isfinite(row[key]) and 0 <= row[key] <= 1, (name, key)
        assert row["min_dice"] <= row["mean_dice"] <= row["max_dice"] and row["wall_s"] > 0, name
        assert set(row["learnt"]) == {"pancreas", "tumour"} and all(0 <= n <= 2 for n in row["learnt"].values())
        assert (row["arch"] is None) == (name == "monai_unet")
        assert math.isfinite(row["gmacs"]) and row["gmacs"] > 0, name
    from networks.complexity import window_macs  # a C2FNAS network's figure is its architecture's own count

    arch = {"format": "c2fnas-arch/1", **rows["demo_searched"]["arch"]}  # tiny profile: F = 4, 32^3 windows
    assert rows["demo_searched"]["gmacs"] == window_macs(arch, 1, 3, 4, (32, 32, 32)) / 1e9
    assert (records / "training_reliability.png").read_bytes()[:8] == PNG_MAGIC
    assert (records / "dice_vs_gmacs.png").read_bytes()[:8] == PNG_MAGIC
    for name in rows:
        assert f"| {name} |" in done.stdout

    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (records / "embedded").glob("*.json")}
    assert len(kept) == 8  # one record per network and seed
    again = launch(args, ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (records / "embedded").glob("*.json")} == kept
    assert json.loads((records / "training_reliability.json").read_text())["tasks"] == report["tasks"]

    # a recipe variant (--layers) on some networks (--networks): its own records folder, the layer in every record;
    # it trains on one case (max_cases), which must not cut the held-out cases scored
    variant = tmp_path / "lr_variant.json"
    variant.write_text(json.dumps({"learning_rate": 0.0125, "max_cases": 1}))
    work = tmp_path / "work"
    args = [BENCHMARK, "--quick", "--work_dir", work, "--networks", "demo_searched", "--layers", variant]
    args += ["--heldout", "2"]  # and every training scored on 2 never-seen cases
    done = launch(args, ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = work / "records" / "tiny_profile+lr_variant"
    report = json.loads((folder / "training_reliability.json").read_text())
    assert report["layers"] == ["lr_variant.json"] and set(report["tasks"]["embedded"]) == {"demo_searched"}
    made = sorted((folder / "embedded").glob("*.json"))
    assert [p.name for p in made] == ["train_demo_searched_seed0.json", "train_demo_searched_seed1.json"]
    assert all('"learning_rate": 0.0125' in p.read_text() for p in made)
    held = report["tasks"]["embedded"]["demo_searched"]["heldout"]
    assert held["seeds"] == 2 and all(math.isfinite(d) and 0 <= d <= 1 for d in held["per_seed"])
    # every held-out case's Dice per class is kept, and each class's Dice is broken down by its labelled volume
    assert all(len(json.loads(p.read_text())["result"]["heldout"]["per_case"]) == 2 for p in made)
    by_size = held["by_size"]
    assert by_size["seeds"] == 2 and set(by_size["classes"]) == {"pancreas", "tumour"}
    for groups in by_size["classes"].values():
        assert sum(g["cases"] for g in groups) == 2 and all(0 <= g["mean_dice"] <= 1 for g in groups)
        assert all(0 < g["volume_ml"][0] <= g["volume_ml"][1] for g in groups)
    assert "held-out tumour Dice by its volume (2 seeds)" in done.stdout
    assert all(json.loads(p.read_text())["inputs"]["heldout"] == {"cases": 2, "seed": 1} for p in made)
    assert (work / "data" / "embedded_heldout2" / "dataset.json").is_file()
    wrong = launch([BENCHMARK, "--quick", "--work_dir", work, "--networks", "no_such_net"], ROOT, timeout=300)
    assert wrong.returncode != 0 and "no_such_net" in wrong.stderr
