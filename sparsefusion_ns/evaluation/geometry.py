"""Geometry of an exported mesh or point cloud against the true surface: Chamfer distance and F-score.

The paper scores images only; on the synthetic category the true shape of every instance is known
(``instance.json``, written by ``sf-make-category``), so exports can be scored in 3D as well.

Both surfaces become point sets: the prediction's triangles sampled uniformly by area (a point
cloud is taken as it is), the truth sampled with ``synthetic.surface.sample_surface`` (the product's
ray caster; uniform by area over the surface seen from outside). With P the predicted points, T the
true ones and d(x, S) the distance from x to the nearest point of S:

- **accuracy** = mean over p ∈ P of d(p, T): how far the prediction strays from the truth;
- **completeness** = mean over t ∈ T of d(t, P): how much of the truth the prediction misses;
- **Chamfer distance** = (accuracy + completeness) / 2 (the symmetric L1 Chamfer distance);
- **precision** / **recall** at τ: the fractions of P within τ of T / of T within τ of P, and
  **F-score** = 2 · precision · recall / (precision + recall).

τ is relative to the object's size: ``threshold_fraction`` × the diagonal of the true surface's
bounding box (default 2 %). Distances are in the scene's world units, the frame of
``instance.json``: export with ``--frame world`` (the default of ``sf-export`` and
``sf-export-density-mesh``). Nearest neighbours come from scipy's k-d tree (exact).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from jaxtyping import Float, Int

from sparsefusion_ns.synthetic.shapes import ShapeScene, scene_from_json
from sparsefusion_ns.synthetic.surface import sample_surface

DEFAULT_THRESHOLD_FRACTION = 0.02
"""τ as a fraction of the diagonal of the true surface's bounding box."""


class GeometryInputError(ValueError):
    """A prediction or ground-truth file cannot be read as a surface (the message names it and the fix)."""


@dataclass(frozen=True)
class GeometryScores:
    """Accuracy, completeness, Chamfer distance and F-score of a prediction (module docstring)."""

    accuracy: float
    """Mean distance from predicted points to the true surface (inf when nothing was predicted)."""
    completeness: float
    """Mean distance from true surface points to the prediction (inf when nothing was predicted)."""
    chamfer: float
    """(accuracy + completeness) / 2."""
    precision: float
    """Fraction of predicted points within τ of the true surface."""
    recall: float
    """Fraction of true surface points within τ of the prediction."""
    fscore: float
    """Harmonic mean of precision and recall (0 when both are 0)."""
    threshold: float
    """τ, in world units."""
    num_predicted: int
    """Predicted points compared."""

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def sample_mesh_surface(
    vertices: Float[np.ndarray, "v 3"], faces: Int[np.ndarray, "f 3"], num_points: int, seed: int = 0
) -> Float[np.ndarray, "n 3"]:
    """``num_points`` points uniformly distributed over the area of a triangle mesh."""
    triangles = np.asarray(vertices, np.float64)[np.asarray(faces)]
    areas = 0.5 * np.linalg.norm(
        np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=-1
    )
    if len(triangles) == 0 or areas.sum() <= 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(triangles), size=num_points, p=areas / areas.sum())
    u, v = rng.uniform(size=(2, num_points, 1))
    flip = (u + v) > 1  # fold the unit square onto the triangle
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    corners = triangles[chosen]
    return corners[:, 0] + u * (corners[:, 1] - corners[:, 0]) + v * (corners[:, 2] - corners[:, 0])


def score_points(
    predicted: Float[np.ndarray, "p 3"], true: Float[np.ndarray, "t 3"], threshold: float
) -> GeometryScores:
    """Scores of predicted points against true surface points at the distance ``threshold`` (τ)."""
    from scipy.spatial import cKDTree

    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    if len(true) == 0:
        raise GeometryInputError("no true surface points to score against")
    if len(predicted) == 0:
        return GeometryScores(math.inf, math.inf, math.inf, 0.0, 0.0, 0.0, threshold, 0)
    to_true, _ = cKDTree(true).query(predicted)
    to_predicted, _ = cKDTree(predicted).query(true)
    precision, recall = float(np.mean(to_true <= threshold)), float(np.mean(to_predicted <= threshold))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    accuracy, completeness = float(to_true.mean()), float(to_predicted.mean())
    return GeometryScores(
        accuracy=accuracy,
        completeness=completeness,
        chamfer=(accuracy + completeness) / 2,
        precision=precision,
        recall=recall,
        fscore=fscore,
        threshold=threshold,
        num_predicted=len(predicted),
    )


def object_size(points: Float[np.ndarray, "n 3"]) -> float:
    """Diagonal of the points' axis-aligned bounding box."""
    return float(np.linalg.norm(np.max(points, axis=0) - np.min(points, axis=0)))


def load_prediction(path: Path, num_points: int, seed: int = 0) -> Float[np.ndarray, "n 3"]:
    """Points of a PLY (or any trimesh-readable file): a mesh's surface sampled by area, a point
    cloud's points (a random ``num_points`` of them when it has more)."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise GeometryInputError(
            f"{path} does not exist: export a mesh or point cloud first (sf-export, sf-export-density-mesh)."
        )
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as error:  # trimesh raises many kinds for unreadable files
        raise GeometryInputError(f"{path} is not a mesh or point cloud trimesh can read: {error}") from error
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.dump(concatenate=True)
    faces = getattr(loaded, "faces", None)
    if faces is not None and len(faces) > 0:
        return sample_mesh_surface(loaded.vertices, faces, num_points, seed)
    points = np.asarray(loaded.vertices, np.float64)
    if len(points) > num_points:
        points = points[np.random.default_rng(seed).choice(len(points), num_points, replace=False)]
    return points


def load_instance(path: Path) -> ShapeScene:
    """The true shape of a synthetic instance from its ``instance.json`` (``sf-make-category``)."""
    path = Path(path)
    if not path.is_file():
        raise GeometryInputError(
            f"{path} does not exist: geometry is scored on the synthetic category only, whose sequences hold "
            "their true shape in instance.json (sf-make-category writes it)."
        )
    return scene_from_json(json.loads(path.read_text())["scene"])


def score_prediction(
    prediction: Path,
    truth: ShapeScene,
    num_points: int = 100_000,
    threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
    seed: int = 0,
    true_points: Optional[np.ndarray] = None,
) -> GeometryScores:
    """Score an exported file against a true shape, τ = ``threshold_fraction`` × the object's size.

    ``true_points`` (samples of ``truth``'s surface) may be passed to score several files against the
    same samples."""
    if true_points is None:
        true_points, _ = sample_surface(truth, num_points, seed)
    predicted = load_prediction(prediction, num_points, seed)
    return score_points(predicted, true_points, threshold_fraction * object_size(true_points))
