"""Pictures that put methods side by side: one row per held-out view, one column per image.

``sf-eval``'s contact sheet (render | ground truth | error) and the comparison benchmark's picture
([inputs | NeRF | EFT | VLDM | SparseFusion | ground truth]) are built from the same pieces: every
image becomes a cell of the same width, cells are laid out left to right in a row, rows are stacked
under an optional header of column labels, with an optional label in front of every row.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from jaxtyping import Float
from PIL import Image, ImageDraw
from torch import Tensor

LABEL_HEIGHT = 14
"""Height in pixels of the header's text line."""


def to_pil(image: Float[Tensor, "3 h w"], width: int) -> Image.Image:
    """An image in [0, 1] (clipped) as an RGB picture ``width`` pixels wide (bilinear, aspect kept)."""
    array = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    picture = Image.fromarray(array)
    height = max(1, round(picture.height * width / picture.width))
    return picture.resize((width, height), Image.Resampling.BILINEAR)


def image_row(images: Sequence[Float[Tensor, "3 h w"]], cell_width: int) -> Image.Image:
    """``images`` left to right, each ``cell_width`` wide, top-aligned on black."""
    cells = [to_pil(image, cell_width) for image in images]
    row = Image.new("RGB", (cell_width * len(cells), max(cell.height for cell in cells)))
    for k, cell in enumerate(cells):
        row.paste(cell, (k * cell_width, 0))
    return row


def stack_rows(
    rows: Sequence[Image.Image],
    column_labels: Optional[Sequence[str]] = None,
    cell_width: Optional[int] = None,
    row_labels: Optional[Sequence[str]] = None,
    row_label_width: int = 0,
) -> Image.Image:
    """Rows one under the other on black; ``column_labels`` (one per cell of ``cell_width``) as a
    white header line, ``row_labels`` in a ``row_label_width`` column in front of the rows."""
    if not rows:
        raise ValueError("no rows to stack")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    header = LABEL_HEIGHT if column_labels else 0
    left = row_label_width if row_labels is not None else 0
    width = left + max(row.width for row in rows)
    sheet = Image.new("RGB", (width, header + sum(row.height for row in rows)))
    draw = ImageDraw.Draw(sheet)
    if column_labels:
        if cell_width is None:
            raise ValueError("column labels need the cell width")
        for k, label in enumerate(column_labels):
            draw.text((left + k * cell_width + 2, 1), label, fill=(255, 255, 255))
    top = header
    for k, row in enumerate(rows):
        sheet.paste(row, (left, top))
        if row_labels is not None:
            for line, text in enumerate(row_labels[k].split("\n")):
                draw.text((2, top + 2 + line * 11), text, fill=(255, 255, 255))
        top += row.height
    return sheet
