"""Sparse-view scenes: input-view selection, splits, masks, orientation and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsefusion_ns.data.camera_checks import check_cameras
from sparsefusion_ns.data.masked_dataset import MaskedImageDataset
from sparsefusion_ns.data.sparse_view_dataparser import (
    SceneFormatError,
    SparseViewsDataParserConfig,
    first_camera_alignment,
)
from sparsefusion_ns.data.view_selection import ViewSelectionError, select_input_views
from tests.scenes import demo_scene, rewrite_transforms


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return demo_scene(tmp_path_factory.mktemp("scene"), num_views=12, resolution=32)


def outputs(data: Path, split: str = "train", **options):
    return SparseViewsDataParserConfig(data=data, **options).setup().get_dataparser_outputs(split)


def test_selection_by_count_is_seeded_and_deterministic():
    first = select_input_views(50, count=3, seed=7)
    assert first == select_input_views(50, count=3, seed=7)
    assert first != select_input_views(50, count=3, seed=8)
    assert len(first) == 3 and first == sorted(first)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"indices": [4]}, "at least 2"),
        ({"count": 1}, "at least 2"),
        ({"indices": list(range(7))}, "allow-more-views"),
        ({"indices": [0, 12]}, "out of range"),
        ({"indices": [-1, 3]}, "out of range"),
        ({"indices": [2, 2]}, "duplicates"),
        ({"count": 13}, "only 12 frames"),
        ({}, "either"),
    ],
)
def test_bad_selections_say_what_to_do(kwargs, message):
    with pytest.raises(ViewSelectionError, match=message):
        select_input_views(12, source="scene.json", **kwargs)


def test_seven_views_allowed_only_when_asked():
    assert len(select_input_views(12, indices=list(range(7)), allow_more_views=True)) == 7


def test_train_split_is_input_views_and_eval_split_the_rest(scene):
    train = outputs(scene, input_views=(1, 5, 9))
    held_out = outputs(scene, "val", input_views=(1, 5, 9))
    assert train.metadata["input_view_indices"] == [1, 5, 9]
    assert [p.name for p in train.image_filenames] == ["frame_001.png", "frame_005.png", "frame_009.png"]
    assert len(held_out.image_filenames) == 9
    assert not {p.name for p in held_out.image_filenames} & {p.name for p in train.image_filenames}
    assert torch.equal(train.alpha_color, torch.zeros(3))


def test_first_input_camera_gets_identity_pytorch3d_rotation(scene):
    train = outputs(scene, input_views=(3, 7))
    c2w = train.cameras.camera_to_worlds
    # OpenGL rotation diag(−1, 1, −1) is the identity in PyTorch3D's camera axes.
    torch.testing.assert_close(c2w[0, :3, :3], torch.diag(torch.tensor([-1.0, 1.0, -1.0])), atol=1e-6, rtol=0)
    # A rotation about the origin: distances of camera centres to the object are unchanged.
    raw = json.loads((scene / "transforms.json").read_text())["frames"]
    raw_centres = torch.tensor([raw[i]["transform_matrix"][j][3] for i in (3, 7) for j in range(3)]).view(2, 3)
    torch.testing.assert_close(c2w[:, :3, 3].norm(dim=-1), raw_centres.norm(dim=-1), atol=1e-5, rtol=0)
    rotation = train.dataparser_transform[:, :3]
    torch.testing.assert_close(rotation @ raw_centres.T, c2w[:, :3, 3].T, atol=1e-5, rtol=0)
    unrotated = outputs(scene, input_views=(3, 7), orient_to_first_input=False)
    torch.testing.assert_close(unrotated.cameras.camera_to_worlds[:, :3, 3], raw_centres, atol=1e-5, rtol=0)


def test_alignment_formula_is_a_proper_rotation():
    random = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0].numpy()
    if np.linalg.det(random) < 0:
        random[:, 0] *= -1
    aligned = first_camera_alignment(random)
    np.testing.assert_allclose(aligned @ random, np.diag([-1.0, 1.0, -1.0]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(aligned), 1.0, atol=1e-12)


def test_dataset_masks_images_from_alpha(scene):
    dataset = MaskedImageDataset(outputs(scene, input_views=(0, 6)))
    item = dataset[0]
    rgba = np.asarray(Image.open(scene / "images" / "frame_000.png"), dtype=np.float32) / 255.0
    torch.testing.assert_close(item["fg_mask"][..., 0], torch.from_numpy(rgba[..., 3]))
    torch.testing.assert_close(item["image"], torch.from_numpy(rgba[..., :3] * rgba[..., 3:]))
    assert 0.05 < float(item["fg_mask"].mean()) < 0.95  # the object is there, and so is background


def test_mask_path_frames(tmp_path):
    scene = demo_scene(tmp_path / "masks", num_views=6, resolution=24)
    for frame in sorted((scene / "images").glob("*.png")):
        rgba = np.asarray(Image.open(frame))
        Image.fromarray(rgba[..., :3]).save(frame)  # drop alpha …
        Image.fromarray(rgba[..., 3]).save(frame.with_name(frame.stem + "_mask.png"))  # … keep it as a file

    def add_masks(meta):
        for f in meta["frames"]:
            f["mask_path"] = f["file_path"].replace(".png", "_mask.png")
        return meta

    rewrite_transforms(scene, add_masks)
    parsed = outputs(scene, input_views=(0, 3))
    assert parsed.metadata["fg_mask_filenames"][0].name == "frame_000_mask.png"
    item = MaskedImageDataset(parsed)[0]
    assert float(item["image"][item["fg_mask"][..., 0] == 0].abs().max()) == 0.0  # black background


def test_missing_masks_are_refused(tmp_path):
    scene = demo_scene(tmp_path / "nomask", num_views=6, resolution=24)
    for frame in (scene / "images").glob("*.png"):
        Image.fromarray(np.asarray(Image.open(frame))[..., :3]).save(frame)
    with pytest.raises(SceneFormatError, match="neither an alpha channel nor a 'mask_path'"):
        outputs(scene, input_views=(0, 3))


def test_missing_files_and_bad_json_name_the_file(tmp_path):
    with pytest.raises(SceneFormatError, match="No transforms.json"):
        outputs(tmp_path)
    scene = demo_scene(tmp_path / "broken", num_views=6, resolution=24)
    (scene / "images" / "frame_002.png").unlink()
    with pytest.raises(SceneFormatError, match="frame_002.png"):
        outputs(scene, input_views=(0, 3))
    (scene / "transforms.json").write_text("{not json")
    with pytest.raises(SceneFormatError, match="not valid JSON"):
        outputs(scene, input_views=(0, 3))


def test_distortion_is_refused(tmp_path):
    scene = demo_scene(tmp_path / "distorted", num_views=6, resolution=24)
    rewrite_transforms(scene, lambda meta: {**meta, "k1": 0.1})
    with pytest.raises(SceneFormatError, match="distortion"):
        outputs(scene, input_views=(0, 3))


def test_blender_layout(tmp_path):
    scene = demo_scene(tmp_path / "blender", num_views=6, resolution=24)
    meta = json.loads((scene / "transforms.json").read_text())
    blender = {
        "camera_angle_x": 2 * np.arctan(0.5 * meta["w"] / meta["fl_x"]),
        "frames": [
            {"file_path": "./" + f["file_path"][: -len(".png")], "transform_matrix": f["transform_matrix"]}
            for f in meta["frames"]
        ],
    }
    (scene / "transforms.json").unlink()
    (scene / "transforms_train.json").write_text(json.dumps(blender))
    parsed = outputs(scene, input_views=(0, 3))
    assert float(parsed.cameras.fx[0]) == pytest.approx(meta["fl_x"], rel=1e-6)
    assert int(parsed.cameras.width[0]) == 24


def test_camera_checks_catch_convention_errors(scene):
    good = outputs(scene, input_views=(0, 4, 8), orient_to_first_input=False)
    assert check_cameras(good.cameras) == []
    flipped = good.cameras
    flipped.camera_to_worlds = flipped.camera_to_worlds.clone()
    flipped.camera_to_worlds[:, :3, 2] *= -1  # OpenCV-style forward axis: a reflection
    assert "not proper rotation" in check_cameras(flipped)[0]
    flipped.camera_to_worlds[:, :3, 1] *= -1  # proper rotation again, but looking away from the object
    assert any("do not face the object" in p for p in check_cameras(flipped))
    shifted = outputs(scene, input_views=(0, 4, 8), orient_to_first_input=False).cameras
    shifted.camera_to_worlds[:, :3, 3] += torch.tensor([3.0, 0.0, 0.0])
    assert any("re-centre" in p for p in check_cameras(shifted))
    zoomed = outputs(scene, input_views=(0, 4, 8), orient_to_first_input=False).cameras
    zoomed.fx[0] *= 3
    assert any("Focal lengths" in p for p in check_cameras(zoomed))


def test_camera_check_error_mode(tmp_path):
    scene = demo_scene(tmp_path / "offcentre", num_views=6, resolution=24)

    def shift(meta):
        for f in meta["frames"]:
            f["transform_matrix"][0][3] += 3.0
        return meta

    rewrite_transforms(scene, shift)
    with pytest.raises(SceneFormatError, match="re-centre"):
        outputs(scene, input_views=(0, 3), camera_check="error")
    assert len(outputs(scene, input_views=(0, 3), camera_check="warn").image_filenames) == 2
