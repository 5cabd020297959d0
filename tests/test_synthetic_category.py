"""The ray caster, and ``sf-make-category``: determinism, the CO3D format, cameras that agree with the images."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsefusion_ns.data.co3d_annotations import Co3dCategory
from sparsefusion_ns.data.co3d_dataparser import Co3dDataParserConfig
from sparsefusion_ns.scripts.make_category import (
    INSTANCE_FILE,
    MakeCategoryConfig,
    make_category,
    read_provenance,
    sequence_plan,
)
from sparsefusion_ns.synthetic.category import make_sequence
from sparsefusion_ns.synthetic.render import render_pytorch3d_view
from sparsefusion_ns.synthetic.shapes import (
    Box,
    Cylinder,
    Ellipsoid,
    Lighting,
    Part,
    Pattern,
    ShapeScene,
    Sphere,
    bounding_sphere,
    scene_from_json,
    scene_to_json,
)
from sparsefusion_ns.teacher_training.config import DataConfig
from sparsefusion_ns.teacher_training.scenes import Co3dScenes
from tests.torch_threads import torch_threads

SMALL = dict(
    num_train=3, num_dev=1, num_test=2, train_frames=11, test_frames=10, progress=False
)  # > 10 frames: see Co3dScenes


def make(root: Path, **overrides) -> MakeCategoryConfig:
    config = MakeCategoryConfig(output=root, **{**SMALL, **overrides})
    make_category(config)
    return config


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> MakeCategoryConfig:
    return make(tmp_path_factory.mktemp("synthetic"), workers=1)


def digest_tree(folder: Path) -> dict:
    """SHA-256 of every file below ``folder`` except the provenance (it records seconds and workers)."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "synthetic_category.json"
    }


# ------------------------------------------------------------------------------- ray caster
def test_primitives_hit_where_geometry_says():
    origins = np.array([[0.0, 0.0, -5.0], [0.0, 0.0, -5.0], [3.0, 0.0, 0.0]])
    directions = np.array([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # not unit: t in its units
    t, normals = Sphere((0.0, 0.0, 0.0), 1.0).intersect(origins, directions)
    np.testing.assert_allclose(t[[0, 2]], [2.0, 2.0], atol=1e-12)  # |(0,0,-5) → -1| = 4 = 2 · |d|
    assert np.isinf(t[1])
    np.testing.assert_allclose(normals[0], [0.0, 0.0, -1.0], atol=1e-12)
    # A rotated ellipsoid: semi-axis 2 along world x after a quarter turn about z.
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t, normals = Ellipsoid((0.0, 0.0, 0.0), (0.5, 2.0, 0.5), quarter).intersect(origins[2:], directions[2:])
    np.testing.assert_allclose(t, [1.0], atol=1e-12)
    np.testing.assert_allclose(normals[0], [1.0, 0.0, 0.0], atol=1e-12)
    # A box from outside and from inside (the exit face, outward normal).
    box = Box((0.0, 0.0, 0.0), (1.0, 2.0, 3.0))
    t, normals = box.intersect(np.array([[5.0, 0.5, 0.5], [0.0, 0.0, 0.0]]), np.array([[-1.0, 0.0, 0.0]] * 2))
    np.testing.assert_allclose(t, [4.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(normals, [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], atol=1e-12)
    # A cylinder along y: side hit and cap hit.
    cylinder = Cylinder((0.0, 0.0, 0.0), (0.0, 2.0, 0.0), 0.5)
    t, normals = cylinder.intersect(
        np.array([[3.0, 1.0, 0.0], [0.1, 5.0, 0.0]]), np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    )
    np.testing.assert_allclose(t, [2.5, 3.0], atol=1e-12)
    np.testing.assert_allclose(normals, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-12)


def test_nearest_part_wins_and_culling_changes_nothing():
    parts = (
        Part(Sphere((0.0, 0.0, 0.0), 1.0), (1.0, 0.0, 0.0)),
        Part(Box((0.0, 0.0, 2.0), (0.5, 0.5, 0.5)), Pattern("spots", (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))),
        Part(Cylinder((1.0, -1.0, -1.0), (1.0, 1.0, -1.0), 0.3), (1.0, 1.0, 0.0)),
    )
    centre, radius = bounding_sphere(parts)
    culled = ShapeScene(parts, Lighting(), centre, radius)
    plain = ShapeScene(parts, Lighting())
    rng = np.random.default_rng(0)
    origins = rng.normal(size=(2000, 3)) * 0.2 + np.array([0.0, 0.0, 8.0])
    directions = -origins + rng.normal(size=(2000, 3))
    a, b = culled.cast(origins, directions), plain.cast(origins, directions)
    assert a.hit.mean() > 0.3
    np.testing.assert_array_equal(a.part, b.part)
    np.testing.assert_array_equal(a.t, b.t)
    np.testing.assert_array_equal(culled.shade(a, directions), plain.shade(b, directions))
    # Seen from +z, the box in front hides the sphere behind it.
    hits = plain.cast(np.array([[0.0, 0.0, 8.0]]), np.array([[0.0, 0.0, -1.0]]))
    assert hits.part[0] == 1 and hits.t[0] == pytest.approx(5.5)


def test_instances_round_trip_through_json():
    capture = make_sequence(7, 3, "x", "train", 2, MakeCategoryConfig().capture)
    rebuilt = scene_from_json(json.loads(json.dumps(scene_to_json(capture.scene))))
    viewpoint = capture.viewpoints[0]
    args = (viewpoint.R, viewpoint.T, viewpoint.focal_length, viewpoint.principal_point, capture.image_size_hw)
    original, again = render_pytorch3d_view(capture.scene, *args), render_pytorch3d_view(rebuilt, *args)
    np.testing.assert_array_equal(original.rgb, again.rgb)
    assert original.coverage.mean() > 0.05


# ------------------------------------------------------------------------------- generator
def test_same_seed_same_files_for_any_worker_count_and_another_seed_differs(category, tmp_path):
    folder = Path(category.output) / category.category
    again = make(tmp_path / "again", workers=2)
    assert digest_tree(folder) == digest_tree(Path(again.output) / again.category)
    other = make(tmp_path / "other", workers=1, seed=1)
    first_image = "images/frame000001.jpg"
    a = sorted(folder.glob(f"*/{first_image}"))[0].read_bytes()
    b = sorted((Path(other.output) / other.category).glob(f"*/{first_image}"))[0].read_bytes()
    assert a != b


def test_sequences_do_not_depend_on_how_many_are_generated(category, tmp_path):
    more = make(tmp_path / "more", workers=1, num_train=4)
    name = sequence_plan(category)[1][1]  # the second training sequence: index 1 in both plans
    assert name == sequence_plan(more)[1][1]
    ours, theirs = (Path(c.output) / c.category / name for c in (category, more))
    assert digest_tree(ours) == digest_tree(theirs)


def test_layout_provenance_and_set_lists_are_co3d(category):
    root, name = Path(category.output), category.category
    folder = root / name
    read = Co3dCategory(root, name)
    roles = {seq_name: role for _, seq_name, role, _ in sequence_plan(category)}
    assert sorted(read.sequence_names) == sorted(roles)
    assert read.available_subsets() == ["fewview_dev", "fewview_test", "fewview_train"]
    test_list = read.set_list("fewview_test")
    assert {e.sequence_name for e in test_list["test"]} == {n for n, r in roles.items() if r == "test"}
    assert {e.sequence_name for e in test_list["train"]} == {n for n, r in roles.items() if r == "train"}
    sizes = set()
    for seq_name, role in roles.items():
        frames = read.frames_of(seq_name)
        assert len(frames) == (category.train_frames if role == "train" else category.test_frames)
        for frame in frames:
            image = Image.open(root / frame.image_path)
            mask = Image.open(root / frame.mask_path)
            assert image.format == "JPEG" and mask.mode == "L"
            assert image.size == mask.size == (frame.image_size_hw[1], frame.image_size_hw[0])
            sizes.add(frame.image_size_hw)
            assert frame.viewpoint.intrinsics_format == "ndc_isotropic"
        focal = np.array([f.viewpoint.focal_length[0] for f in frames])
        principal = np.array([f.viewpoint.principal_point for f in frames])
        assert focal.std() > 0 and np.abs(principal).max() > 1e-3  # zoom breathing, off-centre principal point
        centres = np.array([-f.viewpoint.R @ f.viewpoint.T for f in frames])
        elevations = centres[:, 1]
        assert elevations.std() > 0.05  # the elevation varies along the orbit
        assert (folder / seq_name / INSTANCE_FILE).is_file()
    assert all(h != w for h, w in sizes)  # non-square
    provenance = read_provenance(root, name)
    assert provenance["generator_version"] >= 1 and provenance["options"]["seed"] == 0
    assert provenance["sequences"] == {"train": 3, "dev": 1, "test": 2}


def test_refuses_a_non_empty_folder_without_overwrite(category, tmp_path):
    config = replace(category, output=tmp_path, num_train=1, num_dev=0, num_test=0, workers=1)
    make_category(config)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_category(config)
    make_category(replace(config, overwrite=True))


def test_dataparser_and_teacher_training_read_it_and_the_cameras_see_the_true_object(category, tmp_path):
    """Through the co3d dataparser's crop, resize and reorientation, rays of the parsed nerfstudio cameras
    cast against the instance's exact shapes must reproduce the processed mask."""
    root = Path(category.output)
    test_sequence = [n for _, n, role, _ in sequence_plan(category) if role == "test"][0]
    parser = Co3dDataParserConfig(
        data=root, category=category.category, subset="fewview_test", sequence_name=test_sequence, num_frames=8,
        num_input_views=2, cache_dir=tmp_path / "cache", image_size=64, camera_check="error",
    ).setup()  # fmt: skip
    with torch_threads(1):
        outputs = parser.get_dataparser_outputs("test")
    scene = scene_from_json(json.loads((root / category.category / test_sequence / INSTANCE_FILE).read_text())["scene"])
    size, k = 64, 2
    samples = (torch.arange(size * k, dtype=torch.float32) + 0.5) / k
    coords = torch.stack(torch.meshgrid(samples, samples, indexing="ij"), dim=-1)
    transform = outputs.dataparser_transform.double().numpy()  # parsed world x' = W x + t
    assert len(outputs.image_filenames) == 6
    for index in range(len(outputs.image_filenames)):
        rays = outputs.cameras.generate_rays(camera_indices=index, coords=coords)
        origins = (rays.origins.double().numpy() - transform[:, 3]) @ transform[:, :3]
        directions = rays.directions.double().numpy() @ transform[:, :3]
        coverage = scene.cast(origins, directions).hit.reshape(size, k, size, k).mean((1, 3))
        alpha = np.asarray(Image.open(outputs.image_filenames[index]), dtype=np.float64)[..., 3] / 255.0
        intersection = np.minimum(coverage, alpha).sum()
        union = np.maximum(coverage, alpha).sum()
        # Soft masks resampled twice (render → crop/resize) differ only along the silhouette's edge.
        assert intersection / union > 0.93, (index, intersection / union)
    scenes = Co3dScenes(DataConfig(root=root, categories=(category.category,)), 64)
    assert len(scenes) == category.num_train and scenes.load(0, 0).image.shape == (3, 64, 64)
