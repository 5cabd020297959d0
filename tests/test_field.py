"""The SparseFusion field: the density blob, the box, albedo colours and normals."""

from __future__ import annotations

import pytest
import torch

from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames

from sparsefusion_ns.field.hash_grid import HashGridLayout
from sparsefusion_ns.field.sparsefusion_field import SparseFusionField, SparseFusionFieldConfig

TINY = SparseFusionFieldConfig(
    grid=HashGridLayout(num_levels=4, log2_hashmap_size=10, max_resolution=64), hidden_dim=16
)


def samples_at(positions: torch.Tensor) -> RaySamples:
    ones = torch.ones_like(positions[..., :1])
    return RaySamples(
        frustums=Frustums(
            origins=positions, directions=torch.ones_like(positions), starts=0 * ones, ends=0 * ones, pixel_area=ones
        )
    )


def zero_mlp(field: SparseFusionField) -> None:
    """h = 0 everywhere: the density is the blob alone."""
    with torch.no_grad():
        for module in field.mlp:
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                module.bias.zero_()


def test_density_starts_as_a_blob_at_the_centre():
    field = SparseFusionField(TINY)
    zero_mlp(field)
    centre = field.density_at(torch.zeros(1, 3))
    far = field.density_at(torch.tensor([[1.5, 0.0, 0.0]]))
    # h = 0 everywhere: σ(0) = exp(5), σ(1.5) = exp(5·exp(−1.5²/0.08)) ≈ 1.
    torch.testing.assert_close(centre, torch.exp(torch.tensor([[5.0]])))
    torch.testing.assert_close(far, torch.ones(1, 1), atol=1e-5, rtol=0)


def test_outside_the_box_is_empty_and_colours_are_albedo():
    field = SparseFusionField(TINY)
    inside = torch.rand(64, 3) * 6 - 3
    outside = inside.clone()
    outside[:, 0] = 4.5
    assert (field.density_at(inside) > 0).all()
    assert (field.density_at(outside) == 0).all()
    colours = field.colour_at(inside)
    assert colours.shape == (64, 3) and ((colours >= 0) & (colours <= 1)).all()
    outputs = field(samples_at(inside))
    torch.testing.assert_close(outputs[FieldHeadNames.RGB], colours)
    torch.testing.assert_close(outputs[FieldHeadNames.DENSITY], field.density_at(inside))


def test_normals_point_away_from_the_blob():
    field = SparseFusionField(TINY)
    zero_mlp(field)
    points = torch.tensor([[0.2, 0.0, 0.0], [0.0, -0.2, 0.0], [0.0, 0.0, 0.3]])
    with torch.no_grad():  # as in eval: normals need their own autograd pass
        normals = field(samples_at(points), compute_normals=True)[FieldHeadNames.NORMALS]
    torch.testing.assert_close(normals, torch.nn.functional.normalize(points, dim=-1), atol=1e-5, rtol=0)


def test_gradients_reach_grid_and_mlp():
    field = SparseFusionField(TINY)
    positions = torch.rand(32, 3) - 0.5
    (field.density_at(positions).sum() + field.colour_at(positions).sum()).backward()
    assert field.encoding.table.grad.abs().sum() > 0
    assert all(p.grad is not None for p in field.mlp.parameters())


@pytest.mark.parametrize("batch_shape", [(), (1,), (7,), (2, 5), (2, 3, 4)])
def test_any_batch_shape_gives_the_flat_batchs_values(batch_shape):
    """density_at / colour_at take (*batch, 3) positions; values do not depend on the batch layout."""
    field = SparseFusionField(TINY)
    positions = torch.rand(*batch_shape, 3) * 6 - 3
    flat = positions.reshape(-1, 3)
    with torch.no_grad():
        density, colour = field.density_at(positions), field.colour_at(positions)
        assert density.shape == (*batch_shape, 1) and colour.shape == (*batch_shape, 3)
        torch.testing.assert_close(density.reshape(-1, 1), field.density_at(flat), rtol=1e-6, atol=0)
        torch.testing.assert_close(colour.reshape(-1, 3), field.colour_at(flat), rtol=1e-6, atol=0)
