"""The inference runtime chosen by measurement (scripts.inference_runtime): same predictions, fastest measured."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import BUNDLE, bundle_run, launch
from monai.inferers import SlidingWindowInferer
from scripts.inference_runtime import RUNTIMES, MeasuredSlidingWindowInferer, build_runtime, candidate_runtimes
from torch import nn

from networks import C2FNASNet, default_architecture

ROI = (32, 32, 32)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return C2FNASNet(default_architecture(), 1, 3, 8).eval()


def _volume(seed=0, shape=(40, 48, 36)):
    return torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed))


def test_openvino_is_a_candidate_on_cpu_and_bfloat16_only_when_named():
    assert candidate_runtimes(torch.device("cpu")) == ["torch", "torch_channels_last", "openvino"]


@pytest.mark.parametrize("name", [r for r in RUNTIMES if r not in ("auto", "openvino_bf16")])
def test_every_runtime_predicts_what_pytorch_does(network, name):
    x = _volume()
    with torch.no_grad():
        expected = SlidingWindowInferer(ROI, 1, 0.5)(x, network)
        got = MeasuredSlidingWindowInferer(ROI, 1, 0.5, runtime=name)(x, network)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() <= 1e-3 * expected.abs().max()
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.99  # random weights: near-ties flip


BFLOAT16_CHECK = """
import torch
from monai.inferers import SlidingWindowInferer
from networks import C2FNASNet, default_architecture
from scripts.inference_runtime import MeasuredSlidingWindowInferer
torch.manual_seed(0)
network = C2FNASNet(default_architecture(), 1, 3, 8).eval()
x = torch.rand(1, 1, 40, 48, 36, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    expected = SlidingWindowInferer((32, 32, 32), 1, 0.5)(x, network)
    got = MeasuredSlidingWindowInferer((32, 32, 32), 1, 0.5, runtime="openvino_bf16")(x, network)
print(tuple(got.shape) == tuple(expected.shape), got.dtype, float((got - expected).abs().mean() / expected.abs().max()),
      float((got.argmax(1) == expected.argmax(1)).float().mean()))
"""


def test_openvino_bf16_when_named_predicts_close_to_pytorch():
    """In its own process: a process that ran OpenVINO in bfloat16 and later forked died in this suite on a Zen 5."""
    done = launch(["-c", BFLOAT16_CHECK], BUNDLE, timeout=300)  # from the bundle folder: its package scripts
    assert done.returncode == 0, done.stderr[-2000:]
    same_shape, dtype, error, agreement = done.stdout.split()[-4:]
    assert same_shape == "True" and dtype == "torch.float32"
    assert float(error) <= 0.01 and float(agreement) > 0.95  # bfloat16: close on average, random weights' near-ties


def test_runtimes_are_checked_on_the_central_window_of_the_volume():
    inferer = MeasuredSlidingWindowInferer((4, 4, 4), sw_batch_size=2)
    volume = torch.arange(6 * 8 * 2, dtype=torch.float32).reshape(1, 1, 6, 8, 2)
    windows = inferer._central_windows(volume)
    assert windows.shape == (2, 1, 4, 4, 4)  # the short side zero-padded, as MONAI pads
    assert torch.equal(windows[0, :, :, :, :2], volume[0, :, 1:5, 2:6, :]) and torch.equal(windows[0], windows[1])
    assert windows[..., 2:].abs().sum() == 0


def test_auto_measures_every_candidate_and_keeps_the_fastest(network):
    inferer = MeasuredSlidingWindowInferer(ROI, 2, 0.5, runtime="auto", min_windows=0)
    x = _volume()
    with torch.no_grad():
        got = inferer(x, network)
        expected = SlidingWindowInferer(ROI, 2, 0.5)(x, network)
    assert set(inferer.timings) == set(candidate_runtimes(torch.device("cpu")))
    assert inferer.chosen == min(inferer.timings, key=inferer.timings.get)
    assert (got - expected).abs().max() <= 1e-3 * expected.abs().max()
    chosen = inferer._runner
    with torch.no_grad():
        inferer(_volume(1), network)  # same weights: no second measurement
    assert inferer._runner is chosen


def test_auto_keeps_pytorch_until_the_work_pays_for_the_choice(network):
    inferer = MeasuredSlidingWindowInferer(ROI, 1, 0.5, runtime="auto", min_windows=40)
    x = _volume(shape=(48, 48, 48))  # 2 x 2 x 2 windows at overlap 0.5
    assert inferer.count_windows(x.shape) == 8
    with torch.no_grad():
        for volume in range(4):
            inferer(x, network)
            assert inferer.timings == {} and inferer.chosen == "torch", volume
        inferer(x, network)  # 40 windows due: measured now
    assert set(inferer.timings) == set(candidate_runtimes(torch.device("cpu")))


def test_changed_weights_are_measured_again(network):
    net = C2FNASNet(default_architecture(), 1, 3, 8).eval()
    inferer = MeasuredSlidingWindowInferer(ROI, 1, 0.5, runtime="openvino")
    x = _volume()
    with torch.no_grad():
        before = inferer(x, net)
        first = inferer._runner
        net.load_state_dict({k: v * 0.5 for k, v in net.state_dict().items()})
        after = inferer(x, net)
        expected = SlidingWindowInferer(ROI, 1, 0.5)(x, net)
    assert inferer._runner is not first
    assert (after - expected).abs().max() <= 1e-3 * expected.abs().max()
    assert (after - before).abs().max() > 1e-2


class _Noisy(nn.Module):
    """A network whose output changes from call to call (dropout left on): no runtime can reproduce it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.conv(x))


def test_a_runtime_that_differs_from_pytorch_is_not_chosen(caplog):
    net = _Noisy().train()
    inferer = MeasuredSlidingWindowInferer(ROI, 1, 0.5, runtime="auto", min_windows=0)
    with torch.no_grad(), caplog.at_level("WARNING", logger="c2fnas.inference"):
        inferer(_volume(), net)
    assert inferer.chosen == "torch" and set(inferer.timings) == {"torch"}
    assert "torch_channels_last skipped: its output differs from PyTorch's" in caplog.text


def test_unknown_runtime_is_refused(network):
    with pytest.raises(ValueError, match="inference_runtime must be one of auto, torch"):
        MeasuredSlidingWindowInferer(ROI, runtime="onnx")
    with pytest.raises(ValueError, match="inference_runtime must be one of"):
        build_runtime("tensorrt", network, torch.zeros(1, 1, *ROI))


def test_bundle_inference_chooses_by_measurement_and_predicts_the_same(dataset, tmp_path):
    """inference.json with the shipped weights: auto (measuring from the first window) against PyTorch as named."""
    segmentations = {}
    for runtime, extra in (("auto", {"measured_inferer#min_windows": 0}), ("torch", {})):
        out = tmp_path / runtime
        overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "inference_runtime": runtime, **extra}
        log = bundle_run(["inference.json"], cwd=BUNDLE, overrides=overrides, profile=None)
        if runtime == "auto":
            (line,) = [line for line in log.splitlines() if "inference runtime:" in line]
            assert all(f"{name} " in line for name in ("torch", "torch_channels_last", "openvino")), line
        segmentations[runtime] = {p.name: nib.load(str(p)).get_fdata() for p in (out / "inference").glob("*.nii.gz")}
    assert segmentations["auto"].keys() == segmentations["torch"].keys() and segmentations["torch"]
    for name, seg in segmentations["torch"].items():
        assert np.mean(segmentations["auto"][name] != seg) < 1e-3, name
    assert json.loads((BUNDLE / "configs" / "metadata.json").read_text())["required_packages_version"]["openvino"]
