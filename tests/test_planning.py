"""Any MSD task: the plan made from the data (MONAI's DataAnalyzer) and every stage reading it.

Three tasks: the embedded synthetic pancreas, and two generated ones (benchmarks/tasks.py): 2-channel MR-like 4D
images with 2 zones at 0.6 x 0.6 x 3 mm, and 1-channel CT-like images with 1 organ in another HU range."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import BUNDLE, TINY_PROFILE, bundle_run, stage_run

from benchmarks import tasks

TINY = json.loads(TINY_PROFILE.read_text())


@pytest.fixture(scope="session")
def task_datasets(dataset, tmp_path_factory):
    """``{name: (dataset_dir, expected)}``: each task in MSD layout (6 labelled cases, 1 test image) with what its
    plan must hold."""
    root = tmp_path_factory.mktemp("tasks")
    return {
        "pancreas": (dataset, {"classes": ["pancreas", "cancer"], "modalities": ["CT"], "spacing": [1, 1, 2.5]}),
        "prostate_mr": (
            tasks.dataset("prostate_mr", root / "prostate_mr", num_cases=6, num_test=1),
            {"classes": ["peripheral zone", "transition zone"], "modalities": ["T2", "ADC"], "spacing": [0.6, 0.6, 3]},
        ),
        "kidney_ct": (
            tasks.dataset("kidney_ct", root / "kidney_ct", num_cases=6, num_test=1),
            {"classes": ["kidney"], "modalities": ["CT"], "spacing": [0.8, 0.8, 1.5]},
        ),
    }


@pytest.mark.parametrize(
    "task", ["pancreas", "prostate_mr", pytest.param("kidney_ct", marks=pytest.mark.slow)]  # 1 min each on 2 cores
)
def test_whole_chain_on_any_task(task_datasets, tmp_path, task):
    """plan -> search_coarse -> search_fine -> train -> evaluate -> inference, each a `monai.bundle run` from another
    cwd with the tiny profile, changing only --dataset_dir (and where outputs go); the coarse clusters trained in
    worker processes, as the CPU profile does."""
    dataset, expected = task_datasets[task]
    out = tmp_path / "outputs"
    common = {"dataset_dir": str(dataset), "output_dir": str(out)}
    shipped = {p.name: p.read_bytes() for p in (BUNDLE / "models").iterdir()}
    log = bundle_run(["plan.json"], tmp_path, common)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["format"] == "c2fnas-plan/1" and plan["class_names"] == expected["classes"]
    assert plan["modalities"] == expected["modalities"] and plan["in_channels"] == len(expected["modalities"])
    assert np.allclose(plan["spacing"]["target"], expected["spacing"], atol=1e-4)
    # the tiny profile coarsens to at least 2 mm per axis and caps the patch at 32
    assert np.allclose(plan["pixdim"], np.maximum(expected["spacing"], TINY["plan_min_spacing"]), atol=1e-4)
    assert all(16 <= s <= 32 and s % 16 == 0 for s in plan["roi_size"])
    schemes = ["ct_foreground" if m == "CT" else "zscore_nonzero" for m in expected["modalities"]]
    assert [c["scheme"] for c in plan["intensity"]] == schemes
    assert f"classes {', '.join(expected['classes'])}" in log
    before = (out / "plan.json").read_bytes()

    log = stage_run("search_coarse", tmp_path, {**common, "cluster_workers": 2})  # as the CPU profile trains them
    assert (out / "search" / "arch_coarse.json").is_file() and (out / "search" / "arch_coarse.png").is_file()
    assert ("in 2 worker processes" in log) == (torch.get_num_threads() >= 2), "the config's route to the workers"
    assert not list((out / "search").glob("search_coarse_cluster*_state.pt"))
    stage_run("search_fine", tmp_path, common)
    arch = json.loads((out / "search" / "arch_fine.json").read_text())
    coarse = json.loads((out / "search" / "arch_coarse.json").read_text())
    assert arch["levels"] == coarse["levels"] and len(arch["ops"]) == len(coarse["levels"])
    log = stage_run("train", tmp_path, common)  # the chain hands each stage what the ones before it wrote
    assert "validation Dice on 1 cases" in log and all(name in log for name in expected["classes"])
    ckpt = out / "models" / "model.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["stem.0.weight"].shape[1] == len(expected["modalities"]), "the network takes the task's channels"
    assert (out / "models" / "plan.json").read_bytes() == before, "the plan travels with the weights"
    trained = torch.load(out / "models" / "training_state.pt", map_location="cpu", weights_only=True)["settings"]
    assert trained["architecture"]["ops"] == arch["ops"], "training took the searched architecture"
    stage_run("evaluate", tmp_path, common)
    report = json.loads((out / "eval" / "dice_per_class.json").read_text())
    assert list(report["per_class"]) == expected["classes"] and report["cases"] == 1
    stage_run("inference", tmp_path, common)
    (image,) = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    (seg,) = sorted((out / "inference").glob("*_seg.nii.gz"))
    source, result = nib.load(str(image)), nib.load(str(seg))
    assert result.shape == source.shape[:3] and np.allclose(result.affine, source.affine), "in the input space"
    assert set(np.unique(result.get_fdata()).tolist()) <= set(range(len(expected["classes"]) + 1))
    assert (out / "plan.json").read_bytes() == before, "every stage read the same plan"
    assert {p.name: p.read_bytes() for p in (BUNDLE / "models").iterdir()} == shipped  # shipped models untouched


@pytest.mark.parametrize("task", ["pancreas", "prostate_mr"])
def test_plan_agrees_with_data_analyzer(task_datasets, tmp_path, task):
    """The plan's statistics are DataAnalyzer's own, run here independently on the same training split."""
    from monai.apps.auto3dseg import DataAnalyzer
    from scripts.data import split_datalist
    from scripts.planning import task_plan

    dataset, _ = task_datasets[task]
    train = split_datalist(dataset, "training", 0.2, 0)
    plan = task_plan(tmp_path / "plan.json", dataset)
    stats = DataAnalyzer({"training": train}, str(dataset), output_path="", device="cpu", worker=0).get_all_case_stats()
    summary, cases = stats["stats_summary"], stats["stats_by_cases"]
    assert plan["summary"]["cases"] == summary["n_cases"] == len(train)
    assert np.allclose(plan["spacing"]["median"], summary["image_stats"]["spacing"]["median"], atol=1e-5)
    assert plan["summary"]["shape"]["median"] == summary["image_stats"]["shape"]["median"]
    fractions = {
        int(v): f["foreground_percentage"]["mean"]
        for v, f in zip(summary["label_stats"]["labels"], summary["label_stats"]["label"])
    }  # noqa: E501
    assert np.allclose(
        [plan["summary"]["class_voxel_fraction"][plan["labels"][str(v)]] for v in fractions], list(fractions.values())
    )  # noqa: E501
    for channel in plan["intensity"]:
        if channel["scheme"] != "ct_foreground":
            continue
        c = channel["channel"]
        per_case = [case["image_foreground_stats"]["intensity"][c] for case in cases]
        assert np.allclose(
            channel["clip"],
            [np.mean([p["percentile_00_5"] for p in per_case]), np.mean([p["percentile_99_5"] for p in per_case])],
        )  # noqa: E501
        assert np.isclose(channel["mean"], np.mean([p["mean"] for p in per_case]))
        if c == 0:  # DataAnalyzer's summary describes the first channel: it is the mean over cases too
            fg = summary["image_foreground_stats"]["intensity"]
            assert np.allclose(channel["clip"], [fg["percentile_00_5"], fg["percentile_99_5"]], rtol=1e-4)
            assert np.isclose(channel["mean"], fg["mean"], rtol=1e-4) and np.isclose(
                channel["std"], fg["stdev"], rtol=1e-4
            )  # noqa: E501


def _stats(spacings, shape, sizemm=None):
    """DataAnalyzer-shaped statistics of cases with these ``spacings`` and one median ``shape``."""
    spacings = np.array(spacings, float)
    sizemm = sizemm if sizemm is not None else list(np.median(spacings, 0) * np.array(shape))
    case = lambda s: {  # noqa: E731
        "image_filepath": "case.nii.gz",
        "image_stats": {"spacing": list(s), "channels": 1, "sizemm": sizemm},
        "image_foreground_stats": {
            "intensity": [{"percentile_00_5": 0, "percentile_99_5": 100, "mean": 50, "stdev": 10}]
        },  # noqa: E501
        "label_stats": {"labels": [0, 1]},
    }
    summary = {
        "n_cases": len(spacings),
        "image_stats": {
            "spacing": {k: list(np.median(spacings, 0)) for k in ("min", "median", "max")},
            "shape": {k: list(shape) for k in ("min", "median", "max")},
            "sizemm": {"median": sizemm},
        },
        "label_stats": {
            "labels": [0, 1],
            "label": [{"foreground_percentage": {"mean": 0.9}}, {"foreground_percentage": {"mean": 0.1}}],
        },  # noqa: E501
    }
    return {"stats_summary": summary, "stats_by_cases": [case(s) for s in spacings]}


META = {"labels": {"0": "background", "1": "organ"}, "modality": {"0": "CT"}}


def test_spacing_rule_for_anisotropic_data():
    """Median spacing, except for a low-resolution axis (3x coarser, 3x fewer voxels), which takes the 10th
    percentile of its spacings (nnU-Net's rule); the patch fits the resampled median shape, in multiples of 16."""
    from scripts.planning import plan_from_stats

    iso = plan_from_stats(_stats([[1, 1, 1.2], [1, 1, 1.5], [1, 1, 2.5]], (160, 160, 120)), META)
    assert iso["spacing"]["target"] == [1, 1, 1.5] and not iso["spacing"]["anisotropic_rule"]
    assert iso["roi_size"] == [96, 96, 96]
    spacings = [[0.5, 0.5, z] for z in (2.0, 4.0, 4.0, 5.0, 5.0, 5.0, 5.0, 6.0, 6.0, 6.0)]
    aniso = plan_from_stats(_stats(spacings, (320, 320, 30)), META, max_roi_size=(96, 96, 32))
    assert aniso["spacing"]["anisotropic_rule"] and np.isclose(
        aniso["spacing"]["target"][2], np.percentile([s[2] for s in spacings], 10)
    )  # noqa: E501
    assert aniso["roi_size"] == [96, 96, 32]
    coarse = plan_from_stats(_stats(spacings, (320, 320, 30)), META, min_spacing=(2, 2, 2), max_roi_size=(64, 64, 64))
    assert coarse["pixdim"][:2] == [2, 2] and coarse["roi_size"] == [64, 64, 32]  # 80 x 80 x 39.5 voxels
    # a patch of 16 on every side leaves one voxel at the deepest level: the longest axis takes 32 (padded)
    assert plan_from_stats(_stats([[1, 1, 1]] * 3, (20, 24, 20)), META)["roi_size"] == [16, 32, 16]
    with pytest.raises(ValueError, match=r"case\.nii\.gz: .* smaller than the smallest patch the network takes"):
        plan_from_stats(_stats([[1, 1, 1]] * 3, (40, 40, 12)), META)


def _broken_copy(dataset, tmp_path, change):
    copy = tmp_path / "msd"
    shutil.copytree(dataset, copy)
    meta = json.loads((copy / "dataset.json").read_text())
    change(copy, meta)
    (copy / "dataset.json").write_text(json.dumps(meta))
    return copy


def _drop_label(meta, value):
    meta["labels"].pop(value)


def _run(configs, tmp_path, **overrides):
    code, _, stderr = bundle_run(configs, tmp_path, {"output_dir": str(tmp_path / "out"), **overrides}, check=False)
    lines = stderr.strip().splitlines()
    return code, lines[-1] if lines else ""


def _other_channels(copy, meta):
    """One training image with 2 channels while dataset.json lists one."""
    image = copy / meta["training"][0]["image"]
    volume = nib.load(str(image))
    voxels = np.asanyarray(volume.dataobj)
    nib.save(nib.Nifti1Image(np.stack([voxels, voxels], -1), volume.affine), str(image))


PLAN_ERRORS = [
    ("no labels", lambda c, m: m.pop("labels"), r"{d}/dataset.json: needs 'labels' naming the label values"),
    ("no modality", lambda c, m: m.pop("modality"), r"{d}/dataset.json: needs 'modality' naming each image channel"),
    ("label values not in labels", lambda c, m: _drop_label(m, "2"),
     r"{d}/labelsTr/synthetic_\d+.nii.gz: label values must be 0..1 \(dataset.json 'labels'\); found \[2\]"),
    ("channels differ between cases", _other_channels,
     r"{d}/imagesTr/synthetic_000.nii.gz: image has shape \(96, 96, 40, 2\); one 3D channel is expected"),
    ("class in no training label", lambda c, m: m["labels"].update({"3": "spleen"}),
     r"{d}/dataset.json: 'labels' class 3 \(spleen\) is in no training label"),
]  # fmt: skip


@pytest.mark.parametrize("name, change, message", PLAN_ERRORS, ids=[c[0] for c in PLAN_ERRORS])
def test_data_the_plan_cannot_serve(dataset, tmp_path, name, change, message):
    import re

    broken = _broken_copy(dataset, tmp_path, change)
    code, last = _run(["plan.json"], tmp_path, dataset_dir=str(broken))
    assert code != 0 and last.startswith("DatasetError: ") and re.search(message.format(d=broken), last), last
    assert not (tmp_path / "out" / "plan.json").exists()


def test_volume_smaller_than_any_patch(tmp_path):
    """Cases of 24 x 24 x 12 voxels are 12 voxels a side at the tiny profile's 2 mm: smaller than any patch."""
    from scripts.data import generate_synthetic_dataset

    small = generate_synthetic_dataset(tmp_path / "small", num_cases=3, num_test=1, shape=(24, 24, 12))
    code, last = _run(["train.json"], tmp_path, dataset_dir=str(small), val_fraction=0.34)
    assert code != 0 and "smaller than the smallest patch the network takes (16 voxels a side)" in last, last
    assert last.startswith(f"DatasetError: {small}/imagesTr/"), last
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.pt"))


def test_a_plan_made_from_other_data_is_refused(task_datasets, tmp_path):
    pancreas, _ = task_datasets["pancreas"]
    kidney, _ = task_datasets["kidney_ct"]
    bundle_run(["plan.json"], tmp_path, {"dataset_dir": str(pancreas), "output_dir": str(tmp_path / "out")})
    code, last = _run(["train.json"], tmp_path, dataset_dir=str(kidney))
    plan_file = tmp_path / "out" / "plan.json"
    assert code != 0 and last.startswith(f"PlanError: {plan_file}: made from other data or settings"), last
    assert "dataset_json_sha256" in last and "delete it to plan again" in last, last
    code, last = _run(["train.json"], tmp_path, dataset_dir=str(pancreas), plan_max_roi_size=[16, 16, 16])
    assert code != 0 and "made from other data or settings (settings differ)" in last, last


def test_weights_of_another_task_and_a_missing_plan(task_datasets, tmp_path):
    """Evaluating the shipped pancreas weights (3 classes, 1 channel) on the 2-channel MR task, and weights without
    the plan they were trained with: one line each."""
    mr, _ = task_datasets["prostate_mr"]
    code, last = _run(["train.json", "evaluate.json"], tmp_path, dataset_dir=str(mr))
    assert code != 0 and last.startswith(
        f"PlanError: {BUNDLE / 'models' / 'plan.json'}: plans 3 classes and 1 channel"
    ), last  # noqa: E501
    weights = tmp_path / "elsewhere" / "model.pt"
    weights.parent.mkdir()
    shutil.copy(BUNDLE / "models" / "model.pt", weights)
    code, last = _run(["inference.json"], tmp_path, dataset_dir=str(mr), ckpt_file=str(weights))
    assert code != 0 and last.startswith(f"PlanError: {weights.parent / 'plan.json'}: missing"), last


def test_plan_settings_override_by_config(task_datasets, tmp_path):
    """Any decision of the plan can be overridden by config: here the patch and the spacing."""
    dataset, _ = task_datasets["kidney_ct"]
    log = bundle_run(
        ["train.json"],
        tmp_path,
        {
            "dataset_dir": str(dataset),
            "output_dir": str(tmp_path / "out"),
            "roi_size": [32, 32, 16],
            "pixdim": [3, 3, 3],
        },
    )
    assert "validation Dice on 1 cases" in log
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["roi_size"] != [32, 32, 16], "the plan keeps its own decision; the override applies to the stage"
