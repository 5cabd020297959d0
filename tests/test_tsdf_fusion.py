"""One-pass depth-map fusion (``utils/tsdf_fusion.py``) on an analytic sphere seen by analytic depth maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsefusion_ns.utils.tsdf_fusion import fuse_depth_maps

RADIUS = 0.5
SIDE = 40
"""Pixels per image side."""
FAR = 100.0
"""Depth written where a ray misses the sphere (beyond the volume: free space)."""


def look_at_origin(position) -> torch.Tensor:
    """nerfstudio camera-to-world (OpenGL: x right, y up, looking down −z) at ``position``, facing the origin."""
    position = torch.tensor(position, dtype=torch.float32)
    back = position / position.norm()
    up = torch.tensor([0.0, 0.0, 1.0]) if abs(float(back[2])) < 0.99 else torch.tensor([0.0, 1.0, 0.0])
    right = torch.linalg.cross(up, back)
    right = right / right.norm()
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.stack([right, torch.linalg.cross(back, right), back], 1)
    c2w[:3, 3] = position
    return c2w


def sphere_depth(c2w: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Distance along each pixel-centre ray to the sphere of ``RADIUS`` at the origin (FAR on a miss); (1, H, W)."""
    v, u = torch.meshgrid(torch.arange(SIDE) + 0.5, torch.arange(SIDE) + 0.5, indexing="ij")
    local = torch.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -torch.ones_like(u)], -1)
    directions = local @ c2w[:3, :3].T
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origin = c2w[:3, 3]
    b = directions @ origin
    discriminant = b**2 - (origin @ origin - RADIUS**2)
    t = -b - discriminant.clamp_min(0).sqrt()
    return torch.where(discriminant > 0, t, torch.tensor(FAR))[None]


def cameras(positions):
    focal = SIDE / (2 * math.tan(math.radians(25)))  # 50° field of view
    K = torch.tensor([[focal, 0, SIDE / 2], [0, focal, SIDE / 2], [0, 0, 1]])
    c2w = torch.stack([look_at_origin(p) for p in positions])
    depths = torch.stack([sphere_depth(pose, K) for pose in c2w])
    colours = torch.ones(len(c2w), 3, SIDE, SIDE) * torch.linspace(0.2, 0.8, 3)[None, :, None, None]
    return c2w, K.expand(len(c2w), 3, 3), depths, colours


def all_around(count: int = 16):
    ring = [(2 * math.cos(a), 2 * math.sin(a), z) for a in np.linspace(0, 2 * math.pi, count // 2, endpoint=False)
            for z in (-0.8, 0.8)]  # fmt: skip
    return ring + [(0.0, 0.0, 2.0), (0.0, 0.0, -2.0)]


@pytest.fixture
def volume():
    from nerfstudio.exporter.tsdf_utils import TSDF

    return TSDF.from_aabb(torch.tensor([[-0.8] * 3, [0.8] * 3]), volume_dims=torch.tensor([SIDE] * 3))


def test_fused_mesh_lies_on_the_sphere_and_covers_it(volume):
    seen = fuse_depth_maps(volume, *cameras(all_around()))
    assert bool(seen.all())  # every voxel is in some camera's view
    mesh = volume.get_mesh()
    vertices = mesh.vertices.double()
    voxel = 1.6 / SIDE
    # accuracy: nearest-pixel depths (a pixel spans ≈ 0.9 voxel on the sphere), the running mean
    # weighing the last cameras most, and marching cubes; measured: mean 0.20, max 1.25 voxel
    error = (vertices.norm(dim=-1) - RADIUS).abs() / voxel
    assert float(error.mean()) < 0.3 and float(error.max()) < 1.5
    # completeness: every point of the sphere has a vertex near it (vertices are about a voxel apart:
    # measured at most 0.84 voxel away; a hole or a missing side would leave points several voxels away)
    directions = torch.randn(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    on_sphere = RADIUS * directions / directions.norm(dim=-1, keepdim=True)
    assert float(torch.cdist(on_sphere, vertices).min(dim=1).values.max()) < 1.5 * voxel
    torch.testing.assert_close(mesh.colors[0], torch.tensor([0.2, 0.5, 0.8]))  # the mean of identical colours


def test_unseen_voxels_are_free_space(volume):
    # two cameras on the +x side: the -x half of the volume behind the sphere is partly in view
    # (the sphere's shadow: solid) and partly in no frustum at all (free: no wall where frusta end)
    c2w, K, depths, colours = cameras([(2.0, 0.3, 0.2), (2.0, -0.3, -0.2)])
    seen = fuse_depth_maps(volume, c2w, K, depths, colours)
    values = volume.values
    assert not bool(seen.all()) and bool((values[~seen] == 1.0).all())
    centre = SIDE // 2
    assert float(values[centre, centre, centre]) == -1.0  # the sphere's centre: deep behind its front
    assert float(values[-1, centre, centre]) > 0.99  # in front of the sphere, towards the cameras: free


def test_same_volume_as_nerfstudios_two_integrations(volume):
    """``sf-export tsdf``'s former code: ``integrate_tsdf`` with the depth maps, then with infinite ones."""
    from nerfstudio.exporter.tsdf_utils import TSDF

    # off-centre, tilted views of the sphere, so that a flipped image axis would show; every voxel
    # is in front of every camera (nerfstudio's integration does not test that)
    positions = [(2.4, 0.4, 0.3), (-0.5, 2.3, -0.6), (0.3, -0.4, 2.5), (-2.2, -0.9, 0.8), (1.5, 1.5, -1.6)]
    c2w, K, depths, colours = cameras(positions)
    c2w = c2w @ torch.linalg.matrix_exp(
        torch.tensor([[0, -0.1, 0.05, 0], [0.1, 0, -0.08, 0], [-0.05, 0.08, 0, 0], [0, 0, 0, 0.0]])
    )
    colours = torch.rand(colours.shape, generator=torch.Generator().manual_seed(0))
    seen = fuse_depth_maps(volume, c2w, K, depths, colours, batch_size=2)

    box = torch.tensor([[-0.8] * 3, [0.8] * 3])
    theirs, coverage = (TSDF.from_aabb(box, volume_dims=torch.tensor([SIDE] * 3)) for _ in range(2))
    theirs.integrate_tsdf(c2w, K, depths, colours)
    coverage.integrate_tsdf(c2w, K, torch.full_like(depths, 1e9))
    theirs.values[coverage.weights == 0] = 1.0
    assert bool((seen == (coverage.weights > 0)).all())
    # the same arithmetic but for the projection (R^T (p - c) against inverse(c2w) p): a voxel whose
    # projection falls within float rounding of a pixel edge may pick the neighbouring pixel
    assert float(((volume.values - theirs.values).abs() > 1e-5).float().mean()) < 1e-3
    assert float(((volume.colors - theirs.colors).abs().amax(-1) > 1e-5).float().mean()) < 1e-3
    assert float((volume.values < 0).float().mean()) > 0.05  # the sphere is in the volume
