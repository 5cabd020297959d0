"""The model's hook into nerfstudio's web viewer: the opening camera and the SparseFusion panel.

nerfstudio's viewer looks through the pipeline for :class:`~nerfstudio.viewer.viewer_elements.ViewerControl`
attributes and calls their ``_setup(viewer)`` once it runs (``ns-train`` with ``--vis viewer``,
``ns-viewer``). ``SparseFusionModel`` holds one :class:`SparseFusionViewerControl` as
``model.viewer_control``; no nerfstudio file is patched. It

- **frames the object**: every browser that connects starts at the first input camera, looking at
  the object (``framing.py``), for any dataparser (``co3d``, ``sparse-views`` on nerfstudio or
  Blender scenes, nerfstudio's own);
- **shows the distillation** (runs with a teacher): a *SparseFusion* folder above the viewer's tabs,
  made of nerfstudio viewer elements, with the phase (bootstrap or diffusion), the iteration, the
  UNet evaluations spent so far, the current start time t, the pool camera in use and the latest
  [render | teacher target | EFT] picture of it (``elements.ViewerImage``); and the pool's cameras
  as frusta in the scene (the one in use highlighted), shown or hidden by a checkbox.

It is step (B)'s observer (``distillation/progress.py``). It asks for reports only while a browser
is connected, numbers every ``update_every`` steps and pictures every ``image_every`` steps, so a
run without a viewer (``--vis tensorboard``) or with nobody watching builds no picture at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import viser
import viser.transforms as vtf
from jaxtyping import Float, UInt8
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.viewer.viewer_elements import (
    ViewerCheckbox,
    ViewerControl,
    ViewerElement,
    ViewerNumber,
    ViewerText,
)

from sparsefusion_ns.distillation.novel_cameras import NovelCameraPool
from sparsefusion_ns.distillation.progress import StepReport
from sparsefusion_ns.viewer.elements import ViewerImage
from sparsefusion_ns.viewer.framing import ViewerPose, framing_pose

if TYPE_CHECKING:
    from nerfstudio.viewer.viewer import Viewer

VISER_SCALE = 10.0
"""viser units per nerfstudio world unit (``nerfstudio.viewer.viewer.VISER_NERFSTUDIO_SCALE_RATIO``)."""
POOL_NODE = "/sparsefusion_pool"
"""Scene-tree folder of the pool cameras' frusta."""
KIND_COLOURS = {"input": (80, 140, 255), "frame": (160, 160, 160), "circle": (255, 170, 60), "random": (190, 90, 255)}
"""Frustum colour of each kind of pool camera."""
CURRENT_COLOUR = (255, 40, 40)
"""Colour of the frustum of the pool camera in use."""
PANEL_FOLDER = "SparseFusion"
"""Label of the panel's folder in the control panel."""


@dataclass
class ViewerPanelConfig:
    """What the web viewer shows of a SparseFusion run (``--pipeline.model.viewer-panel.*``)."""

    frame_on_object: bool = True
    """Open every browser at the first input camera, looking at the object (viewer/framing.py).
    False: viser's default camera."""
    update_every: int = 1
    """Update the panel's numbers every this many distillation steps (only while a browser is connected)."""
    image_every: int = 10
    """Update the [render | teacher target | EFT] picture every this many distillation steps (only
    while a browser is connected); it costs a PNG encode of the picture."""
    image_height: int = 96
    """Height in pixels of the picture (each of its three parts is square)."""
    show_pool_cameras: bool = True
    """Whether the pool cameras' frusta start visible; a checkbox in the panel toggles them."""


def viser_rotation(camera_to_world: Float[Tensor, "3 4"]) -> Float[np.ndarray, "4"]:
    """viser's wxyz of a nerfstudio (OpenGL) camera-to-world rotation (viser's cameras are OpenCV's)."""
    rotation = vtf.SO3.from_matrix(camera_to_world[:3, :3].double().cpu().numpy()) @ vtf.SO3.from_x_radians(np.pi)
    return rotation.wxyz


def panel_picture(report: StepReport, height: int) -> UInt8[np.ndarray, "height width 3"]:
    """[render | target | EFT] as 8-bit RGB, ``height`` pixels high (area-averaged when smaller)."""
    panels = report.panels().detach().float().cpu()[None]
    size = (height, height * 3)
    if panels.shape[-2] != height:
        mode = "area" if panels.shape[-2] > height else "bilinear"
        panels = F.interpolate(panels, size=size, mode=mode)
    return (panels[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


class SparseFusionViewerControl(ViewerControl):
    """The opening camera and the SparseFusion panel (module docstring); step (B)'s observer."""

    def __init__(self, config: ViewerPanelConfig) -> None:
        self.config = config
        self.viewer: Optional[Viewer] = None  # both set by _setup when a viewer runs
        self.viser_server: Optional[viser.ViserServer] = None
        self.pose: Optional[ViewerPose] = None
        """Where browsers open (set by _setup)."""
        self.phase = ViewerText("Phase", "starting", disabled=True, hint="bootstrap (EFT targets), then diffusion")
        self.iteration = ViewerNumber("Iteration", 0, disabled=True, hint="the training step of the latest update")
        self.unet_evaluations = ViewerNumber(
            "UNet evaluations", 0, disabled=True, hint="denoiser evaluations since the distillation started"
        )
        self.start_time = ViewerText("Start time t", "—", disabled=True, hint="of the latest diffusion target")
        self.pool_camera = ViewerText("Pool camera", "—", disabled=True, hint="index (kind) of the camera in use")
        self.picture = ViewerImage("render | target | EFT", caption="render | teacher target | EFT")
        self.show_pool = ViewerCheckbox(
            "Show pool cameras", config.show_pool_cameras, cb_hook=lambda element: self._show_pool(element.value)
        )
        self.elements: List[ViewerElement] = [
            self.phase,
            self.iteration,
            self.unet_evaluations,
            self.start_time,
            self.pool_camera,
            self.picture,
            self.show_pool,
        ]
        """The panel's viewer elements, in display order."""
        self.pool: Optional[NovelCameraPool] = None
        self.pool_cameras: Optional[Cameras] = None
        self.frusta: List[viser.CameraFrustumHandle] = []
        """The pool cameras' frusta (once the panel is installed)."""
        self.current_frustum: Optional[viser.CameraFrustumHandle] = None
        self.installed = False
        """Whether the panel is in a running viewer (a viewer runs and the distillation has started)."""
        self.pictures_made = 0
        """How many pictures were made (a cost counter, for tests)."""

    # ------------------------------------------------------------------ viewer side
    def _setup(self, viewer: Viewer) -> None:
        """Called by nerfstudio's viewer once it runs: frame new browsers, install the panel when ready."""
        super()._setup(viewer)
        if self.config.frame_on_object:
            self.pose = framing_pose(viewer.pipeline.datamanager.train_dataset.cameras)
            self.viser_server.on_client_connect(self.frame_client)
        self._install()

    def frame_client(self, client: viser.ClientHandle) -> None:
        """Move a newly connected browser's camera to :attr:`pose`."""
        if self.pose is None:
            return
        pose = self.pose
        with client.atomic():
            client.camera.fov = pose.fov_for_canvas(float(client.camera.aspect))
            client.camera.position = (pose.position * VISER_SCALE).double().numpy()
            client.camera.look_at = (pose.look_at * VISER_SCALE).double().numpy()
            client.camera.up_direction = pose.up.double().numpy()
        client.flush()

    def _install(self) -> None:
        """Add the panel and the frusta once both a viewer and the pool exist."""
        if self.installed or self.viser_server is None or self.pool is None:
            return
        server = self.viser_server
        stats = getattr(self.viewer, "stats_markdown", None)
        order = stats.order + 0.5 if stats is not None else None  # just above the viewer's tabs
        with server.gui.add_folder(PANEL_FOLDER, order=order):
            for element in self.elements:
                element.install(server)
        self._add_frusta()
        self.installed = True

    def _add_frusta(self) -> None:
        assert self.viser_server is not None and self.pool is not None and self.pool_cameras is not None
        cameras = self.pool_cameras.to("cpu")
        scale = self.viewer.config.camera_frustum_scale if self.viewer is not None else 0.1  # nerfstudio's
        fov = 2 * float(torch.atan(cameras.height[0, 0] / 2 / cameras.fy[0, 0]))
        aspect = float(cameras.width[0, 0] / cameras.height[0, 0])
        visible = bool(self.show_pool.value)
        for index, kind in enumerate(self.pool.kinds):
            c2w = cameras.camera_to_worlds[index]
            self.frusta.append(
                self.viser_server.scene.add_camera_frustum(
                    f"{POOL_NODE}/camera_{index:04d}",
                    fov=fov,
                    aspect=aspect,
                    scale=scale,
                    color=KIND_COLOURS.get(kind, (200, 200, 200)),
                    wxyz=viser_rotation(c2w),
                    position=(c2w[:3, 3] * VISER_SCALE).double().numpy(),
                    visible=visible,
                )
            )
        self.current_frustum = self.viser_server.scene.add_camera_frustum(
            f"{POOL_NODE}_current", fov=fov, aspect=aspect, scale=2 * scale, color=CURRENT_COLOUR, visible=False
        )

    def _show_pool(self, visible: bool) -> None:
        for frustum in self.frusta:
            frustum.visible = visible
        if self.current_frustum is not None and not visible:
            self.current_frustum.visible = False

    def watched(self) -> bool:
        """Whether the panel is installed and at least one browser is connected."""
        return self.installed and self.viser_server is not None and len(self.viser_server.get_clients()) > 0

    # ------------------------------------------------------------------ DistillationObserver
    def pool_ready(self, pool: NovelCameraPool, cameras: Cameras) -> None:
        """Step (B) built its pool: keep it, and install the panel if a viewer runs."""
        self.pool, self.pool_cameras = pool, cameras.to("cpu")
        self._install()

    def wants_report(self, step: int) -> bool:
        """Yes every ``update_every`` (or ``image_every``) steps while someone watches."""
        if not self.watched():
            return False
        return step % max(self.config.update_every, 1) == 0 or step % max(self.config.image_every, 1) == 0

    def step_done(self, report: StepReport) -> None:
        """Show a report: the numbers, the frustum in use and, when due, the picture."""
        self.phase.value = report.phase
        self.iteration.value = report.step
        self.unet_evaluations.value = report.totals.unet_evals
        self.start_time.value = "—" if report.start_time is None else f"{report.start_time:.3f}"
        self.pool_camera.value = f"{report.camera_index} ({report.camera_kind})"
        if self.current_frustum is not None and self.pool_cameras is not None:
            c2w = self.pool_cameras.camera_to_worlds[report.camera_index]
            self.current_frustum.position = (c2w[:3, 3] * VISER_SCALE).double().numpy()
            self.current_frustum.wxyz = viser_rotation(c2w)
            self.current_frustum.visible = bool(self.show_pool.value)
        if report.step % max(self.config.image_every, 1) == 0:
            self.picture.set_image(panel_picture(report, self.config.image_height))
            self.pictures_made += 1
