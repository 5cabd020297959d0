"""Geometry metrics (``evaluation/geometry.py``) and true-surface samples (``synthetic/surface.py``) on
shapes whose answers are known in closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import trimesh

from sparsefusion_ns.evaluation.geometry import (
    GeometryInputError,
    load_instance,
    load_prediction,
    object_size,
    sample_mesh_surface,
    score_points,
    score_prediction,
)
from sparsefusion_ns.synthetic.shapes import Box, Part, ShapeScene, Sphere, scene_to_json
from sparsefusion_ns.synthetic.surface import sample_surface
from sparsefusion_ns.utils.ply import write_ply

RADIUS = 1.0
SPHERE = ShapeScene(parts=(Part(Sphere((0.3, -0.2, 0.5), RADIUS), (0.5, 0.5, 0.5)),))
CENTRE = np.array([0.3, -0.2, 0.5])
N = 40_000
# Nearest-neighbour distances between two independent samples of N points on the unit sphere
# (area 4π) are about 1 / (2 sqrt(density)) = 0.5 sqrt(4π / N) ≈ 0.009 on average: the floor of
# every distance below, and why the tolerances are a few hundredths.
SAMPLING = 0.5 * math.sqrt(4 * math.pi / N)


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return sample_surface(SPHERE, N, seed=1)[0]


def _icosphere(radius: float, centre: np.ndarray) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=radius)  # facets sag by < 4e-4 r
    mesh.apply_translation(centre)
    return mesh


def test_surface_samples_lie_on_the_surface_with_outward_normals():
    points, normals = sample_surface(SPHERE, 5000, seed=0)
    np.testing.assert_allclose(np.linalg.norm(points - CENTRE, axis=-1), RADIUS, atol=1e-9)
    np.testing.assert_allclose(normals, (points - CENTRE) / RADIUS, atol=1e-9)
    # uniform by area: the mean of the unit normals vanishes, to ~1/sqrt(n) ≈ 0.014 per axis
    assert np.abs(normals.mean(axis=0)).max() < 0.05


def test_surface_samples_are_uniform_by_area_and_skip_hidden_surfaces():
    half = np.array([1.0, 0.5, 0.25])
    box = ShapeScene(parts=(Part(Box((0.0, 0.0, 0.0), tuple(half)), (1, 1, 1)),))
    points, normals = sample_surface(box, 30_000, seed=0)
    axis = np.abs(normals).argmax(axis=-1)
    areas = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
    # Cauchy–Crofton: each pair of faces gets its share of the area (binomial noise ≤ 0.003 per share)
    np.testing.assert_allclose(np.bincount(axis, minlength=3) / len(axis), areas / areas.sum(), atol=0.01)
    two = ShapeScene(
        parts=(Part(Sphere((0.0, 0.0, 0.0), 1.0), (1, 1, 1)), Part(Sphere((1.0, 0.0, 0.0), 1.0), (1, 1, 1)))
    )
    points, _ = sample_surface(two, 5000, seed=0)
    inside_other = np.minimum(np.linalg.norm(points, axis=-1), np.linalg.norm(points - [1.0, 0.0, 0.0], axis=-1))
    np.testing.assert_allclose(inside_other, 1.0, atol=1e-9)  # on the union's surface, never inside a part


def test_sphere_mesh_against_the_analytic_sphere_scores_zero(truth):
    predicted = sample_mesh_surface(*_vertices_faces(_icosphere(RADIUS, CENTRE)), N, seed=2)
    scores = score_points(predicted, truth, threshold=0.02 * object_size(truth))
    assert scores.chamfer < 2 * SAMPLING  # measured 0.009
    assert scores.fscore > 0.999 and scores.precision > 0.999 and scores.recall > 0.999


def test_an_inflated_sphere_scores_its_offset(truth):
    offset = 0.1
    predicted = sample_mesh_surface(*_vertices_faces(_icosphere(RADIUS + offset, CENTRE)), N, seed=2)
    scores = score_points(predicted, truth, threshold=0.05)
    # every point is `offset` from the other surface, plus the sampling floor in quadrature (≤ SAMPLING² / offset)
    assert scores.accuracy == pytest.approx(offset, abs=SAMPLING**2 / offset + 0.002)
    assert scores.completeness == pytest.approx(offset, abs=SAMPLING**2 / offset + 0.002)
    assert scores.fscore == 0.0  # nothing within τ = 0.05 < 0.1
    assert score_points(predicted, truth, threshold=0.15).fscore == 1.0  # everything within 0.15


def test_a_shifted_sphere_scores_the_mean_distance_of_the_shift(truth):
    shift = 0.2
    predicted = sample_mesh_surface(*_vertices_faces(_icosphere(RADIUS, CENTRE + [shift, 0, 0])), N, seed=2)
    scores = score_points(predicted, truth, threshold=0.05)
    # a point at cos θ = u of one sphere lies |sqrt(r² + s² + 2 r s u) − r| from the other; u ~ U(−1, 1)
    u = np.linspace(-1, 1, 200_001)
    expected = np.mean(
        np.abs(np.sqrt(RADIUS**2 + shift**2 + 2 * RADIUS * shift * u) - RADIUS)
    )  # ≈ 0.1000 (measured 0.1007)
    assert scores.accuracy == pytest.approx(expected, abs=SAMPLING / 2)
    assert scores.completeness == pytest.approx(expected, abs=SAMPLING / 2)
    assert scores.chamfer == pytest.approx(expected, abs=SAMPLING / 2)


def test_nothing_predicted_scores_zero_f_and_infinite_chamfer(truth):
    scores = score_points(np.zeros((0, 3)), truth, threshold=0.1)
    assert scores.fscore == 0.0 and math.isinf(scores.chamfer) and scores.num_predicted == 0


def test_files_and_instances_round_trip(tmp_path, truth):
    mesh = _icosphere(RADIUS, CENTRE)
    mesh_path = write_ply(tmp_path / "mesh.ply", mesh.vertices, np.full(mesh.vertices.shape, 0.5), faces=mesh.faces)
    cloud_path = write_ply(tmp_path / "cloud.ply", truth, np.full(truth.shape, 0.5), normals=truth - CENTRE)
    instance = tmp_path / "instance.json"
    instance.write_text(json.dumps({"sequence_name": "x", "role": "test", "scene": scene_to_json(SPHERE)}))
    shape = load_instance(instance)
    for path in (mesh_path, cloud_path):
        scores = score_prediction(path, shape, num_points=N, seed=3)
        assert scores.chamfer < 2 * SAMPLING and scores.fscore > 0.99
    assert len(load_prediction(cloud_path, num_points=100)) == 100
    with pytest.raises(GeometryInputError, match="instance.json"):
        load_instance(tmp_path / "missing" / "instance.json")
    with pytest.raises(GeometryInputError, match="does not exist"):
        load_prediction(tmp_path / "missing.ply", 10)


def _vertices_faces(mesh: trimesh.Trimesh):
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)
