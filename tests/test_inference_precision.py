"""The inference-precision benchmark (benchmarks/inference_precision.py) end to end at --quick: the shipped weights
scored by evaluate.json in float32 and in bfloat16, every figure present and finite, records reused on a re-run."""

import json
import math
from pathlib import Path

from helpers import launch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "inference_precision.py"


def test_quick_scores_both_precisions_and_reuses_its_records(tmp_path):
    done = launch([BENCHMARK, "--quick", "--work_dir", tmp_path], ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| shipped | heldout (2) | pancreas |" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    row = report["networks"]["shipped"]["heldout"]
    assert row["cases"] == 2 and set(row["classes"]) == {"pancreas", "tumour"}
    for figures in row["classes"].values():
        for name in ("float32", "bfloat16", "change", "largest_case_change"):
            assert figures[name] is not None and math.isfinite(figures[name]), (name, figures)
        assert abs(figures["change"] - (figures["bfloat16"] - figures["float32"])) < 1e-9
    assert all(seconds > 0 for seconds in row["wall_s"].values())
    records = sorted(p.name for p in (tmp_path / "records").glob("*.json"))
    assert records == ["shipped_heldout_bfloat16.json", "shipped_heldout_float32.json"]
    logs = sorted((tmp_path / "shipped" / "runs").glob("*/evaluate.log"))
    runtimes = [line.split("inference runtime: ")[1].split()[0] for log in logs for line in log.read_text().splitlines()
                if "inference runtime: " in line]  # fmt: skip
    assert sorted(runtimes) == ["openvino", "openvino_bf16"]

    for log in logs:
        log.unlink()
    again = launch([BENCHMARK, "--quick", "--work_dir", tmp_path], ROOT, timeout=600)  # every part reused
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "report.json").read_text())["networks"] == report["networks"]
    assert not list((tmp_path / "shipped" / "runs").glob("*/evaluate.log"))
