"""The performance benchmark's throughput section (benchmarks/performance.py) end to end on the tests' tiny profile:
a real ``train.json`` run whose per-iteration TensorBoard events give a finite, consistent rate."""

import math
import re
import sys
from pathlib import Path

from helpers import TINY_PROFILE, launch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "performance.py"


def test_throughput_section_times_the_last_epoch_of_a_real_training():
    args = [BENCHMARK, "--sections", "throughput", "--throughput_profile", TINY_PROFILE]
    done = launch([*args, "--throughput_epochs", "2", "--throughput_iterations", "3"], ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("# ") and "device cpu" in done.stdout.splitlines()[0]  # the machine line
    assert "train.json at tiny_profile.json" in done.stdout and "2 epochs of 3 iterations" in done.stdout
    found = re.search(r"last epoch: ([0-9.]+) s per iteration, ([0-9.]+) patches/s", done.stdout)
    assert found, done.stdout
    seconds, rate = float(found[1]), float(found[2])
    assert math.isfinite(seconds) and seconds > 0 and rate > 0
    patches = int(re.search(r"(\d+) patches of the plan's roi per iteration", done.stdout)[1])
    assert abs(rate - patches / seconds) <= 0.05 * rate + 0.1  # the rate is the patches over the timed seconds

    refused = launch([*args, "--throughput_epochs", "1"], ROOT, timeout=300)
    assert refused.returncode != 0 and "--throughput_epochs 1: at least 2" in refused.stderr


def test_a_stage_peak_memory_is_its_own_not_an_earlier_childs(tmp_path):
    """The e2e section's per-stage peak: a child's own peak RSS (0.8.0 reported the largest of every child the
    benchmark had waited for, 12.8 GiB from the search section's DiNTS step, for a chain that peaks under 1 GiB)."""
    from benchmarks.performance import _run_with_peak

    allocate = "import sys; block = b'x' * (int(sys.argv[1]) * 2**20); print(len(block)); sys.exit(int(sys.argv[2]))"
    status, big = _run_with_peak([sys.executable, "-c", allocate, "400", "0"], tmp_path, tmp_path / "big.log")
    assert status == 0 and big >= 400 * 2**20
    status, small = _run_with_peak([sys.executable, "-c", allocate, "50", "3"], tmp_path, tmp_path / "small.log")
    assert status == 3 and 50 * 2**20 <= small < 200 * 2**20  # its own, not the earlier child's 400 MiB
    assert (tmp_path / "small.log").read_text().strip() == str(50 * 2**20)  # the output goes to the log


def test_label_map_job_times_both_argmaxes_on_the_same_labels():
    """The train section's label-map rows: both argmaxes timed on the same scores (the job stops if they differ)."""
    import torch

    from benchmarks.performance import job_label_map

    res = job_label_map(torch.device("cpu"), side=12, classes=3, pairs=3)
    assert res["torch"] > 0 and res["bundle"] > 0 and res["speed_up"] > 0


def test_pytorch_parts_put_pytorchs_modules_in_with_the_same_weights(monkeypatch):
    """The train section's part rows compare the bundle's network against one with PyTorch's upsampling or instance
    norm put in: the same weights, the same output, only the module classes differ."""
    import torch
    from torch import nn

    from benchmarks.performance import PYTORCH_PARTS, job_train_part
    from networks import C2FNASNet, default_architecture
    from networks.c2fnas import LayoutKeepingInstanceNorm3d, TrilinearUpsample2x

    torch.manual_seed(0)
    net = C2FNASNet(default_architecture(), 1, 3, 4).eval()
    for module in net.modules():
        if isinstance(module, nn.InstanceNorm3d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        reference = net(x)
        for part, bundle_class in (("upsampling", TrilinearUpsample2x), ("norm", LayoutKeepingInstanceNorm3d)):
            plain = PYTORCH_PARTS[part](C2FNASNet(default_architecture(), 1, 3, 4).eval())
            plain.load_state_dict(net.state_dict())
            assert not any(isinstance(m, bundle_class) for m in plain.modules()), part
            torch.testing.assert_close(plain(x), reference, rtol=1e-4, atol=1e-5)
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))  # as the benchmark's children run
    res = job_train_part(torch.device("cpu"), "norm", width=2, roi=16, batch=1, channels_last=True, bf16=False, steps=2)
    assert res["pairs"] == 2 and res["speed_up"] > 0 and res["quartiles"][0] <= res["quartiles"][1]


def test_augmentation_job_times_the_profiles_augmentation_with_and_without_tracking():
    """The train section's augmentation row: the CPU profile's own augmentation of an embedded case, both ways (the
    job stops if the patches differ)."""
    import torch

    from benchmarks.performance import job_augmentation

    res = job_augmentation(torch.device("cpu"), pairs=2)
    assert res["tracked"] > 0 and res["untracked"] > 0 and res["speed_up"] > 0
    assert res["patches"] == 2 and len(res["shape"]) == 3


def test_side_by_side_row_runs_its_children_at_once_with_their_threads():
    """The train section's side-by-side row (``cluster_workers``): ``run_children`` runs the training-step job in
    processes at the same time (their timed spans overlap), each with the threads it is given, and hands back each
    one's steps and seconds."""
    from benchmarks.performance import run_children

    spec = dict(job="train_for", device="cpu", seconds=3.0, bf16=False)
    results = run_children({**spec, "threads": 1}, {**spec, "threads": 2})
    assert [r["threads"] for r in results] == [1, 2]
    assert all(r["steps"] >= 1 and r["seconds"] >= 3.0 for r in results)
    (start_a, end_a), (start_b, end_b) = (r["span"] for r in results)
    assert start_a < end_b and start_b < end_a, "side by side, not one after the other"
