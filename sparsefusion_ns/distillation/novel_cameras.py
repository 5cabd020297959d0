"""The pool of novel cameras that the distillation's step (B) renders and asks the teacher about.

docs/method.md#novel-camera-pool. Cameras orbit the object on a circle fitted to known camera
centres, all looking at the point nearest every known principal axis, with the elevation (seen
from that point) jittered by up to ±0.17 rad:

- ``source="inputs"`` (default, honest): the circle and the look-at point are fitted to the *input*
  cameras only; the pool is the input cameras, ``num_circle_cameras`` evenly spaced cameras on the
  circle and ``num_random_cameras`` at random azimuths on it.
- ``source="authors"``: the authors' pool. The circle is fitted to every frame of the scene and the
  pool holds every frame's pose plus the circle cameras. It uses the evaluation (held-out) poses.
  With ``look_at_axes="mean_principal_point"`` it is aimed as theirs too.

Everything is in PyTorch3D convention (:class:`NDCCameras`, row vectors ``X_view = X_world R + T``,
+X left, +Y up, +Z forward) and in the field's world frame. Generated cameras take the mean NDC focal
length and principal point of the cameras the circle was fitted to (as the authors).

Geometry (``C_i`` camera centres, ``d_i`` each camera's optical axis, or with
``look_at_axes="mean_principal_point"`` its ray through the cameras' mean principal point as the
authors compute it; ``n`` the circle's plane normal):
- look-at point ``L = argmin_x Σ_i |(I − d̂_i d̂_iᵀ)(x − C_i)|²`` (closed-form least squares);
- plane: least-squares plane through the ``C_i`` (SVD); ``n`` signed to agree with the cameras' mean
  up vector, and used as the up vector of every generated camera;
- circle: algebraic least-squares (Kåsa) fit of the ``C_i`` projected into the plane. With two
  cameras (or collinear centres) the circle is not determined: it then passes through the centres'
  mean with its centre on the in-plane perpendicular closest to ``L``, and ``n`` comes from the
  cameras' up vector;
- jitter: each generated centre ``E`` is rotated about ``L`` within the vertical plane spanned by
  ``E − L`` and ``n``, changing its elevation above ``L`` by ``δ ~ U(−j, j)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from sparsefusion_ns.cameras.look_at import look_at_pytorch3d, nearest_point_to_lines
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras, query_rays

COLLINEAR_RATIO = 1e-2
"""Camera centres whose second singular value is below this fraction of the first count as
collinear: no circle is fitted through them (a near-straight line gives a huge, unstable circle)."""

LookAtAxes = Literal["mean_principal_point", "optical"]
"""Which lines the look-at point is nearest to (:attr:`NovelCameraPoolConfig.look_at_axes`)."""
DEFAULT_LOOK_AT_AXES: LookAtAxes = "optical"
"""The pool's, the orbit video's and the export rings' choice unless told otherwise."""


@dataclass
class NovelCameraPoolConfig:
    """Which cameras the distillation renders for the teacher (docs/method.md#novel-camera-pool)."""

    source: Literal["inputs", "authors"] = "inputs"
    """'inputs': the circle and look-at point are fitted to the input cameras only, the pool holds
    the input cameras plus circle and random orbit cameras (no evaluation pose is used).
    'authors': the authors' pool, the poses of EVERY scene frame (it USES THE EVALUATION / held-out
    POSES, leaking test cameras) plus circle cameras fitted to all frames."""
    num_circle_cameras: int = 50
    """Cameras evenly spaced in azimuth on the fitted circle (authors: 50)."""
    num_random_cameras: int = 32
    """Cameras at uniformly random azimuths on the circle ('inputs' pool only; the authors' pool
    has the scene frames instead)."""
    elevation_jitter: float = 0.17
    """Largest change of a generated camera's elevation above the look-at point, in radians
    (uniform in ±this; authors: 0.17)."""
    look_at_axes: LookAtAxes = DEFAULT_LOOK_AT_AXES
    """The lines whose nearest point is the look-at point. 'optical': each camera's own optical axis
    (the ray through its own principal point). 'mean_principal_point' (the authors'): each camera's
    ray through the cameras' *mean* principal point. They agree when the principal points do; the
    teacher's crops around each input's mask give every input its own, and with two inputs the
    mean's rays can then miss the object by a fifth of its size, where the optical axes do not. On
    the V = 2 benchmark 'optical' gains SparseFusion 0.96 ± 0.40 dB and 0.027 SSIM over 10 scenes
    (docs/mini_comparison.md, "One failure").
    With ``source="authors"`` and 'mean_principal_point' the pool is exactly the authors'."""


@dataclass(frozen=True)
class CameraCircle:
    """A circle in 3D: ``centre + radius (cos θ start + sin θ (normal × start))``."""

    centre: Float[Tensor, "3"]
    """Centre of the circle."""
    normal: Float[Tensor, "3"]
    """Unit normal of its plane, pointing to the cameras' "up" side."""
    radius: float
    """Radius."""
    start: Float[Tensor, "3"]
    """Unit in-plane direction of azimuth 0 (towards the first camera)."""

    def points(self, azimuths: Float[Tensor, " n"]) -> Float[Tensor, "n 3"]:
        """Points of the circle at the given azimuths (radians)."""
        side = torch.linalg.cross(self.normal, self.start)
        return self.centre + self.radius * (
            torch.cos(azimuths)[:, None] * self.start + torch.sin(azimuths)[:, None] * side
        )


@dataclass(frozen=True)
class NovelCameraPool:
    """The pool: cameras plus the geometry they were made from."""

    cameras: NDCCameras
    """All pool cameras, in the field's world frame."""
    kinds: Tuple[str, ...]
    """Per camera: 'input', 'frame' (a scene frame, authors' pool), 'circle' or 'random'."""
    look_at: Float[Tensor, "3"]
    """Point every generated camera looks at."""
    circle: CameraCircle
    """The fitted circle."""
    elevation_offsets: Float[Tensor, " m"]
    """Elevation jitter δ of each generated camera (circle then random), radians."""

    def __len__(self) -> int:
        return len(self.cameras)


def _normalize(vectors: Tensor) -> Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True)


def principal_axes(
    cameras: NDCCameras, axes: LookAtAxes = DEFAULT_LOOK_AT_AXES
) -> Tuple[Float[Tensor, "n 3"], Float[Tensor, "n 3"]]:
    """(origins, unit directions) of each camera's optical axis (its view +Z, ``R[:, :, 2]``), or with
    ``axes="mean_principal_point"`` of the rays through the cameras' mean principal point (as the authors)."""
    if axes == "optical":
        return cameras.camera_centers(), _normalize(cameras.R[:, :, 2])
    mean_principal = cameras.principal_point.mean(dim=0)
    origins, directions = query_rays(cameras, mean_principal[None])
    return origins[:, 0], _normalize(directions[:, 0])


def mean_up_vector(cameras: NDCCameras) -> Float[Tensor, "3"]:
    """Mean of the cameras' +Y (up) axes in world coordinates (the columns R[:, :, 1])."""
    return _normalize(cameras.R[:, :, 1].mean(dim=0))


def fit_camera_circle(
    centres: Float[Tensor, "n 3"], up_hint: Float[Tensor, "3"], look_at: Float[Tensor, "3"]
) -> CameraCircle:
    """Circle through (or nearest to) the camera centres; see the module docstring."""
    if centres.shape[0] < 2:
        raise ValueError(f"a camera circle needs at least two camera centres, got {centres.shape[0]}")
    mean = centres.mean(dim=0)
    centred = centres - mean
    _, singular, basis = torch.linalg.svd(centred, full_matrices=True)
    collinear = centres.shape[0] < 3 or bool(singular[1] < COLLINEAR_RATIO * singular[0])
    if collinear:
        chord = basis[0]
        normal = _normalize(up_hint - (up_hint @ chord) * chord)
        across = torch.linalg.cross(normal, chord)
        centre = mean + ((look_at - mean) @ across) * across
        radius = float((centres - centre).norm(dim=-1).mean())
    else:
        e1, e2, normal = basis[0], basis[1], basis[2]
        if normal @ up_hint < 0:
            normal = -normal
        x, y = centred @ e1, centred @ e2
        # (x − xc)² + (y − yc)² = r²  ⇔  2 xc x + 2 yc y + (r² − xc² − yc²) = x² + y²
        design = torch.stack([x, y, torch.ones_like(x)], dim=-1)
        solution = torch.linalg.lstsq(design, (x**2 + y**2)[:, None]).solution[:, 0]
        xc, yc = solution[0] / 2, solution[1] / 2
        radius = float(torch.sqrt(solution[2] + xc**2 + yc**2))
        centre = mean + xc * e1 + yc * e2
    towards_first = centres[0] - centre
    start = _normalize(towards_first - (towards_first @ normal) * normal)
    return CameraCircle(centre=centre, normal=normal, radius=radius, start=start)


def elevate(
    eyes: Float[Tensor, "n 3"], pivot: Float[Tensor, "3"], up: Float[Tensor, "3"], angles: Float[Tensor, " n"]
) -> Float[Tensor, "n 3"]:
    """Rotate each eye about ``pivot`` within the plane of ``eye − pivot`` and ``up`` by ``angle``
    (positive: towards ``up``), so its elevation above ``pivot`` grows by ``angle``; distances to
    ``pivot`` and azimuths are kept (Rodrigues' formula about the axis (eye − pivot) × up)."""
    offsets = eyes - pivot
    axes = _normalize(torch.linalg.cross(offsets, up.expand_as(offsets), dim=-1))
    cos, sin = torch.cos(angles)[:, None], torch.sin(angles)[:, None]
    # the axis is orthogonal to the offset, so Rodrigues' a (a·v)(1 − cos) term vanishes
    rotated = offsets * cos + torch.linalg.cross(axes, offsets, dim=-1) * sin
    return pivot + rotated


def look_at_cameras(
    eyes: Float[Tensor, "n 3"],
    target: Float[Tensor, "3"],
    up: Float[Tensor, "3"],
    focal_length: Float[Tensor, "2"],
    principal_point: Float[Tensor, "2"],
) -> NDCCameras:
    """PyTorch3D cameras at ``eyes`` whose +Z axis points at ``target`` and +Y leans towards ``up``."""
    R, T = look_at_pytorch3d(eyes, target, up)
    n = eyes.shape[0]
    return NDCCameras(
        R=R, T=T, focal_length=focal_length.expand(n, 2).clone(), principal_point=principal_point.expand(n, 2).clone()
    )


def fit_orbit(
    cameras: NDCCameras, look_at_axes: LookAtAxes = DEFAULT_LOOK_AT_AXES
) -> Tuple[CameraCircle, Float[Tensor, "3"]]:
    """The circle fitted to the cameras' centres and the point nearest their principal axes (module
    docstring; ``look_at_axes`` as :attr:`NovelCameraPoolConfig.look_at_axes`)."""
    axis_origins, axis_directions = principal_axes(cameras, look_at_axes)
    look_at = nearest_point_to_lines(axis_origins, axis_directions)
    return fit_camera_circle(cameras.camera_centers(), mean_up_vector(cameras), look_at), look_at


def orbit_cameras(
    known: NDCCameras, num_cameras: int, elevation: float = 0.0
) -> Tuple[NDCCameras, CameraCircle, Float[Tensor, "3"]]:
    """``num_cameras`` cameras evenly spaced over 360° on the circle fitted to ``known`` (the pool's
    geometry), raised by ``elevation`` radians above it as seen from the look-at point, all looking at
    that point with the known cameras' mean intrinsics; also the circle and the look-at point."""
    known = known.to("cpu", torch.float32)
    circle, look_at = fit_orbit(known)
    azimuths = torch.arange(num_cameras, dtype=torch.float32) * (2 * math.pi / num_cameras)
    eyes = elevate(circle.points(azimuths), look_at, circle.normal, torch.full_like(azimuths, elevation))
    cameras = look_at_cameras(
        eyes, look_at, circle.normal, known.focal_length.mean(dim=0), known.principal_point.mean(dim=0)
    )
    return cameras, circle, look_at


def build_novel_camera_pool(
    config: NovelCameraPoolConfig,
    input_cameras: NDCCameras,
    generator: torch.Generator,
    scene_frames: Optional[NDCCameras] = None,
    orbit: Optional[Tuple[CameraCircle, Float[Tensor, "3"]]] = None,
) -> NovelCameraPool:
    """The pool of ``config.source`` (module docstring), on the CPU; random draws come from ``generator``.

    ``scene_frames`` (every frame of the scene, inputs and held-out, in scene order) is needed by
    the authors' pool only. ``orbit`` (a circle and look-at point, as :func:`fit_orbit` returns)
    places the generated cameras on another orbit than the one fitted to the pool's cameras; an
    ablation of ``benchmarks/novel_camera_pool.py``, which fits it to every scene frame.
    """
    if config.source == "authors":
        if scene_frames is None:
            raise ValueError("the authors' camera pool needs every scene frame's camera (scene_frames)")
        fitted, known, known_kind, num_random = scene_frames, scene_frames, "frame", 0
    else:
        fitted, known, known_kind, num_random = input_cameras, input_cameras, "input", config.num_random_cameras
    fitted, known = fitted.to("cpu", torch.float32), known.to("cpu", torch.float32)
    circle, look_at = fit_orbit(fitted, config.look_at_axes) if orbit is None else orbit

    num_circle = config.num_circle_cameras
    even = torch.arange(num_circle, dtype=torch.float32) * (2 * math.pi / max(num_circle, 1))
    random = torch.rand(num_random, generator=generator) * (2 * math.pi)
    azimuths = torch.cat([even, random])
    jitter = (torch.rand(azimuths.shape[0], generator=generator) * 2 - 1) * config.elevation_jitter
    eyes = elevate(circle.points(azimuths), look_at, circle.normal, jitter)
    generated = look_at_cameras(
        eyes, look_at, circle.normal, fitted.focal_length.mean(dim=0), fitted.principal_point.mean(dim=0)
    )
    cameras = NDCCameras.cat([known, generated])
    kinds = (known_kind,) * len(known) + ("circle",) * num_circle + ("random",) * num_random
    return NovelCameraPool(cameras=cameras, kinds=kinds, look_at=look_at, circle=circle, elevation_offsets=jitter)
