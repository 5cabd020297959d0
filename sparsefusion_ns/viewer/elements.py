"""A picture in the viewer's control panel, as a nerfstudio viewer element.

``nerfstudio.viewer.viewer_elements`` has text, numbers, checkboxes, sliders … but no image. viser's
markdown element shows images given as data URLs, so :class:`ViewerImage` is a
:class:`~nerfstudio.viewer.viewer_elements.ViewerElement` whose handle is a markdown block holding
one PNG. Setting a new image before the element is installed keeps it for the installation.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from jaxtyping import UInt8
from PIL import Image
from viser import ViserServer

from nerfstudio.viewer.viewer_elements import ViewerElement


def png_data_url(image: UInt8[np.ndarray, "h w 3"]) -> str:
    """``data:image/png;base64,…`` of an 8-bit RGB image."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ViewerImage(ViewerElement[str]):
    """An image with a caption in the control panel (a viser markdown block; the value is its markdown)."""

    def __init__(self, name: str, caption: str = "", visible: bool = True) -> None:
        super().__init__(name, visible=visible)
        self.caption = caption
        self.content = f"{caption}\n\n*(no image yet)*" if caption else "*(no image yet)*"
        """The markdown shown: the caption and the latest image."""

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        # image_root only silences viser's warning about relative paths: data URLs never read files.
        self.gui_handle = viser_server.gui.add_markdown(  # type: ignore[assignment]
            self.content, image_root=Path(__file__).parent, visible=self.visible
        )

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)

    def set_image(self, image: UInt8[np.ndarray, "h w 3"]) -> None:
        """Show ``image`` (8-bit RGB) under the caption, replacing the previous one."""
        picture = f"![{self.name}]({png_data_url(image)})"
        self.content = f"{self.caption}\n\n{picture}" if self.caption else picture
        if self.gui_handle is not None:
            self.gui_handle.content = self.content  # type: ignore[union-attr]
