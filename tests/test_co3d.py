"""CO3Dv2 annotations, preprocessing, fixture writer and dataparser, on a synthetic CO3D folder."""

from __future__ import annotations

import ast
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsefusion_ns.cameras.conventions import ndc_to_pixels
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.data.co3d_annotations import (
    AUTHORS_EXCLUDED_SEQUENCES,
    Co3dCategory,
    Co3dFormatError,
    Co3dViewpoint,
    evenly_spaced_indices,
)
from sparsefusion_ns.data.co3d_dataparser import Co3dDataParserConfig
from sparsefusion_ns.data.co3d_preprocess import (
    CropBox,
    crop_box_around_mask,
    crop_resize_intrinsics,
    crop_resize_pad,
    mask_bbox_xywh,
    resize_geometry,
)
from sparsefusion_ns.data.masked_dataset import MaskedImageDataset
from sparsefusion_ns.data.view_selection import ViewSelectionError
from tests.co3d_fixture import Co3dFixtureConfig, render_view, write_co3d_fixture

IMAGE_SIZE = 128  # processed side T; small to keep the tests fast (the rules do not depend on T)
FIXTURE = Co3dFixtureConfig(frames_per_sequence=12, num_dev_sequences=2, image_size_hw=(96, 128))
# Projections computed in float64 by two independent routes agree to ~1e-10 px; the brief's bound.
PIXEL_TOL = 1e-3


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return write_co3d_fixture(tmp_path_factory.mktemp("co3d"), FIXTURE)


def parser_config(fixture, tmp_path, **overrides) -> Co3dDataParserConfig:
    settings = dict(
        data=fixture.root,
        category=fixture.category,
        num_frames=8,
        num_input_views=3,
        cache_dir=tmp_path / "cache",
        image_size=IMAGE_SIZE,
        camera_check="error",
    )
    settings.update(overrides)
    return Co3dDataParserConfig(**settings)


def original_cameras(frames) -> NDCCameras:
    def stack(name):
        return torch.tensor(np.stack([getattr(f.viewpoint, name) for f in frames]), dtype=torch.float64)

    return NDCCameras(
        R=stack("R"), T=stack("T"), focal_length=stack("focal_length"), principal_point=stack("principal_point")
    )


def to_parsed_world(out, points: torch.Tensor) -> torch.Tensor:
    """World points in the dataparser's frame: x' = W x + t with [W | t] = dataparser_transform."""
    transform = out.dataparser_transform.double()
    return points @ transform[:, :3].T + transform[:, 3]


def project_nerfstudio(cameras, index: int, points: torch.Tensor) -> torch.Tensor:
    """Pixel (u, v) of world points through nerfstudio's pinhole model (OpenGL pose, +y up, looks down -z)."""
    c2w = cameras.camera_to_worlds[index].double()
    x_cam = (points - c2w[:, 3]) @ c2w[:, :3]  # R_c2w^T (x - C), in row form
    depth = -x_cam[:, 2]
    u = cameras.cx[index].double() + cameras.fx[index].double() * x_cam[:, 0] / depth
    v = cameras.cy[index].double() - cameras.fy[index].double() * x_cam[:, 1] / depth
    return torch.stack([u, v], dim=-1)


# ------------------------------------------------------------------------------- annotations
def test_annotations_read_back_in_time_order(fixture):
    category = Co3dCategory(fixture.root, fixture.category)
    assert category.sequence_names == sorted(fixture.frames)
    assert category.available_subsets() == ["fewview_dev", "fewview_test", "fewview_train"]
    for name, written in fixture.frames.items():
        frames = category.frames_of(name)  # the file is shuffled; frames come back by timestamp
        assert [f.frame_number for f in frames] == list(range(FIXTURE.frames_per_sequence))
        for read, original in zip(frames, written):
            assert read.image_path == original.image_path and read.mask_path == original.mask_path
            assert read.image_size_hw == (96, 128) and read.viewpoint.intrinsics_format == "ndc_isotropic"
            np.testing.assert_array_equal(read.viewpoint.R, original.viewpoint.R)
            np.testing.assert_array_equal(read.viewpoint.principal_point, original.viewpoint.principal_point)
    dev = category.set_list("fewview_dev")
    assert {e.sequence_name for e in dev["test"]} == set(fixture.sequences["dev"])


def test_norm_image_bounds_intrinsics_convert_to_isotropic():
    # Legacy format: pixels = value * (W/2, H/2). For 96 x 128 (H x W): fx_px = 0.9 * 64 = 57.6,
    # fy_px = 1.2 * 48 = 57.6; cx_px = 64 - 0.25 * 64 = 48, cy_px = 48 - (-0.5) * 48 = 72.
    focal, principal = np.array([0.9, 1.2]), np.array([0.25, -0.5])
    legacy = Co3dViewpoint(np.eye(3), np.zeros(3), focal, principal, "ndc_norm_image_bounds")
    iso = legacy.to_ndc_isotropic((96, 128))
    focal_px, principal_px = iso.focal_length * 48.0, np.array([64.0, 48.0]) - iso.principal_point * 48.0  # S/2 = 48
    np.testing.assert_allclose(focal_px, [57.6, 57.6], rtol=1e-12)
    np.testing.assert_allclose(principal_px, [48.0, 72.0], rtol=1e-12)
    with pytest.raises(Co3dFormatError, match="intrinsics_format"):
        Co3dViewpoint(np.eye(3), np.zeros(3), np.ones(2), np.zeros(2), "screen").to_ndc_isotropic((96, 128))


def test_fixture_renders_identically_in_both_intrinsics_formats(fixture):
    frame = fixture.frames[fixture.sequences["dev"][0]][3]
    iso = frame.viewpoint
    half = np.array([64.0, 48.0]) / 48.0  # (W, H) / S
    legacy = Co3dViewpoint(iso.R, iso.T, iso.focal_length / half, iso.principal_point / half, "ndc_norm_image_bounds")
    rgb_iso, cov_iso, _ = render_view(fixture.scene, iso, (96, 128), supersampling=1)
    rgb_legacy, cov_legacy, _ = render_view(fixture.scene, legacy, (96, 128), supersampling=1)
    np.testing.assert_allclose(rgb_legacy, rgb_iso, atol=1e-12)
    assert cov_iso.sum() > 100 and np.array_equal(cov_iso, cov_legacy)


def test_fixture_depth_png_holds_float16_depths(fixture):
    frame = fixture.frames[fixture.sequences["train"][0]][0]
    stored_bits = np.asarray(Image.open(fixture.root / frame.depth_path)).astype(np.uint16)
    stored = stored_bits.view(np.float16).astype(np.float64)
    _, coverage, depth = render_view(fixture.scene, frame.viewpoint, frame.image_size_hw, FIXTURE.supersampling)
    # float16 keeps 11 significant bits: relative error <= 2^-11.
    np.testing.assert_allclose(stored, depth, rtol=2.0**-11, atol=0)
    assert np.array_equal(stored > 0, coverage > 0)
    # Depth is view-space z: the big sphere (radius 1 at the origin) is about a camera distance away.
    centre_distance = np.linalg.norm(-frame.viewpoint.R @ frame.viewpoint.T)
    assert centre_distance - 1.6 < stored[stored > 0].min() < centre_distance


def test_evenly_spaced_indices_equal_torch_linspace_long():
    for n in range(1, 400):
        for k in (2, 8, 32):
            assert evenly_spaced_indices(n, k) == torch.linspace(0, n - 1, k).long().tolist(), (n, k)


def test_scene_index_order_and_authors_filters(fixture, tmp_path):
    root = tmp_path / "co3d"
    shutil.copytree(fixture.root, root)
    folder = root / fixture.category
    category = Co3dCategory(root, fixture.category)
    assert list(category.evaluation_frames("fewview_dev")) == sorted(fixture.sequences["dev"])

    # A sequence with only 10 frames in the split is dropped (the authors keep > 10) ...
    set_lists = json.loads((folder / "set_lists/set_lists_fewview_dev.json").read_text())
    first, second = sorted(fixture.sequences["dev"])
    set_lists["test"] = [e for e in set_lists["test"] if not (e[0] == first and e[1] >= 10)]
    (folder / "set_lists/set_lists_fewview_dev.json").write_text(json.dumps(set_lists))
    # ... and so is a frame whose mask mass is <= 1.
    with gzip.open(folder / "frame_annotations.jgz", "rt") as file:
        records = json.load(file)
    for record in records:
        if record["sequence_name"] == second and record["frame_number"] == 5:
            record["mask"]["mass"] = 0.5
    with gzip.open(folder / "frame_annotations.jgz", "wt") as file:
        json.dump(records, file)

    index = Co3dCategory(root, fixture.category).evaluation_frames("fewview_dev")
    assert list(index) == [second]
    assert 5 not in [f.frame_number for f in index[second]] and len(index[second]) == FIXTURE.frames_per_sequence - 1
    # The authors skip the > 10 filter for fewview_test's test split only.
    (folder / "set_lists/set_lists_fewview_test.json").write_text(json.dumps(set_lists))
    assert list(Co3dCategory(root, fixture.category).evaluation_frames("fewview_test")) == [first, second]
    assert set(AUTHORS_EXCLUDED_SEQUENCES).isdisjoint(index)


# ------------------------------------------------------------------------------ preprocessing
def test_crop_box_grows_by_context_clamps_and_rounds():
    mask = np.zeros((40, 60), dtype=np.float32)
    mask[5:15, 10:30] = 1.0  # box x0=10, w=20, y0=5, h=10
    # x: 10 - 3 = 7, 7 + 26 = 33; y: 5 - 1.5 = 3.5 -> 4 (half to even), 3.5 + 13 = 16.5 -> 16.
    assert mask_bbox_xywh(mask) == (10, 5, 20, 10)
    assert crop_box_around_mask(mask, 0.4, 0.3) == CropBox(7, 4, 33, 16)
    # Box x0 = 9, w = 50: 9 - 7.5 = 1.5 exactly, but the authors' float32 gives 9 - 7.5000002 = 1.4999998
    # -> 1, where float64 would give 1.5000000000000002 -> 2 (checked against torch float32).
    mask[:] = 0.0
    mask[9:30, 9:59] = 1.0
    assert crop_box_around_mask(mask, 0.4, 0.3).x0 == 1
    mask[:] = 0.0
    mask[30:40, 0:20] = 1.0  # touches the left and bottom edges: the grown box is cut there
    assert crop_box_around_mask(mask, 0.4, 0.3) == CropBox(0, 28, 23, 40)


def test_mask_threshold_is_lowered_until_more_than_one_pixel_passes():
    mask = np.zeros((20, 20), dtype=np.float32)
    mask[2:6, 3:9] = 0.38  # below 0.4 ...
    mask[10, 10] = 0.9  # ... and a single pixel above it: not enough, threshold drops to 0.35
    assert mask_bbox_xywh(mask, 0.4) == (3, 2, 8, 9)
    assert mask_bbox_xywh(np.zeros((4, 5), np.float32), 0.4) == (0, 0, 5, 4)  # empty mask: whole image


def test_resize_geometry_makes_the_longer_side_exact():
    assert resize_geometry((71, 100), 256) == (2.56, (181, 256))  # 71 * 2.56 = 181.76 -> 181
    assert resize_geometry((300, 120), 256) == (256 / 300, (256, 102))
    for side in range(1, 1500, 7):  # float rounding must never lose a pixel of the longer side
        assert resize_geometry((side, max(1, side // 3)), 256)[1][0] == 256


def test_crop_resize_pad_samples_pixel_centres_and_pads():
    height, width = 60, 90
    # Channels hold each pixel centre's x and y: bilinear resampling reproduces a linear ramp exactly.
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    image = torch.stack([xs, ys]).double()
    box = CropBox(13, 7, 73, 47)  # 60 x 40 crop
    scale, resized_hw = resize_geometry((box.height, box.width), 64)
    assert resized_hw == (42, 64)
    out = crop_resize_pad(image, box, scale, resized_hw, 64)
    u = torch.arange(64, dtype=torch.float64) + 0.5
    v = torch.arange(42, dtype=torch.float64) + 0.5
    expected_x = u / scale + box.x0  # output centre (u + 0.5) reads original position (u + 0.5)/s + x0
    expected_y = v / scale + box.y0
    # Away from the crop border (where the edge pixel is replicated) the ramp is reproduced exactly.
    interior_x = (expected_x > box.x0 + 0.5) & (expected_x < box.x1 - 0.5)
    interior_y = (expected_y > box.y0 + 0.5) & (expected_y < box.y1 - 0.5)
    torch.testing.assert_close(out[0, :42][:, interior_x], expected_x[interior_x].expand(42, -1), atol=1e-9, rtol=0)
    torch.testing.assert_close(out[1, :42][interior_y], expected_y[interior_y, None].expand(-1, 64), atol=1e-9, rtol=0)
    assert out[:, 42:].abs().max() == 0  # bottom padding


def test_worked_example_of_docs_cameras_md():
    mask = np.zeros((900, 1200), dtype=np.float32)
    mask[300:600, 400:800] = 1.0
    box = crop_box_around_mask(mask)
    assert box == CropBox(340, 255, 860, 645)
    scale, resized_hw = resize_geometry((box.height, box.width), 256)
    assert resized_hw == (192, 256) and scale == pytest.approx(256 / 520)
    focal, principal = crop_resize_intrinsics(
        torch.tensor([3.2, 3.2], dtype=torch.float64),
        torch.tensor([0.05, -0.02], dtype=torch.float64),
        (900, 1200),
        box,
        scale,
        256,
    )
    # The docs quote 4 to 5 significant digits.
    assert focal.tolist() == pytest.approx([5.5385, 5.5385], abs=1e-4)
    assert principal.tolist() == pytest.approx([0.0865, 0.2154], abs=1e-4)


def test_intrinsics_update_matches_the_pixel_mapping():
    """Updated camera projects a point to s * (original pixel - crop corner), the crop/resize of pixels."""
    generator = torch.Generator().manual_seed(0)
    size_hw, box, target = (96, 128), CropBox(20, 5, 100, 90), 64
    scale, _ = resize_geometry((box.height, box.width), target)
    focal, principal = torch.tensor([2.4, 2.5], dtype=torch.float64), torch.tensor([0.07, -0.04], dtype=torch.float64)
    new_focal, new_principal = crop_resize_intrinsics(focal, principal, size_hw, box, scale, target)
    R, T = torch.eye(3, dtype=torch.float64)[None], torch.tensor([[0.1, -0.2, 6.0]], dtype=torch.float64)
    points = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    before = NDCCameras(R, T, focal[None], principal[None])
    after = NDCCameras(R, T, new_focal[None], new_principal[None])
    uv_before = ndc_to_pixels(before.transform_points_ndc(points)[..., :2], size_hw)
    uv_after = ndc_to_pixels(after.transform_points_ndc(points)[..., :2], (target, target))
    expected = (uv_before - torch.tensor([box.x0, box.y0], dtype=torch.float64)) * scale
    assert (uv_after - expected).abs().max() < PIXEL_TOL


# --------------------------------------------------------------------------------- dataparser
@pytest.fixture(scope="module")
def parsed(fixture, tmp_path_factory):
    config = parser_config(fixture, tmp_path_factory.mktemp("parsed"))
    parser = config.setup()
    return config, {split: parser.get_dataparser_outputs(split) for split in ("train", "test")}


def test_frame_and_input_view_selection_follow_the_documented_rule(fixture, parsed):
    config, outputs = parsed
    name = sorted(fixture.sequences["dev"])[0]  # scene index 0 = first evaluation sequence by name
    chosen = [(i * (FIXTURE.frames_per_sequence - 1)) // (config.num_frames - 1) for i in range(config.num_frames)]
    drawn = torch.randperm(config.num_frames, generator=torch.Generator().manual_seed(0))[:3]  # seed = scene index
    inputs = sorted(drawn.tolist())
    train, test = outputs["train"].metadata, outputs["test"].metadata
    assert train["co3d_sequence_name"] == name and train["co3d_scene_index"] == 0
    assert train["input_view_indices"] == inputs == train["frame_indices"]
    assert train["co3d_frame_numbers"] == [chosen[i] for i in inputs]
    assert test["frame_indices"] == [i for i in range(config.num_frames) if i not in inputs]
    assert test["co3d_frame_numbers"] == [chosen[i] for i in test["frame_indices"]]


def test_selection_by_name_equals_selection_by_index(fixture, tmp_path):
    second = sorted(fixture.sequences["dev"])[1]
    by_name = parser_config(fixture, tmp_path, sequence_name=second).setup().get_dataparser_outputs("train")
    by_index = parser_config(fixture, tmp_path, scene_index=1).setup().get_dataparser_outputs("train")
    assert by_name.metadata == by_index.metadata
    drawn = torch.randperm(8, generator=torch.Generator().manual_seed(1))[:3]  # seeded by scene index 1
    assert by_name.metadata["input_view_indices"] == sorted(drawn.tolist())
    explicit = parser_config(fixture, tmp_path, input_views=(6, 1)).setup().get_dataparser_outputs("train")
    assert explicit.metadata["input_view_indices"] == [1, 6]


def test_parsed_cameras_project_known_points_onto_processed_pixels(fixture, parsed):
    """Known 3D points (sphere centres): parsed nerfstudio camera == original camera + crop/resize of pixels."""
    config, outputs = parsed
    frames = {f.frame_number: f for f in fixture.frames[outputs["train"].metadata["co3d_sequence_name"]]}
    points = torch.tensor([s.centre for s in fixture.scene.spheres], dtype=torch.float64)
    for split, out in outputs.items():
        for index, number in enumerate(out.metadata["co3d_frame_numbers"]):
            frame = frames[number]
            mask = np.asarray(Image.open(fixture.root / frame.mask_path), dtype=np.float32) / 255.0
            box = crop_box_around_mask(mask)
            scale, _ = resize_geometry((box.height, box.width), config.image_size)
            ndc = original_cameras([frame]).transform_points_ndc(points)[..., :2]
            uv_original = ndc_to_pixels(ndc, frame.image_size_hw)[0]
            expected = (uv_original - torch.tensor([box.x0, box.y0], dtype=torch.float64)) * scale
            uv = project_nerfstudio(out.cameras, index, to_parsed_world(out, points))
            assert (uv - expected).abs().max() < PIXEL_TOL * 10, (split, number)  # float32 cameras: ~1e-4 px


def render_with_nerfstudio_rays(fixture, out, index: int, size: int, supersampling: int = 2):
    """Coverage and colour of the known object seen through a parsed camera, by ray casting."""
    samples = (torch.arange(size * supersampling, dtype=torch.float32) + 0.5) / supersampling
    coords = torch.stack(torch.meshgrid(samples, samples, indexing="ij"), dim=-1)  # (y, x) positions
    rays = out.cameras.generate_rays(camera_indices=index, coords=coords)
    transform = out.dataparser_transform.double().numpy()  # back to the fixture's world: x = W^T (x' - t)
    origins = (rays.origins.double().numpy() - transform[:, 3]) @ transform[:, :3]
    directions = rays.directions.double().numpy() @ transform[:, :3]
    colour, hit, _ = fixture.scene.cast_rays(origins, directions)
    k = supersampling
    return hit.reshape(size, k, size, k).mean((1, 3)), colour.reshape(size, k, size, k, 3).mean((1, 3))


def test_processed_foreground_matches_projected_geometry(fixture, parsed):
    config, outputs = parsed
    size = config.image_size
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    for split, out in outputs.items():
        for index in range(0, len(out.image_filenames), 2):
            rgba = np.asarray(Image.open(out.image_filenames[index]), dtype=np.float64) / 255.0
            alpha = rgba[..., 3]
            coverage, colour = render_with_nerfstudio_rays(fixture, out, index, size)

            def centroid(weights):
                return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()

            # A camera off by 0.5 px moves the silhouette centroid by 0.5 px; resampling of the soft
            # mask moves it by < 0.04 px (measured), so 0.1 px separates right from wrong.
            assert np.abs(centroid(alpha) - centroid(coverage)).max() < 0.1, split
            iou = np.minimum(alpha, coverage).sum() / np.maximum(alpha, coverage).sum()
            assert iou > 0.95, (split, iou)  # measured 0.974: edges are soft in both
            inside = (coverage == 1.0) & (alpha > 0.99)
            # JPEG (quality 95) and resampling: mean colour error measured ~0.011.
            assert np.abs(rgba[..., :3][inside] - colour[inside]).mean() < 0.03


def test_world_is_rotated_to_the_first_input_camera(fixture, parsed, tmp_path):
    _, outputs = parsed
    # PyTorch3D identity rotation = OpenGL camera-to-world rotation diag(-1, 1, -1).
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    for out in outputs.values():
        torch.testing.assert_close(outputs["train"].cameras.camera_to_worlds[0, :, :3], flip, atol=1e-6, rtol=0)
        assert torch.equal(out.dataparser_transform, outputs["train"].dataparser_transform)
    plain = parser_config(fixture, tmp_path, orient_to_first_input=False).setup().get_dataparser_outputs("train")
    assert torch.equal(plain.dataparser_transform, torch.eye(4)[:3])
    rotation = outputs["train"].dataparser_transform[:, :3]
    rotated = rotation @ plain.cameras.camera_to_worlds  # same cameras, world rotated about the origin
    torch.testing.assert_close(rotated, outputs["train"].cameras.camera_to_worlds, atol=1e-5, rtol=0)


def test_valid_region_and_padding(fixture, parsed):
    config, outputs = parsed
    out = outputs["test"]
    index_file = json.loads((out.image_filenames[0].parent / "frames.json").read_text())
    numbers, valid_files = out.metadata["co3d_frame_numbers"], out.metadata["valid_mask_filenames"]
    for path, valid_path, number in zip(out.image_filenames, valid_files, numbers):
        x0, y0, x1, y1 = index_file[str(number)]["crop_box_xyxy"]
        _, (height, width) = resize_geometry((y1 - y0, x1 - x0), config.image_size)
        assert max(height, width) == config.image_size
        valid = np.asarray(Image.open(valid_path)) > 127
        expected = np.zeros_like(valid)
        expected[:height, :width] = True
        assert np.array_equal(valid, expected)
        rgba = np.asarray(Image.open(path))
        assert rgba[~valid].max() == 0  # zero padding in colour and mask
        assert rgba[..., 3][valid].max() == 255  # the object is inside the valid region


def test_outputs_follow_the_sparse_view_conventions(parsed):
    config, outputs = parsed
    train, test = outputs["train"], outputs["test"]
    assert len(train.image_filenames) == 3 and len(test.image_filenames) == config.num_frames - 3
    assert torch.equal(train.alpha_color, torch.zeros(3))
    assert train.cameras.width.unique().tolist() == [config.image_size]
    assert train.scene_box.aabb.tolist() == [[-4.0] * 3, [4.0] * 3]
    item = MaskedImageDataset(train)[0]
    assert item["image"].shape == (config.image_size, config.image_size, 3)
    fg, valid = item["fg_mask"], item["valid_mask"]
    assert bool((item["image"][fg[..., 0] == 0] == 0).all())  # black background: image x mask
    assert bool((fg[valid[..., 0] == 0] == 0).all())


def test_cache_is_reused(fixture, tmp_path):
    config = parser_config(fixture, tmp_path)
    first = config.setup().get_dataparser_outputs("train").image_filenames[0]
    stamp = first.stat().st_mtime_ns
    again = config.setup().get_dataparser_outputs("train").image_filenames[0]
    assert again == first and again.stat().st_mtime_ns == stamp


def test_cache_is_rebuilt_when_the_annotation_changes(fixture, tmp_path):
    root = tmp_path / "co3d"
    shutil.copytree(fixture.root, root)
    config = parser_config(fixture, tmp_path, data=root)
    before = config.setup().get_dataparser_outputs("train")
    number = before.metadata["co3d_frame_numbers"][0]
    annotations = root / fixture.category / "frame_annotations.jgz"
    with gzip.open(annotations, "rt") as file:
        records = json.load(file)
    for record in records:
        if record["sequence_name"] == before.metadata["co3d_sequence_name"] and record["frame_number"] == number:
            record["viewpoint"]["principal_point"][0] += 0.1  # NDC +x is left: cx moves left by 0.1 S/2 px
    with gzip.open(annotations, "wt") as file:
        json.dump(records, file)
    after = config.setup().get_dataparser_outputs("train")
    scale = json.loads((after.image_filenames[0].parent / "frames.json").read_text())[str(number)]["scale"]
    shift = float(before.cameras.cx[0, 0] - after.cameras.cx[0, 0])
    assert shift == pytest.approx(0.1 * 48.0 * scale, rel=1e-4)  # S/2 = 48 for 96 x 128 images


# ------------------------------------------------------------------------------------- errors
def test_wrong_root_and_unknown_names_are_explained(fixture, tmp_path):
    with pytest.raises(Co3dFormatError, match="does not exist.*one folder per category"):
        parser_config(fixture, tmp_path, data=tmp_path / "nowhere").setup().get_dataparser_outputs("train")
    with pytest.raises(Co3dFormatError, match="Categories found there: synthetic"):
        parser_config(fixture, tmp_path, category="hydrant").setup().get_dataparser_outputs("train")
    with pytest.raises(Co3dFormatError, match=f"Unknown sequence 'nope'.*{sorted(fixture.sequences['dev'])[0]}"):
        parser_config(fixture, tmp_path, sequence_name="nope").setup().get_dataparser_outputs("train")
    with pytest.raises(Co3dFormatError, match="Scene index 5 is out of range.*0..1"):
        parser_config(fixture, tmp_path, scene_index=5).setup().get_dataparser_outputs("train")
    with pytest.raises(Co3dFormatError, match="Subsets available.*fewview_dev"):
        parser_config(fixture, tmp_path, subset="manyview_dev_0").setup().get_dataparser_outputs("train")
    with pytest.raises(ViewSelectionError, match="out of range"):
        parser_config(fixture, tmp_path, input_views=(0, 8)).setup().get_dataparser_outputs("train")
    with pytest.raises(ViewSelectionError, match="only 8"):
        parser_config(fixture, tmp_path, num_input_views=9).setup().get_dataparser_outputs("train")


@pytest.mark.parametrize("kind", ["image", "mask"])
def test_missing_files_are_named(fixture, tmp_path, kind):
    root = tmp_path / "co3d"
    shutil.copytree(fixture.root, root)
    frame = fixture.frames[sorted(fixture.sequences["dev"])[0]][0]  # frame 0 is always chosen
    missing = root / (frame.image_path if kind == "image" else frame.mask_path)
    missing.unlink()
    with pytest.raises(Co3dFormatError, match=f"{kind} file {missing}.*does not exist"):
        parser_config(fixture, tmp_path, data=root).setup().get_dataparser_outputs("train")


def test_plugin_spec_imports_only_the_dataparser_config():
    source = Path(__file__).parents[1] / "sparsefusion_ns/plugin/co3d_dataparser_spec.py"
    nodes = list(ast.walk(ast.parse(source.read_text())))
    imported = [node.module for node in nodes if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names]
    assert sorted(imported) == ["nerfstudio.plugins.registry_dataparser", "sparsefusion_ns.data.co3d_dataparser"]
