"""The decision rule of the training-reliability comparisons (``benchmarks/network_comparison.py``), on records
written here in the benchmark's record format."""

import json
import math
from pathlib import Path

import pytest

from benchmarks import network_comparison as nc

CLASSES = ("pancreas", "tumour")


def write_records(folder: Path, network: str, dice: list, heldout: list = None, cases: int = 4) -> Path:
    """One record per seed under ``folder/task``: validation Dice ``dice[k]`` (both classes), held-out ``heldout[k]``
    on ``cases`` cases (or none)."""
    (folder / "task").mkdir(parents=True, exist_ok=True)
    for seed, value in enumerate(dice):
        result = {"dice": value, "per_class": {c: value for c in CLASSES}, "wall_s": 100.0 + seed}
        if heldout is not None:
            per_case = {f"synthetic_{i:03d}": {c: heldout[seed] for c in CLASSES} for i in range(cases)}
            result["heldout"] = {
                "dice": heldout[seed],
                "per_class": {c: heldout[seed] for c in CLASSES},
                "per_case": per_case,
            }
        record = {"key": "k", "inputs": {"seed": seed}, "result": result}
        (folder / "task" / f"train_{network}_seed{seed}.json").write_text(json.dumps(record))
    return folder


def test_standard_error_and_verdicts(tmp_path):
    high, low = [0.70, 0.72, 0.74], [0.60, 0.62, 0.64]
    write_records(tmp_path / "a", "net", high, high)
    write_records(tmp_path / "b", "ref", low, [0.74, 0.76, 0.78])
    report = nc.comparison("task", f"{tmp_path / 'a'}:net", f"{tmp_path / 'b'}:ref")
    validation = report["rulers"]["validation"]
    assert validation["difference"] == pytest.approx(0.10)
    assert validation["se"] == pytest.approx(math.sqrt(2 * 0.0004 / 3))  # each side's variance 0.0004, 3 seeds
    assert validation["se_paired"] == pytest.approx(0.0, abs=1e-9)  # the same gap in every seed
    assert validation["verdict"] == "ahead"
    assert validation["network"]["learnt"] == {"pancreas": 3, "tumour": 3}
    assert report["rulers"]["heldout"]["verdict"] == "behind"  # held-out 0.72 against 0.76, SE 0.016
    assert report["heldout_cases"] == 4
    assert report["target_holds"] is False
    assert report["wall_s"] == [pytest.approx(101.0), pytest.approx(101.0)]


def test_tie_within_one_standard_error(tmp_path):
    write_records(tmp_path / "a", "net", [0.70, 0.80, 0.75])
    write_records(tmp_path / "b", "ref", [0.74, 0.78, 0.76])
    report = nc.comparison("task", f"{tmp_path / 'a'}:net", f"{tmp_path / 'b'}:ref")
    assert list(report["rulers"]) == ["validation"]  # neither side was scored on held-out cases
    assert report["rulers"]["validation"]["verdict"] == "tie"
    assert report["target_holds"] is True


def test_different_rulers_stop_naming_the_record(tmp_path):
    write_records(tmp_path / "a", "net", [0.7, 0.7, 0.7], [0.7, 0.7, 0.7], cases=4)
    write_records(tmp_path / "b", "ref", [0.6, 0.6], [0.6, 0.6], cases=4)
    short = tmp_path / "a" / "task" / "train_net_seed2.json"
    record = json.loads(short.read_text())
    record["result"]["heldout"]["per_case"].pop("synthetic_003")  # one record scored on 3 of the 4 cases
    short.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"train_net_seed2\.json: scored on 3 held-out"):
        nc.comparison("task", f"{tmp_path / 'a'}:net", f"{tmp_path / 'b'}:ref")
    write_records(tmp_path / "c", "net", [0.7, 0.7], [0.7, 0.7], cases=5)  # every record of one side on 5 cases
    with pytest.raises(ValueError, match="scored on 4 held-out case"):
        nc.comparison("task", f"{tmp_path / 'c'}:net", f"{tmp_path / 'b'}:ref")


def test_too_few_seeds_named(tmp_path):
    write_records(tmp_path / "a", "net", [0.7])
    write_records(tmp_path / "b", "ref", [0.6, 0.6])
    with pytest.raises(ValueError, match="1 record"):
        nc.comparison("task", f"{tmp_path / 'a'}:net", f"{tmp_path / 'b'}:ref")


def test_command_line_writes_the_report(tmp_path, capsys):
    write_records(tmp_path / "a", "net", [0.70, 0.72], [0.71, 0.73])
    write_records(tmp_path / "b", "ref", [0.70, 0.71], [0.70, 0.72])
    out = tmp_path / "comparison.json"
    nc.main(["--task", "task", "--network", f"{tmp_path / 'a'}:net", "--reference", f"{tmp_path / 'b'}:ref",
             "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "held-out (4 cases)" in printed and "target" in printed
    assert json.loads(out.read_text())["rulers"]["heldout"]["difference"] == pytest.approx(0.01)


def test_command_line_error_is_one_line(tmp_path):
    write_records(tmp_path / "a", "net", [0.7, 0.7], [0.7, 0.7], cases=4)
    write_records(tmp_path / "b", "ref", [0.6, 0.6], [0.6, 0.6], cases=3)
    with pytest.raises(SystemExit, match=r"^network_comparison: .*scored on 3 held-out case\(s\) of task"):
        nc.main(["--task", "task", "--network", f"{tmp_path / 'a'}:net", "--reference", f"{tmp_path / 'b'}:ref"])
