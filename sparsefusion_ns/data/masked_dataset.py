"""A nerfstudio dataset of masked object photos.

Each item carries the image multiplied by its foreground mask (black background, as the
SparseFusion authors train) and the mask itself under ``fg_mask``, read from the image's alpha
channel or from a separate mask file (``metadata["fg_mask_filenames"]``). An optional
``valid_mask`` marks the unpadded image region (CO3D crops are zero-padded to a square).

Images are decoded by :func:`~sparsefusion_ns.data.image_files.read_image_uint8` (16-bit and
greyscale + alpha images included). A mask file must have its image's size: masks are never
stretched to fit.

The key is ``fg_mask`` rather than nerfstudio's ``mask`` on purpose: nerfstudio's pixel samplers
restrict ray sampling to ``mask`` pixels, whereas SparseFusion supervises the background too (the
opacity must go to zero there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from nerfstudio.data.datasets.base_dataset import InputDataset

from sparsefusion_ns.data.image_files import ImageFormatError, read_image_uint8


class MaskSizeError(ImageFormatError):
    """A mask file does not have the size of its image."""


def read_mask(path: Path, size_wh: Optional[tuple] = None, image: Optional[Path] = None) -> Float[Tensor, "h w 1"]:
    """Read a single-channel (or RGB/RGBA, first channel used) mask image as floats in [0, 1].

    With ``image``, the mask must have the size of that image file (else :class:`MaskSizeError`
    naming both); ``size_wh`` is the size to resize it to, the size the image is served at."""
    if not Path(path).exists():
        raise FileNotFoundError(f"Mask file {path} does not exist. Check the mask paths of your scene.")
    pil = Image.open(path)
    if image is not None:
        with Image.open(image) as source:
            image_size = source.size
        if pil.size != image_size:
            raise MaskSizeError(
                f"Mask {path} is {pil.size[0]}×{pil.size[1]} pixels but its image {image} is "
                f"{image_size[0]}×{image_size[1]}: a mask must have the size of its image (it is not stretched to "
                "fit). Re-export the mask at the image's size."
            )
    if pil.mode == "P":
        pil = pil.convert("L")
    if size_wh is not None and pil.size != tuple(size_wh):
        pil = pil.resize(tuple(size_wh), resample=Image.Resampling.BILINEAR)
    mask = np.asarray(pil, dtype=np.float32)
    if mask.ndim == 3:
        mask = mask[..., 0]
    scale = 65535.0 if pil.mode.startswith("I;16") else 255.0
    if pil.mode == "1":
        scale = 1.0
    return torch.from_numpy(mask / scale).clamp(0.0, 1.0)[..., None]


class MaskedImageDataset(InputDataset):
    """Images multiplied by their foreground masks, plus the masks (``fg_mask``, ``valid_mask``)."""

    def get_numpy_image(self, image_idx: int) -> np.ndarray:
        """The image as (H, W, 3 or 4) uint8, whatever its file's mode (see ``image_files.py``)."""
        return read_image_uint8(self._dataparser_outputs.image_filenames[image_idx], self.scale_factor)

    def get_image_and_mask(self, image_idx: int) -> Tuple[Float[Tensor, "h w 3"], Float[Tensor, "h w 1"]]:
        """The image *not* multiplied by its mask, and the mask (both in [0, 1], at this dataset's scale).

        The teacher's crop resamples image and mask separately before multiplying them, as its
        training did (``distillation.teacher_inputs``).
        """
        rgba = torch.from_numpy(self.get_numpy_image(image_idx).astype(np.float32) / 255.0)
        height, width = rgba.shape[:2]
        image_file = self._dataparser_outputs.image_filenames[image_idx]
        mask_files: Optional[List[Path]] = self.metadata.get("fg_mask_filenames")
        if mask_files is not None:
            return rgba[..., :3], read_mask(mask_files[image_idx], (width, height), image=image_file)
        if rgba.shape[-1] == 4:
            return rgba[..., :3], rgba[..., 3:]
        raise ValueError(
            f"{image_file} has no alpha channel and the scene gives no mask file for it: SparseFusion needs a "
            "foreground mask per view."
        )

    def get_data(self, image_idx: int, image_type: Literal["uint8", "float32"] = "float32") -> Dict:
        if image_type != "float32":
            raise NotImplementedError("MaskedImageDataset serves float32 images only.")
        rgb, fg_mask = self.get_image_and_mask(image_idx)
        height, width = rgb.shape[:2]
        image_file = self._dataparser_outputs.image_filenames[image_idx]
        # I_masked = I · M: black background, as the authors multiply images by their masks.
        data = {"image_idx": image_idx, "image": rgb * fg_mask, "fg_mask": fg_mask}
        valid_files: Optional[List[Path]] = self.metadata.get("valid_mask_filenames")
        if valid_files is not None:
            data["valid_mask"] = read_mask(valid_files[image_idx], (width, height), image=image_file)
        return data
