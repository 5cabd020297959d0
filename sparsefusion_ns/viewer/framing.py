"""Where the web viewer's camera starts: at the first input camera, looking at the object.

nerfstudio's viewer (viser) opens every browser at viser's default camera, a fixed point a few
units from the world origin. Object-centric scenes put the object at about the origin, so that
camera sits inside or against it and a newcomer sees a coloured blur. The first input view,
instead, shows the whole object by construction (co3d crops it with context; a sparse-view capture
is aimed at it), so the viewer starts there:

- **position**: the first input camera's centre, pulled back from the look-at point by a quarter of
  its distance (``PULL_BACK``): nerfstudio draws every training camera as a frustum, and one whose
  apex is the eye fills the view with its picture; a quarter back it is a small mark;
- **look-at**: the point nearest to every input camera's *image-centre ray* (the ray through the
  middle of its picture, where object-centric crops put the object; with centred principal points
  this is the principal axis), i.e. the object's centre as the inputs see it
  (``cameras/look_at.py``). With one camera, or axes that meet behind it, the point on its
  image-centre ray as far away as the world origin;
- **up**: the inputs' mean up vector (the axis an orbit capture turns about), which viser's orbit
  controls then rotate around;
- **vertical field of view**: the first camera's, widened if the browser's canvas is narrower than
  its image, so the horizontal extent fits too. The object then fills about 1 / PULL_BACK of what
  it fills in the first input image.

Everything is in nerfstudio's world frame (the field's); the viewer scales it by
``VISER_NERFSTUDIO_SCALE_RATIO`` for viser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras

from sparsefusion_ns.cameras.look_at import nearest_point_to_lines

PULL_BACK = 1.25
"""The opening camera's distance from the look-at point, in units of the first input camera's."""


@dataclass(frozen=True)
class ViewerPose:
    """A viewer camera in nerfstudio's world frame."""

    position: Float[Tensor, "3"]
    """Camera centre."""
    look_at: Float[Tensor, "3"]
    """The point at the centre of the view (viser's orbit pivot)."""
    up: Float[Tensor, "3"]
    """Unit up direction (viser's orbit axis)."""
    fov: float
    """Vertical field of view of the first input image, in radians."""
    horizontal_fov: float
    """Its horizontal field of view, in radians."""

    def fov_for_canvas(self, canvas_aspect: float) -> float:
        """Vertical field of view that shows the whole first input image on a canvas of ``canvas_aspect``
        (width / height): its own, or wider when the canvas is narrower than the image."""
        if canvas_aspect <= 0:
            return self.fov
        fits_width = 2 * math.atan(math.tan(self.horizontal_fov / 2) / canvas_aspect)
        return max(self.fov, fits_width)


def image_centre_rays(cameras: Cameras) -> tuple[Float[Tensor, "n 3"], Float[Tensor, "n 3"]]:
    """(origins, unit directions) of the rays through the middle of each camera's image (world frame)."""
    cameras = cameras.flatten().to("cpu")
    c2w = cameras.camera_to_worlds.double()
    fx, fy = cameras.fx[:, 0].double(), cameras.fy[:, 0].double()
    cx, cy = cameras.cx[:, 0].double(), cameras.cy[:, 0].double()
    width, height = cameras.width[:, 0].double(), cameras.height[:, 0].double()
    # nerfstudio's pinhole (OpenGL: +X right, +Y up, looking down −Z): pixel (u, v) → ((u − cx)/fx, −(v − cy)/fy, −1)
    local = torch.stack([(width / 2 - cx) / fx, -(height / 2 - cy) / fy, -torch.ones_like(fx)], dim=-1)
    directions = torch.einsum("nij,nj->ni", c2w[:, :, :3], local)
    return c2w[:, :, 3], directions / directions.norm(dim=-1, keepdim=True)


def framing_pose(cameras: Cameras) -> ViewerPose:
    """The viewer camera that frames the object from the first of ``cameras`` (module docstring)."""
    if cameras.flatten().shape[0] == 0:
        raise ValueError("framing_pose needs at least one camera")
    origins, directions = image_centre_rays(cameras)
    first, forward = origins[0], directions[0]
    look_at = None
    if len(origins) >= 2:
        candidate = nearest_point_to_lines(origins, directions)
        depth = float((candidate - first) @ forward)
        if depth > 1e-6 * max(1.0, float(first.norm())):  # in front of the first camera
            look_at = candidate
    if look_at is None:
        look_at = first + forward * max(float(first.norm()), 1e-3)
    flat = cameras.flatten().to("cpu")
    up = flat.camera_to_worlds[:, :, 1].double().mean(dim=0)
    if float(up.norm()) < 1e-6:  # up vectors cancel out: the first camera's
        up = flat.camera_to_worlds[0, :, 1].double()
    height, width = float(flat.height[0, 0]), float(flat.width[0, 0])
    return ViewerPose(
        position=(look_at + PULL_BACK * (first - look_at)).float(),
        look_at=look_at.float(),
        up=(up / up.norm()).float(),
        fov=2 * math.atan(height / 2 / float(flat.fy[0, 0])),
        horizontal_fov=2 * math.atan(width / 2 / float(flat.fx[0, 0])),
    )
