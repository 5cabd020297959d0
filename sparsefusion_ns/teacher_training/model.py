"""The trainable teacher: EFT + VLDM UNet whose forward pass returns the training losses.

Unlike :class:`~sparsefusion_ns.teacher.bundle.Teacher` (frozen, always in eval mode), this module
trains: the EFT in training mode (transformer dropout on, ResNet BatchNorm on batch statistics,
updating its running statistics, as upstream) and the UNet. The frozen VAE stays outside; the
query latent is an input.

The whole objective lives in :meth:`TeacherTrainingModel.forward` so that one call goes through
the distributed wrapper (DDP all-reduces exactly the gradients of that call) and through
``accelerate``'s autocast. Parameters the objective never uses are frozen so that DDP does not
wait for their gradients: the ResNet's ``layer4``/``fc`` (in the checkpoint, unused by the EFT),
and the network a single-stage run does not train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras, ndc_ray_grid, query_rays
from sparsefusion_ns.teacher.bundle import TeacherConfig
from sparsefusion_ns.teacher.diffusion_schedule import CosineLogSNRSchedule
from sparsefusion_ns.teacher.eft import EpipolarFeatureTransformer
from sparsefusion_ns.teacher.unet import VLDMUNet
from sparsefusion_ns.teacher_training.config import LossConfig
from sparsefusion_ns.teacher_training.datasets import TrainingExample
from sparsefusion_ns.teacher_training.losses import (
    DiffusionDraws,
    diffusion_loss,
    eft_colour_loss,
    latent_valid_mask,
)

Stage = Literal["joint", "eft", "vldm"]


@dataclass
class EFTGrid:
    """The EFT's outputs for the ``g x g`` ray grid of a query camera."""

    rgb: Float[Tensor, "3 g g"]
    """Colour c of every ray."""
    features: Float[Tensor, "f g g"]
    """Feature map f (the VLDM condition)."""
    xy_ndc: Float[Tensor, "g g 2"]
    """NDC position of every ray in the query image."""


class TeacherTrainingModel(nn.Module):
    """EFT and VLDM UNet in training; ``forward(example, latent, draws)`` returns the losses."""

    def __init__(self, config: TeacherConfig, stage: Stage = "joint", loss: Optional[LossConfig] = None) -> None:
        super().__init__()
        self.config = config
        self.stage = stage
        self.loss_config = loss if loss is not None else LossConfig()
        self.eft = EpipolarFeatureTransformer(config.eft)
        self.unet = VLDMUNet(config.unet)
        self.schedule = CosineLogSNRSchedule(config.schedule)
        # in the released checkpoint but never run by the EFT (docs/method.md#eft)
        if self.config.eft.keep_unused_backbone_layers:
            self.eft.encoder_model.layer4.requires_grad_(False)
            self.eft.encoder_model.fc.requires_grad_(False)
        if stage == "eft":
            self.unet.requires_grad_(False)
        if stage == "vldm":
            self.eft.requires_grad_(False)
        self.train()

    @property
    def trains_eft(self) -> bool:
        return self.stage in ("joint", "eft")

    @property
    def trains_unet(self) -> bool:
        return self.stage in ("joint", "vldm")

    def train(self, mode: bool = True) -> TeacherTrainingModel:
        """Training mode for the networks being trained; a frozen network stays in eval mode."""
        super().train(mode)
        if not self.trains_eft:
            self.eft.eval()
        if not self.trains_unet:
            self.unet.eval()
        return self

    def eft_grid(
        self,
        context_images: Float[Tensor, "v 3 s s"],
        context_cameras: NDCCameras,
        query_camera: NDCCameras,
        depth_center: float,
    ) -> EFTGrid:
        """The EFT on the query camera's ray grid, differentiably (``EpipolarFeatureTransformer.query``'s rays).

        Cameras are in the query's view frame. Rays: the ``g x g`` NDC grid with the image's
        half-pixel margin; ``D`` samples uniform in view depth over ``depth_center ± depth_half_range``.

        The EFT always runs in float32, also under mixed-precision autocast: its camera geometry
        (projections, camera centres, Plücker coordinates) would lose too much in 16 bits, and
        autocast would mix dtypes inside it. Only the UNet runs in reduced precision.
        """
        config = self.config.eft
        g, size = config.grid_size, config.image_size
        if tuple(context_images.shape[-2:]) != (size, size):
            raise ValueError(f"context images are {tuple(context_images.shape[-2:])}, the EFT expects {size}x{size}")
        with torch.autocast(context_images.device.type, enabled=False):
            images = context_images.float()
            xy = ndc_ray_grid(g, size).to(images)
            origins, directions = query_rays(query_camera.to(torch.float32), xy)
            r = config.depth_half_range
            lengths = torch.linspace(depth_center - r, depth_center + r, config.n_points_per_ray).to(images)
            out = self.eft(
                images,
                context_cameras.to(torch.float32),
                origins.reshape(-1, 3),
                directions.reshape(-1, 3),
                lengths.expand(g * g, -1),
                rays_per_chunk=g * g,  # one pass: chunking saves no memory when training
            )
        return EFTGrid(rgb=out.rgb.T.reshape(3, g, g), features=out.features.T.reshape(-1, g, g), xy_ndc=xy)

    def forward(
        self,
        example: TrainingExample,
        query_latent: Optional[Float[Tensor, "c g g"]],
        draws: Optional[DiffusionDraws],
    ) -> Dict[str, Tensor]:
        """Losses of one example: ``loss`` (what is optimised), ``diffusion`` and/or ``eft_colour``.

        ``query_latent`` and ``draws`` are needed when the UNet trains, and ignored otherwise.
        """
        loss_config = self.loss_config
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trains_eft):
            grid = self.eft_grid(
                example.context_images, example.context_cameras, example.query_camera, example.depth_center
            )
        valid = latent_valid_mask(example.query_valid, self.config.eft.grid_size, loss_config.valid_threshold)
        losses: Dict[str, Tensor] = {}
        if self.trains_eft:
            losses["eft_colour"] = eft_colour_loss(
                grid.rgb, example.query_image, grid.xy_ndc, valid, loss_config.huber_delta
            )
        if self.trains_unet:
            if query_latent is None or draws is None:
                raise ValueError("training the UNet needs the query latent and the diffusion draws")
            losses["diffusion"] = diffusion_loss(self.unet, self.schedule, query_latent, grid.features, draws, valid)
        losses["loss"] = losses.get("diffusion", 0.0) + loss_config.eft_weight * losses.get("eft_colour", 0.0)
        return losses
