"""What the EFT reads: the masked input views as S×S images and their cameras in PyTorch3D NDC.

The EFT was trained on 256² crops (SPEC "Data and cameras"): masked images in [0, 1], zero-padded
at the bottom/right to a square. Scenes already in that form (CO3D crops) pass through unchanged;
other scenes (e.g. Blender's 800², or non-square photos) are padded the same way and resized to the
teacher's ``S = EFTConfig.image_size``. Padding at the bottom/right keeps the pixel intrinsics; only
the image size, and so the NDC scale, changes. Resizing changes no NDC quantity.

All cameras stay in the field's world frame (the dataparser's, in which input camera 0 has the
identity rotation); the EFT moves to its query-centred frame itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager

from sparsefusion_ns.cameras.conventions import nerfstudio_to_ndc
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras


@dataclass(frozen=True)
class TeacherInputs:
    """The EFT's view of the scene: input images and cameras, and every scene frame's camera."""

    images: Float[Tensor, "v 3 s s"]
    """Masked input views in [0, 1], square, at the teacher's image size."""
    cameras: NDCCameras
    """The input cameras (field frame, PyTorch3D NDC)."""
    frame_indices: Sequence[int]
    """Scene frame index of each input view."""


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
    """Zero-pad an HWC image at the bottom/right to a square, then resize it to ``size``² (antialiased)."""
    height, width = image.shape[:2]
    side = max(height, width)
    chw = F.pad(image.permute(2, 0, 1), (0, side - width, 0, side - height))
    if side == size:
        return chw
    return F.interpolate(chw[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def teacher_inputs(datamanager: VanillaDataManager, size: int) -> TeacherInputs:
    """The input views at full resolution (``camera_res_scale_factor`` is for step A only), as S×S images."""
    outputs = datamanager.train_dataparser_outputs
    dataset = type(datamanager.train_dataset)(outputs, scale_factor=1.0)
    images = torch.stack([square_image(dataset.get_data(i)["image"], size) for i in range(len(dataset))])
    frame_indices = outputs.metadata.get("frame_indices", list(range(len(dataset))))
    return TeacherInputs(images=images.float(), cameras=ndc_cameras(dataset.cameras), frame_indices=frame_indices)


def scene_frame_cameras(datamanager: VanillaDataManager) -> NDCCameras:
    """Every scene frame's camera (input views and held-out views) in scene order, for the authors' pool."""
    eval_dataset = datamanager.eval_dataset
    if eval_dataset is None or len(eval_dataset) == 0:
        raise ValueError(
            "the authors' camera pool (--pipeline.model.distillation.pool.source authors) needs the held-out "
            "frames' cameras, but the datamanager has no evaluation split"
        )
    splits = (datamanager.train_dataset, eval_dataset)
    cameras = NDCCameras.cat([ndc_cameras(split.cameras) for split in splits])
    indices = [index for split in splits for index in split.metadata.get("frame_indices", range(len(split)))]
    if len(set(indices)) != len(indices):
        raise ValueError(f"the train and evaluation splits share frames {sorted(indices)}: cannot order the scene")
    return cameras[torch.tensor(indices).argsort()]
