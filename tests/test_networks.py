"""C2FNASNet: ops, arbitrary topologies, gradients, TorchScript, memory format and complexity figures."""

import json
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

from benchmarks.performance import _plain_upsampling  # the benchmark's swap to nn.Upsample, one definition
from networks import OPS, C2FNASNet, default_architecture, enumerate_topologies
from networks.architecture import Architecture
from networks.c2fnas import LayoutKeepingInstanceNorm3d, TrilinearUpsample2x, make_op, make_transition
from networks.complexity import complexity_report, count_macs, count_parameters, window_macs

KERNELS = {"2D": [(3, 3, 1)], "3D": [(3, 3, 3)], "P3D": [(3, 3, 1), (1, 1, 3)]}


def random_architectures(n, seed=0, space=None):
    rng = random.Random(seed)
    space = space or enumerate_topologies(12, min_depth=1)
    return [Architecture(rng.choice(space), tuple(rng.choice(OPS) for _ in range(12))) for _ in range(n)]


def expected_parameters(levels, ops, in_channels, out_channels, f):
    """The design's rules, written out independently: conv weights + 2 per IN channel (affine) + head bias."""
    c = lambda level: f * 2**level  # noqa: E731
    total = 27 * in_channels * f + 2 * f + 27 * f * 2 * f + 2 * 2 * f  # stem
    path = [1, *levels]
    for i in range(1, len(path)):
        ch, step = c(path[i]), path[i] - path[i - 1]
        if step > 0:
            total += 27 * (ch // 2) * ch + 2 * ch
        elif step < 0:
            total += 2 * ch * ch + 2 * ch
        has_second = step < 0 or (i >= 2 and path[i - 2] == path[i])
        total += (3 if has_second else 2) * ch * ch  # pre, post (+ pre2)
        total += {"2D": 9, "3D": 27, "P3D": 12}[ops[i - 1]] * ch * ch + 2 * ch
    c1 = c(1)
    total += 27 * (2 * c1 if path[-2] == 1 else c1) * c1 + 2 * c1  # head fuse
    total += 27 * c1 * f + 2 * f + f * out_channels + out_channels  # head decode
    return total


@pytest.mark.parametrize("op", OPS)
def test_op_kernels_and_output_shape(op):
    module = make_op(op, 6)
    convs = [m for m in module if isinstance(m, nn.Conv3d)]
    assert [tuple(m.kernel_size) for m in convs] == KERNELS[op]
    assert all(tuple(m.weight.shape[:2]) == (6, 6) and m.bias is None for m in convs)
    assert isinstance(module[0], nn.ReLU) and isinstance(module[-1], nn.InstanceNorm3d) and module[-1].affine
    x = torch.randn(2, 6, 8, 12, 4)
    assert module(x).shape == x.shape


def test_transition_shapes():
    down, up = make_transition("down", 8), make_transition("up", 8)
    assert tuple(down[1].weight.shape) == (8, 4, 3, 3, 3) and down[1].stride == (2, 2, 2)
    assert tuple(up[2].weight.shape) == (8, 16, 1, 1, 1)
    assert down(torch.randn(1, 4, 8, 8, 8)).shape == (1, 8, 4, 4, 4)
    assert up(torch.randn(1, 16, 4, 4, 4)).shape == (1, 8, 8, 8, 8)
    assert isinstance(make_transition("same", 8), nn.Identity)


@pytest.mark.parametrize("spatial", [(32, 32, 32), (64, 32, 32), (32, 64, 96)])
def test_random_architectures_build_and_run(spatial):
    torch.manual_seed(0)
    for arch in random_architectures(4, seed=sum(spatial)):
        net = C2FNASNet(arch, in_channels=2, out_channels=3, base_channels=4)
        y = net(torch.randn(1, 2, *spatial))
        assert y.shape == (1, 3, *spatial) and torch.isfinite(y).all()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    arch = default_architecture()  # uses all three ops, up/down/same transitions and both kinds of second input
    for a in [arch, *random_architectures(2, seed=5)]:
        net = C2FNASNet(a, 1, 3, 4)
        net(torch.randn(2, 1, 32, 32, 32)).square().mean().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{a}: no gradient for {missing}"


def test_torchscript_output_equals_eager():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32, 32)
    for arch in [default_architecture(), *random_architectures(2, seed=1)]:
        net = C2FNASNet(arch, 1, 3, 4).eval()
        scripted = torch.jit.script(net)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x))


def test_channels_last_3d_input_and_weights():
    torch.manual_seed(0)
    net = C2FNASNet(default_architecture(), 1, 3, 4).eval()
    x = torch.randn(1, 1, 32, 64, 32)
    with torch.no_grad():
        reference = net(x)
        net = net.to(memory_format=torch.channels_last_3d)
        out = net(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 6, 7, 8), (1, 3, 4, 1, 4)])
def test_layout_keeping_norm_is_instance_norm_in_the_inputs_layout(shape):
    """Values and gradients exactly PyTorch's instance norm's; the output in the input's memory format; the same
    state dict (the shipped weights load); unbatched input and TorchScript as PyTorch's."""
    torch.manual_seed(0)
    norm = LayoutKeepingInstanceNorm3d(shape[1], affine=True)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.uniform_(norm.bias, -0.5, 0.5)
    reference = nn.InstanceNorm3d(shape[1], affine=True)
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(shape)
    grad = torch.randn(shape)
    for memory_format in (torch.contiguous_format, torch.channels_last_3d):
        results = []
        for module in (norm, reference):
            module.zero_grad()
            given = x.clone(memory_format=memory_format).requires_grad_(True)
            out = module(given)
            out.backward(grad)
            results.append((out, given.grad, module.weight.grad, module.bias.grad))
        for got, expected in zip(*results):
            assert torch.equal(got, expected)
        assert results[0][0].is_contiguous(memory_format=memory_format)
    assert torch.equal(norm(x[0]), reference(x[0]))  # one unbatched volume
    assert torch.equal(torch.jit.script(norm)(x), reference(x))


def test_a_channels_last_network_stays_channels_last_throughout():
    """In ``channels_last_3d`` (as ``cpu_bf16`` trains, under bfloat16 autocast or not) every module hands the next a
    channels-last tensor, so no operation converts layouts or mixes them (a mixed ReLU backward ran 6x slower)."""
    torch.manual_seed(0)
    for arch in [default_architecture(), *random_architectures(2, seed=3)]:
        net = C2FNASNet(arch, 1, 3, 4).to(memory_format=torch.channels_last_3d)
        outputs = []
        hooks = [m.register_forward_hook(lambda m, i, o: outputs.append((m, o))) for m in net.modules()]
        x = torch.randn(2, 1, 32, 32, 32).contiguous(memory_format=torch.channels_last_3d)
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x).float().sum().backward()
        for hook in hooks:
            hook.remove()
        found = [(type(m).__name__, tuple(o.shape)) for m, o in outputs if isinstance(o, torch.Tensor) and o.dim() == 5]
        assert len(found) > 20
        kept = [
            o.is_contiguous(memory_format=torch.channels_last_3d)
            for m, o in outputs
            if isinstance(o, torch.Tensor) and o.dim() == 5
        ]
        assert all(kept), [f for f, k in zip(found, kept) if not k][:5]


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (1, 4, 2, 9, 3), (1, 2, 1, 4, 4)])
def test_fast_upsampling_equals_trilinear_interpolation(shape):
    """The inference path (no autograd; contiguous and channels_last_3d) and the training path (autograd) both equal
    ``F.interpolate(scale_factor=2, mode="trilinear", align_corners=False)``; gradients flow through the latter."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    reference = nn.functional.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
    up = TrilinearUpsample2x()
    with torch.inference_mode():
        torch.testing.assert_close(up(x), reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(up(x.contiguous(memory_format=torch.channels_last_3d)), reference, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(up)(x), reference, rtol=0, atol=1e-6)
    leaf = x.clone().requires_grad_()
    out = up(leaf)
    torch.testing.assert_close(out, reference)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, torch.full_like(x, 8.0))  # every input voxel's weights sum to 2 per axis


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (1, 4, 2, 9, 3)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_upsampling_gradient_equals_trilinear_interpolation(shape, memory_format):
    """With autograd the upsampling's backward (the separable passes' adjoint) gives PyTorch's gradient for any
    upstream gradient, keeps the input's memory format, and passes ``gradcheck`` in float64."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=memory_format)
    upstream = torch.randn([s * (2 if i > 1 else 1) for i, s in enumerate(shape)], dtype=torch.float64)
    leaf, reference_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = TrilinearUpsample2x()(leaf)
    reference = nn.functional.interpolate(reference_leaf, scale_factor=2.0, mode="trilinear", align_corners=False)
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
    out.backward(upstream)
    reference.backward(upstream)
    torch.testing.assert_close(leaf.grad, reference_leaf.grad, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(TrilinearUpsample2x(), (x.clone().requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_upsampling_is_pytorchs_kernel_and_contiguous_the_separable_passes(dtype, monkeypatch):
    """Where each layout goes: ``channels_last_3d`` to ``F.interpolate`` (its channels-last kernel is the faster
    there: exactly its values and gradients), contiguous to the separable passes (``_separable``, counted)."""
    import networks.c2fnas as c2fnas

    calls = []
    separable = c2fnas._separable
    monkeypatch.setattr(c2fnas, "_separable", lambda x, adjoint: calls.append(adjoint) or separable(x, adjoint))
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 4, 7).to(dtype)
    upstream = torch.randn(2, 6, 10, 8, 14).to(dtype)
    for memory_format, expected_calls in ((torch.channels_last_3d, []), (torch.contiguous_format, [False, True])):
        calls.clear()
        leaf, reference_leaf = (x.clone(memory_format=memory_format).requires_grad_() for _ in range(2))
        out = TrilinearUpsample2x()(leaf)
        reference = nn.functional.interpolate(reference_leaf, scale_factor=2.0, mode="trilinear", align_corners=False)
        out.backward(upstream.contiguous(memory_format=memory_format))
        reference.backward(upstream.contiguous(memory_format=memory_format))
        assert calls == expected_calls and out.is_contiguous(memory_format=memory_format)
        if memory_format == torch.channels_last_3d:
            assert torch.equal(out, reference) and torch.equal(leaf.grad, reference_leaf.grad)


@pytest.mark.parametrize("grad", [True, False])
def test_upsampling_in_bfloat16_rounds_once_as_pytorch_does(grad):
    """In bfloat16 (CPU autocast leaves interpolation in the input's dtype) the upsampling computes in float32 and
    rounds once, as PyTorch's kernel does: the same values, forward and backward, to within one bfloat16 rounding."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 5, 7).to(torch.bfloat16)
    leaf, reference_leaf = x.clone().requires_grad_(grad), x.clone().requires_grad_(grad)
    upstream = torch.randn(1, 4, 12, 10, 14).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
        out = TrilinearUpsample2x()(leaf)
        reference = nn.functional.interpolate(reference_leaf, scale_factor=2.0, mode="trilinear", align_corners=False)
    assert out.dtype == reference.dtype == torch.bfloat16
    exact = nn.functional.interpolate(x.double(), scale_factor=2.0, mode="trilinear", align_corners=False)
    torch.testing.assert_close(out.double(), exact.to(torch.bfloat16).double(), rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(out, reference, rtol=2**-7, atol=1e-6)
    if grad:
        out.backward(upstream)
        reference.backward(upstream)
        assert leaf.grad.dtype == torch.bfloat16
        torch.testing.assert_close(leaf.grad, reference_leaf.grad, rtol=2**-7, atol=1e-6)


def test_inference_path_equals_training_path_of_the_network():
    torch.manual_seed(0)
    net = C2FNASNet(default_architecture(), 1, 3, 4).eval()
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        fast = net(x)
    slow = net(x.requires_grad_())  # autograd on: the separable passes with their adjoint as backward
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


def test_network_trains_as_with_pytorch_upsampling():
    """Three SGD steps of a network that upsamples at the transitions and the head leave the same weights as the same
    network with ``nn.Upsample`` in place of ``TrilinearUpsample2x``: the backward is PyTorch's gradient. In float64:
    in float32 the two roundings drift apart within a step (0.2 % on the worst weight here) and keep diverging, as
    any two orders of summation do in training."""
    arch = Architecture((1, 2, 3, 2, 1, 1, 1, 1), ("3D", "P3D", "2D", "3D", "2D", "3D", "P3D", "2D"))
    nets = []
    for plain in (False, True):
        torch.manual_seed(0)
        net = C2FNASNet(arch, 1, 3, 4).double()
        nets.append(_plain_upsampling(net) if plain else net)
    assert sum(isinstance(m, nn.Upsample) for m in nets[1].modules()) >= 3
    torch.manual_seed(1)
    x, y = torch.randn(2, 1, 32, 32, 32, dtype=torch.float64), torch.randint(0, 3, (2, 32, 32, 32))
    for net in nets:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    for (name, mine), (_, pytorch) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
        torch.testing.assert_close(mine, pytorch, rtol=1e-10, atol=1e-12, msg=name)


def test_input_size_must_be_divisible():
    net = C2FNASNet(default_architecture(), 1, 3, 4)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, 32, 40, 32))


def test_network_from_file_and_dict(tmp_path):
    from networks import DEFAULT_ARCHITECTURE_FILE

    by_path = C2FNASNet(str(DEFAULT_ARCHITECTURE_FILE), 1, 3, 4)
    by_dict = C2FNASNet(default_architecture().to_dict(), 1, 3, 4)
    assert by_path.state_dict().keys() == by_dict.state_dict().keys()
    with pytest.raises(ValueError, match="has no ops"):
        C2FNASNet({"format": "c2fnas-arch/1", "levels": [1, 2, 1]})


def test_parameter_count_follows_design_rules():
    with torch.device("meta"):
        for arch, f in [(default_architecture(), 32), *[(a, 8) for a in random_architectures(5, seed=2)]]:
            net = C2FNASNet(arch, 1, 3, f)
            assert count_parameters(net) == expected_parameters(arch.levels, arch.ops, 1, 3, f), str(arch)


def test_default_architecture_complexity_at_f32():
    report = complexity_report(default_architecture(), base_channels=32, roi_size=96)
    assert report["parameters"] == expected_parameters(
        default_architecture().levels, default_architecture().ops, 1, 3, 32
    )
    assert 15.3e6 < report["parameters"] < 15.5e6  # the design's 15.4 M
    assert 157e9 < report["macs"] < 159e9  # the design's 158 GMAC


def test_macs_match_an_independent_count():
    """count_macs (meta device, flop counter) equals MACs summed by forward hooks on real convolutions."""
    torch.manual_seed(0)
    for arch in [default_architecture(), *random_architectures(2, seed=3)]:
        net = C2FNASNet(arch, 1, 3, 4)
        total = []

        def hook(module, inputs, output):
            kernel = module.weight.shape[1] * module.weight.shape[2:].numel()
            total.append(output.numel() * kernel)

        handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv3d)]
        net(torch.randn(1, 1, 32, 64, 32))
        for h in handles:
            h.remove()
        assert count_macs(net, (1, 1, 32, 64, 32)) == sum(total)
        assert next(net.parameters()).device.type == "cpu"  # counting did not move the network


def test_window_macs_from_the_architecture_equal_the_counted_ones():
    """window_macs (a sum over cells, no network) equals count_macs for random architectures, widths, channels and
    anisotropic windows, so a search can hold thousands of candidates to a budget exactly."""
    cases = [(1, 3, 8, (32, 32, 32)), (2, 4, 16, (64, 48, 16)), (1, 2, 4, (96, 96, 96))]
    for i, (c_in, c_out, width, roi) in enumerate(cases):
        for arch in [default_architecture(), *random_architectures(4, seed=i)]:
            with torch.device("meta"):
                net = C2FNASNet(arch, c_in, c_out, width)
            assert window_macs(arch, c_in, c_out, width, roi) == count_macs(net, (1, c_in, *roi)), (str(arch), roi)


def test_cli_prints_parameter_count():
    out = subprocess.run(
        [sys.executable, "-m", "networks", "summary"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "parameters    15,400,771 (15.40 M)   [paper: 17.02 M, unverified]" in out
    assert "MACs          158.3 G per 96^3 window" in out


def test_atomic_write_replaces_and_clears_what_a_killed_writer_left(tmp_path):
    from networks.fileio import atomic_write_json

    target = tmp_path / "result.json"
    stale = tmp_path / ".result.json.x1y2.tmp"  # as left by a writer killed between write and rename
    stale.write_text("{half")
    other = tmp_path / ".other.json.x1y2.tmp"
    other.write_text("{")
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and oct(target.stat().st_mode & 0o777) == "0o644"
    assert not stale.exists() and other.exists()  # only the target's own leftovers are removed
