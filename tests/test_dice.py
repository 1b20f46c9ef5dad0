"""The one Dice (search.dice): its rule, and the same number in every place that reports a mean Dice."""

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import bundle_run
from monai.networks.utils import one_hot

from search import DICE_DEFINITION, ForegroundDice, dice_per_case, dice_report, reduce_dice


def _onehot(labels):
    return one_hot(torch.tensor(labels)[:, None, :, None, None], 3)  # (cases, 3, voxels, 1, 1)


def test_rule_for_absent_and_false_positive_classes():
    truth = _onehot([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    guess = _onehot([[0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]])
    per_case = dice_per_case(guess, truth)
    assert per_case[0, 0] == pytest.approx(2 / 3) and math.isnan(per_case[0, 1])  # class 2 in neither: no value
    assert per_case[1].tolist() == [1.0, 0.0]  # class 2 predicted, absent from the label: a false positive, 0
    assert torch.isnan(per_case[2]).all()  # an empty case says nothing
    mean, per_class = reduce_dice(per_case)
    assert per_class == pytest.approx([(2 / 3 + 1) / 2, 0.0])  # per class over the cases with a value
    assert mean == pytest.approx(((2 / 3 + 1) / 2 + 0.0) / 2)  # then over classes
    assert math.isnan(reduce_dice(per_case[2:])[0])  # nothing to count: no Dice, not 0 or 1
    report = dice_report(per_case, ["pancreas", "tumour"])
    assert report["mean_dice"] == mean and report["cases"] == 3 and report["definition"] == DICE_DEFINITION


def test_per_class_first_differs_from_per_case_first():
    """The reduction matters: a rare class weighs as much as a common one."""
    per_case = torch.tensor([[0.9, float("nan")], [0.9, float("nan")], [0.9, 0.1]])
    assert reduce_dice(per_case)[0] == pytest.approx(0.5)  # mean of 0.9 and 0.1
    per_case_first = torch.nanmean(per_case, 1).mean()  # what MONAI's DiceMetric reduction="mean" gives
    assert float(per_case_first) == pytest.approx((0.9 + 0.9 + 0.5) / 3)


def test_monai_metric_gives_the_same_number():
    truth = _onehot([[0, 1, 1, 2], [0, 1, 0, 0]])
    guess = _onehot([[0, 1, 2, 2], [0, 0, 1, 2]])
    metric = ForegroundDice()
    for i in range(2):  # batch by batch, as an evaluator feeds it
        metric(y_pred=guess[i : i + 1], y=truth[i : i + 1])
    assert float(metric.aggregate()) == pytest.approx(reduce_dice(dice_per_case(guess, truth))[0])


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_checkpoint_metric_evaluation_and_per_class_report_agree(dataset, tmp_path, cpu_bf16):
    """Train two epochs (float32, or bfloat16 forward passes on the CPU), then evaluate the kept model: the metric
    the checkpoint was chosen by, metrics.csv and dice_per_class.json state one number, and every case's Dice is
    that of inference.json's segmentation against the label file, on the case's own grid."""
    out = tmp_path / "outputs"
    common = {"dataset_dir": str(dataset), "output_dir": str(out), "val_fraction": 0.34}
    log = bundle_run(["train.json"], tmp_path, {**common, "max_epochs": 2, "val_interval": 1, "cpu_bf16": cpu_bf16})
    state = torch.load(out / "models" / "training_state.pt", weights_only=True)
    assert state["settings"]["cpu_bf16"] is cpu_bf16  # which precision trained it travels with it
    best = state["best_model"]["_saved"][0][0]  # the key metric of the checkpoint kept as model.pt
    assert f"val_mean_dice best value: {best}" in log
    same_runtime = {"inference_runtime": "torch"}  # evaluation and inference run their windows alike
    evaluated = {**common, **same_runtime, "ckpt_file": str(out / "models" / "model.pt")}
    bundle_run(["train.json", "evaluate.json"], tmp_path, evaluated)
    report = json.loads((out / "eval" / "dice_per_class.json").read_text())
    with open(out / "eval" / "metrics.csv") as f:
        rows = {row[0]: float(row[1]) for row in csv.reader(f) if row}
    assert rows["val_mean_dice"] == report["mean_dice"]  # one evaluation: the same number, not just close
    assert report["mean_dice"] == pytest.approx(best, abs=1e-6)  # the kept checkpoint, evaluated again
    assert report["cases"] == 2
    counted = [v for v in report["per_class"].values() if v == v]
    assert report["mean_dice"] == pytest.approx(sum(counted) / len(counted))
    # every case's Dice per class, by image file (MONAI's MetricsSaver): the per-class report is their mean
    with open(out / "eval" / "val_mean_dice_raw.csv") as f:
        header, *cases = list(csv.reader(f))
    assert header == ["filename", "class0", "class1", "mean"] and len(cases) == 2
    assert all(Path(case[0]).is_file() and Path(case[0]).is_relative_to(dataset) for case in cases)
    for column, name in enumerate(report["per_class"], start=1):
        values = [float(case[column]) for case in cases if case[column] != "nan"]
        assert report["per_class"][name] == pytest.approx(sum(values) / len(values), abs=1e-4), name
    # each case scored on its own grid: what inference.json writes for it, against its label file as drawn (the
    # tiny profile's plan resamples to 2 mm, so a score on the plan's grid would differ)
    plan = json.loads((out / "models" / "plan.json").read_text())
    assert all(nib.load(case[0]).header.get_zooms()[:3] != tuple(plan["pixdim"]) for case in cases)
    bundle_run(["inference.json"], tmp_path, {**evaluated, "dataset#data": [{"image": case[0]} for case in cases]})
    for case in cases:
        name = Path(case[0]).name.split(".")[0]
        segmentation = np.asarray(nib.load(out / "inference" / f"{name}_seg.nii.gz").dataobj)
        drawn = np.asarray(nib.load(dataset / "labelsTr" / Path(case[0]).name).dataobj)
        assert segmentation.shape == drawn.shape, name
        for column in range(1, len(report["per_class"]) + 1):
            found, truth = segmentation == column, drawn == column
            total = found.sum() + truth.sum()
            expected = 2 * (found & truth).sum() / total if total else float("nan")
            assert float(case[column]) == pytest.approx(expected, abs=1e-4, nan_ok=True), (name, column)


def test_the_method_document_quotes_the_one_definition():
    """The Dice is defined once, ``DICE_DEFINITION`` (every report carries it); method.md quotes it word for word and
    the README and the model card only link to it."""
    root = Path(__file__).resolve().parents[1]
    method = (root / "bundle" / "docs" / "method.md").read_text()
    section = method[method.index("## The bundle's Dice") :].split("\n## ")[0]
    quote = " ".join(line[1:].strip() for line in section.splitlines() if line.startswith(">"))
    assert quote == DICE_DEFINITION
    for doc in [root / "README.md", root / "bundle" / "docs" / "README.md"]:
        text = doc.read_text()
        assert "method.md" in text, doc
        assert "|P ∩ L|" not in text and "|P∩L|" not in text, f"{doc} writes the Dice out again"
