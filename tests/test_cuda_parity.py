"""nerfacc on CUDA: occupancy-grid marching, and the model's packed compositing against its padded one.

Skipped without CUDA and nerfacc's CUDA extension (``benchmarks/gpu_check.sh`` runs them on a GPU
machine). The compositing of single rays is checked in test_volume_sampling.py; here the whole
model's packed branch (rgb, accumulation, depth, normals) is run on the very samples of its padded
branch, so any difference is the packed code's.
"""

from __future__ import annotations

import pytest
import torch

from sparsefusion_ns.model.volume_sampling import SampledRays, nerfacc_cuda_available
from tests.test_volume_sampling import ball_density, rays

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not nerfacc_cuda_available(), reason="needs CUDA and nerfacc's CUDA extension"),
]


def test_occupancy_grid_marching_finds_the_ball_and_skips_empty_rays():
    from sparsefusion_ns.model.volume_sampling import OccupancyGridSampling

    device = torch.device("cuda")
    aabb = torch.tensor([[-2.0] * 3, [2.0] * 3], device=device)
    sampling = OccupancyGridSampling(aabb, resolution=64, render_step_size=4 * 3**0.5 / 512, device=device)
    for step in range(300):  # nerfacc's warm-up visits every cell within its first 256 updates
        sampling.update(step, ball_density)
    bundle = rays(256, device=device)
    bundle.origins[128:, 0] += 1.5  # half the rays pass beside the ball
    sampled = sampling(bundle, ball_density, training=False)
    assert sampled.ray_indices is not None
    positions = sampled.ray_samples.frustums.get_positions()
    cell = 4.0 / 64
    margin = 2 * 3**0.5 * cell  # marching keeps the samples of occupied cells, which overhang the ball
    assert positions.norm(dim=-1).max() < 0.5 + margin
    hit = torch.zeros(256, dtype=torch.bool, device=device)
    hit[sampled.ray_indices] = True
    distance = torch.linalg.cross(bundle.origins, bundle.directions, dim=-1).norm(dim=-1)  # ray to centre
    assert hit[distance < 0.5 - margin].all() and not hit[distance > 0.5 + margin].any()


def test_model_packed_branch_matches_its_padded_branch_on_the_same_samples():
    from nerfstudio.data.scene_box import SceneBox

    from sparsefusion_ns.field.hash_grid import HashGridLayout
    from sparsefusion_ns.field.sparsefusion_field import SparseFusionFieldConfig
    from sparsefusion_ns.model.sparsefusion_model import SparseFusionModelConfig

    torch.manual_seed(0)
    box = SceneBox(aabb=torch.tensor([[-4.0] * 3, [4.0] * 3]))
    grid = HashGridLayout(num_levels=4, log2_hashmap_size=12, max_resolution=64)
    config = SparseFusionModelConfig(
        field=SparseFusionFieldConfig(grid=grid, hidden_dim=16, implementation="torch"),
        sampler="torch",
        predict_normals=True,
    )
    model = config.setup(scene_box=box, num_train_data=2).cuda().eval()
    with torch.no_grad():  # a denser field than the random init, so that the weights are not all ~0
        for parameter in model.field.encoding.parameters():
            parameter.mul_(100.0)
    bundle = rays(64, device="cuda")
    padded_sampled = model.sample(bundle)
    samples = padded_sampled.ray_samples
    num_rays, num_samples = samples.shape[:2]
    packed_sampled = SampledRays(
        samples.flatten(), torch.arange(num_rays, device="cuda").repeat_interleave(num_samples)
    )
    model.sample = lambda _: padded_sampled  # type: ignore[method-assign]
    padded = model.get_outputs(bundle)
    model.sample = lambda _: packed_sampled  # type: ignore[method-assign]
    packed = model.get_outputs(bundle)
    for name in ("rgb", "accumulation", "depth", "normals"):
        # 1e-4: float32 sums over ≤ 64 samples in a different order (nerfacc's segmented scans)
        torch.testing.assert_close(packed[name], padded[name], atol=1e-4, rtol=1e-4, msg=name)
