"""torchrun (DDP, 2 CPU processes with gloo) for every stage: the bundle's multi_gpu_*.json overrides and the search
engine itself, including a SIGKILL and resume under DDP."""

import json
from pathlib import Path

import pytest
import torch
from helpers import BUNDLE, bundle_run, launch, run_or_kill

TESTS = Path(__file__).resolve().parent


def _write(path, obj):
    path.write_text(json.dumps(obj, indent=4))
    return path


def test_search_stages_under_torchrun(dataset, tmp_path):
    """Both search stages with 2 ranks: one result file, and every rank ends with that architecture."""
    out = tmp_path / "outputs"
    common = {"dataset_dir": str(dataset), "output_dir": str(out), "cluster_iterations": 4}
    per_rank = _write(  # each rank also saves the architecture its searcher returned
        tmp_path / "per_rank.json",
        {"run": ["$torch.save(@searcher.run().to_dict(), @search_dir + '/rank' + os.environ['RANK'] + '.pt')"]},
    )
    for stage in ["coarse", "fine"]:
        log = bundle_run([f"search_{stage}.json", "multi_gpu_search.json", per_rank], tmp_path, common, torchrun=True)
        search = out / "search"
        result = json.loads((search / f"arch_{stage}.json").read_text())
        ranks = [torch.load(search / f"rank{r}.pt", weights_only=True) for r in range(2)]
        assert ranks[0] == ranks[1]
        assert ranks[0]["levels"] == result["levels"] and ranks[0].get("ops") == result.get("ops")
        assert len(list((search / "tensorboard" / stage).iterdir())) == 1, "one TensorBoard writer (rank 0)"
        assert log.count(f"{stage} search result") == 1, "one log of the result (rank 0)"
        history = json.loads((search / f"search_{stage}_history.json").read_text())
        assert history["settings"]["world_size"] == 2
    assert json.loads((out / "search" / "arch_fine.json").read_text())["levels"] == result["levels"]


# Float64 network and data (the preprocessing's closing EnsureTyped; DDP wraps the same module). In float32 the
# rounding of the convolution and InstanceNorm kernels, which oneDNN picks per batch size and thread count, moves
# two SGD steps of this network by ~2 % on some CPUs (AMD EPYC, AVX-512: one process with 1 thread against 2 threads
# differs by 1.9e-2, as much as DDP against one process); in float64 DDP matches one process to 1e-14, so the bound can
# be tight and still catch a wrong learning-rate scaling or a rank that trains on other cases.
FLOAT64_NETWORK = "$@network_def.double().to(@device)"


def _train(dataset, cwd, out, torchrun, extra_configs, **overrides):
    """train.json in float64 on the 4 training cases, one deterministic 32³ centre crop each, Dice computed per
    sample, and the final weights saved by every rank to ``out/final<RANK>.pt``."""
    save = _write(
        cwd / f"save_final_{len(extra_configs)}.json",
        {
            "finalize": [
                "$torch.save((@network.module if hasattr(@network, 'module') else @network).state_dict(), "
                "@output_dir + '/final' + os.environ.get('RANK', '0') + '.pt')",
                "$torch.distributed.is_initialized() and torch.distributed.destroy_process_group()",
            ]
        },
    )
    crop = [{"_target_": "CenterSpatialCropd", "keys": ["image", "label"], "roi_size": [32, 32, 32]}]
    settings = {"dataset_dir": str(dataset), "output_dir": str(out), "val_fraction": 0.34,
                "augmentation#transforms": crop, "loss#batch": False, "train#dataloader#shuffle": False,
                "max_epochs": 2, "val_interval": 2, "preprocessing#transforms#6#dtype": "$torch.float64",
                "network#module" if torchrun else "network": FLOAT64_NETWORK, **overrides}  # fmt: skip
    return bundle_run(["train.json", *extra_configs, save], cwd, settings, torchrun=torchrun)


def test_ddp_training_matches_single_process(dataset, tmp_path):
    """Global batch 4: one process with batch 4 and 2 ranks with batch 2 each (learning rate given as half, since
    multi_gpu_train.json scales it by the world size) make the same updates, and both ranks end identical."""
    from monai.utils import set_determinism

    from networks import C2FNASNet

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _train(dataset, tmp_path, single, False, [], batch_size=4, learning_rate=0.02)
    log = _train(dataset, tmp_path, ddp, True, ["multi_gpu_train.json"], batch_size=2, learning_rate=0.01,
                 **{"train#sampler#shuffle": False})  # fmt: skip
    rank0, rank1 = (torch.load(ddp / f"final{r}.pt", weights_only=True) for r in range(2))
    reference = torch.load(single / "final0.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in reference), "ranks differ"
    set_determinism(seed=0)  # the bundle's initial weights (train.json's seed)
    initial = C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 4).state_dict()
    set_determinism(seed=None)
    update_single = torch.cat([(reference[k] - initial[k]).flatten() for k in reference])
    update_ddp = torch.cat([(rank0[k] - initial[k]).flatten() for k in reference])
    error = float((update_ddp - update_single).norm() / update_single.norm())
    assert update_single.norm() > 1e-2 and error < 1e-6, f"relative difference of the updates: {error:.2e}"
    assert log.count("validation Dice on 2 cases") == 1, "validation gathers both ranks' cases and logs once"
    assert (ddp / "models" / "model.pt").is_file()


def test_ddp_evaluation_equals_single_process(dataset, tmp_path):
    from networks import C2FNASNet

    torch.manual_seed(0)
    torch.save(C2FNASNet(str(BUNDLE / "models" / "architecture.json"), 1, 3, 4).state_dict(), tmp_path / "w.pt")
    bundle_run(
        ["plan.json"], tmp_path, {"dataset_dir": str(dataset), "output_dir": str(tmp_path), "val_fraction": 0.34}
    )
    reports = []
    for name, torchrun, extra in [("single", False, []), ("ddp", True, ["multi_gpu_evaluate.json"])]:
        out = tmp_path / name
        overrides = {
            "dataset_dir": str(dataset),
            "output_dir": str(out),
            "val_fraction": 0.34,
            "ckpt_file": str(tmp_path / "w.pt"),
        }  # fmt: skip  (the plan beside w.pt: made from the data)
        bundle_run(["train.json", "evaluate.json", *extra], tmp_path, overrides, torchrun=torchrun)
        reports.append(json.loads((out / "eval" / "dice_per_class.json").read_text()))
    assert reports[0]["cases"] == reports[1]["cases"] == 2
    assert reports[1]["per_class"] == pytest.approx(reports[0]["per_class"], abs=1e-6)


def _torchrun_search(out, kill_when=None):
    """The small coarse search of helpers.py under torchrun (2 ranks); with ``kill_when(progress)`` the whole
    process group gets SIGKILL at its first save after a state that satisfies it. Returns whether it ran to the end."""
    state = Path(out) / "search_coarse_state.pt"
    process = launch([TESTS / "helpers.py", "coarse", out], TESTS, torchrun=True, wait=False, pause_saves=state)
    progress_when = None if kill_when is None else (lambda saved: kill_when(saved["progress"]))
    return run_or_kill(process, progress_when)


def test_search_resumes_under_torchrun_after_sigkill(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _torchrun_search(reference)
    assert not _torchrun_search(killed, kill_when=lambda p: p["cluster"] == 1 and p["iteration"] >= 5)
    assert _torchrun_search(killed)
    arch = json.loads((reference / "arch_coarse.json").read_text())
    for out in [reference, killed]:
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        assert ranks[0]["levels"] == ranks[1]["levels"] == arch["levels"]
    expected = json.loads((reference / "search_coarse_history.json").read_text())
    resumed = json.loads((killed / "search_coarse_history.json").read_text())
    assert resumed["clusters"] == expected["clusters"] and resumed["evolution"] == expected["evolution"]
