"""Sample grids that show how training goes: context views | ground truth | EFT colour | VLDM sample.

The VLDM sample is a few-step DDIM run from pure noise at t = t_max, conditioned on the EFT
features of the query camera, decoded by the VAE. Everything runs in eval mode (no dropout, no
BatchNorm update) and draws its noise from its own seeded generator, so making a grid leaves the
training run's random state untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torchvision.utils import make_grid

from sparsefusion_ns.teacher.samplers import DDIMSampler, DDIMSamplerConfig
from sparsefusion_ns.teacher.vae import FrozenVAE
from sparsefusion_ns.teacher_training.datasets import TrainingExample
from sparsefusion_ns.teacher_training.model import TeacherTrainingModel


@torch.no_grad()
def preview_grid(
    model: TeacherTrainingModel,
    vae: FrozenVAE,
    example: TrainingExample,
    sample_steps: int,
    t_start: float,
    seed: int,
) -> Float[Tensor, "3 h w"]:
    """One row of tiles: the context views, the query's ground truth, the EFT colour and (when the
    UNet is trained) a ``sample_steps``-step DDIM sample, each ``s x s``, in [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        grid = model.eft_grid(
            example.context_images, example.context_cameras, example.query_camera, example.depth_center
        )
        size = example.query_image.shape[-1]
        colour = F.interpolate(grid.rgb[None].float(), size=(size, size), mode="nearest")[0]
        tiles = [*example.context_images, example.query_image, colour]
        if model.trains_unet:
            generator = torch.Generator().manual_seed(seed)
            x_t = torch.randn(1, model.config.unet.latent_channels, *grid.features.shape[-2:], generator=generator)
            sampler = DDIMSampler(
                DDIMSamplerConfig(max_steps=sample_steps, steps_proportional_to_t=False), model.schedule
            )
            out = sampler.sample(model.unet, grid.features[None], t_start, x_t=x_t.to(grid.features))
            tiles.append(vae.decode(out.x0.float())[0])
    finally:
        model.train(was_training)
    return make_grid([tile.float().clamp(0, 1).cpu() for tile in tiles], nrow=len(tiles), padding=2)
