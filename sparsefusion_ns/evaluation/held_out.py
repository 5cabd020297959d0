"""Scoring any method on a scene's held-out views with the paper's protocol.

A method is a :data:`ViewRenderer`: a function from a :class:`HeldOutView` (camera, image size)
to a colour image. :func:`evaluate_views` renders every held-out view with it and scores each
render against the ground truth with :func:`sparsefusion_ns.metrics.view_metrics` (PSNR and SSIM
as scikit-image defines them, LPIPS-VGG when its local weights exist), by default with both images
multiplied by the foreground mask and the valid region (the paper's protocol). ``sf-eval`` scores
trained fields this way (:func:`field_renderer`); the evaluation's teacher baselines
(:mod:`.eft_baseline`, :mod:`.vldm_baseline`) are renderers too, so every method is scored by the
same code on the same pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datasets.base_dataset import InputDataset

from sparsefusion_ns.metrics import LPIPSVGG, apply_metric_mask, view_metrics

METRIC_NAMES = ("psnr", "ssim", "lpips")
"""The metrics a view can have, in report order (LPIPS only with its local weights)."""


@dataclass(frozen=True)
class HeldOutView:
    """One held-out frame of a scene: what a method is given (camera) and what it is scored against."""

    index: int
    """Position in the evaluation split."""
    frame_index: int
    """The frame's index in the scene (``metadata["frame_indices"]``; the split position otherwise)."""
    image_name: str
    """The ground truth's file."""
    camera: Cameras
    """The frame's camera (one camera, on the CPU)."""
    image: Float[Tensor, "3 h w"]
    """Ground truth, multiplied by its foreground mask (black background), in [0, 1]."""
    fg_mask: Float[Tensor, "1 h w"]
    """Foreground mask in [0, 1]."""
    valid: Optional[Float[Tensor, "1 h w"]]
    """Unpadded region of a padded crop (CO3D), else None."""

    @property
    def height(self) -> int:
        return int(self.image.shape[-2])

    @property
    def width(self) -> int:
        return int(self.image.shape[-1])

    def masked(self, image: Float[Tensor, "3 h w"]) -> Float[Tensor, "3 h w"]:
        """``image`` multiplied by the foreground mask and the valid region, as the metrics see it."""
        return apply_metric_mask(image, self.fg_mask, self.valid)


ViewRenderer = Callable[[HeldOutView], Float[Tensor, "3 h w"]]
"""A method under evaluation: the colour image (3, h, w) in [0, 1] it predicts for a held-out view."""


def held_out_views(dataset: InputDataset) -> List[HeldOutView]:
    """Every view of an evaluation split (a ``MaskedImageDataset``), ground truth loaded."""
    frame_indices = dataset.metadata.get("frame_indices", list(range(len(dataset))))
    views = []
    for index in range(len(dataset)):
        item = dataset[index]
        if "fg_mask" not in item:
            raise TypeError(
                f"the evaluation split serves no foreground masks ({type(dataset).__name__}); SparseFusion's "
                "protocol needs them: use VanillaDataManager[MaskedImageDataset] (as the sparsefusion method "
                "configs in sparsefusion_ns/plugin/method_configs.py do)"
            )
        valid = item.get("valid_mask")
        views.append(
            HeldOutView(
                index=index,
                frame_index=int(frame_indices[index]),
                image_name=str(dataset.image_filenames[index]),
                camera=dataset.cameras[index : index + 1].to("cpu"),
                image=item["image"].permute(2, 0, 1).float(),
                fg_mask=item["fg_mask"].permute(2, 0, 1).float(),
                valid=valid.permute(2, 0, 1).float() if valid is not None else None,
            )
        )
    return views


def field_renderer(model: torch.nn.Module) -> ViewRenderer:
    """A trained nerfstudio model as a renderer: ``model.get_outputs_for_camera`` without gradients
    (deterministic: no stratified jitter outside training)."""

    def render(view: HeldOutView) -> Float[Tensor, "3 h w"]:
        with torch.no_grad():
            rgb = model.get_outputs_for_camera(view.camera.to(model.device))["rgb"]
        return rgb.permute(2, 0, 1)

    return render


@dataclass
class ViewsEvaluation:
    """Scores of one method on a scene's held-out views."""

    per_view: List[Dict] = field(default_factory=list)
    """Per view: ``frame_index``, ``image`` and the metrics."""
    renders: List[Tensor] = field(default_factory=list)
    """The method's image of every view (3, h, w) on the CPU, unmasked."""
    seconds: float = 0.0
    """Wall-clock seconds spent rendering (scoring excluded)."""

    @property
    def mean(self) -> Dict[str, float]:
        """Mean of every metric over the views."""
        names = [name for name in METRIC_NAMES if self.per_view and name in self.per_view[0]]
        return {name: float(np.mean([view[name] for view in self.per_view])) for name in names}


def evaluate_views(
    render: ViewRenderer,
    views: Sequence[HeldOutView],
    lpips: Optional[LPIPSVGG] = None,
    masked: bool = True,
    on_view: Optional[Callable[[int], None]] = None,
) -> ViewsEvaluation:
    """Render every view with ``render`` and score it (module docstring).

    Args:
        render: the method.
        views: the scene's held-out views (:func:`held_out_views`).
        lpips: LPIPS-VGG, or None to leave LPIPS out.
        masked: multiply both images by the foreground mask and the valid region (the paper's protocol).
        on_view: called with the number of views done after each view (progress displays).
    """
    result = ViewsEvaluation()
    for done, view in enumerate(views, start=1):
        start = time.perf_counter()
        rendered = render(view)
        result.seconds += time.perf_counter() - start
        if tuple(rendered.shape) != tuple(view.image.shape):
            raise ValueError(
                f"the method rendered frame {view.frame_index} as {tuple(rendered.shape)}, its ground truth "
                f"{view.image_name} is {tuple(view.image.shape)}"
            )
        device = rendered.device
        metrics = view_metrics(
            rendered,
            view.image.to(device),
            mask=view.fg_mask.to(device),
            valid=view.valid.to(device) if view.valid is not None else None,
            lpips=lpips,
            masked=masked,
        )
        result.per_view.append({"frame_index": view.frame_index, "image": view.image_name, **metrics})
        result.renders.append(rendered.detach().float().cpu())
        if on_view is not None:
            on_view(done)
    return result
