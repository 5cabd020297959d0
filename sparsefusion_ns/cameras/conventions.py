"""Camera conventions: PyTorch3D NDC cameras <-> nerfstudio cameras.

SparseFusion's networks and CO3Dv2's annotations use PyTorch3D cameras; nerfstudio uses OpenGL
camera-to-world poses with pixel intrinsics. This module converts between the two, both ways,
for batches of cameras, exactly (no approximation). ``docs/cameras.md`` has a worked example.

Three conventions
-----------------
All three share the world frame; they differ in the camera ("view") frame and in the units of
the intrinsics.

============  =========  =========  ==============  ===========================================
convention    camera +X  camera +Y  camera looks    pose stored as
============  =========  =========  ==============  ===========================================
PyTorch3D     left       up         +Z (forward)    world-to-view, row vectors:
                                                    ``X_view = X_world @ R + T``
OpenCV        right      down       +Z (forward)    world-to-camera, column vectors:
                                                    ``x_cam = R_cv x_world + t_cv``
OpenGL        right      up         -Z (backward)   camera-to-world ``[R_c2w | C]`` (3x4):
(nerfstudio)                                        ``x_world = R_c2w x_gl + C``
============  =========  =========  ==============  ===========================================

**Extrinsics.** In column form PyTorch3D's camera is ``x_view = R^T x_world + T``: the columns
of ``R`` are the camera axes in world coordinates and the camera centre is ``C = -R T``. The
PyTorch3D view frame is OpenGL's with the x and z axes flipped (``F = diag(-1, 1, -1)``), and
OpenCV's with x and y flipped. Hence, with ``F = F^T = F^-1``::

    x_gl   = F x_view = F R^T x_world + F T
    R_c2w  = (F R^T)^T = R F        # R with its first and third columns negated
    C      = -R T                   # translation column of the camera-to-world matrix
    R      = R_c2w F,   T = -R^T C  # and back

**Intrinsics.** PyTorch3D projects a view-frame point to normalised device coordinates (NDC),
``x_ndc = fx_ndc * x/z + px_ndc`` and ``y_ndc = fy_ndc * y/z + py_ndc``, where NDC +x points to the
image's left edge, +y to its top edge, and the *shorter* image side spans [-1, 1] (the longer one
spans [-W/S, W/S] or [-H/S, H/S]). With ``S = min(H, W)`` an NDC point lands on the pixel
position (OpenCV/nerfstudio pixels: u right, v down, the image's top-left *corner* at (0, 0) and
pixel (i, j) centred at (j + 0.5, i + 0.5))::

    u = W/2 - x_ndc * S/2,          v = H/2 - y_ndc * S/2

Substituting the projection (and ``x/z = x_gl/z_gl``, ``y/z = -y_gl/z_gl``) gives the pixel
intrinsics of both OpenCV and nerfstudio::

    fx_px = fx_ndc * S/2            cx_px = W/2 - px_ndc * S/2
    fy_px = fy_ndc * S/2            cy_px = H/2 - py_ndc * S/2

One scale ``S/2`` serves both axes ("isotropic" NDC, PyTorch3D >= 0.5 and CO3Dv2's
``ndc_isotropic``); the principal point is measured from the image *centre*. For a 256 x 256
image: ``fx_px = 128 fx_ndc`` and ``cx_px = 128 - 128 px_ndc``.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras, CameraType

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras

ImageSizeHW = Union[Tuple[int, int], Int[Tensor, "n 2"], Float[Tensor, "n 2"]]
"""Image size (H, W) in pixels: one pair for every camera, or one row per camera."""


def _axis_flip(reference: Tensor) -> Tensor:
    """``F = diag(-1, 1, -1)``: PyTorch3D view axes <-> OpenGL camera axes (an involution)."""
    return torch.diag(reference.new_tensor([-1.0, 1.0, -1.0]))


def _size_hw(image_size_hw: ImageSizeHW, n: int, reference: Tensor) -> Float[Tensor, "n 2"]:
    size = torch.as_tensor(image_size_hw, dtype=reference.dtype, device=reference.device)
    if size.shape == (2,):
        size = size.expand(n, 2)
    if size.shape != (n, 2):
        raise ValueError(
            f"image_size_hw must be (H, W) or an (n, 2) tensor for n = {n} cameras; got {tuple(size.shape)}"
        )
    return size


# ----------------------------------------------------------------------------------- intrinsics
def ndc_to_pixel_intrinsics(
    focal_length: Float[Tensor, "n 2"], principal_point: Float[Tensor, "n 2"], image_size_hw: ImageSizeHW
) -> Tuple[Float[Tensor, "n 2"], Float[Tensor, "n 2"]]:
    """Isotropic NDC (fx, fy), (px, py) -> pixel (fx, fy), (cx, cy) for images of size (H, W)."""
    size_hw = _size_hw(image_size_hw, focal_length.shape[0], focal_length)
    half_wh = size_hw.flip(-1) / 2.0  # (W/2, H/2)
    half_s = size_hw.min(dim=-1, keepdim=True).values / 2.0  # S/2, S = min(H, W)
    return focal_length * half_s, half_wh - principal_point * half_s


def pixel_to_ndc_intrinsics(
    focal_px: Float[Tensor, "n 2"], principal_px: Float[Tensor, "n 2"], image_size_hw: ImageSizeHW
) -> Tuple[Float[Tensor, "n 2"], Float[Tensor, "n 2"]]:
    """Pixel (fx, fy), (cx, cy) -> isotropic NDC (fx, fy), (px, py); inverse of ``ndc_to_pixel_intrinsics``."""
    size_hw = _size_hw(image_size_hw, focal_px.shape[0], focal_px)
    half_wh = size_hw.flip(-1) / 2.0
    half_s = size_hw.min(dim=-1, keepdim=True).values / 2.0
    return focal_px / half_s, (half_wh - principal_px) / half_s


def ndc_to_pixels(xy_ndc: Float[Tensor, "n p 2"], image_size_hw: ImageSizeHW) -> Float[Tensor, "n p 2"]:
    """NDC (x left, y up) -> pixel positions (u right, v down; pixel (i, j) centred at (j+0.5, i+0.5))."""
    size_hw = _size_hw(image_size_hw, xy_ndc.shape[0], xy_ndc)[:, None, :]
    half_s = size_hw.min(dim=-1, keepdim=True).values / 2.0
    return size_hw.flip(-1) / 2.0 - xy_ndc * half_s


def pixels_to_ndc(uv: Float[Tensor, "n p 2"], image_size_hw: ImageSizeHW) -> Float[Tensor, "n p 2"]:
    """Pixel positions -> NDC; inverse of ``ndc_to_pixels``."""
    size_hw = _size_hw(image_size_hw, uv.shape[0], uv)[:, None, :]
    half_s = size_hw.min(dim=-1, keepdim=True).values / 2.0
    return (size_hw.flip(-1) / 2.0 - uv) / half_s


# ----------------------------------------------------------------------------------- extrinsics
def pytorch3d_to_opengl_pose(R: Float[Tensor, "n 3 3"], T: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3 4"]:
    """PyTorch3D world-to-view (row-vector R, T) -> OpenGL camera-to-world ``[R F | -R T]``."""
    rotation_c2w = R @ _axis_flip(R)  # R_c2w = R F
    centre = -torch.einsum("nij,nj->ni", R, T)  # C = -R T
    return torch.cat([rotation_c2w, centre[..., None]], dim=-1)


def opengl_pose_to_pytorch3d(
    camera_to_world: Float[Tensor, "n 3 4"],
) -> Tuple[Float[Tensor, "n 3 3"], Float[Tensor, "n 3"]]:
    """OpenGL camera-to-world (3x4) -> PyTorch3D world-to-view (row-vector R, T); inverse of the above."""
    rotation_c2w, centre = camera_to_world[..., :3], camera_to_world[..., 3]
    R = rotation_c2w @ _axis_flip(camera_to_world)  # R = R_c2w F
    T = -torch.einsum("nji,nj->ni", R, centre)  # T = -R^T C
    return R, T


# ------------------------------------------------------------------------------- whole cameras
def ndc_to_nerfstudio(cameras: NDCCameras, image_size_hw: ImageSizeHW) -> Cameras:
    """PyTorch3D NDC cameras of images of size (H, W) -> nerfstudio perspective ``Cameras``."""
    n = len(cameras)
    focal_px, principal_px = ndc_to_pixel_intrinsics(cameras.focal_length, cameras.principal_point, image_size_hw)
    size_hw = _size_hw(image_size_hw, n, cameras.R)
    return Cameras(
        camera_to_worlds=pytorch3d_to_opengl_pose(cameras.R, cameras.T),
        fx=focal_px[:, :1],
        fy=focal_px[:, 1:],
        cx=principal_px[:, :1],
        cy=principal_px[:, 1:],
        width=size_hw[:, 1:].round().long(),
        height=size_hw[:, :1].round().long(),
        camera_type=CameraType.PERSPECTIVE,
    )


def nerfstudio_to_ndc(cameras: Cameras) -> Tuple[NDCCameras, Int[Tensor, "n 2"]]:
    """Flat batch of nerfstudio perspective ``Cameras`` -> (PyTorch3D NDC cameras, image sizes (H, W))."""
    if cameras.camera_to_worlds.dim() != 3:
        raise ValueError(
            "nerfstudio_to_ndc expects a flat batch of cameras (n, 3, 4); got "
            f"{tuple(cameras.camera_to_worlds.shape)}. Flatten the cameras first (cameras.flatten())."
        )
    if not bool((cameras.camera_type == CameraType.PERSPECTIVE.value).all()):
        raise ValueError("Only perspective (pinhole) cameras have a PyTorch3D NDC equivalent.")
    if cameras.distortion_params is not None and bool(cameras.distortion_params.abs().gt(0).any()):
        raise ValueError("Cameras with lens distortion have no PyTorch3D NDC equivalent: undistort the images first.")
    size_hw = torch.cat([cameras.height, cameras.width], dim=-1)
    focal_px = torch.cat([cameras.fx, cameras.fy], dim=-1)
    principal_px = torch.cat([cameras.cx, cameras.cy], dim=-1)
    focal_ndc, principal_ndc = pixel_to_ndc_intrinsics(focal_px, principal_px, size_hw)
    R, T = opengl_pose_to_pytorch3d(cameras.camera_to_worlds)
    return NDCCameras(R=R, T=T, focal_length=focal_ndc, principal_point=principal_ndc), size_hw
