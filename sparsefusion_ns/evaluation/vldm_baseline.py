"""The VLDM baseline: each held-out view sampled by the diffusion model alone, from pure noise.

The paper's "VLDM alone" row (docs/method.md#evaluation). For every held-out camera: the EFT feature map at
that camera (its ``grid_size``² latent grid, from the same inputs as the distillation:
:func:`~sparsefusion_ns.distillation.teacher_inputs.inputs_for_teacher`), a latent of pure Gaussian
noise at t = 1, the authors' PLMS sampler (``teacher/samplers.py``) down to t = 0 in ``steps`` steps
(default 50, the authors' count; ``steps + 1`` UNet evaluations) conditioned on those features, and
the VAE decoder. The decoded S² image shows the square-padded frame; it is resized bilinearly to the
evaluation image's padded side and cut to the image (``from_square_image``). The noise of a view is
seeded by ``seed`` and the view's frame index, so results do not depend on the order of the views.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager

from sparsefusion_ns.distillation.counters import TeacherCost, timed
from sparsefusion_ns.distillation.teacher_inputs import (
    TeacherInputs,
    from_square_image,
    inputs_for_teacher,
    ndc_cameras,
)
from sparsefusion_ns.evaluation.held_out import HeldOutView
from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.teacher.samplers import PLMSSampler, PLMSSamplerConfig

AUTHORS_SAMPLING_STEPS = PLMSSamplerConfig().max_steps
"""PLMS steps from pure noise in the authors' sampler (50)."""


class VLDMBaseline:
    """A :data:`~sparsefusion_ns.evaluation.held_out.ViewRenderer`: a PLMS sample of the VLDM per view.

    ``cost`` counts UNet evaluations, EFT queries, VAE decodes and the seconds they took.
    """

    def __init__(self, teacher: Teacher, inputs: TeacherInputs, steps: int = AUTHORS_SAMPLING_STEPS, seed: int = 0):
        if steps < 1:
            raise ValueError(f"the VLDM baseline needs at least one PLMS step, got steps={steps}")
        self.teacher = teacher
        self.device = next(teacher.parameters()).device
        self.images = inputs.images.to(self.device)
        self.cameras = inputs.cameras.to(self.device)
        self.depth_center = inputs.depth_center
        self.seed = seed
        self.sampler = PLMSSampler(PLMSSamplerConfig(max_steps=steps), teacher.schedule)
        self.cost = TeacherCost()
        """Teacher work done so far."""

    @classmethod
    def for_scene(
        cls, teacher: Teacher, datamanager: VanillaDataManager, steps: int = AUTHORS_SAMPLING_STEPS, seed: int = 0
    ) -> VLDMBaseline:
        """The baseline of the scene a (trained or not) datamanager serves."""
        return cls(teacher, inputs_for_teacher(datamanager, teacher), steps, seed)

    @torch.no_grad()
    def __call__(self, view: HeldOutView) -> Float[Tensor, "3 h w"]:
        teacher = self.teacher
        camera = ndc_cameras(view.camera).to(self.device)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + view.frame_index)
        grid = teacher.config.eft.grid_size
        with timed(self.cost, self.device) as cost:
            _, features = teacher.eft.query(self.images, self.cameras, camera, self.depth_center)
            noise = torch.randn((1, teacher.config.unet.latent_channels, grid, grid), generator=generator)
            result = self.sampler.sample(teacher.unet, features[None], 1.0, x_t=noise.to(self.device), noise=generator)
            image = teacher.vae.decode(result.x0)[0]
            cost.eft_queries += 1
            cost.unet_evals += result.num_denoiser_evals
            cost.vae_decodes += 1
        return from_square_image(image, view.height, view.width)
