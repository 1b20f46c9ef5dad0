"""Deep supervision (training only): the auxiliary outputs, and that the deployed network is untouched."""

import json

import pytest
import torch
from helpers import BUNDLE, bundle_run

from networks import C2FNASNet, DeepSupervision, decoder_taps, load_architecture

PANC = load_architecture(BUNDLE.parent / "networks" / "c2fnas_panc.json")


def test_taps_are_the_last_cell_of_each_level_below_level_1():
    assert decoder_taps([1, 1, 2, 2, 3, 4, 3, 3, 2, 1, 1, 1], 2) == [8, 7]  # C2FNAS-Panc: level 2, then 3
    assert decoder_taps([2, 2, 3, 3, 3, 2, 1, 1], 3) == [5, 4]  # no level 4 cell
    assert decoder_taps([1, 2, 3, 4, 3, 2, 1, 1], 1) == [5]
    assert decoder_taps([1, 1, 1], 2) == []


FLAT = {"format": "c2fnas-arch/1", "levels": [1, 1, 1], "ops": ["2D", "3D", "P3D"]}  # no level below 1: no head


@pytest.mark.parametrize("arch", [PANC, FLAT], ids=["panc", "flat"])
def test_training_outputs_and_eval_forward(arch):
    torch.manual_seed(0)
    net = C2FNASNet(arch, in_channels=2, out_channels=4, base_channels=4)
    ds = DeepSupervision(net)
    x = torch.randn(2, 2, 32, 32, 32)
    outputs = ds.train()(x)
    levels = [net.arch.levels[i] for i in ds.taps]
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 32, 32, 32)] + [(2, 4, *[32 // 2**lv] * 3) for lv in levels]
    assert sum(ds.loss_weights) == pytest.approx(1.0) and len(ds.loss_weights) == len(outputs)
    assert torch.equal(outputs[0], net(x)), "the first output is the network's own"
    with torch.no_grad():
        assert torch.equal(ds.eval()(x), net.eval()(x))
    assert not any(k.startswith("heads") for k in net.state_dict()), "the heads live beside the network"
    torch.stack([o.mean() for o in outputs]).sum().backward()
    assert all(p.grad is not None for p in ds.heads.parameters())


def test_bfloat16_training_pass_returns_every_output_in_float32():
    from networks.precision import CPUBFloat16

    torch.manual_seed(0)
    ds = DeepSupervision(C2FNASNet(PANC, 1, 3, 4)).train()
    outputs = CPUBFloat16(enabled=True).forward(ds, torch.randn(1, 1, 32, 32, 32))
    assert isinstance(outputs, list) and len(outputs) == 3 and all(o.dtype == torch.float32 for o in outputs)


def test_wraps_only_a_c2fnas_network():
    with pytest.raises(TypeError, match="deep_supervision: expected a C2FNASNet"):
        DeepSupervision(torch.nn.Conv3d(1, 2, 1))


def test_deep_supervised_training_saves_the_plain_network(dataset, tmp_path):
    """train.json with deep_supervision: the weights file is the plain network's (strict load into C2FNASNet), the
    training state carries the heads, and evaluate.json's score of the weights file is the one validation kept."""
    out = tmp_path / "outputs"
    overrides = {"dataset_dir": str(dataset), "output_dir": str(out), "max_epochs": 2, "val_interval": 1}
    overrides.update({"deep_supervision": True, "inference_runtime": "torch"})
    log = bundle_run(["train.json"], tmp_path, overrides)
    assert "Epoch[2] Complete" in log
    state = torch.load(out / "models" / "training_state.pt", weights_only=True)
    saved = torch.load(out / "models" / "model.pt", weights_only=True)
    assert state["settings"]["deep_supervision"] is True
    assert saved.keys() == state["network"].keys() and state["deep_supervision_heads"]
    net = C2FNASNet(BUNDLE / "models" / "architecture.json", 1, 3, 4)  # the tiny profile's width
    net.load_state_dict(saved, strict=True)
    # the evaluation (layered on train.json, as the chain runs it) scores the weights file
    bundle_run(["train.json", "evaluate.json"], tmp_path, {**overrides, "ckpt_file": str(out / "models" / "model.pt")})
    report = json.loads((out / "eval" / "dice_per_class.json").read_text())
    assert report["mean_dice"] == pytest.approx(state["best_model"]["_saved"][0][0], abs=1e-6)
