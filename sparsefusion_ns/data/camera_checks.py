"""Sanity checks of a sparse-view scene's cameras, in words a user can act on.

SparseFusion's field lives in a box around the world origin and its teacher assumes the object
sits where the input cameras look. Custom data often breaks this silently (poses from another
convention, a scene not centred, intrinsics of a different image size). These checks return
plain-language problems; the dataparser warns or raises depending on its ``camera_check`` option.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from nerfstudio.cameras.cameras import Cameras

from sparsefusion_ns.cameras.look_at import nearest_point_to_lines

MAX_FOCAL_RATIO = 2.0
"""Largest allowed ratio between the longest and shortest focal length of the input views."""
MAX_OFF_AXIS_DEGREES = 30.0
"""Largest allowed angle between a camera's viewing axis and the direction to the look-at point."""
MAX_CENTRE_OFFSET = 0.35
"""Largest allowed distance of the look-at point from the origin, relative to the mean camera distance."""
MIN_POSITION_SPREAD = 1e-6
"""Below this spread of the camera centres (relative to their distance from the origin, or 1) all
cameras count as sitting at one position."""


def check_cameras(cameras: Cameras, source: str = "the scene", names: Optional[Sequence[str]] = None) -> List[str]:
    """Return human-readable problems with the cameras (empty when they look right).

    ``names`` (one per camera, e.g. "frame 3 (r_3.png)") are used in the messages instead of positions."""
    problems: List[str] = []
    names = list(names) if names is not None else [f"camera {i}" for i in range(len(cameras))]
    c2w = cameras.camera_to_worlds.double()
    rotations = c2w[:, :3, :3]
    identity = torch.eye(3, dtype=rotations.dtype).expand_as(rotations)
    orthogonality_error = (rotations.transpose(1, 2) @ rotations - identity).abs().amax(dim=(1, 2))
    determinants = torch.linalg.det(rotations)
    bad = [i for i in range(len(c2w)) if orthogonality_error[i] > 1e-3 or abs(determinants[i] - 1.0) > 1e-3]
    if bad:
        problems.append(
            f"{_join(names, bad)} of {source}: rotations that are not proper rotation matrices "
            "(not orthonormal, or a reflection with determinant −1). Check that transform_matrix is a "
            "camera-to-world matrix without scale, in OpenGL convention."
        )
        return problems  # the geometric checks below assume proper rotations

    focals = torch.cat([cameras.fx.flatten(), cameras.fy.flatten()]).double()
    if focals.min() <= 0:
        problems.append(f"{source} has non-positive focal lengths; check fl_x/fl_y.")
    elif focals.max() / focals.min() > MAX_FOCAL_RATIO:
        problems.append(
            f"Focal lengths of the input views of {source} range from {focals.min():.1f} to {focals.max():.1f} px "
            f"(more than ×{MAX_FOCAL_RATIO:g}). Intrinsics of differently sized images were probably mixed: "
            "give each frame the intrinsics of its own image size."
        )

    origins = c2w[:, :3, 3]
    forward = -c2w[:, :3, 2]  # OpenGL cameras look down −z
    spread = (origins - origins.mean(dim=0)).norm(dim=-1).max() if len(origins) else origins.new_zeros(())
    if len(origins) >= 2 and spread <= MIN_POSITION_SPREAD * max(1.0, float(origins.norm(dim=-1).mean())):
        problems.append(
            f"All {len(origins)} input cameras of {source} ({_join(names, range(len(origins)))}) sit at the same "
            "position: views from one point cannot be triangulated. "
            "Check the translations (last column) of their transform_matrix: they may be missing or zero, or "
            "the matrices may be world-to-camera instead of camera-to-world."
        )
        return problems  # the geometric checks below need cameras at different positions
    if len(origins) >= 2:
        target = nearest_point_to_lines(origins, forward)
        to_target = torch.nn.functional.normalize(target[None] - origins, dim=-1)
        angles = torch.rad2deg(torch.acos((to_target * forward).sum(-1).clamp(-1, 1)))
        off_axis = [i for i in range(len(c2w)) if angles[i] > MAX_OFF_AXIS_DEGREES]
        if off_axis:
            problems.append(
                f"{_join(names, off_axis)} of {source} do not face the object: their viewing axes miss the point "
                f"all cameras look at by more than {MAX_OFF_AXIS_DEGREES:g}° (angles "
                f"{[round(float(angles[i]), 1) for i in off_axis]}). Poses may be in OpenCV convention "
                "(+z forward) instead of OpenGL (−z forward), or world-to-camera instead of camera-to-world."
            )
        mean_distance = origins.norm(dim=-1).mean()
        if target.norm() > MAX_CENTRE_OFFSET * mean_distance:
            problems.append(
                f"The cameras of {source} look at {target.numpy().round(2).tolist()}, far from the world origin "
                f"(mean camera distance {float(mean_distance):.2f}). SparseFusion's field is centred at the "
                "origin: re-centre the poses on the object."
            )
    return problems


def _join(names: Sequence[str], indices) -> str:
    return ", ".join(names[i] for i in indices)
