"""Training scenes: posed, masked frames of one object each, preprocessed to the teacher's image size.

Two sources share one interface (:class:`SceneCollection`):

- :class:`Co3dScenes`: the sequences of one or more CO3Dv2 categories, chosen as the authors'
  training loader does (``Co3dCategory.evaluation_frames`` applied to the ``train`` split of
  ``set_lists_fewview_train.json``: frames listed there whose mask mass exceeds one pixel,
  sequences with more than 10 such frames, without the two sequences the authors found broken,
  ``AUTHORS_EXCLUDED_SEQUENCES``).
- :class:`NerfstudioScenes`: every ``<root>/<scene>/transforms.json`` (or ``<root>/transforms.json``),
  OpenGL camera-to-world poses and pixel intrinsics, masks from an alpha channel or ``mask_path``.

Every frame is loaded as the teacher sees it (docs/method.md#crops): cropped around its mask,
resized so the longer side is the teacher's image size, zero-padded bottom/right
(``co3d_preprocess``), optionally multiplied by its mask, with a PyTorch3D NDC camera for that
square image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from sparsefusion_ns.cameras.conventions import opengl_pose_to_pytorch3d, pixel_to_ndc_intrinsics
from sparsefusion_ns.data.co3d_annotations import Co3dCategory, Co3dFormatError, Co3dFrame
from sparsefusion_ns.data.co3d_preprocess import Co3dPreprocessing, preprocess_arrays, preprocess_frame
from sparsefusion_ns.data.image_files import read_image_uint8
from sparsefusion_ns.data.masked_dataset import MaskSizeError, read_mask
from sparsefusion_ns.data.sparse_view_dataparser import SceneFormatError, read_transforms
from sparsefusion_ns.teacher_training.config import DataConfig


class TrainingDataError(ValueError):
    """The training data cannot be found or read."""


@dataclass(frozen=True)
class LoadedFrame:
    """One frame at the teacher's image size ``s``, with its camera in the scene's world frame."""

    image: Float[Tensor, "3 s s"]
    """RGB in [0, 1], multiplied by the mask unless the data config says otherwise; 0 in the padding."""
    valid: Float[Tensor, "1 s s"]
    """1 inside the unpadded region, 0 in the padding."""
    R: Float[Tensor, "3 3"]
    """World-to-view rotation, row-vector form ``X_view = X_world @ R + T`` (float64)."""
    T: Float[Tensor, "3"]
    """World-to-view translation (float64)."""
    focal_length: Float[Tensor, "2"]
    """Isotropic NDC focal length for the ``s x s`` image (float64)."""
    principal_point: Float[Tensor, "2"]
    """Isotropic NDC principal point for the ``s x s`` image (float64)."""


class SceneCollection(ABC):
    """Scenes of frames; a scene is addressed by its index, a frame by its index within the scene."""

    def __init__(self, config: DataConfig, image_size: int) -> None:
        self.config = config
        self.preprocessing = Co3dPreprocessing(image_size, config.mask_threshold, config.box_context)

    def __len__(self) -> int:
        return len(self.scene_keys)

    @property
    @abstractmethod
    def scene_keys(self) -> List[str]:
        """A stable, file-name-safe key per scene (also the scene's name in the latent cache)."""

    @abstractmethod
    def frame_ids(self, scene: int) -> List[str]:
        """A stable identifier of each frame of the scene (its key in the latent cache)."""

    @abstractmethod
    def camera_centers(self, scene: int, frames: Sequence[int]) -> Float[np.ndarray, "n 3"]:
        """World positions of the frames' cameras, read from the annotations (no image is loaded)."""

    @abstractmethod
    def load(self, scene: int, frame: int) -> LoadedFrame:
        """Read and preprocess one frame."""

    def _finish(
        self,
        image: Float[Tensor, "3 s s"],
        mask: Float[Tensor, "1 s s"],
        valid: Float[Tensor, "1 s s"],
        R: np.ndarray | Tensor,
        T: np.ndarray | Tensor,
        focal: Float[Tensor, "2"],
        principal: Float[Tensor, "2"],
    ) -> LoadedFrame:
        """Apply the mask (if configured) and package a preprocessed frame."""
        if self.config.apply_mask:
            image = image * mask
        return LoadedFrame(
            image=image.float().contiguous(),
            valid=valid.float(),
            R=torch.as_tensor(R, dtype=torch.float64),
            T=torch.as_tensor(T, dtype=torch.float64),
            focal_length=focal.to(torch.float64),
            principal_point=principal.to(torch.float64),
        )


class Co3dScenes(SceneCollection):
    """Sequences of CO3Dv2 categories (module docstring); scene keys are ``<category>/<sequence>``."""

    def __init__(self, config: DataConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        self.root = Path(config.root)
        self._scenes: List[Tuple[str, List[Co3dFrame]]] = []
        for category in config.categories:
            try:
                index = Co3dCategory(self.root, category).evaluation_frames(config.subset, config.split)
            except Co3dFormatError as error:
                raise TrainingDataError(f"cannot read CO3D training data: {error}") from error
            self._scenes.extend((f"{category}/{name}", frames) for name, frames in index.items())
        if not self._scenes:
            raise TrainingDataError(
                f"no CO3D sequence of {list(config.categories)} under {self.root} has more than 10 frames "
                f"with a mask in the {config.split!r} split of set_lists_{config.subset}.json"
            )

    @property
    def scene_keys(self) -> List[str]:
        return [key for key, _ in self._scenes]

    def frame_ids(self, scene: int) -> List[str]:
        return [str(frame.frame_number) for frame in self._scenes[scene][1]]

    def camera_centers(self, scene: int, frames: Sequence[int]) -> Float[np.ndarray, "n 3"]:
        viewpoints = [self._scenes[scene][1][i].viewpoint for i in frames]
        if any(v is None for v in viewpoints):
            raise TrainingDataError(f"a frame of {self._scenes[scene][0]} has no camera annotation")
        return np.stack([-v.R @ v.T for v in viewpoints])  # C = -R T (column form)

    def load(self, scene: int, frame: int) -> LoadedFrame:
        annotation = self._scenes[scene][1][frame]
        try:
            processed = preprocess_frame(self.root, annotation, self.preprocessing)
        except Co3dFormatError as error:
            raise TrainingDataError(str(error)) from error
        viewpoint = annotation.viewpoint
        return self._finish(
            processed.image, processed.mask, processed.valid, viewpoint.R, viewpoint.T,
            processed.focal_length, processed.principal_point,
        )  # fmt: skip


class NerfstudioScenes(SceneCollection):
    """nerfstudio-format scenes (module docstring); scene keys are the scene folders' names."""

    def __init__(self, config: DataConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        root = Path(config.root)
        if not root.is_dir():
            raise TrainingDataError(
                f"scene folder {root} does not exist; --data.root must be a folder of nerfstudio scenes "
                "(<root>/<scene>/transforms.json) or a single scene (<root>/transforms.json)"
            )
        files = (
            [root / "transforms.json"]
            if (root / "transforms.json").is_file()
            else sorted(root.glob("*/transforms.json"))
        )
        if not files:
            raise TrainingDataError(
                f"no transforms.json in {root} or in its sub-folders; --data.root must be a folder of nerfstudio "
                "scenes (<root>/<scene>/transforms.json) or a single scene (<root>/transforms.json)"
            )
        self._scenes = []
        for path in files:
            try:
                frames = read_transforms(path)
            except SceneFormatError as error:
                raise TrainingDataError(str(error)) from error
            if len(frames) < 2:
                raise TrainingDataError(f"{path} lists {len(frames)} frame(s); a training scene needs at least 2")
            self._scenes.append((path.parent.name, frames))

    @property
    def scene_keys(self) -> List[str]:
        return [key for key, _ in self._scenes]

    def frame_ids(self, scene: int) -> List[str]:
        return [str(index) for index in range(len(self._scenes[scene][1]))]

    def _camera(self, scene: int, frame: int) -> Tuple[Tensor, Tensor]:
        camera_to_world = torch.from_numpy(self._scenes[scene][1][frame].camera_to_world).clone()
        camera_to_world[:, 3] *= self.config.scale_factor
        R, T = opengl_pose_to_pytorch3d(camera_to_world[None])
        return R[0], T[0]

    def camera_centers(self, scene: int, frames: Sequence[int]) -> Float[np.ndarray, "n 3"]:
        return np.stack([self._scenes[scene][1][i].camera_to_world[:, 3] * self.config.scale_factor for i in frames])

    def load(self, scene: int, frame: int) -> LoadedFrame:
        record = self._scenes[scene][1][frame]
        fx, fy, cx, cy, width, height = record.intrinsics
        with Image.open(record.image) as pil:
            if pil.size != (width, height):
                raise TrainingDataError(
                    f"{record.image} is {pil.size[0]}x{pil.size[1]} but its transforms.json says {width}x{height}"
                )
        decoded = read_image_uint8(record.image)  # 16-bit and grey + alpha images too
        has_alpha = decoded.shape[-1] == 4
        rgba = np.asarray(Image.fromarray(decoded).convert("RGBA"), dtype=np.float32) / 255.0
        if record.mask is not None:  # read as the distillation's dataset reads it (8- or 16-bit, first channel)
            try:
                mask = read_mask(record.mask, image=record.image)[..., 0].numpy()
            except MaskSizeError as error:
                raise TrainingDataError(str(error)) from error
        elif has_alpha:
            mask = rgba[..., 3]
        else:
            mask = np.ones(rgba.shape[:2], dtype=np.float32)  # unmasked data: all foreground
        pixels = dict(dtype=torch.float64)
        focal, principal = pixel_to_ndc_intrinsics(
            torch.tensor([[fx, fy]], **pixels), torch.tensor([[cx, cy]], **pixels), (height, width)
        )
        processed = preprocess_arrays(
            torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).contiguous(),
            torch.from_numpy(mask),
            focal[0],
            principal[0],
            self.preprocessing,
        )
        R, T = self._camera(scene, frame)
        return self._finish(
            processed.image, processed.mask, processed.valid, R, T, processed.focal_length, processed.principal_point
        )


def build_scenes(config: DataConfig, image_size: int) -> SceneCollection:
    """The scene collection ``config.kind`` names, at the teacher's ``image_size``."""
    if config.kind == "co3d":
        return Co3dScenes(config, image_size)
    return NerfstudioScenes(config, image_size)
