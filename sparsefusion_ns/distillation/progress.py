"""What step (B) tells an observer while it runs: its camera pool once, then a report per iteration.

The observer is the web viewer's SparseFusion panel (``sparsefusion_ns/viewer/``), handed in by the
model; the distillation never imports it. Reports are built only when the observer asks for one
(:meth:`DistillationObserver.wants_report`): with no viewer attached, or between its updates, step
(B) spends nothing on them. A report holds references to tensors step (B) computed anyway
(detached), so building one copies nothing; the observer decides what to turn into pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras

from sparsefusion_ns.distillation.counters import TeacherCost
from sparsefusion_ns.distillation.novel_cameras import NovelCameraPool

Phase = Literal["bootstrap", "diffusion"]
"""Step (B)'s phase (docs/method.md#bootstrap, docs/method.md#diffusion-targets)."""


@dataclass(frozen=True)
class StepReport:
    """One iteration of step (B), as the viewer shows it."""

    step: int
    """The training step (0-based)."""
    phase: Phase
    """Bootstrap (EFT targets) or diffusion (denoised teacher samples)."""
    camera_index: int
    """Index of the pool camera rendered this step."""
    camera_kind: str
    """Its kind: 'input', 'frame', 'circle' or 'random' (``NovelCameraPool.kinds``)."""
    start_time: Optional[float]
    """Start time t of the diffusion target; None in the bootstrap."""
    totals: TeacherCost
    """Teacher work since the distillation started (UNet evaluations, VAE calls, EFT queries, seconds)."""
    render: Float[Tensor, "3 s s"]
    """The field's render of the camera, upsampled to the teacher's image size (detached)."""
    target: Float[Tensor, "3 s s"]
    """What it was regressed to: the EFT colour (bootstrap) or the teacher's denoised sample."""
    eft: Float[Tensor, "3 s s"]
    """The EFT colour of the camera, upsampled."""

    def panels(self) -> Float[Tensor, "3 s 3s"]:
        """[render | target | EFT] side by side, values clipped to [0, 1]."""
        return torch.cat([self.render, self.target, self.eft], dim=-1).clamp(0.0, 1.0)


class DistillationObserver(Protocol):
    """Receives step (B)'s pool at start-up and reports of the iterations it asks for."""

    def pool_ready(self, pool: NovelCameraPool, cameras: Cameras) -> None:
        """The pool is built: ``cameras`` are its cameras as nerfstudio renders them (field frame)."""

    def wants_report(self, step: int) -> bool:
        """Whether to build a :class:`StepReport` of ``step`` (cheap: called every iteration)."""

    def step_done(self, report: StepReport) -> None:
        """An iteration finished (only for steps :meth:`wants_report` accepted)."""
