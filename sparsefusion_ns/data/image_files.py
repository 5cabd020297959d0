"""Reading scene images as 8-bit RGB or RGBA, whatever their PNG/JPEG mode.

nerfstudio's ``InputDataset.get_numpy_image`` casts the decoded image to ``uint8``: a 16-bit greyscale
PNG (PIL mode ``I;16``) is then read modulo 256, and a greyscale + alpha image (``LA``) stops with
"AssertionError: Image shape of (48, 48, 2) is in correct." :func:`read_image_uint8` converts every
mode PIL decodes to RGB (or RGBA when the file has transparency), scaling 16-bit values to 8 bits,
and refuses 32-bit integer and floating-point images with an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jaxtyping import UInt8
from PIL import Image

_WITH_ALPHA = ("RGBA", "LA", "La", "PA", "RGBa")


class ImageFormatError(ValueError):
    """An image file cannot be read as an 8-bit RGB(A) image (the message names it)."""


def read_image_uint8(path: Path, scale_factor: float = 1.0) -> UInt8[np.ndarray, "h w c"]:
    """The image at ``path`` as (H, W, 3) RGB or (H, W, 4) RGBA ``uint8``, resized by ``scale_factor``
    (bilinear, as nerfstudio's dataset does)."""
    with Image.open(path) as pil:
        pil.load()
        if pil.mode.startswith("I;16"):  # 16-bit greyscale PNG: 0…65535 → 0…255
            values = np.asarray(pil).astype(np.float64)
            pil = Image.fromarray(np.round(values / 257.0).astype(np.uint8), mode="L")
        elif pil.mode in ("I", "F"):
            kind = "32-bit integer" if pil.mode == "I" else "floating-point"
            raise ImageFormatError(
                f"{path} is a {kind} image (PIL mode {pil.mode}), which has no standard colour range. Save it as "
                "an 8- or 16-bit PNG or a JPEG."
            )
        has_alpha = pil.mode in _WITH_ALPHA or (pil.mode == "P" and "transparency" in pil.info)
        target = "RGBA" if has_alpha else "RGB"
        if pil.mode != target:
            pil = pil.convert(target)
        if scale_factor != 1.0:
            width, height = pil.size
            size = (int(width * scale_factor), int(height * scale_factor))
            pil = pil.resize(size, resample=Image.Resampling.BILINEAR)
        return np.array(pil, dtype=np.uint8)
