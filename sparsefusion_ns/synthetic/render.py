"""Images of a :class:`~.shapes.ShapeScene` seen by a camera: colour, coverage (the mask) and depth.

Two camera conventions, one ray caster:

- :func:`render_pytorch3d_view`: a PyTorch3D camera with NDC intrinsics (what CO3D stores and the
  teacher was trained with, see ``docs/cameras.md``), for the CO3D-format category and fixture;
- :func:`render_opengl_view`: an OpenGL camera-to-world pose with pixel intrinsics (nerfstudio's
  ``transforms.json``), for the demo scene.

Pixels are anti-aliased by ``supersampling``² samples on a regular sub-pixel grid; the coverage
(fraction of samples that hit the object) is the soft foreground mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
from jaxtyping import Float

from sparsefusion_ns.synthetic.shapes import ShapeScene


@dataclass
class RenderedView:
    """What one camera sees, at the image's pixel resolution."""

    rgb: Float[np.ndarray, "h w 3"]
    """Colour in [0, 1] composited over the background."""
    coverage: Float[np.ndarray, "h w"]
    """Fraction of the pixel covered by the object (the soft mask)."""
    depth: Float[np.ndarray, "h w"]
    """Mean view depth (distance along the optical axis) of the covered samples; 0 where uncovered."""


Background = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``background(u, v)`` → colours (..., 3) at sub-pixel positions (u right, v down, in pixels)."""


def black_background(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """No background: black."""
    return np.zeros(np.shape(u) + (3,))


def _subpixel_grid(image_size_hw: Tuple[int, int], supersampling: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sample positions (u, v), each (H·k, W·k): pixel (i, j) spans [j, j + 1) × [i, i + 1)."""
    height, width = image_size_hw
    k = supersampling
    u = (np.arange(width * k) + 0.5) / k
    v = (np.arange(height * k) + 0.5) / k
    return np.meshgrid(u, v)


def _render(
    scene: ShapeScene,
    origin: np.ndarray,
    directions: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    image_size_hw: Tuple[int, int],
    supersampling: int,
    background: Background,
) -> RenderedView:
    """Trace ``directions`` (H·k, W·k, 3), scaled so that their view-space depth component is 1."""
    hits = scene.cast(origin, directions)
    colour = np.where(hits.hit[..., None], scene.shade(hits, directions), background(u, v))
    depth = np.where(hits.hit, hits.t, 0.0)
    height, width = image_size_hw
    k = supersampling

    def pool(array: np.ndarray) -> np.ndarray:
        return array.reshape(height, k, width, k, *array.shape[2:]).mean(axis=(1, 3))

    coverage = pool(hits.hit.astype(np.float64))
    depth_sum = pool(depth)
    mean_depth = np.where(coverage > 0, depth_sum / np.maximum(coverage, 1e-12), 0.0)
    return RenderedView(rgb=pool(colour), coverage=coverage, depth=mean_depth)


def render_pytorch3d_view(
    scene: ShapeScene,
    R: Float[np.ndarray, "3 3"],
    T: Float[np.ndarray, "3"],
    focal_length: Float[np.ndarray, "2"],
    principal_point: Float[np.ndarray, "2"],
    image_size_hw: Tuple[int, int],
    supersampling: int = 2,
    background: Optional[Background] = None,
) -> RenderedView:
    """Render a PyTorch3D camera (``X_view = X_world @ R + T``) with isotropic NDC intrinsics.

    NDC: +x left, +y up, the shorter image side spans [-1, 1]; ``x_ndc = fx · x/z + px``.
    """
    height, width = image_size_hw
    half_short_side = min(height, width) / 2.0
    u, v = _subpixel_grid(image_size_hw, supersampling)
    x_ndc, y_ndc = (width / 2.0 - u) / half_short_side, (height / 2.0 - v) / half_short_side
    fx, fy = np.asarray(focal_length, np.float64)
    px, py = np.asarray(principal_point, np.float64)
    d_view = np.stack([(x_ndc - px) / fx, (y_ndc - py) / fy, np.ones_like(x_ndc)], axis=-1)  # view z = 1
    R, T = np.asarray(R, np.float64), np.asarray(T, np.float64)
    d_world = d_view @ R.T  # X_world = (X_view − T) R^T: directions map by R^T (row form)
    centre = -R @ T
    return _render(scene, centre, d_world, u, v, image_size_hw, supersampling, background or black_background)


def render_opengl_view(
    scene: ShapeScene,
    camera_to_world: Float[np.ndarray, "3 4"],
    focal_px: Tuple[float, float],
    principal_point_px: Tuple[float, float],
    image_size_hw: Tuple[int, int],
    supersampling: int = 1,
    background: Optional[Background] = None,
) -> RenderedView:
    """Render an OpenGL camera (looks down −z, +y up; nerfstudio's ``transform_matrix``) with pixel
    intrinsics (u right, v down, pixel centres at half-integers)."""
    u, v = _subpixel_grid(image_size_hw, supersampling)
    (fx, fy), (cx, cy) = focal_px, principal_point_px
    d_camera = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], axis=-1)  # depth 1 along −z
    pose = np.asarray(camera_to_world, np.float64)
    d_world = d_camera @ pose[:3, :3].T
    return _render(scene, pose[:3, 3], d_world, u, v, image_size_hw, supersampling, background or black_background)
