"""The inference-precision benchmark (benchmarks/inference_precision.py) end to end at --quick: the shipped weights
scored by evaluate.json in float32 and in bfloat16, every figure present and finite, records reused on a re-run."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import inference_precision  # noqa: E402


def test_quick_scores_both_precisions_and_reuses_its_records(tmp_path, capsys):
    report = inference_precision.main(["--quick", "--work_dir", str(tmp_path)])
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
    assert [log.read_text().count("inference runtime: openvino") for log in logs] == [1, 1]
    assert "| shipped | heldout (2) | pancreas |" in capsys.readouterr().out

    for log in logs:
        log.unlink()
    again = inference_precision.main(["--quick", "--work_dir", str(tmp_path)])  # every part reused: nothing runs
    assert again["networks"] == report["networks"] and not list((tmp_path / "shipped" / "runs").glob("*/evaluate.log"))
