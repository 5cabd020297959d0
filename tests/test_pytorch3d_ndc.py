"""PyTorch3D-convention NDC cameras: projection, centres, relative frames, ray grid, golden."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras, ndc_ray_grid, query_rays


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.linalg.det(q)[:, None, None].sign()  # proper rotations (det +1)
    return q.float()


def random_cameras(n: int, seed: int = 0) -> NDCCameras:
    g = torch.Generator().manual_seed(seed)
    return NDCCameras(
        R=random_rotations(n, g),
        T=torch.randn(n, 3, generator=g) + torch.tensor([0.0, 0.0, 8.0]),
        focal_length=1.5 + torch.rand(n, 2, generator=g),
        principal_point=0.1 * torch.randn(n, 2, generator=g),
    )


def test_projection_of_known_point():
    cameras = NDCCameras(
        R=torch.eye(3)[None],
        T=torch.tensor([[0.0, 0.0, 5.0]]),
        focal_length=torch.tensor([[2.0, 3.0]]),
        principal_point=torch.tensor([[0.1, -0.2]]),
    )
    # view point (1, 2, 5): (2 * 1/5 + 0.1, 3 * 2/5 - 0.2, 1/5)
    ndc = cameras.transform_points_ndc(torch.tensor([[1.0, 2.0, 0.0]]))
    torch.testing.assert_close(ndc, torch.tensor([[[0.5, 1.0, 0.2]]]))


def test_ndc_to_pixel_convention_matches_opencv_intrinsics():
    """Documented pixel intrinsics: fx_px = (S/2) f, cx_px = S/2 - (S/2) p (+x right, +y down)."""
    cameras, size = random_cameras(3, seed=1), 256
    points = torch.randn(10, 3)
    view = cameras.world_to_view(points)
    ndc = cameras.transform_points_ndc(points)
    half = size / 2
    fx_px, fy_px = (half * cameras.focal_length).unbind(-1)
    cx_px, cy_px = (half - half * cameras.principal_point).unbind(-1)
    # OpenCV camera axes: x right = -x_view, y down = -y_view
    u = fx_px[:, None] * (-view[..., 0] / view[..., 2]) + cx_px[:, None]
    v = fy_px[:, None] * (-view[..., 1] / view[..., 2]) + cy_px[:, None]
    torch.testing.assert_close(u, half - half * ndc[..., 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(v, half - half * ndc[..., 1], atol=1e-3, rtol=0)


def test_camera_centre_maps_to_view_origin():
    cameras = random_cameras(4)
    centres = cameras.camera_centers()
    origin = cameras.world_to_view(centres[:, None, :])  # each camera's own centre
    torch.testing.assert_close(origin, torch.zeros(4, 1, 3), atol=1e-5, rtol=0)
    # column form C = -R T
    torch.testing.assert_close(centres, -(cameras.R @ cameras.T[..., None])[..., 0])


def test_relative_to_puts_camera_at_origin_and_preserves_projections():
    cameras = random_cameras(4, seed=2)
    relative = cameras.relative_to(2)
    torch.testing.assert_close(relative.R[2], torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(relative.T[2], torch.zeros(3), atol=1e-5, rtol=0)
    identities = torch.eye(3).expand(4, 3, 3)
    torch.testing.assert_close(relative.R @ relative.R.transpose(1, 2), identities, atol=1e-6, rtol=0)
    points = torch.randn(50, 3)
    moved = cameras[2].world_to_view(points)[0]  # world points in the new frame
    # float32 round-off of the frame change, amplified by 1/z
    torch.testing.assert_close(
        relative.transform_points_ndc(moved),
        cameras.transform_points_ndc(points),
        atol=1e-4,
        rtol=1e-4,
    )
    torch.testing.assert_close(relative.camera_centers()[2], torch.zeros(3), atol=1e-5, rtol=0)


def test_indexing_and_to():
    cameras = random_cameras(5)
    assert len(cameras[1]) == 1 and len(cameras[-1]) == 1
    torch.testing.assert_close(cameras[-1].R[0], cameras.R[4])
    assert len(cameras[1:4]) == 3
    picked = cameras[torch.tensor([4, 0])]
    torch.testing.assert_close(picked.T, cameras.T[[4, 0]])
    assert len(cameras[[0, 2]]) == 2
    assert len(cameras[torch.tensor(3)]) == 1
    assert cameras.to(torch.float64).focal_length.dtype == torch.float64
    assert len(NDCCameras.cat([cameras, cameras[0]])) == 6


def test_rejects_malformed_fields():
    with pytest.raises(ValueError, match="focal_length"):
        NDCCameras(
            R=torch.eye(3)[None],
            T=torch.zeros(1, 3),
            focal_length=torch.ones(1),
            principal_point=torch.zeros(1, 2),
        )


def test_ray_grid_matches_upstream_grid_raysampler():
    grid = ndc_ray_grid(32, 256)
    margin = 1.0 - 1.0 / 256  # half a pixel of the 256^2 image, not of the 32^2 grid
    assert grid.shape == (32, 32, 2)
    torch.testing.assert_close(grid[0, 0], torch.tensor([margin, margin]))
    torch.testing.assert_close(grid[0, -1], torch.tensor([-margin, margin]))
    torch.testing.assert_close(grid[-1, 0], torch.tensor([margin, -margin]))
    axis = torch.linspace(margin, -margin, 32)
    torch.testing.assert_close(grid[5, :, 0], axis)  # x decreases along columns
    torch.testing.assert_close(grid[:, 7, 1], axis)  # y decreases along rows


def test_query_rays_reproject_to_grid_with_view_depth_lengths():
    cameras = random_cameras(2, seed=3)
    grid = ndc_ray_grid(4, 64)
    origins, directions = query_rays(cameras, grid)
    assert origins.shape == directions.shape == (2, 4, 4, 3)
    for i in range(2):
        points = (origins[i] + 7.0 * directions[i]).reshape(-1, 3)
        ndc = cameras[i].transform_points_ndc(points)[0]
        torch.testing.assert_close(ndc[:, :2], grid.reshape(-1, 2), atol=1e-5, rtol=0)
        torch.testing.assert_close(ndc[:, 2], torch.full((16,), 1 / 7.0), atol=1e-6, rtol=0)


def test_golden_projection_and_centres(shared_dir):
    golden = load_file(shared_dir / "reference" / "golden_eft_full.safetensors")
    cameras = NDCCameras(
        R=golden["in.R"],
        T=golden["in.T"],
        focal_length=golden["in.focal_length"],
        principal_point=golden["in.principal_point"],
    )
    origins, directions = golden["in.ray_origins"], golden["in.ray_directions"]
    points = origins[..., None, :] + golden["in.ray_lengths"][..., None] * directions[..., None, :]
    atol = 1e-5  # recommended_atol of out.xyz_ndc in golden_eft_full.json
    projected = cameras.transform_points_ndc(points.reshape(-1, 3))
    torch.testing.assert_close(projected, golden["out.xyz_ndc"], atol=atol, rtol=0)
    torch.testing.assert_close(cameras.camera_centers(), golden["out.camera_centers"], atol=atol, rtol=0)


@pytest.mark.parametrize("order", [[0], [2], [2, 0], [1, 1, 0]], ids=str)
def test_golden_projection_of_any_camera_batch(shared_dir, order):
    """Cameras indexed into any batch (one, reordered, repeated) project as in the golden batch."""
    golden = load_file(shared_dir / "reference" / "golden_eft_full.safetensors")
    cameras = NDCCameras(
        R=golden["in.R"],
        T=golden["in.T"],
        focal_length=golden["in.focal_length"],
        principal_point=golden["in.principal_point"],
    )
    origins, directions = golden["in.ray_origins"], golden["in.ray_directions"]
    points = (origins[..., None, :] + golden["in.ray_lengths"][..., None] * directions[..., None, :]).reshape(-1, 3)
    expected = golden["out.xyz_ndc"]
    assert expected.shape[0] == len(cameras) == 3
    index = torch.tensor(order)
    subset = cameras[index]
    torch.testing.assert_close(subset.transform_points_ndc(points), expected[index], atol=1e-5, rtol=0)
    torch.testing.assert_close(subset.camera_centers(), golden["out.camera_centers"][index], atol=1e-5, rtol=0)
