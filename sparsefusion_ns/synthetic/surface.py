"""Points on the true surface of a synthetic object, for scoring exported meshes against it.

The object is a union of overlapping primitives (``shapes.py``); its surface is what the ray caster
hits. Points are the first hits of *isotropic uniform random lines* through the object's bounding
sphere (direction uniform on the unit sphere, position uniform on the disk across the bounding
sphere perpendicular to it), each line traced from both of its ends. By the Cauchy–Crofton formula
the hits of such lines on a convex surface are uniformly distributed over its area; on a
non-convex union they are uniform over the parts seen from outside along the line, the surface a
camera can see (pockets hidden from every outside line get no points, surfaces inside other parts
none at all). Deterministic for a seed.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from jaxtyping import Float

from sparsefusion_ns.synthetic.shapes import ShapeScene, bounding_sphere


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def sample_surface(
    scene: ShapeScene, num_points: int, seed: int = 0, lines_per_batch: int = 32768
) -> Tuple[Float[np.ndarray, "n 3"], Float[np.ndarray, "n 3"]]:
    """``num_points`` (points, outward unit normals) on the surface of ``scene`` (module docstring)."""
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}")
    centre, radius = bounding_sphere(scene.parts)
    centre = np.asarray(centre, np.float64)
    rng = np.random.default_rng(seed)
    points, normals, found = [], [], 0
    for _ in range(10_000):
        directions = _unit(rng.normal(size=(lines_per_batch, 3)))
        helper = np.where(np.abs(directions[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        u = _unit(np.cross(directions, helper))
        v = np.cross(directions, u)
        distance = radius * np.sqrt(rng.uniform(size=(lines_per_batch, 1)))  # uniform on the disk
        angle = rng.uniform(0.0, 2.0 * np.pi, size=(lines_per_batch, 1))
        through = centre + distance * (np.cos(angle) * u + np.sin(angle) * v)
        for sign in (1.0, -1.0):
            origins = through - sign * 2.0 * radius * directions
            hits = scene.cast(origins, sign * directions)
            keep = hits.hit
            points.append(origins[keep] + hits.t[keep, None] * sign * directions[keep])
            normals.append(hits.normals[keep])
            found += int(keep.sum())
        if found >= num_points:
            break
    else:  # pragma: no cover - only an object far smaller than its bounding sphere gets here
        raise RuntimeError(f"only {found} of {num_points} surface points found; is the object empty?")
    chosen = rng.permutation(found)[:num_points]  # both ends of every line equally likely to be kept
    return np.concatenate(points)[chosen], np.concatenate(normals)[chosen]
