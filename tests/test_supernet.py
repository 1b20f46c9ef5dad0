"""The grid supernet: coverage of the space, single-path forward, and equality with the derived network."""

import random

import pytest
import torch

from networks import OPS, Architecture, ArchitectureError, C2FNASNet, C2FNASSupernet, enumerate_topologies
from networks.supernet import node_name

SPACE = enumerate_topologies(12, min_depth=4)


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return C2FNASSupernet(SPACE, in_channels=1, out_channels=3, base_channels=4)


def sample(n, seed):
    rng = random.Random(seed)
    return [Architecture(rng.choice(SPACE), tuple(rng.choice(OPS) for _ in range(12))) for _ in range(n)]


def test_nodes_cover_exactly_the_space(supernet):
    used = {(i, level) for t in SPACE for i, level in enumerate(t, start=1)}
    assert set(supernet.nodes.keys()) == {node_name(i, level) for i, level in used}
    assert all(set(node.ops.keys()) == set(OPS) for node in supernet.nodes.values())
    assert set(supernet.head_fuse.keys()) == {"single", "pair"}


def test_derived_network_equals_supernet_path(supernet):
    supernet.eval()
    x = torch.randn(1, 1, 32, 32, 64)
    for arch in sample(5, seed=1):
        derived = supernet.derive(arch).eval()
        fresh = C2FNASNet(arch, 1, 3, 4)
        assert {k: v.shape for k, v in derived.state_dict().items()} == {
            k: v.shape for k, v in fresh.state_dict().items()
        }
        fresh.load_state_dict(derived.state_dict())  # strict: same keys as a network built from scratch
        with torch.no_grad():
            expected = supernet(x, arch)
            assert torch.equal(derived(x), expected)
            assert torch.equal(fresh.eval()(x), expected)


def test_derived_network_is_an_independent_copy(supernet):
    arch = sample(1, seed=2)[0]
    derived = supernet.derive(arch)
    with torch.no_grad():
        for p in derived.parameters():
            p.add_(1.0)
    shared = supernet.path_network(arch)
    assert not torch.equal(next(derived.parameters()), next(shared.parameters()))


def test_single_path_gradients(supernet):
    supernet.train()
    supernet.zero_grad(set_to_none=True)
    arch = sample(1, seed=3)[0]
    supernet(torch.randn(2, 1, 32, 32, 32), arch).mean().backward()
    active = {id(p) for p in supernet.path_network(arch).parameters()}
    for name, p in supernet.named_parameters():
        if id(p) in active:
            assert p.grad is not None, f"active parameter {name} got no gradient"
        else:
            assert p.grad is None, f"inactive parameter {name} got a gradient"
    path_count = sum(p.numel() for p in supernet.path_network(arch).parameters())
    assert path_count == sum(p.numel() for p in C2FNASNet(arch, 1, 3, 4).parameters())


def test_architecture_outside_the_space_is_rejected(supernet):
    shallow = Architecture((1, 2, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1), ("3D",) * 12)
    with pytest.raises(ArchitectureError, match="not in this supernet's search space"):
        supernet(torch.randn(1, 1, 32, 32, 32), shallow)
    restricted = C2FNASSupernet(SPACE[:3], base_channels=2, ops=("2D", "3D"))
    with pytest.raises(ArchitectureError, match=r"ops \['P3D'\] are not candidates"):
        restricted.path_network(Architecture(SPACE[0], ("P3D",) * 12))
