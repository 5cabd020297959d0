"""Bad scene input gives a clear error naming the file and the fix, never a silent wrong result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsefusion_ns.data.co3d_annotations import Co3dFormatError, Co3dFrame, Co3dViewpoint
from sparsefusion_ns.data.co3d_dataparser import check_viewpoints
from sparsefusion_ns.data.image_files import ImageFormatError, read_image_uint8
from sparsefusion_ns.data.masked_dataset import MaskedImageDataset, MaskSizeError
from sparsefusion_ns.data.sparse_view_dataparser import SceneFormatError, SparseViewsDataParserConfig
from tests.png16 import write_png16
from tests.scenes import demo_scene, rewrite_transforms


def outputs(data: Path, split: str = "train", **options):
    return SparseViewsDataParserConfig(data=data, **options).setup().get_dataparser_outputs(split)


def edit_frame(scene: Path, index: int, edit) -> None:
    def apply(meta):
        edit(meta["frames"][index])
        return meta

    rewrite_transforms(scene, apply)


# ----------------------------------------------------------------------------- non-finite cameras


@pytest.mark.parametrize(
    "frame, row, column, what",
    [(4, 0, 0, "rotation of an input view"), (3, 1, 3, "translation of an input view"), (5, 2, 1, "held-out view")],
)
def test_non_finite_poses_name_the_frame(tmp_path, frame, row, column, what):
    scene = demo_scene(tmp_path / "scene", num_views=6, resolution=16)

    def poison(entry):
        entry["transform_matrix"][row][column] = float("nan")

    edit_frame(scene, frame, poison)
    with pytest.raises(SceneFormatError, match=rf"frame {frame} \(images/frame_00{frame}.png\).*NaN or infinite"):
        outputs(scene, input_views=(0, 3, 4))


def test_non_finite_intrinsics_name_the_frame(tmp_path):
    scene = demo_scene(tmp_path / "scene", num_views=6, resolution=16)
    edit_frame(scene, 2, lambda entry: entry.update(fl_x=float("inf")))
    with pytest.raises(SceneFormatError, match=r"non-finite .*intrinsics for frame 2 \(frame_002.png\).*fl_x"):
        outputs(scene, input_views=(0, 3))


def test_non_finite_co3d_viewpoints_name_the_frame():
    def frame(number: int, focal: float) -> Co3dFrame:
        viewpoint = Co3dViewpoint(np.eye(3), np.zeros(3), np.array([focal, focal]), np.zeros(2))
        return Co3dFrame("seq", number, 0.0, f"hydrant/seq/images/frame{number:06d}.jpg", (8, 8), viewpoint)

    check_viewpoints([frame(0, 2.0), frame(1, 2.0)], "sequence seq")
    with pytest.raises(
        Co3dFormatError, match=r"Frame 1 \(hydrant/seq/images/frame000001.jpg\) of sequence seq has NaN"
    ):
        check_viewpoints([frame(0, 2.0), frame(1, float("nan"))], "sequence seq")


# ----------------------------------------------------------------------------------------- masks


def scene_with_mask_files(folder: Path, num_views: int = 6, resolution: int = 16) -> Path:
    scene = demo_scene(folder, num_views=num_views, resolution=resolution)
    for image in sorted((scene / "images").glob("*.png")):
        rgba = np.asarray(Image.open(image))
        Image.fromarray(rgba[..., :3]).save(image)
        Image.fromarray(rgba[..., 3]).save(image.with_name(image.stem + "_mask.png"))

    def add_masks(meta):
        for entry in meta["frames"]:
            entry["mask_path"] = entry["file_path"].replace(".png", "_mask.png")
        return meta

    rewrite_transforms(scene, add_masks)
    return scene


def test_a_mask_of_another_size_is_an_error_naming_both_files(tmp_path):
    scene = scene_with_mask_files(tmp_path / "scene")
    Image.new("L", (12, 8), 255).save(scene / "images" / "frame_003_mask.png")
    dataset = MaskedImageDataset(outputs(scene, input_views=(0, 3)))
    assert dataset[0]["fg_mask"].shape == (16, 16, 1)
    with pytest.raises(
        MaskSizeError, match=r"frame_003_mask.png is 12×8 pixels but its image .*frame_003.png is 16×16"
    ):
        dataset[1]


def test_masks_given_for_only_some_frames_are_an_error(tmp_path):
    scene = scene_with_mask_files(tmp_path / "scene")
    edit_frame(scene, 2, lambda entry: entry.pop("mask_path"))
    edit_frame(scene, 5, lambda entry: entry.pop("mask_path"))
    with pytest.raises(
        SceneFormatError,
        match=r"4 frames .* give a 'mask_path' but frames 2 \(frame_002.png\), 5 \(frame_005.png\) do not",
    ):
        outputs(scene, input_views=(0, 3))


# ---------------------------------------------------------------------------------------- images


def test_16_bit_greyscale_images_are_scaled_not_wrapped(tmp_path):
    scene = scene_with_mask_files(tmp_path / "scene")
    grey = np.full((16, 16), 40000, dtype=np.uint16)  # 61 % of full scale
    for image in (scene / "images").glob("frame_00?.png"):
        write_png16(image, grey)
    assert Image.open(scene / "images" / "frame_000.png").mode == "I;16"
    item = MaskedImageDataset(outputs(scene, input_views=(0, 3)))[0]
    foreground = item["fg_mask"][..., 0] > 0.99
    assert foreground.any()
    torch.testing.assert_close(item["image"][foreground], torch.full((int(foreground.sum()), 3), 156 / 255))


def test_grey_plus_alpha_images_are_read(tmp_path):
    scene = demo_scene(tmp_path / "scene", num_views=6, resolution=16)
    for image in (scene / "images").glob("*.png"):
        Image.open(image).convert("LA").save(image)
    write_png16(scene / "images" / "frame_003.png", np.stack([np.full((16, 16), 65535), np.zeros((16, 16))], -1))
    dataset = MaskedImageDataset(outputs(scene, input_views=(0, 3)))
    first, second = dataset[0], dataset[1]
    assert first["image"].shape == (16, 16, 3) and 0.05 < float(first["fg_mask"].mean()) < 0.95
    assert float(second["fg_mask"].max()) == 0.0  # 16-bit grey + alpha: fully transparent


def test_images_without_a_colour_range_are_refused_by_name(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(path)
    with pytest.raises(ImageFormatError, match=r"depth.tif is a floating-point image"):
        read_image_uint8(path)


# -------------------------------------------------------------------------------------- messages


def test_a_missing_data_folder_is_reported_as_missing(tmp_path):
    with pytest.raises(SceneFormatError, match=r"scene folder .*no_such_scene \(--data\) does not exist"):
        outputs(tmp_path / "no_such_scene")


def test_camera_checks_name_the_frames(tmp_path):
    scene = demo_scene(tmp_path / "scene", num_views=6, resolution=16)

    def scale_rotation(entry):
        for row in range(3):
            entry["transform_matrix"][row][0] *= 2.0

    edit_frame(scene, 3, scale_rotation)
    with pytest.raises(
        SceneFormatError, match=r"frame 3 \(frame_003.png\) of .*transforms.json: rotations that are not proper"
    ):
        outputs(scene, input_views=(0, 3), camera_check="error")


def test_cameras_at_one_position_are_reported_as_such(tmp_path):
    scene = demo_scene(tmp_path / "scene", num_views=6, resolution=16)

    def same_position(meta):
        for entry in meta["frames"]:
            for row in range(3):
                entry["transform_matrix"][row][3] = 0.5
        return meta

    rewrite_transforms(scene, same_position)
    with pytest.raises(SceneFormatError) as error:
        outputs(scene, input_views=(0, 2, 4), camera_check="error")
    message = str(error.value)
    assert "All 3 input cameras" in message and "sit at the same position" in message
    assert "frame 0 (frame_000.png), frame 2 (frame_002.png), frame 4 (frame_004.png)" in message
    assert "do not face the object" not in message
