"""Cameras that look at a point: the project's one look-at, and the point cameras look at.

``look_at_pytorch3d(eyes, target, up)`` gives the world-to-view rotation and translation of cameras
at ``eyes`` whose +Z (forward) axis points at ``target`` and whose +Y axis leans towards ``up``
(+X = up × z points left, as PyTorch3D's). ``docs/cameras.md`` describes the convention; OpenGL
poses follow with :func:`~sparsefusion_ns.cameras.conventions.pytorch3d_to_opengl_pose`.
``nearest_point_to_lines(origins, directions)`` is the inverse question: the point a set of cameras
looks at, nearest to all their viewing axes (the distillation's look-at point, the scene checks).
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float
from torch import Tensor


def _normalize(vectors: Tensor) -> Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True)


def look_at_pytorch3d(
    eyes: Float[Tensor, "n 3"], target: Float[Tensor, "*batch 3"], up: Float[Tensor, "*batch 3"]
) -> Tuple[Float[Tensor, "n 3 3"], Float[Tensor, "n 3"]]:
    """(R, T) with ``X_view = X_world @ R + T``: each eye maps to the view origin, the target onto +Z.

    ``target`` and ``up`` are one vector for all cameras or one per camera. Raises ``ValueError``
    when a camera looks along ``up`` (its roll is then undefined).
    """
    z = _normalize(target - eyes)
    x = torch.linalg.cross(up.expand_as(z), z, dim=-1)  # PyTorch3D +X points left
    if bool((x.norm(dim=-1) < 1e-6).any()):
        raise ValueError("a camera looks along the up vector: its orientation is undefined")
    x = _normalize(x)
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-1)  # columns: the camera axes in world coordinates
    T = -torch.einsum("ni,nij->nj", eyes, R)  # the eye maps to the view-frame origin
    return R, T


def nearest_point_to_lines(origins: Float[Tensor, "n 3"], directions: Float[Tensor, "n 3"]) -> Float[Tensor, "3"]:
    """The point with the least summed squared distance to the lines ``o_i + s d_i``.

    Solves ``Σ_i P_i x = Σ_i P_i o_i`` with ``P_i = I − d̂_i d̂_iᵀ`` (the projector orthogonal to line
    i); parallel lines leave it singular and the pseudo-inverse picks the minimum-norm solution.
    """
    d = _normalize(directions)
    projectors = torch.eye(3, dtype=d.dtype, device=d.device) - d[:, :, None] * d[:, None, :]
    lhs = projectors.sum(dim=0)
    rhs = torch.einsum("nij,nj->i", projectors, origins)
    return torch.linalg.pinv(lhs) @ rhs
