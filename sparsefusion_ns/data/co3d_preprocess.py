"""SparseFusion's CO3Dv2 image preprocessing and the matching camera update.

Every frame is turned into a square ``T x T`` image (T = 256) as the authors' loader does:

1. **Box.** Threshold the foreground probability at 0.4 (lowered in steps of 0.05 until more
   than one pixel passes) and take the tight box of the passing pixels,
   ``x0 = first column, x1 = last column + 1`` (same for y), ``w = x1 - x0``, ``h = y1 - y0``.
2. **Context.** Grow the box by 30 % about its centre: ``x0 -= 0.15 w``, ``y0 -= 0.15 h``,
   ``w *= 1.3``, ``h *= 1.3`` (width and height at least 2), then clamp the corners to the image
   (``[0, W] x [0, H]``) and round them to integers (half to even). This is computed in float32
   as the authors do, so corners that land on half a pixel round the same way. The crop is *not*
   made square and is *not* padded beyond the image: near an image border it is cut.
3. **Resize.** Scale the crop by ``s = T / max(h_crop, w_crop)``: the longer side becomes T,
   the shorter ``floor(short * T / long)``. Sampling is bilinear on pixel centres (output
   pixel centre u + 0.5 reads crop position (u + 0.5) / s), without antialiasing, as PyTorch's
   ``interpolate(mode="bilinear", align_corners=False)`` that the authors use.
4. **Pad.** Put the result in the top-left corner of a black ``T x T`` canvas: zero padding on
   the bottom/right. The unpadded rectangle is the *valid region*.
5. **Mask.** The mask goes through the same crop/resize/pad; images are multiplied by it
   downstream (black background).

Camera update (derivation). Let ``S0 = min(H, W)`` of the original image. In pixels
(``conventions.ndc_to_pixel_intrinsics``): ``f_px = f_ndc S0/2``, ``c_px = (W/2, H/2) - p_ndc S0/2``.
Cropping shifts the origin to the box corner, ``c_px -= (x0, y0)``; resizing scales continuous
pixel positions (image edges map to image edges), ``f_px *= s``, ``c_px *= s``; padding on the
bottom/right moves nothing. Back to NDC for the ``T x T`` image (``S = T``)::

    f_ndc' = f_ndc * S0 * s / T
    p_ndc' = 1 - s * ((W/2, H/2) - p_ndc * S0/2 - (x0, y0)) / (T/2)

Differences from the authors' loader, all sub-pixel and all towards exact geometry:

- The authors resize with ``recompute_scale_factor=True``, which samples the shorter axis with
  ``floor(short s) / short`` instead of ``s`` while their camera uses ``s``; we sample both axes
  with ``s``, so pixels and camera agree exactly.
- The authors resize the mask with PyTorch's legacy ``nearest`` mode, which reads the source
  pixel at ``floor(u / s)`` (a shift of up to one source pixel against the image); we resample
  the mask bilinearly on the image's grid.
- PyTorch3D before its bounding-box fix took ``x1 = last column`` (one pixel narrower box);
  we use the fixed, exclusive ``x1 = last column + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from sparsefusion_ns.cameras.conventions import ndc_to_pixel_intrinsics, pixel_to_ndc_intrinsics
from sparsefusion_ns.data.co3d_annotations import Co3dFormatError, Co3dFrame

MASK_THRESHOLD_STEP = 0.05
"""How much the mask threshold drops each time no more than one pixel passes it."""

TEACHER_CROP_KEY = "teacher_crop"
"""``DataparserOutputs.metadata`` key of a dataparser whose images already are crops made by this
module (the ``co3d`` dataparser); its value is the :class:`Co3dPreprocessing` used. Without it the
distillation crops the images itself (``distillation.teacher_inputs``)."""


@dataclass(frozen=True)
class Co3dPreprocessing:
    """Parameters of the authors' crop/resize/pad (their values are the defaults)."""

    image_size: int = 256
    """Side T of the square output image."""
    mask_threshold: float = 0.4
    """Foreground probability above which a pixel belongs to the object's box."""
    box_context: float = 0.3
    """Relative growth of the box (0.3: 15 % of its size on every side)."""


@dataclass(frozen=True)
class CropBox:
    """Integer pixel box ``[x0, x1) x [y0, y1)`` of the original image."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class ProcessedFrame:
    """One frame after crop/resize/pad, with its camera intrinsics for the ``T x T`` image."""

    image: Float[Tensor, "3 t t"]
    """RGB in [0, 1], *not* multiplied by the mask; zero in the padding."""
    mask: Float[Tensor, "1 t t"]
    """Foreground probability in [0, 1]; zero in the padding."""
    valid: Float[Tensor, "1 t t"]
    """1 inside the unpadded region, 0 in the padding."""
    focal_length: Float[Tensor, "2"]
    """Isotropic NDC focal length for the ``T x T`` image."""
    principal_point: Float[Tensor, "2"]
    """Isotropic NDC principal point for the ``T x T`` image."""
    crop_box: CropBox
    """The crop in original-image pixels."""
    scale: float
    """Resize factor s from crop pixels to output pixels."""


# ---------------------------------------------------------------------------------------- box
def mask_bbox_xywh(mask: np.ndarray, threshold: float = 0.4) -> Tuple[int, int, int, int]:
    """Tight box (x0, y0, w, h) of the pixels above ``threshold``, lowered until more than one passes."""
    above = mask > threshold
    while above.sum() <= 1:
        if threshold < 0.0:
            raise ValueError(f"Mask of shape {mask.shape} has at most one pixel: no box can be cut around it.")
        threshold -= MASK_THRESHOLD_STEP
        above = mask > threshold
    columns = np.flatnonzero(above.any(axis=0))
    rows = np.flatnonzero(above.any(axis=1))
    x0, y0 = int(columns[0]), int(rows[0])
    return x0, y0, int(columns[-1]) + 1 - x0, int(rows[-1]) + 1 - y0


def crop_box_around_mask(mask: np.ndarray, threshold: float = 0.4, context: float = 0.3) -> CropBox:
    """The authors' crop: the mask box grown by ``context`` about its centre, clamped to the image and rounded."""
    height, width = mask.shape
    # float32 and this order of operations, as the authors' loader: it decides which way a
    # corner at (nearly) half a pixel rounds.
    x0, y0, w, h = np.array(mask_bbox_xywh(mask, threshold), dtype=np.float32)
    c = np.float32(context)
    x0, y0 = x0 - w * c / np.float32(2.0), y0 - h * c / np.float32(2.0)
    w, h = np.maximum(w + w * c, np.float32(2.0)), np.maximum(h + h * c, np.float32(2.0))
    x1, y1 = x0 + w, y0 + h
    # Clamp to the image, then round half to even (np.round, as torch.round).
    x0, x1 = (int(np.round(np.clip(v, 0, width))) for v in (x0, x1))
    y0, y1 = (int(np.round(np.clip(v, 0, height))) for v in (y0, y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"The crop box {(x0, y0, x1, y1)} of a {height}x{width} mask is empty.")
    return CropBox(x0, y0, x1, y1)


def resize_geometry(crop_hw: Tuple[int, int], image_size: int) -> Tuple[float, Tuple[int, int]]:
    """Scale ``s = T / max(h, w)`` and the resized (h, w): the longer side T, the shorter floored."""
    height, width = crop_hw
    longer = max(height, width)
    scale = image_size / longer
    # floor(side * T / longer) in integer arithmetic, so the longer side is exactly T.
    return scale, (max(1, height * image_size // longer), max(1, width * image_size // longer))


# ---------------------------------------------------------------------------------- resampling
def crop_resize_pad(
    image: Float[Tensor, "c h w"], box: CropBox, scale: float, resized_hw: Tuple[int, int], image_size: int
) -> Float[Tensor, "c t t"]:
    """Crop ``box``, resample by ``scale`` (bilinear, pixel centres), zero-pad bottom/right to T x T."""
    crop = image[:, box.y0 : box.y1, box.x0 : box.x1]
    height, width = resized_hw
    # Output pixel centre (u + 0.5) reads crop position (u + 0.5) / s; grid_sample's
    # align_corners=False coordinates are 2 * position / size - 1, and border padding
    # replicates the edge pixels as interpolate(align_corners=False) does.
    gx = 2.0 * (torch.arange(width, dtype=torch.float64) + 0.5) / scale / box.width - 1.0
    gy = 2.0 * (torch.arange(height, dtype=torch.float64) + 0.5) / scale / box.height - 1.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).to(image.dtype)
    resized = F.grid_sample(crop[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]
    out = image.new_zeros(image.shape[0], image_size, image_size)
    out[:, :height, :width] = resized
    return out


def crop_resize_intrinsics(
    focal_length: Float[Tensor, "2"],
    principal_point: Float[Tensor, "2"],
    image_size_hw: Tuple[int, int],
    box: CropBox,
    scale: float,
    image_size: int,
) -> Tuple[Float[Tensor, "2"], Float[Tensor, "2"]]:
    """Isotropic NDC intrinsics of the original image -> those of the cropped, resized, padded T x T image."""
    focal_px, principal_px = ndc_to_pixel_intrinsics(focal_length[None], principal_point[None], image_size_hw)
    principal_px = (principal_px - principal_px.new_tensor([box.x0, box.y0])) * scale  # crop, then resize
    focal_px = focal_px * scale
    focal, principal = pixel_to_ndc_intrinsics(focal_px, principal_px, (image_size, image_size))
    return focal[0], principal[0]


def preprocess_arrays(
    image: Float[Tensor, "3 h w"],
    mask: Float[Tensor, "h w"],
    focal_length: Float[Tensor, "2"],
    principal_point: Float[Tensor, "2"],
    settings: Co3dPreprocessing = Co3dPreprocessing(),
) -> ProcessedFrame:
    """Crop/resize/pad an image and its mask, and update the (isotropic NDC) intrinsics to match."""
    if image.shape[-2:] != mask.shape:
        raise ValueError(f"Image {tuple(image.shape[-2:])} and mask {tuple(mask.shape)} sizes differ.")
    box = crop_box_around_mask(mask.cpu().numpy(), settings.mask_threshold, settings.box_context)
    scale, resized_hw = resize_geometry((box.height, box.width), settings.image_size)
    size = settings.image_size
    valid = torch.zeros(1, size, size, dtype=image.dtype)
    valid[:, : resized_hw[0], : resized_hw[1]] = 1.0
    focal, principal = crop_resize_intrinsics(
        focal_length, principal_point, (image.shape[-2], image.shape[-1]), box, scale, size
    )
    return ProcessedFrame(
        image=crop_resize_pad(image, box, scale, resized_hw, size).clamp(0.0, 1.0),
        mask=crop_resize_pad(mask[None], box, scale, resized_hw, size).clamp(0.0, 1.0),
        valid=valid,
        focal_length=focal,
        principal_point=principal,
        crop_box=box,
        scale=scale,
    )


# -------------------------------------------------------------------------------------- files
def load_image_and_mask(root: Path, frame: Co3dFrame) -> Tuple[Float[Tensor, "3 h w"], Float[Tensor, "h w"]]:
    """Read a frame's RGB image and foreground probability as floats in [0, 1], checking the files."""
    if frame.mask_path is None:
        raise Co3dFormatError(
            f"Frame {frame.frame_number} of sequence {frame.sequence_name} has no mask annotation; "
            "SparseFusion needs foreground masks (check frame_annotations.jgz)."
        )
    arrays = []
    for kind, relative, mode in (("image", frame.image_path, "RGB"), ("mask", frame.mask_path, "L")):
        path = Path(root) / relative
        if not path.is_file():
            raise Co3dFormatError(
                f"The {kind} file {path} of frame {frame.frame_number} of sequence {frame.sequence_name} does not "
                f"exist. Check that the CO3Dv2 root is right and that the sequence's {kind}s were fully extracted."
            )
        with Image.open(path) as pil:
            array = np.asarray(pil.convert(mode), dtype=np.float32) / 255.0
        if array.shape[:2] != tuple(frame.image_size_hw):
            raise Co3dFormatError(
                f"{path} is {array.shape[0]}x{array.shape[1]} but frame_annotations.jgz says "
                f"{frame.image_size_hw[0]}x{frame.image_size_hw[1]}; the annotations and images do not belong together."
            )
        arrays.append(array)
    image, mask = arrays
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)


def preprocess_frame(root: Path, frame: Co3dFrame, settings: Co3dPreprocessing = Co3dPreprocessing()) -> ProcessedFrame:
    """Read a CO3D frame from disk and preprocess it (image, mask, valid region, camera intrinsics)."""
    if frame.viewpoint is None:
        raise Co3dFormatError(
            f"Frame {frame.frame_number} of sequence {frame.sequence_name} has no camera (viewpoint annotation)."
        )
    image, mask = load_image_and_mask(root, frame)
    viewpoint = frame.viewpoint.to_ndc_isotropic(frame.image_size_hw)
    return preprocess_arrays(
        image,
        mask,
        torch.from_numpy(viewpoint.focal_length).to(torch.float64),
        torch.from_numpy(viewpoint.principal_point).to(torch.float64),
        settings,
    )
