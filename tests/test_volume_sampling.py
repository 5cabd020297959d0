"""Ray sampling: the pure-torch importance sampler, and nerfacc's CUDA path against it."""

from __future__ import annotations

import pytest
import torch

from nerfstudio.cameras.rays import Frustums, RayBundle, RaySamples

from sparsefusion_ns.model.volume_sampling import ImportanceSampling, nerfacc_cuda_available


def rays(n: int, device="cpu") -> RayBundle:
    origins = torch.tensor([[0.0, 0.0, -3.0]], device=device).repeat(n, 1)
    directions = torch.nn.functional.normalize(
        torch.randn(n, 3, device=device) * 0.1 + torch.tensor([0, 0, 1.0], device=device), dim=-1
    )
    ones = torch.ones(n, 1, device=device)
    return RayBundle(origins=origins, directions=directions, pixel_area=ones, nears=ones * 1.0, fars=ones * 5.0)


def ball_density(positions: torch.Tensor) -> torch.Tensor:
    return 20.0 * (positions.norm(dim=-1, keepdim=True) < 0.5).float()


def test_importance_samples_concentrate_where_density_is():
    sampler = ImportanceSampling(num_uniform=32, num_importance=32)
    sampled = sampler(rays(64), ball_density)
    samples = sampled.ray_samples
    assert sampled.ray_indices is None
    assert samples.frustums.starts.shape == (64, 64, 1)
    starts = samples.frustums.starts[..., 0]
    assert (starts[:, 1:] >= starts[:, :-1]).all()  # sorted along the ray
    # Uniform samples put 25 % of the [1, 5] interval in the ball's [2.5, 3.5]; importance adds more.
    inside = ((starts > 2.5) & (starts < 3.5)).float().mean()
    assert inside > 0.4


def test_model_on_cpu_uses_the_torch_sampler_and_refuses_nerfacc():
    from nerfstudio.data.scene_box import SceneBox

    from sparsefusion_ns.field.hash_grid import HashGridLayout
    from sparsefusion_ns.field.sparsefusion_field import SparseFusionFieldConfig
    from sparsefusion_ns.model.sparsefusion_model import SparseFusionModelConfig

    box = SceneBox(aabb=torch.tensor([[-4.0] * 3, [4.0] * 3]))
    grid = HashGridLayout(num_levels=2, log2_hashmap_size=8, max_resolution=32)
    config = SparseFusionModelConfig(field=SparseFusionFieldConfig(grid=grid, hidden_dim=8))
    model = config.setup(scene_box=box, num_train_data=2)
    assert not model.uses_nerfacc()
    outputs = model(rays(8))
    assert outputs["rgb"].shape == (8, 3)
    model.config.sampler = "nerfacc"
    with pytest.raises(RuntimeError, match="needs the model on CUDA"):
        model(rays(8))


@pytest.mark.cuda
@pytest.mark.skipif(not nerfacc_cuda_available(), reason="needs CUDA and nerfacc's CUDA extension")
@pytest.mark.parametrize("n, s", [(128, 48), (1, 64), (1000, 8)])
def test_nerfacc_compositing_matches_torch_forward_and_gradients(n, s):
    import nerfacc

    torch.manual_seed(0)
    bundle = rays(n, "cuda")
    starts = torch.sort(torch.rand(n, s, 1, device="cuda") * 4 + 1, dim=1).values
    ends = torch.cat([starts[:, 1:], starts[:, -1:] + 0.05], dim=1)
    density = torch.rand(n, s, 1, device="cuda", requires_grad=True)
    samples = RaySamples(
        frustums=Frustums(
            origins=bundle.origins[:, None].expand(n, s, 3),
            directions=bundle.directions[:, None].expand(n, s, 3),
            starts=starts,
            ends=ends,
            pixel_area=torch.ones(n, s, 1, device="cuda"),
        )
    )
    weights_torch = samples.get_weights(density)[..., 0]
    ray_indices = torch.arange(n, device="cuda").repeat_interleave(s)
    weights_nerfacc = nerfacc.render_weight_from_density(
        t_starts=starts.reshape(-1),
        t_ends=ends.reshape(-1),
        sigmas=density.reshape(-1),
        packed_info=nerfacc.pack_info(ray_indices, n),
    )[0].view(n, s)
    # Both are float32 exclusive cumulative products; differences are round-off (~1e-6).
    torch.testing.assert_close(weights_nerfacc, weights_torch, atol=1e-5, rtol=1e-5)
    grad_torch = torch.autograd.grad(weights_torch.square().sum(), density)[0]
    grad_nerfacc = torch.autograd.grad(weights_nerfacc.square().sum(), density)[0]
    torch.testing.assert_close(grad_nerfacc, grad_torch, atol=1e-4, rtol=1e-4)
