"""Write 16-bit PNGs (PIL cannot write 16-bit colour ones), for tests of image reading."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels → PNG colour type (grey, grey+alpha, RGB, RGBA)


def write_png16(path: Path, array: np.ndarray) -> Path:
    """Write an (H, W) or (H, W, C) uint16 array as a 16-bit PNG; returns ``path``."""
    array = np.asarray(array, dtype=np.uint16)
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, _COLOUR_TYPES[channels], 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return Path(path)
