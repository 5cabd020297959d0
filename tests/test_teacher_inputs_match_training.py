"""The EFT sees a frame at distillation as it saw it in training: same pixels, camera and depth range.

Each test builds the same input frames twice: (a) as ``sf-train-teacher`` loads them
(``Co3dScenes`` / ``NerfstudioScenes``), (b) as the distillation gets them (the dataparser and the
``sparsefusion-tiny`` datamanager, then ``teacher_inputs``), and compares what reaches the EFT:
the S×S image, the NDC focal length and principal point, the camera up to the dataparser's world
rotation about the origin (distances of the camera centres from the origin, relative poses), and
the centre d̄ of the EFT's depth samples (mean camera distance from the origin).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs

from sparsefusion_ns.data.co3d_dataparser import Co3dDataParserConfig
from sparsefusion_ns.data.co3d_preprocess import TEACHER_CROP_KEY, Co3dPreprocessing
from sparsefusion_ns.distillation.teacher_inputs import (
    TeacherInputs,
    scene_frame_cameras,
    teacher_inputs,
    training_mismatches,
)
from sparsefusion_ns.plugin.method_configs import sparsefusion_tiny_config
from sparsefusion_ns.teacher_training.config import DataConfig, TeacherTrainingConfig
from sparsefusion_ns.teacher_training.scenes import Co3dScenes, LoadedFrame, NerfstudioScenes, SceneCollection
from tests.co3d_fixture import Co3dFixture, Co3dFixtureConfig, write_co3d_fixture
from tests.scenes import demo_scene, rewrite_transforms
from tests.torch_threads import torch_threads

S = 64
"""The tiny teacher's image size."""

CAMERA_TOL = 2e-5
"""Cameras: the dataparsers hand nerfstudio float32 cameras (relative rounding 6e-8, a few roundings
through the NDC conversion and the crop), training keeps float64; focal lengths are ~3-5, distances ~3-7."""

QUANTISATION_TOL = 1.0 / 255 + 1e-6
"""CO3D crops at the teacher's size pass through the dataparser's uint8 PNG cache: RGB and mask are
each rounded to the nearest 1/255 (error ≤ 0.5/255), so their product differs from training's float
product by at most 0.5/255 (RGB error × mask ≤ 1) + 0.5/255 (mask error × RGB ≤ 1) = 1/255.
Measured: 0.70/255 (mean 0.1/255)."""

RESAMPLED_MAX_TOL, RESAMPLED_MEAN_TOL = 0.1, 2e-3
"""CO3D crops cached at 128² and resampled to 64² (bilinear of bilinear, against training's one
bilinear sampling of the photo): measured up to 0.087 on the spheres' outlines and the valid
region's last row, 1.65e-3 on average (with antialiased resizing: 0.13 and 3.7e-3)."""

SAME_PNG_TOL = 1e-6
"""nerfstudio scenes: both paths read the same uint8 PNG and run the same float32 crop; what is left is
float32 rounding (measured: 0; the code before this test differed by up to 0.85: it took whole photos)."""


@pytest.fixture(autouse=True)
def single_thread():
    with torch_threads(1):
        yield


def datamanager(dataparser) -> VanillaDataManager:
    """The datamanager the ``sparsefusion-tiny`` model trains with (half-resolution input views)."""
    config = sparsefusion_tiny_config().pipeline.datamanager
    config.dataparser = dataparser
    return config.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)


def camera_centers(frames: List[LoadedFrame]) -> Tensor:
    """World camera centres ``C = -T R^T`` (row-vector form) of training frames."""
    return torch.stack([-frame.T @ frame.R.T for frame in frames])


def relative_pose(R: Tensor, T: Tensor, i: int, j: int) -> Tuple[Tensor, Tensor]:
    """View i -> view j (row form ``X_j = X_i R_ij + T_ij``); invariant under a world rotation about the origin."""
    rotation = R[i].T @ R[j]
    return rotation, T[j] - T[i] @ rotation


def assert_same_as_training(
    inputs: TeacherInputs,
    scenes: SceneCollection,
    scene: int,
    frames: List[int],
    max_tol: float,
    mean_tol: float = 1.0,
) -> None:
    trained = [scenes.load(scene, frame) for frame in frames]
    double = dict(dtype=torch.float64)

    # pixels
    for k, frame in enumerate(trained):
        difference = (inputs.images[k] - frame.image).abs()
        largest, mean = float(difference.max()), float(difference.mean())
        assert largest <= max_tol, f"input view {k}: pixels differ by up to {largest:.4f}"
        assert mean <= mean_tol, f"input view {k}: pixels differ by {mean:.2e} on average"

    # intrinsics
    focal = torch.stack([frame.focal_length for frame in trained])
    principal = torch.stack([frame.principal_point for frame in trained])
    torch.testing.assert_close(inputs.cameras.focal_length.to(**double), focal, atol=CAMERA_TOL, rtol=0)
    torch.testing.assert_close(inputs.cameras.principal_point.to(**double), principal, atol=CAMERA_TOL, rtol=0)

    # extrinsics up to the dataparser's rotation of the world about its origin
    centres = camera_centers(trained)
    distances = inputs.cameras.camera_centers().to(**double).norm(dim=-1)
    torch.testing.assert_close(distances, centres.norm(dim=-1), atol=CAMERA_TOL, rtol=0)
    R, T = inputs.cameras.R.to(**double), inputs.cameras.T.to(**double)
    R_train, T_train = torch.stack([f.R for f in trained]), torch.stack([f.T for f in trained])
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        for ours, theirs in zip(relative_pose(R, T, i, j), relative_pose(R_train, T_train, i, j)):
            torch.testing.assert_close(ours, theirs, atol=CAMERA_TOL, rtol=0)

    # the EFT's depth range d̄ ± 5: training takes d̄ from the annotated camera positions
    depth_center_training = float(np.linalg.norm(scenes.camera_centers(scene, frames), axis=-1).mean())
    assert float(distances.mean()) == pytest.approx(depth_center_training, abs=CAMERA_TOL)


def move_alpha_to_mask_files(scene: Path) -> None:
    """Turn the RGBA scene into RGB images with a ``mask_path`` per frame."""

    def edit(transforms: dict) -> dict:
        for frame in transforms["frames"]:
            path = scene / frame["file_path"]
            with Image.open(path) as pil:
                rgba = pil.convert("RGBA")
            rgba.convert("RGB").save(path)
            rgba.getchannel("A").save(path.with_name(f"{path.stem}_mask.png"))
            frame["mask_path"] = str(Path(frame["file_path"]).with_name(f"{path.stem}_mask.png"))
        return transforms

    rewrite_transforms(scene, edit)


@pytest.mark.parametrize(
    "scale_factor, masks, apply_mask",
    [(1.0, "alpha", True), (0.8, "alpha", True), (1.0, "mask files", True), (1.0, "alpha", False)],
)
def test_nerfstudio_scene(tmp_path: Path, scale_factor: float, masks: str, apply_mask: bool):
    # 96² views: the object covers part of each image, so the crop is a real crop
    scene = demo_scene(tmp_path / "scene", num_views=8, resolution=96)
    if masks == "mask files":
        move_alpha_to_mask_files(scene)
    training = DataConfig(kind="nerfstudio", root=scene, scale_factor=scale_factor, apply_mask=apply_mask)
    parser = sparsefusion_tiny_config().pipeline.datamanager.dataparser
    parser.data, parser.input_views, parser.scale_factor = scene, (1, 4, 6), scale_factor
    manager = datamanager(parser)
    assert training_mismatches(manager.train_dataparser_outputs, S, training) == []
    inputs = teacher_inputs(manager, S, training)
    assert list(inputs.frame_indices) == [1, 4, 6]
    scenes = NerfstudioScenes(training, S)
    assert_same_as_training(inputs, scenes, 0, [1, 4, 6], SAME_PNG_TOL)

    # the authors' pool: every frame's camera as training's query cameras
    frames = scene_frame_cameras(manager, S, training)
    trained = [scenes.load(0, frame) for frame in range(8)]
    focal = torch.stack([frame.focal_length for frame in trained])
    principal = torch.stack([frame.principal_point for frame in trained])
    torch.testing.assert_close(frames.focal_length.double(), focal, atol=CAMERA_TOL, rtol=0)
    torch.testing.assert_close(frames.principal_point.double(), principal, atol=CAMERA_TOL, rtol=0)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> Co3dFixture:
    return write_co3d_fixture(tmp_path_factory.mktemp("co3d"), Co3dFixtureConfig(frames_per_sequence=12))


@pytest.mark.parametrize("image_size", [S, 2 * S])
def test_co3d_scene(tmp_path: Path, fixture: Co3dFixture, image_size: int):
    parser = Co3dDataParserConfig(
        data=fixture.root, category=fixture.category, num_frames=8, num_input_views=3,
        cache_dir=tmp_path / "cache", image_size=image_size,
    )  # fmt: skip
    # the dataparser's scene comes from the fewview_dev test split: train the teacher on the same frames
    training = DataConfig(
        kind="co3d", root=fixture.root, categories=(fixture.category,), subset="fewview_dev", split="test"
    )
    manager = datamanager(parser)
    problems = training_mismatches(manager.train_dataparser_outputs, S, training)
    if image_size == S:
        assert problems == []
    else:
        assert len(problems) == 1 and f"co3d --image-size {S}" in problems[0]
    inputs = teacher_inputs(manager, S, training)
    metadata = manager.train_dataparser_outputs.metadata
    scenes = Co3dScenes(training, S)
    scene = scenes.scene_keys.index(f"{fixture.category}/{metadata['co3d_sequence_name']}")
    frames = [scenes.frame_ids(scene).index(str(number)) for number in metadata["co3d_frame_numbers"]]
    if image_size == S:
        assert_same_as_training(inputs, scenes, scene, frames, QUANTISATION_TOL)
    else:
        assert_same_as_training(inputs, scenes, scene, frames, RESAMPLED_MAX_TOL, RESAMPLED_MEAN_TOL)


def outputs_at(distance: float, scale: float, crop: Co3dPreprocessing | None = None) -> DataparserOutputs:
    """Dataparser outputs of two cameras ``distance`` from the origin (after scaling by ``scale``)."""
    poses = torch.zeros(2, 3, 4)
    poses[:, :3, :3] = torch.eye(3)
    poses[:, 2, 3] = distance
    cameras = Cameras(camera_to_worlds=poses, fx=50.0, fy=50.0, cx=32.0, cy=32.0, width=64, height=64)
    metadata = {} if crop is None else {TEACHER_CROP_KEY: crop}
    return DataparserOutputs(
        image_filenames=[Path("a.png"), Path("b.png")], cameras=cameras, metadata=metadata, dataparser_scale=scale
    )


def test_what_cannot_match_training_is_reported():
    nerfstudio_teacher = DataConfig(kind="nerfstudio", scale_factor=0.5)
    assert training_mismatches(outputs_at(2.0, 0.5), S, nerfstudio_teacher) == []
    # a scene scaled differently from the teacher's training scenes: the flag that fixes it
    (problem,) = training_mismatches(outputs_at(4.0, 1.0), S, nerfstudio_teacher)
    assert "scaled by 0.5" in problem and "sparse-views --scale-factor 0.5" in problem
    # a dataparser that moves the origin moves the EFT's depth range
    moved = outputs_at(2.0, 0.5)
    moved.dataparser_transform = torch.cat([torch.eye(3), torch.tensor([[0.0], [0.0], [0.3]])], dim=1)
    (problem,) = training_mismatches(moved, S, nerfstudio_teacher)
    assert "moved the world's origin" in problem
    # a CO3D teacher on a nerfstudio scene: nothing records CO3D's scale, so say what d̄ is
    (problem,) = training_mismatches(outputs_at(4.0, 1.0), S, DataConfig())
    assert "trained on co3d scenes" in problem and "d̄ = 4" in problem
    # CO3D crops: the crop settings must be the teacher's, and crops at its size pass through unresampled
    co3d_teacher = DataConfig(kind="co3d", mask_threshold=0.4, box_context=0.3)
    assert training_mismatches(outputs_at(6.0, 1.0, Co3dPreprocessing(S, 0.4, 0.3)), S, co3d_teacher) == []
    (problem,) = training_mismatches(outputs_at(6.0, 1.0, Co3dPreprocessing(S, 0.5, 0.3)), S, co3d_teacher)
    assert "co3d --mask-threshold 0.4" in problem
    (problem,) = training_mismatches(outputs_at(6.0, 1.0, Co3dPreprocessing(4 * S, 0.4, 0.3)), S, co3d_teacher)
    assert f"co3d --image-size {S}" in problem


def test_training_data_settings_come_from_the_teacher_folder():
    trained = DataConfig(kind="nerfstudio", root=Path("/data/scenes"), scale_factor=0.25, apply_mask=False)
    recorded = TeacherTrainingConfig(data=trained).to_json_dict()["data"]  # as sf-train-teacher's provenance
    provenance = {"trained_by": "sparsefusion-ns sf-train-teacher", "data": recorded}
    assert DataConfig.of_teacher(provenance) == trained
    # converted (authors') teachers record no data settings: theirs are the defaults
    assert DataConfig.of_teacher({"converted_by": "sf-convert-teacher"}) == DataConfig()
