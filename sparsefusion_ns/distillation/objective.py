"""The losses of step (B), on a render Î (with gradients) of one pool camera at the teacher's size S².

Bootstrap phase (docs/method.md#bootstrap, iterations ≤ 1000), with c_EFT the EFT colour upsampled from
its g² grid to S² and M_EFT = [mean_channels(c_EFT) > 0.1] its silhouette:

    L = λ_rgb · Huber(Î, c_EFT) + λ_mask · Huber(Ô, M_EFT) + λ_o · mean(sqrt(Ô² + 0.01))

Diffusion phase: z = E(Î) (VAE encoder, no gradient); t ~ U(0, 0.99); x_t = α(t) z + σ(t) ε;
PLMS denoises x_t → x̂_0 in min(⌊100 t⌋, 50) steps with the UNet conditioned on the cached EFT
features; the target is Ĩ = D(x̂_0) (VAE decoder, no gradient), and

    L = (1 − ᾱ(t)) · mean|Î − Ĩ| + λ_p · LPIPS-VGG(Î, Ĩ) + λ_o · mean(sqrt(Ô² + 0.01))

with ᾱ(t) = α(t)². This is regression to a multi-step denoised sample, not score distillation:
gradients reach the field only through Î (and Ô), never through the targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sparsefusion_ns.distillation.config import DistillationConfig
from sparsefusion_ns.losses import opacity_regulariser, pseudo_huber
from sparsefusion_ns.metrics import LPIPSVGG
from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.teacher.samplers import DDIMSampler, PLMSSampler


def upsample(image: Float[Tensor, "b c h w"], size: int) -> Float[Tensor, "b c size size"]:
    """Bilinear resize to ``size``² (align_corners=False, as the authors' ``F.interpolate``)."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def eft_silhouette(eft_rgb: Float[Tensor, "b 3 s s"], threshold: float) -> Float[Tensor, "b 1 s s"]:
    """M_EFT: 1 where the mean EFT colour exceeds ``threshold`` (the background is black), else 0."""
    return (eft_rgb.mean(dim=1, keepdim=True) > threshold).to(eft_rgb.dtype)


def bootstrap_losses(
    render_rgb: Float[Tensor, "b 3 s s"],
    render_opacity: Float[Tensor, "b 1 s s"],
    eft_rgb: Float[Tensor, "b 3 s s"],
    config: DistillationConfig,
    huber_scale: float,
) -> Dict[str, Tensor]:
    """The bootstrap terms (module docstring); ``eft_rgb`` is the EFT colour already at S²."""
    silhouette = eft_silhouette(eft_rgb, config.eft_silhouette_threshold)
    return {
        "novel_rgb_loss": config.bootstrap_rgb_weight * pseudo_huber(render_rgb, eft_rgb, huber_scale).mean(),
        "novel_mask_loss": config.bootstrap_mask_weight * pseudo_huber(render_opacity, silhouette, huber_scale).mean(),
        "novel_opacity_loss": config.opacity_weight * opacity_regulariser(render_opacity),
    }


def sample_start_time(generator: torch.Generator, max_start_time: float) -> float:
    """t ~ U(0, max_start_time), from ``generator``."""
    return max_start_time * float(torch.rand((), generator=generator, dtype=torch.float64))


@dataclass(frozen=True)
class DenoisedTarget:
    """The teacher's target Ĩ for a render, and how it was made."""

    image: Float[Tensor, "b 3 s s"]
    """Ĩ = D(x̂_0) in [0, 1]; no gradient."""
    t: float
    """Start time of the denoising."""
    alpha_cumprod: float
    """ᾱ(t); the L1 weight is 1 − ᾱ(t)."""
    num_unet_evals: int
    """Denoiser evaluations, one per image of the batch per UNet call (one image, PLMS with the
    defaults: min(⌊100 t⌋, 50) + 1)."""


@torch.no_grad()
def denoised_target(
    teacher: Teacher,
    sampler: PLMSSampler | DDIMSampler,
    render_rgb: Float[Tensor, "b 3 s s"],
    features: Float[Tensor, "b c g g"],
    t: float,
    generator: torch.Generator,
) -> DenoisedTarget:
    """Encode the render, noise it to time t, denoise it with PLMS and decode: the target Ĩ.

    Noise draws come from ``generator`` (the forward noising first, then the sampler's own draws).
    A batch shares the start time t; ``num_unet_evals`` counts every image of it.
    """
    latent = teacher.vae.encode(render_rgb.detach().float())
    result = sampler.sample(teacher.unet, features, t, x_start=latent, noise=generator)
    image = teacher.vae.decode(result.x0)
    return DenoisedTarget(
        image=image,
        t=t,
        alpha_cumprod=float(result.alpha_cumprod[0]),
        num_unet_evals=result.num_denoiser_evals * latent.shape[0],
    )


def diffusion_losses(
    render_rgb: Float[Tensor, "b 3 s s"],
    render_opacity: Float[Tensor, "b 1 s s"],
    target: DenoisedTarget,
    config: DistillationConfig,
    lpips: Optional[LPIPSVGG],
) -> Dict[str, Tensor]:
    """The diffusion terms (module docstring); the LPIPS term is left out when ``lpips`` is None."""
    weight = 1.0 - target.alpha_cumprod  # 1 − ᾱ(t): small t (little noise, target ≈ render) weighs little
    losses = {
        "novel_l1_loss": weight * (render_rgb - target.image).abs().mean(),
        "novel_opacity_loss": config.opacity_weight * opacity_regulariser(render_opacity),
    }
    if lpips is not None:
        losses["novel_perceptual_loss"] = config.perceptual_weight * lpips(render_rgb, target.image).mean()
    return losses
