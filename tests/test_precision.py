"""bfloat16 training on the CPU (networks.precision): off is the plain forward pass bit for bit; on, the forward pass
runs in bfloat16 and channels_last_3d while the loss, gradients and weights (and so the checkpoint) stay float32."""

import torch

from networks import C2FNASNet, default_architecture
from networks.precision import BFloat16Inferer, CPUBFloat16, cpu_has_native_bf16, default_cpu_bf16


def _network(seed=0):
    torch.manual_seed(seed)
    return C2FNASNet(default_architecture(), 1, 3, 4)


def test_off_is_the_plain_forward_pass():
    network, image = _network(), torch.randn(2, 1, 32, 32, 32)
    expected = network(image)
    assert torch.equal(BFloat16Inferer(False)(image, network), expected)
    assert all(p.is_contiguous() for p in network.parameters())


def test_on_runs_bfloat16_and_keeps_float32_weights_and_gradients(tmp_path):
    network, image = _network(), torch.randn(2, 1, 32, 32, 32)
    reference = network(image).detach()
    precision = CPUBFloat16(True)
    output = precision.forward(network, image)
    assert output.dtype == torch.float32 and output.shape == reference.shape
    # bfloat16 keeps 8 bits of mantissa: near float32 (an untrained network: 6 % mean error), not equal to it
    error = (output.detach() - reference).abs().mean()
    assert 0 < error < 0.2 * reference.abs().mean()
    assert (output.argmax(1) == reference.argmax(1)).float().mean() > 0.8
    convs = [p for p in network.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    output.square().mean().backward()
    assert all(p.dtype == torch.float32 for p in network.parameters())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in network.parameters() if p.requires_grad)
    # the weights file is the float32 network's: it loads into a plain network, holds the same values and gives the
    # same outputs (compared in one memory format: channels_last_3d convolutions round differently on some CPUs)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    plain = _network(seed=1)
    plain.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    trained = network.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in plain.state_dict().items())
    network.to(memory_format=torch.contiguous_format)
    assert torch.allclose(plain(image), network(image), atol=1e-6)


def test_cuda_tensors_are_left_to_amp():
    precision = CPUBFloat16(True)
    assert precision.applies(torch.zeros(1)) and not CPUBFloat16(False).applies(torch.zeros(1))
    assert not precision.applies(torch.zeros(1, device="meta"))


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not cpu_has_native_bf16(cpuinfo)
    assert not cpu_has_native_bf16(tmp_path / "missing")
    assert default_cpu_bf16("cpu") == cpu_has_native_bf16() and not default_cpu_bf16("meta")


def test_supernet_steps_train_in_bfloat16_with_float32_weights():
    """The search's supernet step (search.engine) with ``cpu_bf16``: finite losses, weights that move and stay
    float32, convolutions in channels_last_3d."""
    from monai.losses import DiceCELoss

    from networks import C2FNASSupernet, enumerate_topologies
    from networks.architecture import Architecture
    from search.engine import cosine_schedule, create_supernet_trainer

    torch.manual_seed(0)
    space = enumerate_topologies(6, min_depth=2)[:4]
    supernet = C2FNASSupernet(space, in_channels=1, out_channels=3, base_channels=4)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    engine = create_supernet_trainer(
        supernet, optimizer, cosine_schedule(optimizer, 3), loss,
        lambda i: Architecture(space[i % len(space)], ("3D",) * 6), torch.device("cpu"), cpu_bf16=True,
    )  # fmt: skip
    batch = {"image": torch.randn(2, 1, 32, 32, 32), "label": torch.randint(0, 3, (2, 1, 32, 32, 32))}
    engine.run([batch] * 3, max_epochs=1)
    assert torch.isfinite(torch.tensor(engine.state.output["loss"]))
    after = supernet.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())
    assert any(not torch.equal(before[k], v) for k, v in after.items())
    convs = [p for p in supernet.parameters() if p.dim() == 5]
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)


def test_a_convolution_whose_input_is_smaller_than_its_kernel_runs_in_float32():
    """C2FNAS-Panc at F = 4 on a 32^3 patch reaches 2^3 maps at level 4, under its 3x3 kernels: those convolutions
    (and only those) compute in float32 under cpu_bf16, and autocast is back on for the layers after them."""
    network, image = _network(), torch.randn(2, 1, 32, 32, 32)
    seen = []

    def record(conv, args, output):  # runs inside the float32 region of a small convolution
        seen.append((tuple(args[0].shape[2:]), conv.kernel_size, output.dtype, torch.is_autocast_enabled("cpu")))

    for module in network.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.register_forward_hook(record)
    CPUBFloat16(True).forward(network, image).mean().backward()
    small = [s for s in seen if any(side < k for side, k in zip(s[0], s[1]))]
    large = [s for s in seen if s not in small]
    assert small and large
    assert all(dtype == torch.float32 and not autocast for _, _, dtype, autocast in small), small
    assert all(dtype == torch.bfloat16 and autocast for _, _, dtype, autocast in large), large
    assert not torch.is_autocast_enabled("cpu")
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
    seen.clear()
    network(image)  # outside cpu_bf16 the hooks change nothing
    assert seen and all(dtype == torch.float32 and not autocast for _, _, dtype, autocast in seen)


def test_the_network_gets_a_plain_tensor_not_a_metatensor():
    """A MetaTensor from the data loader reaches the network as a plain tensor of the same storage (its meta-data
    handling would run for every operation), in either precision; the output is the plain input's, bit for bit."""
    from monai.data import MetaTensor

    seen = []
    network = _network()
    network.register_forward_pre_hook(lambda module, args: seen.append((type(args[0]), args[0].data_ptr())))
    image = torch.randn(1, 1, 32, 32, 32)
    meta_image = MetaTensor(image.clone(), affine=torch.eye(4), meta={"filename_or_obj": "case.nii.gz"})
    for enabled in (False, True):
        precision, seen[:] = CPUBFloat16(enabled), []
        expected = precision.forward(network, image).detach()
        got = precision.forward(network, meta_image).detach()
        assert [kind for kind, _ in seen] == [torch.Tensor, torch.Tensor]
        assert torch.equal(got, expected) and type(got) is torch.Tensor
    precision, seen[:] = CPUBFloat16(False), []
    precision.forward(network, meta_image)
    assert seen[0][1] == meta_image.data_ptr()  # the same storage, no copy
