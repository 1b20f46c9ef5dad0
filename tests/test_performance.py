"""The performance benchmark's throughput section (benchmarks/performance.py) end to end on the tests' tiny profile:
a real ``train.json`` run whose per-iteration TensorBoard events give a finite, consistent rate."""

import math
import re
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
