"""What the EFT reads: the input views as S×S images and their cameras in PyTorch3D NDC.

The teacher must see a frame at distillation as it saw its training frames
(``teacher_training.scenes``): cropped around the mask (``co3d_preprocess``: the teacher's mask
threshold and box context), resized so the longer side is ``S = EFTConfig.image_size``,
zero-padded at the bottom/right to S×S, multiplied by the mask (unless the teacher was trained on
unmasked images), with the PyTorch3D NDC camera of that square image. The dataparser's metadata,
not its class, says which of two cases applies:

- ``metadata[TEACHER_CROP_KEY]`` is set (the ``co3d`` dataparser): the images already are such
  crops, made at the dataparser's ``image_size``. They pass through, resized to S when that size
  differs (a second bilinear resampling: close to, not equal to, training's pixels;
  a warning says so), with the crops' cameras.
- Otherwise (``sparse-views``: whole photos), every view is cropped here at full resolution with
  ``co3d_preprocess.preprocess_arrays``, the function training uses, and its intrinsics follow.

World frame. The EFT samples depths over d̄ ± 5 world units, d̄ the mean distance of the cameras
from the world origin, so the distillation's world must have the training's origin and scale; a
rotation about the origin changes nothing the EFT sees (it works in the query's view frame). The
dataparsers only rotate the world about its origin (``orient_to_first_input``; the dataparser
transform) and ``sparse-views`` scales camera positions by ``scale_factor`` (``dataparser_scale``).
Hence the user-facing requirement, checked by :func:`training_mismatches`: a teacher trained on
nerfstudio scenes with ``--data.scale-factor X`` needs ``sparse-views --scale-factor X`` on scenes
in the same units; a CO3D teacher on a nerfstudio scene needs a ``scale_factor`` that brings the
scene to CO3D's scale, which no file records (a note gives d̄).

All cameras stay in the field's world frame (the dataparser's); the EFT moves to its query-centred
frame itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.cameras.conventions import nerfstudio_to_ndc
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.data.co3d_preprocess import TEACHER_CROP_KEY, Co3dPreprocessing, preprocess_arrays
from sparsefusion_ns.data.masked_dataset import MaskedImageDataset
from sparsefusion_ns.teacher_training.config import DataConfig

if TYPE_CHECKING:
    from sparsefusion_ns.teacher.bundle import Teacher


@dataclass(frozen=True)
class TeacherInputs:
    """The EFT's view of the scene: the input views' images, cameras and scene frame indices."""

    images: Float[Tensor, "v 3 s s"]
    """Input views in [0, 1] as the teacher saw its training frames (cropped, square, masked)."""
    cameras: NDCCameras
    """The input cameras (field frame, PyTorch3D NDC of the S×S images)."""
    frame_indices: Sequence[int]
    """Scene frame index of each input view."""

    @property
    def depth_center(self) -> float:
        """d̄ from the input cameras alone: their mean distance from the world origin, the centre of
        the EFT's depth samples wherever no evaluation camera may be used (the authors average over
        all the scene's frames)."""
        return float(self.cameras.camera_centers().norm(dim=-1).mean())


def square_padded(cameras: Cameras) -> Cameras:
    """The same cameras for images zero-padded at the bottom/right to a square (pixel intrinsics kept)."""
    side = torch.maximum(cameras.width, cameras.height)
    return Cameras(
        camera_to_worlds=cameras.camera_to_worlds,
        fx=cameras.fx,
        fy=cameras.fy,
        cx=cameras.cx,
        cy=cameras.cy,
        width=side,
        height=side,
        camera_type=cameras.camera_type,
    )


def ndc_cameras(cameras: Cameras) -> NDCCameras:
    """Nerfstudio cameras of (square-padded) images as PyTorch3D NDC cameras, float32 on the CPU."""
    ndc, _ = nerfstudio_to_ndc(square_padded(cameras.flatten().to("cpu")))
    return ndc.to(torch.float32)


def square_image(image: Float[Tensor, "h w 3"], size: int) -> Float[Tensor, "3 size size"]:
    """Zero-pad an HWC image at the bottom/right to a square, then resize it to ``size``².

    Bilinear without antialiasing, as the crop of training (``co3d_preprocess``) samples: on CO3D
    crops resampled 128² → 64² this is 2–3× closer to training's direct 64² crop than antialiased
    resizing (``tests/test_teacher_inputs_match_training.py``).
    """
    height, width = image.shape[:2]
    side = max(height, width)
    chw = F.pad(image.permute(2, 0, 1), (0, side - width, 0, side - height))
    if side == size:
        return chw
    return F.interpolate(chw[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def from_square_image(image: Float[Tensor, "3 s s"], height: int, width: int) -> Float[Tensor, "3 height width"]:
    """Inverse of :func:`square_image`: an S×S teacher image of the square-padded frame, resized
    bilinearly to the padded side max(height, width) and cut to the frame's height × width."""
    side = max(height, width)
    if image.shape[-1] != side or image.shape[-2] != side:
        image = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    return image[:, :height, :width]


def full_resolution(dataset: InputDataset) -> MaskedImageDataset:
    """The same split at full resolution (the datamanager's ``camera_res_scale_factor`` is for step A only)."""
    if not isinstance(dataset, MaskedImageDataset):
        raise TypeError(
            f"the distillation crops the teacher's inputs around their foreground masks, which a "
            f"{type(dataset).__name__} does not serve: use VanillaDataManager[MaskedImageDataset] as the "
            "datamanager (as the sparsefusion method configs in sparsefusion_ns/plugin/method_configs.py do)"
        )
    return type(dataset)(dataset._dataparser_outputs, scale_factor=1.0)


def teacher_views(
    dataset: InputDataset, size: int, training: DataConfig
) -> Tuple[Float[Tensor, "n 3 size size"], NDCCameras]:
    """Every view of a split as the teacher saw its training frames (module docstring), with its camera."""
    dataset = full_resolution(dataset)
    crop = dataset.metadata.get(TEACHER_CROP_KEY)
    views = range(len(dataset))

    def apply_mask(image: Tensor, mask: Tensor) -> Tensor:
        return image * mask if training.apply_mask else image

    if crop is not None:  # already the teacher's crops: resize only
        images = [square_image(apply_mask(*dataset.get_image_and_mask(i)), size) for i in views]
        return torch.stack(images).float(), ndc_cameras(dataset.cameras)

    cameras, _ = nerfstudio_to_ndc(dataset.cameras.flatten().to("cpu"))
    settings = Co3dPreprocessing(size, training.mask_threshold, training.box_context)
    images, focal, principal = [], [], []
    for i in views:
        rgb, mask = dataset.get_image_and_mask(i)
        frame = preprocess_arrays(
            rgb.permute(2, 0, 1).contiguous(),
            mask[..., 0],
            cameras.focal_length[i].double(),
            cameras.principal_point[i].double(),
            settings,
        )
        images.append(apply_mask(frame.image, frame.mask))
        focal.append(frame.focal_length)
        principal.append(frame.principal_point)
    cropped = NDCCameras(cameras.R, cameras.T, focal_length=torch.stack(focal), principal_point=torch.stack(principal))
    return torch.stack(images).float(), cropped.to(torch.float32)


def training_mismatches(outputs: DataparserOutputs, size: int, training: DataConfig) -> List[str]:
    """Ways in which the EFT's view of this scene cannot be made that of its training (empty: none).

    Options are named as ``ns-train`` takes them, after the dataparser's name (``co3d ...``,
    ``sparse-views ...``).
    """
    crop = outputs.metadata.get(TEACHER_CROP_KEY)
    problems = []
    if crop is not None:
        trained = (training.mask_threshold, training.box_context)
        if (crop.mask_threshold, crop.box_context) != trained:
            problems.append(
                f"the co3d dataparser cropped the images with mask threshold {crop.mask_threshold:g} and box "
                f"context {crop.box_context:g}, the teacher was trained with {trained[0]:g} and {trained[1]:g}: "
                f"pass co3d --mask-threshold {trained[0]:g} --box-context {trained[1]:g}"
            )
        if crop.image_size != size:
            problems.append(
                f"the co3d dataparser's {crop.image_size}² crops are resampled to the teacher's {size}² (a second "
                f"resampling, close to but not the teacher's pixels); co3d --image-size {size} gives them exactly"
            )

    translation = outputs.dataparser_transform[:3, 3]
    if float(translation.abs().max()) > 0:
        problems.append(
            f"the dataparser moved the world's origin by {translation.tolist()}, but the EFT's depth samples "
            "(d̄ ± 5, d̄ the mean camera distance from the origin) are placed from the origin the teacher was "
            "trained with: use the sparse-views or co3d dataparser (they only rotate the world about its origin)"
        )
    data_kind = "co3d" if crop is not None else "nerfstudio"
    scale = float(outputs.dataparser_scale)
    depth_center = float(outputs.cameras.camera_to_worlds[..., :3, 3].norm(dim=-1).mean())
    if data_kind == training.kind:
        expected = training.scale_factor if training.kind == "nerfstudio" else 1.0
        if abs(scale - expected) > 1e-6 * expected:
            problems.append(
                f"the teacher was trained on {training.kind} scenes with camera positions scaled by {expected:g} "
                f"(its teacher_config.json), this scene's are scaled by {scale:g}, so the EFT's depth samples "
                f"(d̄ ± 5, d̄ = {depth_center:.3g} here) do not cover what they covered in training. If this "
                f"scene is in the units of the teacher's training scenes, pass sparse-views --scale-factor {expected:g}"
            )
    else:
        problems.append(
            f"the teacher was trained on {training.kind} scenes, this is a {data_kind} scene: the EFT samples "
            f"depths d̄ ± 5 world units around d̄ = {depth_center:.3g} (the mean camera distance from the origin, "
            f"camera positions scaled by {scale:g}); the scene must have the scale of the teacher's training "
            "scenes (sparse-views --scale-factor sets it)"
        )
    return problems


def teacher_inputs(datamanager: VanillaDataManager, size: int, training: Optional[DataConfig] = None) -> TeacherInputs:
    """The input views as the teacher saw its training frames: S×S images and their cameras.

    ``training`` is the teacher's training data config (``DataConfig.of_teacher``; the default is the
    authors' CO3D recipe); what cannot be matched is printed as a warning.
    """
    training = training if training is not None else DataConfig()
    outputs = datamanager.train_dataparser_outputs
    for problem in training_mismatches(outputs, size, training):
        CONSOLE.print(f"[bold yellow]Teacher inputs:[/bold yellow] {problem}")
    images, cameras = teacher_views(datamanager.train_dataset, size, training)
    frame_indices = outputs.metadata.get("frame_indices", list(range(len(images))))
    return TeacherInputs(images=images, cameras=cameras, frame_indices=frame_indices)


def inputs_for_teacher(datamanager: VanillaDataManager, teacher: "Teacher") -> TeacherInputs:
    """:func:`teacher_inputs` at ``teacher``'s image size with the data settings it was trained with
    (``DataConfig.of_teacher``): what the distillation and the evaluation's teacher baselines show the EFT."""
    return teacher_inputs(datamanager, teacher.config.eft.image_size, DataConfig.of_teacher(teacher.provenance))


def scene_frame_cameras(
    datamanager: VanillaDataManager, size: int, training: Optional[DataConfig] = None
) -> NDCCameras:
    """Every scene frame's camera (input views and held-out views) in scene order, for the authors' pool.

    Intrinsics are those of the frames as the teacher sees them (``teacher_views``), as its training
    query cameras were.
    """
    training = training if training is not None else DataConfig()
    eval_dataset = datamanager.eval_dataset
    if eval_dataset is None or len(eval_dataset) == 0:
        raise ValueError(
            "the authors' camera pool (--pipeline.model.distillation.pool.source authors) needs the held-out "
            "frames' cameras, but the datamanager has no evaluation split"
        )
    splits = (datamanager.train_dataset, eval_dataset)
    cameras = NDCCameras.cat([teacher_views(split, size, training)[1] for split in splits])
    indices = [index for split in splits for index in split.metadata.get("frame_indices", range(len(split)))]
    if len(set(indices)) != len(indices):
        raise ValueError(f"the train and evaluation splits share frames {sorted(indices)}: cannot order the scene")
    return cameras[torch.tensor(indices).argsort()]
