"""PyTorch3D-convention perspective cameras with NDC intrinsics, without PyTorch3D.

SparseFusion's EFT was trained with PyTorch3D ``PerspectiveCameras(in_ndc=True)``; this module
re-states that convention so the released weights see the geometry they were trained on.

Convention
----------
- **Row vectors.** A world point ``X`` (a row) maps to the camera ("view") frame as
  ``X_view = X_world @ R + T``. The columns of ``R`` are the camera axes in world coordinates,
  and the camera centre is ``C = -T @ R.T`` (``-R T`` in column form).
- **Axes.** In the view frame +X points left, +Y up and +Z forward (into the scene). OpenCV has
  +X right, +Y down; OpenGL/nerfstudio has +X right, +Y up, +Z backward: PyTorch3D's view frame
  is OpenGL's with the x and z axes flipped.
- **NDC.** Projection is ``x_ndc = fx * x/z + px``, ``y_ndc = fy * y/z + py`` and the third
  coordinate is ``1/z``. NDC spans [-1, 1] along the shorter image side, +x to the left edge,
  +y to the top edge. For an S x S image, the pixel intrinsics (OpenCV, +x right, +y down) are
  ``fx_px = (S/2) * f_ndc`` and ``cx_px = S/2 - (S/2) * p_ndc`` (same for y).
- **Ray grids.** PyTorch3D's ``GridRaysampler`` (as configured by SparseFusion) puts ray ``(i, j)``
  of a ``g x g`` grid at NDC ``x = linspace(+m, -m, g)[j]``, ``y = linspace(+m, -m, g)[i]`` with
  ``m = 1 - 1/S``: the half-pixel margin of the S x S *image*, not of the g x g grid. Ray
  directions have view-space z = 1, so distances along a ray are view-space depths.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

CameraIndex = Union[int, slice, Sequence[int], Tensor]


@dataclass
class NDCCameras:
    """A batch of ``n`` PyTorch3D perspective cameras with NDC intrinsics (``in_ndc=True``)."""

    R: Float[Tensor, "n 3 3"]
    """World-to-view rotations in row-vector form: ``X_view = X_world @ R + T``."""
    T: Float[Tensor, "n 3"]
    """World-to-view translations."""
    focal_length: Float[Tensor, "n 2"]
    """(fx, fy) in NDC units."""
    principal_point: Float[Tensor, "n 2"]
    """(px, py) in NDC units (+x left, +y up)."""

    def __post_init__(self) -> None:
        n = self.R.shape[0] if self.R.dim() == 3 else -1
        expected = {
            "R": (self.R, (n, 3, 3)),
            "T": (self.T, (n, 3)),
            "focal_length": (self.focal_length, (n, 2)),
            "principal_point": (self.principal_point, (n, 2)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"NDCCameras.{name} has shape {tuple(tensor.shape)}, expected {shape} "
                    f"(R must be (n, 3, 3); give every field a leading camera dimension n)."
                )

    # ----------------------------------------------------------------------------- container
    def __len__(self) -> int:
        return self.R.shape[0]

    def __getitem__(self, index: CameraIndex) -> NDCCameras:
        """Select cameras; an integer index keeps the camera dimension (a batch of one)."""
        if isinstance(index, Tensor) and index.dim() == 0:
            index = int(index)
        if isinstance(index, Integral):
            index = slice(index, index + 1 if index != -1 else None)
        elif not isinstance(index, (slice, Tensor)):
            index = torch.as_tensor(index, dtype=torch.long, device=self.R.device)
        return NDCCameras(
            R=self.R[index],
            T=self.T[index],
            focal_length=self.focal_length[index],
            principal_point=self.principal_point[index],
        )

    def to(self, *args, **kwargs) -> NDCCameras:
        """Move/cast every field, with the arguments of ``torch.Tensor.to``."""
        return NDCCameras(
            R=self.R.to(*args, **kwargs),
            T=self.T.to(*args, **kwargs),
            focal_length=self.focal_length.to(*args, **kwargs),
            principal_point=self.principal_point.to(*args, **kwargs),
        )

    @property
    def device(self) -> torch.device:
        return self.R.device

    @property
    def dtype(self) -> torch.dtype:
        return self.R.dtype

    @staticmethod
    def cat(cameras: Sequence[NDCCameras]) -> NDCCameras:
        """Concatenate camera batches along the camera dimension."""
        return NDCCameras(
            R=torch.cat([c.R for c in cameras]),
            T=torch.cat([c.T for c in cameras]),
            focal_length=torch.cat([c.focal_length for c in cameras]),
            principal_point=torch.cat([c.principal_point for c in cameras]),
        )

    # ------------------------------------------------------------------------------ geometry
    def camera_centers(self) -> Float[Tensor, "n 3"]:
        """Camera centres in world coordinates, ``C = -T @ R.T``."""
        return -torch.einsum("nj,nij->ni", self.T, self.R)

    def world_to_view(self, points: Float[Tensor, "p 3"] | Float[Tensor, "n p 3"]) -> Float[Tensor, "n p 3"]:
        """``X_view = X_world @ R + T`` for every camera; (P, 3) points are shared by all."""
        points = self._broadcast_points(points)
        return torch.bmm(points, self.R) + self.T[:, None, :]

    def world_to_view_matrix(self) -> Float[Tensor, "n 4 4"]:
        """Homogeneous row-vector world-to-view matrix ``[[R, 0], [T, 1]]``."""
        matrix = self.R.new_zeros(len(self), 4, 4)
        matrix[:, :3, :3] = self.R
        matrix[:, 3, :3] = self.T
        matrix[:, 3, 3] = 1.0
        return matrix

    def projection_matrix(self) -> Float[Tensor, "n 4 4"]:
        """Row-vector view-to-NDC matrix ``K^T``.

        ``K = [[fx, 0, px, 0], [0, fy, py, 0], [0, 0, 0, 1], [0, 0, 1, 0]]``.
        """
        fx, fy = self.focal_length.unbind(-1)
        px, py = self.principal_point.unbind(-1)
        matrix = self.R.new_zeros(len(self), 4, 4)
        matrix[:, 0, 0] = fx
        matrix[:, 1, 1] = fy
        matrix[:, 2, 0] = px
        matrix[:, 2, 1] = py
        matrix[:, 3, 2] = 1.0
        matrix[:, 2, 3] = 1.0
        return matrix

    def transform_points_ndc(self, points: Float[Tensor, "p 3"] | Float[Tensor, "n p 3"]) -> Float[Tensor, "n p 3"]:
        """Project world points to ``(fx x/z + px, fy y/z + py, 1/z)`` in every camera.

        Computed as PyTorch3D does (and as the reference data was produced): the homogeneous
        point times the composed 4x4 matrix (world-to-view @ projection), then divided by the
        fourth coordinate (the view depth), without clamping.
        """
        points = self._broadcast_points(points)
        full = torch.bmm(self.world_to_view_matrix(), self.projection_matrix())
        homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
        projected = torch.bmm(homogeneous, full)
        return projected[..., :3] / projected[..., 3:]

    def relative_to(self, index: int) -> NDCCameras:
        """Re-express all cameras in the view frame of camera ``index``.

        In the new frame camera ``index`` has ``R = I`` and ``T = 0``; the intrinsics are
        unchanged. A world point ``X`` has new coordinates ``self[index].world_to_view(X)``
        (``X @ R_q + T_q``), and every camera projects the moved point exactly where it
        projected ``X``. Per camera: ``R_rel = R_q^T R``, ``T_rel = T - T_q R_rel``. This is
        upstream's ``get_relative_camera(..., center_at_origin=True)``, the frame the EFT runs in.
        """
        R_query = self.R[index]
        T_query = self.T[index]
        R_rel = torch.einsum("ji,njk->nik", R_query, self.R)
        T_rel = self.T - torch.einsum("j,njk->nk", T_query, R_rel)
        return NDCCameras(R=R_rel, T=T_rel, focal_length=self.focal_length, principal_point=self.principal_point)

    def _broadcast_points(self, points: Tensor) -> Tensor:
        if points.dim() == 2:
            return points[None].expand(len(self), -1, -1)
        if points.dim() == 3 and points.shape[0] in (1, len(self)):
            return points.expand(len(self), -1, -1)
        raise ValueError(f"points must be (P, 3) or (n, P, 3) with n = {len(self)} cameras; got {tuple(points.shape)}")


def ndc_ray_grid(grid_size: int, image_size: int) -> Float[Tensor, "g g 2"]:
    """NDC (x, y) of upstream's ``grid_size``^2 ray grid over an ``image_size``^2 image.

    Entry ``[i, j]`` is ``(x_j, y_i)`` with ``x`` and ``y`` both ``linspace(+m, -m, grid_size)``,
    ``m = 1 - 1/image_size`` (PyTorch3D ``GridRaysampler`` with a half-pixel margin of the
    full-resolution image): row 0 is the top of the image and column 0 its left side.
    """
    margin = 1.0 - 1.0 / image_size
    axis = torch.linspace(margin, -margin, grid_size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x, y], dim=-1)


def query_rays(
    cameras: NDCCameras, xy_ndc: Float[Tensor, "*grid 2"]
) -> tuple[Float[Tensor, "n *grid 3"], Float[Tensor, "n *grid 3"]]:
    """World-space ray origins and directions through NDC points ``xy_ndc`` of every camera.

    Directions are not normalised: their view-space z is 1, so the distance ``t`` along
    ``origin + t * direction`` is the view-space depth (as PyTorch3D's ray samplers produce).
    """
    grid_shape = xy_ndc.shape[:-1]
    xy = xy_ndc.reshape(1, -1, 2).to(cameras.R)
    # view-space direction ((x - px)/fx, (y - py)/fy, 1): inverse of x_ndc = fx x/z + px
    xy_view = (xy - cameras.principal_point[:, None, :]) / cameras.focal_length[:, None, :]
    directions_view = torch.cat([xy_view, torch.ones_like(xy_view[..., :1])], dim=-1)
    # a direction maps back to the world with R^T (row form: d_world = d_view @ R^T)
    directions = torch.bmm(directions_view, cameras.R.transpose(1, 2))
    origins = cameras.camera_centers()[:, None, :].expand_as(directions)
    n = len(cameras)
    return origins.reshape(n, *grid_shape, 3), directions.reshape(n, *grid_shape, 3)
