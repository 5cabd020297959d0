"""The hash grid's torch twin against a literal per-point reference, and against tiny-cuda-nn."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sparsefusion_ns.field.hash_grid import HashGridEncoding, HashGridLayout, hash_grid_encode_torch

SMALL = HashGridLayout(num_levels=4, features_per_level=2, log2_hashmap_size=9, base_resolution=4, max_resolution=64)
LAYOUTS = {
    "dense and hashed levels": SMALL,
    "one level": HashGridLayout(
        num_levels=1, features_per_level=2, log2_hashmap_size=9, base_resolution=6, max_resolution=6
    ),
    "1 feature, hashed": HashGridLayout(
        num_levels=3, features_per_level=1, log2_hashmap_size=6, base_resolution=8, max_resolution=32
    ),
    "4 features, dense": HashGridLayout(
        num_levels=3, features_per_level=4, log2_hashmap_size=16, base_resolution=4, max_resolution=16
    ),
    "coarsening: hashed, then dense": HashGridLayout(
        num_levels=3, features_per_level=2, log2_hashmap_size=12, base_resolution=32, max_resolution=8
    ),
}
"""Layouts covering both index rules (in either order), a single level and several feature widths."""


def reference_encode(position: torch.Tensor, table: torch.Tensor, layout: HashGridLayout) -> torch.Tensor:
    """One point, one level at a time, written as tiny-cuda-nn's grid.h describes it."""
    primes = (1, 2654435761, 805459861)
    features = table.view(-1, layout.features_per_level)
    out, offset = [], 0
    for level in range(layout.num_levels):
        scale = 2.0 ** (level * math.log2(layout.per_level_scale)) * layout.base_resolution - 1.0
        resolution = math.ceil(scale) + 1
        size = ((min(resolution**3, 2**layout.log2_hashmap_size) + 7) // 8) * 8
        pos = [float(p) * scale + 0.5 for p in position]
        cell = [math.floor(p) for p in pos]
        frac = [p - c for p, c in zip(pos, cell)]
        value = torch.zeros(layout.features_per_level, dtype=torch.float64)
        for corner in itertools.product((0, 1), repeat=3):
            grid = [c + o for c, o in zip(cell, corner)]
            weight = 1.0
            for axis in range(3):
                weight *= frac[axis] if corner[axis] else 1.0 - frac[axis]
            if resolution**3 <= 2**layout.log2_hashmap_size:
                index = grid[0] + grid[1] * resolution + grid[2] * resolution**2
            else:
                index = 0
                for axis in range(3):
                    index ^= (grid[axis] * primes[axis]) & 0xFFFFFFFF
            value += weight * features[offset + index % size].double()
        out.append(value)
        offset += size
    return torch.cat(out)


def test_paper_layout_matches_tiny_cuda_nn_sizes():
    layout = HashGridLayout()  # 16 levels, 2^16 entries, 16 → 8192
    resolutions = layout.level_resolutions()
    assert resolutions[0] == 16 and resolutions[-1] == 8192
    assert layout.level_sizes()[:3] == [4096, 15632, 50656]  # dense coarse levels 16³, 25³, 37³ rounded up to 8
    assert all(size == 2**16 for size in layout.level_sizes()[3:])
    assert layout.output_dim == 32
    assert math.isclose(layout.per_level_scale, 1.5157165665103982, rel_tol=1e-12)


@pytest.mark.parametrize("num_points", [1, 2, 40])
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_torch_twin_matches_reference_lookup(layout, num_points):
    torch.manual_seed(0)
    table = torch.randn(layout.num_entries * layout.features_per_level)
    positions = torch.rand(num_points, 3)
    positions[0] = torch.tensor([0.0, 0.0, 0.0])
    positions[-1] = torch.tensor([1.0, 1.0, 1.0]) if num_points > 1 else positions[-1]
    ours = hash_grid_encode_torch(positions, table, layout)
    assert ours.shape == (num_points, layout.output_dim)
    expected = torch.stack([reference_encode(p, table, layout) for p in positions]).float()
    # float32 trilinear weights vs float64 reference: ~1e-6 relative.
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_custom_backward_matches_autograd_gather():
    torch.manual_seed(1)
    table = torch.randn(SMALL.num_entries * SMALL.features_per_level, dtype=torch.float64, requires_grad=True)
    positions = torch.rand(64, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, p: hash_grid_encode_torch(p, t, SMALL), (table, positions), eps=1e-6, atol=1e-4
    )


def test_encoding_module_trains_and_is_deterministic():
    encoding = HashGridEncoding(SMALL)
    assert encoding.table.abs().max() <= 1e-4  # tiny-cuda-nn's uniform(−1e-4, 1e-4) initialisation
    positions = torch.rand(128, 3)
    target = torch.rand(128, SMALL.output_dim)
    optimiser = torch.optim.Adam(encoding.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = ((encoding(positions) - target) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    torch.testing.assert_close(encoding(positions), encoding(positions), rtol=0, atol=0)


def test_cpu_never_uses_tinycudann():
    encoding = HashGridEncoding(SMALL)
    assert not encoding.uses_tcnn(torch.rand(4, 3))


def _tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return torch.cuda.is_available()


@pytest.mark.cuda
@pytest.mark.skipif(not _tcnn_available(), reason="needs CUDA and tinycudann (tiny-cuda-nn parity)")
@pytest.mark.parametrize("num_points", [1, 333, 4096])
def test_tinycudann_parity_forward_and_gradients(num_points):
    layout = HashGridLayout(num_levels=8, log2_hashmap_size=14, base_resolution=16, max_resolution=1024)
    encoding = HashGridEncoding(layout).cuda()
    with torch.no_grad():
        encoding.table.normal_()
    positions = torch.rand(num_points, 3, device="cuda")
    out_tcnn = encoding(positions)
    grad_tcnn = torch.autograd.grad(out_tcnn.square().sum(), encoding.table)[0]
    encoding.implementation = "torch"
    out_torch = encoding(positions)
    grad_torch = torch.autograd.grad(out_torch.square().sum(), encoding.table)[0]
    # tiny-cuda-nn computes the encoding in half precision by default on recent GPUs: ~1e-3 relative.
    torch.testing.assert_close(out_tcnn.float(), out_torch, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(grad_tcnn.float(), grad_torch, atol=2e-3, rtol=2e-3)
