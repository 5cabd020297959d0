"""PyTorch3D NDC cameras <-> nerfstudio cameras (sparsefusion_ns/cameras/conventions.py)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsefusion_ns.cameras.conventions import (
    ndc_to_nerfstudio,
    ndc_to_pixel_intrinsics,
    ndc_to_pixels,
    nerfstudio_to_ndc,
    pixel_to_ndc_intrinsics,
    pixels_to_ndc,
)
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras

# Float64 throughout: the conversions are exact algebra, so round trips agree to ~1e-12;
# 1e-9 leaves room for accumulated rounding of the 3x3 products.
EXACT = 1e-9
# Pixel agreement asked of the projection paths (the brief's bound); in float64 they agree to ~1e-10.
PIXEL_TOL = 1e-3


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.sign(torch.linalg.det(q))[:, None, None]  # proper rotations (det +1)


def random_cameras(n: int, seed: int = 0) -> NDCCameras:
    """Cameras about 5 units from the origin, looking roughly at it, with off-centre principal points."""
    generator = torch.Generator().manual_seed(seed)
    R = random_rotations(n, generator)
    # Choose T so that the origin sits ~5 units in front of each camera (view z > 0), a bit off axis.
    T = torch.randn(n, 3, generator=generator, dtype=torch.float64) * 0.3
    T[:, 2] += 5.0
    focal = 1.5 + torch.rand(n, 2, generator=generator, dtype=torch.float64)  # fx != fy on purpose
    principal = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * 0.4
    return NDCCameras(R=R, T=T, focal_length=focal, principal_point=principal)


SIZES_HW = [(96, 128), (128, 96), (256, 256), (75, 201)]


@pytest.mark.parametrize("size_hw", SIZES_HW)
def test_round_trip_ndc_nerfstudio_ndc(size_hw):
    cameras = random_cameras(7)
    back, back_size = nerfstudio_to_ndc(ndc_to_nerfstudio(cameras, size_hw))
    assert back_size.tolist() == [list(size_hw)] * 7
    for name in ("R", "T", "focal_length", "principal_point"):
        torch.testing.assert_close(getattr(back, name), getattr(cameras, name), atol=EXACT, rtol=0)


@pytest.mark.parametrize("size_hw", SIZES_HW)
def test_round_trip_nerfstudio_ndc_nerfstudio(size_hw):
    ns_cameras = ndc_to_nerfstudio(random_cameras(5, seed=1), size_hw)
    again = ndc_to_nerfstudio(*nerfstudio_to_ndc(ns_cameras))
    for name in ("camera_to_worlds", "fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(again, name), getattr(ns_cameras, name), atol=EXACT, rtol=0)
    assert torch.equal(again.width, ns_cameras.width) and torch.equal(again.height, ns_cameras.height)


def test_per_camera_image_sizes():
    cameras = random_cameras(4, seed=2)
    sizes = torch.tensor([[96, 128], [128, 96], [64, 64], [75, 201]])
    ns_cameras = ndc_to_nerfstudio(cameras, sizes)
    assert ns_cameras.height[:, 0].tolist() == [96, 128, 64, 75]
    assert ns_cameras.width[:, 0].tolist() == [128, 96, 64, 201]
    back, back_size = nerfstudio_to_ndc(ns_cameras)
    assert torch.equal(back_size, sizes)
    torch.testing.assert_close(back.principal_point, cameras.principal_point, atol=EXACT, rtol=0)


def test_intrinsics_formulas_by_hand():
    # 96 x 128 (H x W): S = 96, S/2 = 48. fx_px = 48 * 2 = 96, cx_px = 64 - 48 * 0.25 = 52,
    # cy_px = 48 - 48 * (-0.5) = 72.
    focal, principal = ndc_to_pixel_intrinsics(torch.tensor([[2.0, 2.5]]), torch.tensor([[0.25, -0.5]]), (96, 128))
    assert focal.tolist() == [[96.0, 120.0]] and principal.tolist() == [[52.0, 72.0]]
    focal_ndc, principal_ndc = pixel_to_ndc_intrinsics(focal, principal, (96, 128))
    assert focal_ndc.tolist() == [[2.0, 2.5]] and principal_ndc.tolist() == [[0.25, -0.5]]
    # NDC (+1, +1) is the left/top end of the shorter (vertical) side: u = 64 - 48 = 16, v = 0.
    assert ndc_to_pixels(torch.tensor([[[1.0, 1.0]]]), (96, 128)).tolist() == [[[16.0, 0.0]]]
    assert pixels_to_ndc(torch.tensor([[[16.0, 0.0]]]), (96, 128)).tolist() == [[[1.0, 1.0]]]


def test_identity_camera_axes():
    """PyTorch3D identity camera = OpenGL camera with x and z flipped: it looks along world +z."""
    cameras = NDCCameras(
        R=torch.eye(3)[None], T=torch.zeros(1, 3), focal_length=torch.ones(1, 2), principal_point=torch.zeros(1, 2)
    )
    c2w = ndc_to_nerfstudio(cameras, (64, 64)).camera_to_worlds[0]
    assert c2w.tolist() == [[-1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]


def project_with_nerfstudio_intrinsics(ns_cameras, points: torch.Tensor) -> torch.Tensor:
    """Pixel positions of world points through nerfstudio's K and OpenGL pose (x_gl right/up/back)."""
    c2w = ns_cameras.camera_to_worlds
    rotation, centre = c2w[..., :3], c2w[..., 3]
    x_gl = torch.einsum("nji,npj->npi", rotation, points[None] - centre[:, None, :])  # R_c2w^T (x - C)
    depth = -x_gl[..., 2]  # OpenGL cameras look down -z
    u = ns_cameras.cx + ns_cameras.fx * x_gl[..., 0] / depth
    v = ns_cameras.cy - ns_cameras.fy * x_gl[..., 1] / depth  # pixel v grows downwards, y_gl upwards
    return torch.stack([u, v], dim=-1)


@pytest.mark.parametrize("size_hw", [(96, 128), (128, 96)])
def test_points_project_to_same_pixel(size_hw):
    cameras = random_cameras(6, seed=3)
    points = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 0.8
    uv_pytorch3d = ndc_to_pixels(cameras.transform_points_ndc(points)[..., :2], size_hw)
    uv_nerfstudio = project_with_nerfstudio_intrinsics(ndc_to_nerfstudio(cameras, size_hw), points)
    assert (uv_pytorch3d - uv_nerfstudio).abs().max() < PIXEL_TOL


@pytest.mark.parametrize("size_hw", [(96, 128), (128, 96)])
def test_nerfstudio_rays_pass_through_points(size_hw):
    """The ray nerfstudio generates through a point's PyTorch3D pixel passes through the point."""
    cameras = random_cameras(3, seed=5)
    points = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 0.8
    uv = ndc_to_pixels(cameras.transform_points_ndc(points)[..., :2], size_hw)  # (n, p, 2)
    ns_cameras = ndc_to_nerfstudio(cameras, size_hw)
    camera_indices = torch.arange(3)[:, None, None].expand(3, 10, 1)
    # generate_rays takes (row, col) pixel positions; a ray at (y, x) goes through that exact position.
    coords = uv.flip(-1)
    rays = ns_cameras.generate_rays(camera_indices=camera_indices, coords=coords)
    to_point = points[None].expand(3, -1, -1) - rays.origins
    along = (to_point * rays.directions).sum(-1, keepdim=True)
    miss = (to_point - along * rays.directions).norm(dim=-1)  # distance of the point from the ray
    assert bool((along > 0).all()), "points must lie in front of the cameras"
    # A 1e-3 px error at distance d corresponds to a miss of 1e-3 * d / f_px world units.
    bound = PIXEL_TOL * along[..., 0] / ns_cameras.fx.max()
    assert bool((miss < bound).all()), float(miss.max())


def test_distorted_or_unflattened_cameras_are_refused():
    ns_cameras = ndc_to_nerfstudio(random_cameras(2), (64, 64))
    with pytest.raises(ValueError, match="flat batch"):
        nerfstudio_to_ndc(ns_cameras.reshape((1, 2)))
    ns_cameras.distortion_params = torch.zeros(2, 6, dtype=torch.float64)
    ns_cameras.distortion_params[0, 0] = 0.1
    with pytest.raises(ValueError, match="distortion"):
        nerfstudio_to_ndc(ns_cameras)


def test_bad_image_size_shape_is_refused():
    with pytest.raises(ValueError, match="image_size_hw"):
        ndc_to_nerfstudio(random_cameras(2), torch.tensor([[64, 64], [64, 64], [64, 64]]))


def test_conversion_preserves_float32():
    cameras = random_cameras(2).to(torch.float32)
    ns_cameras = ndc_to_nerfstudio(cameras, (96, 128))
    assert ns_cameras.camera_to_worlds.dtype == torch.float32 and ns_cameras.fx.dtype == torch.float32
    assert math.isclose(float(ns_cameras.fx[0, 0]), float(cameras.focal_length[0, 0]) * 48.0, rel_tol=1e-6)
