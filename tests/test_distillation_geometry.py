"""Distillation geometry: the novel-camera pool, the frames the EFT runs in, and the camera conversions."""

from __future__ import annotations

import math

import pytest
import torch

from sparsefusion_ns.cameras.conventions import ndc_to_nerfstudio, ndc_to_pixels
from sparsefusion_ns.cameras.look_at import nearest_point_to_lines
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.distillation.novel_cameras import (
    NovelCameraPoolConfig,
    build_novel_camera_pool,
    elevate,
    fit_camera_circle,
    fit_orbit,
    look_at_cameras,
    mean_up_vector,
    principal_axes,
)
from sparsefusion_ns.distillation.teacher_inputs import scene_frame_cameras, teacher_inputs
from sparsefusion_ns.teacher.bundle import Teacher
from tests.scenes import demo_scene
from tests.tiny_training import tiny_trainer_config
from tests.torch_threads import torch_threads

# A tilted orbit: circle centre C0, radius 3, plane normal N; cameras look at L, off the plane.
C0 = torch.tensor([0.3, -0.2, 0.5])
N = torch.nn.functional.normalize(torch.tensor([0.2, 1.0, 0.3]), dim=0)
RADIUS = 3.0
L = torch.tensor([0.1, -0.9, 0.4])


def _orbit_basis() -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.nn.functional.normalize(torch.linalg.cross(N, torch.tensor([1.0, 0.0, 0.0])), dim=0)
    return u, torch.linalg.cross(N, u)


def orbit_cameras(azimuths_deg, principal=(0.0, 0.0)) -> NDCCameras:
    u, v = _orbit_basis()
    angles = torch.tensor(azimuths_deg, dtype=torch.float32) * math.pi / 180
    eyes = C0 + RADIUS * (torch.cos(angles)[:, None] * u + torch.sin(angles)[:, None] * v)
    return look_at_cameras(eyes, L, N, torch.tensor([2.0, 2.1]), torch.tensor(principal))


def elevation(points: torch.Tensor, pivot: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    offsets = torch.nn.functional.normalize(points - pivot, dim=-1)
    return torch.asin((offsets @ up).clamp(-1, 1))


def test_look_at_cameras_follow_pytorch3d_conventions():
    cameras = orbit_cameras([0, 100, 220])
    eyes = cameras.camera_centers()
    # R is a rotation whose +Z column points at the target and whose +Y column leans up
    torch.testing.assert_close(cameras.R.transpose(1, 2) @ cameras.R, torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(cameras.R), torch.ones(3), atol=1e-6)
    torch.testing.assert_close(cameras.R[:, :, 2], torch.nn.functional.normalize(L - eyes, dim=-1), atol=1e-6, rtol=0)
    assert bool((cameras.R[:, :, 1] @ N > 0).all())
    # the target is straight ahead: view x = y = 0, z = distance (PyTorch3D +Z forward)
    view = cameras.world_to_view(L[None])[:, 0]
    torch.testing.assert_close(view[:, :2], torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(view[:, 2], (L - eyes).norm(dim=-1), atol=1e-5, rtol=0)
    # PyTorch3D +X points left: with up = +Y and forward = +Z, left is +X in the world
    straight = look_at_cameras(torch.tensor([[0.0, 0.0, -3.0]]), torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]),
                               torch.ones(2), torch.zeros(2))  # fmt: skip
    torch.testing.assert_close(straight.R[0], torch.eye(3))


def test_look_at_point_is_nearest_to_all_principal_axes():
    # an off-centre principal point: the axes are the rays through it, not through the image centre
    cameras = orbit_cameras([0, 70, 150, 260], principal=(0.1, -0.05))
    origins, directions = principal_axes(cameras)
    torch.testing.assert_close(nearest_point_to_lines(origins, directions), L, atol=1e-4, rtol=0)
    # noisy lines: the least-squares point has zero gradient of the summed squared distances
    generator = torch.Generator().manual_seed(3)
    origins = torch.randn(6, 3, generator=generator) * 3
    directions = torch.randn(6, 3, generator=generator)
    point = nearest_point_to_lines(origins, directions).requires_grad_(True)
    d = torch.nn.functional.normalize(directions, dim=-1)
    offsets = point - origins
    distances = (offsets - (offsets * d).sum(-1, keepdim=True) * d).pow(2).sum()
    (gradient,) = torch.autograd.grad(distances, point)
    assert float(gradient.abs().max()) < 1e-4  # float32 round-off of a sum of six squares ~10


def test_optical_axes_find_the_look_at_point_when_principal_points_differ():
    """Crops around each input's mask give every camera its own principal point: the rays through the
    mean principal point then miss the point all cameras aim at, the optical axes do not."""
    cameras = NDCCameras.cat([orbit_cameras([0], principal=(-0.1, 0.07)), orbit_cameras([45], principal=(0.45, -0.04))])
    _, optical = fit_orbit(cameras, "optical")
    _, mean_principal = fit_orbit(cameras, "mean_principal_point")
    torch.testing.assert_close(optical, L, atol=1e-4, rtol=0)  # float32 solve of lines ~3 units long
    assert float((mean_principal - L).norm()) > 0.1
    # with equal principal points the two are the same lines
    same = orbit_cameras([0, 45], principal=(0.2, 0.1))
    torch.testing.assert_close(
        fit_orbit(same, "optical")[1], fit_orbit(same, "mean_principal_point")[1], atol=1e-4, rtol=0
    )
    config = NovelCameraPoolConfig(num_circle_cameras=4, num_random_cameras=0)  # aims along the optical axes
    torch.testing.assert_close(
        build_novel_camera_pool(config, cameras, torch.Generator()).look_at, L, atol=1e-4, rtol=0
    )


def test_circle_fit_recovers_the_orbit():
    cameras = orbit_cameras([0, 50, 130, 200, 300])
    circle = fit_camera_circle(cameras.camera_centers(), mean_up_vector(cameras), L)
    torch.testing.assert_close(circle.centre, C0, atol=1e-4, rtol=0)
    torch.testing.assert_close(circle.normal, N, atol=1e-5, rtol=0)  # signed towards the cameras' up
    assert circle.radius == pytest.approx(RADIUS, abs=1e-4)
    # azimuth 0 is the first camera
    torch.testing.assert_close(circle.points(torch.zeros(1))[0], cameras.camera_centers()[0], atol=1e-4, rtol=0)


def test_two_cameras_give_a_circle_through_both():
    cameras = orbit_cameras([0, 90])
    centres = cameras.camera_centers()
    circle = fit_camera_circle(centres, mean_up_vector(cameras), L)
    distances = (centres - circle.centre).norm(dim=-1)
    torch.testing.assert_close(distances, torch.full((2,), circle.radius), atol=1e-5, rtol=0)
    # both centres lie in the circle's plane and the plane's normal leans to the cameras' up
    torch.testing.assert_close((centres - circle.centre) @ circle.normal, torch.zeros(2), atol=1e-5, rtol=0)
    assert float(circle.normal @ mean_up_vector(cameras)) > 0


def test_pool_cameras_lie_on_the_circle_and_look_at_the_point():
    inputs = orbit_cameras([10, 120, 230])
    config = NovelCameraPoolConfig(num_circle_cameras=8, num_random_cameras=5, elevation_jitter=0.0)
    pool = build_novel_camera_pool(config, inputs, torch.Generator().manual_seed(0))
    assert pool.kinds == ("input",) * 3 + ("circle",) * 8 + ("random",) * 5
    generated = pool.cameras[3:]
    eyes = generated.camera_centers()
    circle = pool.circle
    torch.testing.assert_close((eyes - circle.centre).norm(dim=-1), torch.full((13,), circle.radius), atol=1e-4, rtol=0)
    torch.testing.assert_close((eyes - circle.centre) @ circle.normal, torch.zeros(13), atol=1e-4, rtol=0)
    torch.testing.assert_close(pool.look_at, L, atol=1e-4, rtol=0)
    torch.testing.assert_close(generated.R[:, :, 2], torch.nn.functional.normalize(L - eyes, dim=-1), atol=1e-5, rtol=0)
    # the input cameras come first, unchanged; generated cameras use their mean intrinsics
    torch.testing.assert_close(pool.cameras[:3].R, inputs.R)
    torch.testing.assert_close(generated.focal_length, inputs.focal_length.mean(0).expand(13, 2))
    # the circle cameras are evenly spaced in azimuth
    u, v = circle.start, torch.linalg.cross(circle.normal, circle.start)
    offsets = eyes[:8] - circle.centre
    azimuths = torch.atan2(offsets @ v, offsets @ u)
    expected = torch.arange(8) * (2 * math.pi / 8)
    # compare on the circle: an azimuth a hair below 0 is the same camera as one at 0 (not 2π away)
    wrapped = torch.remainder(azimuths - expected + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(wrapped, torch.zeros(8), atol=1e-4, rtol=0)


def test_elevation_jitter_is_bounded_and_keeps_distance_and_azimuth():
    inputs = orbit_cameras([10, 120, 230])
    jitter = 0.17
    flat = build_novel_camera_pool(
        NovelCameraPoolConfig(num_circle_cameras=40, num_random_cameras=0, elevation_jitter=0.0),
        inputs, torch.Generator().manual_seed(1),
    )  # fmt: skip
    jittered = build_novel_camera_pool(
        NovelCameraPoolConfig(num_circle_cameras=40, num_random_cameras=0, elevation_jitter=jitter),
        inputs, torch.Generator().manual_seed(1),
    )  # fmt: skip
    before, after = flat.cameras[3:].camera_centers(), jittered.cameras[3:].camera_centers()
    up, pivot = jittered.circle.normal, jittered.look_at
    change = elevation(after, pivot, up) - elevation(before, pivot, up)
    torch.testing.assert_close(change, jittered.elevation_offsets, atol=1e-4, rtol=0)
    assert float(change.abs().max()) <= jitter + 1e-4
    assert float(change.abs().max()) > 0.5 * jitter  # 40 uniform draws: it does jitter
    torch.testing.assert_close((after - pivot).norm(dim=-1), (before - pivot).norm(dim=-1), atol=1e-4, rtol=0)

    # the jitter moves a camera within the vertical plane through the pivot: azimuth unchanged
    def horizontal(x: torch.Tensor) -> torch.Tensor:
        offsets = x - pivot
        return torch.nn.functional.normalize(offsets - (offsets @ up)[:, None] * up, dim=-1)

    torch.testing.assert_close(horizontal(after), horizontal(before), atol=1e-4, rtol=0)
    # jittered cameras still look at the point
    torch.testing.assert_close(
        jittered.cameras[3:].R[:, :, 2], torch.nn.functional.normalize(pivot - after, dim=-1), atol=1e-5, rtol=0
    )


def test_elevate_raises_towards_up():
    eye = torch.tensor([[2.0, 0.0, 0.0]])
    up = torch.tensor([0.0, 0.0, 1.0])
    raised = elevate(eye, torch.zeros(3), up, torch.tensor([0.3]))
    torch.testing.assert_close(raised[0], torch.tensor([2 * math.cos(0.3), 0.0, 2 * math.sin(0.3)]))


def test_authors_pool_is_every_frame_plus_the_circle():
    frames = orbit_cameras([0, 40, 80, 120, 160, 200, 240, 280, 320])
    inputs = frames[[0, 3]]
    config = NovelCameraPoolConfig(source="authors", num_circle_cameras=6, num_random_cameras=5)
    pool = build_novel_camera_pool(config, inputs, torch.Generator().manual_seed(0), scene_frames=frames)
    assert pool.kinds == ("frame",) * 9 + ("circle",) * 6  # no random views in the authors' pool
    torch.testing.assert_close(pool.cameras[:9].T, frames.T)
    # the circle is fitted to all frames (the orbit), not to the two inputs
    torch.testing.assert_close(pool.circle.centre, C0, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="scene_frames"):
        build_novel_camera_pool(config, inputs, torch.Generator())


def test_a_given_orbit_places_the_generated_cameras_and_keeps_the_inputs():
    """``orbit=``: the inputs pool's cameras on an orbit fitted elsewhere (the frame-orbit ablation)."""
    frames = orbit_cameras([0, 40, 80, 120, 160, 200, 240, 280, 320])
    # two inputs whose own fit is off: looking at a point 0.8 away from L, from a radius-5 orbit
    shifted = L + torch.tensor([0.8, 0.0, 0.0])
    inputs = look_at_cameras(
        frames[[0, 2]].camera_centers() * 1.6, shifted, N, torch.tensor([2.0, 2.1]), torch.zeros(2)
    )
    config = NovelCameraPoolConfig(num_circle_cameras=6, num_random_cameras=4, elevation_jitter=0.0)
    own = build_novel_camera_pool(config, inputs, torch.Generator().manual_seed(0))
    given = build_novel_camera_pool(config, inputs, torch.Generator().manual_seed(0), orbit=fit_orbit(frames))
    assert given.kinds == own.kinds == ("input",) * 2 + ("circle",) * 6 + ("random",) * 4
    torch.testing.assert_close(given.cameras[:2].T, inputs.T)
    torch.testing.assert_close(given.look_at, L, atol=1e-4, rtol=0)  # the frames' look-at point, not the inputs'
    assert float((own.look_at - L).norm()) > 0.5
    eyes = given.cameras[2:].camera_centers()
    torch.testing.assert_close((eyes - C0).norm(dim=-1), torch.full((10,), RADIUS), atol=1e-4, rtol=0)
    torch.testing.assert_close(given.cameras[2:].R[:, :, 2], torch.nn.functional.normalize(L - eyes, dim=-1),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_pool_cameras_convert_to_nerfstudio_rays_through_the_look_at_point():
    inputs = orbit_cameras([10, 120, 230], principal=(0.05, -0.03))
    pool = build_novel_camera_pool(
        NovelCameraPoolConfig(num_circle_cameras=4, num_random_cameras=2), inputs, torch.Generator().manual_seed(2)
    )
    size = 16
    cameras = ndc_to_nerfstudio(pool.cameras, (size, size))
    for index in range(len(pool)):
        ndc = pool.cameras[index].transform_points_ndc(pool.look_at[None])[:, :, :2]
        uv = ndc_to_pixels(ndc, (size, size))[0, 0]
        rays = cameras.generate_rays(camera_indices=index, coords=torch.stack([uv[1], uv[0]])[None])
        origin, direction = rays.origins[0], rays.directions[0]
        torch.testing.assert_close(origin, pool.cameras[index].camera_centers()[0], atol=1e-5, rtol=0)
        towards = torch.nn.functional.normalize(pool.look_at - origin, dim=0)
        torch.testing.assert_close(direction, towards, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- frames of the EFT
def _random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def _moved(cameras: NDCCameras, rotation: torch.Tensor, shift: torch.Tensor) -> NDCCameras:
    """The same cameras after the world moves by X' = X M + s (row vectors, M a rotation)."""
    # X_view = X R + T = (X' − s) Mᵀ R + T  ⇒  R' = Mᵀ R, T' = T − s Mᵀ R
    R = rotation.T @ cameras.R
    return NDCCameras(R=R, T=cameras.T - torch.einsum("j,njk->nk", shift, R),
                      focal_length=cameras.focal_length, principal_point=cameras.principal_point)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_teacher() -> Teacher:
    return Teacher.tiny(seed=0)


@pytest.fixture
def single_thread():
    """One torch thread: on a small shared CPU, competing OpenMP threads make the EFT many times slower."""
    with torch_threads(1):
        yield


def test_eft_queries_run_in_the_query_frame(tiny_teacher, single_thread):
    size = tiny_teacher.config.eft.image_size
    inputs = orbit_cameras([10, 120, 230])
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    pool = build_novel_camera_pool(
        NovelCameraPoolConfig(num_circle_cameras=4, num_random_cameras=0), inputs, torch.Generator().manual_seed(0)
    )
    query = pool.cameras[5]
    rgb, features = tiny_teacher.eft.query(images, inputs, query)
    # a rotation of the world about its origin keeps d̄ (a mean distance to the origin) and the answer
    rotation = _random_rotation(7)
    no_shift = torch.zeros(3)
    moved = tiny_teacher.eft.query(images, _moved(inputs, rotation, no_shift), _moved(query, rotation, no_shift))
    # atol: float32 round-off of the relative poses (~1e-6) through the tiny EFT, observed ≤ 2e-6
    torch.testing.assert_close(moved[0], rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[1], features, atol=1e-5, rtol=0)
    # a translation too, once d̄ is fixed (by default it is measured from the world origin, as the authors)
    depth = float(inputs.camera_centers().norm(dim=-1).mean())
    shift = torch.tensor([0.7, -0.4, 1.1])
    shifted = tiny_teacher.eft.query(
        images, _moved(inputs, rotation, shift), _moved(query, rotation, shift), depth_center=depth
    )
    torch.testing.assert_close(shifted[1], features, atol=1e-5, rtol=0)
    # and the answer does depend on the query camera
    other = tiny_teacher.eft.query(images, inputs, pool.cameras[6])
    assert float((other[1] - features).abs().max()) > 1e-3


def test_teacher_inputs_come_from_the_field_frame(tmp_path):
    scene = demo_scene(tmp_path / "scene", num_views=8, resolution=24)  # non-teacher size: crops resized to 64²
    config = tiny_trainer_config(scene, tmp_path / "out", iterations=1, input_views=(1, 4, 6))
    pipeline = config.pipeline.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    datamanager = pipeline.datamanager
    inputs = teacher_inputs(datamanager, 64)
    assert inputs.images.shape == (3, 3, 64, 64)
    assert float(inputs.images.min()) >= 0 and float(inputs.images.max()) <= 1
    assert list(inputs.frame_indices) == [1, 4, 6]
    # the dataparser rotated the world so that input camera 0 has the identity (PyTorch3D) rotation
    torch.testing.assert_close(inputs.cameras.R[0], torch.eye(3), atol=1e-5, rtol=0)
    # (the images and intrinsics are those of teacher training: test_teacher_inputs_match_training.py)
    # every scene frame, in scene order; the inputs sit at their frame indices, with the same crops
    frames = scene_frame_cameras(datamanager, 64)
    assert len(frames) == 8
    torch.testing.assert_close(frames.R[[1, 4, 6]], inputs.cameras.R)
    torch.testing.assert_close(frames.T[[1, 4, 6]], inputs.cameras.T)
    torch.testing.assert_close(frames.focal_length[[1, 4, 6]], inputs.cameras.focal_length)
    torch.testing.assert_close(frames.principal_point[[1, 4, 6]], inputs.cameras.principal_point)
