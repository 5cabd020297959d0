"""Cameras that look at a point: the one look-at of the project (PyTorch3D convention).

``look_at_pytorch3d(eyes, target, up)`` gives the world-to-view rotation and translation of cameras
at ``eyes`` whose +Z (forward) axis points at ``target`` and whose +Y axis leans towards ``up``
(+X = up × z points left, as PyTorch3D's). ``docs/cameras.md`` describes the convention; OpenGL
poses follow with :func:`~sparsefusion_ns.cameras.conventions.pytorch3d_to_opengl_pose`.
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
