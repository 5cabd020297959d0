"""The teacher's training losses: VLDM ε-MSE and EFT colour, both inside the valid region.

Symbols (docs/method.md#vldm-objective, #teacher-training):

- ``z0``: the query view's VAE latent z_0 (c × g × g, g = image size / 8);
- ``t``: diffusion times t ~ U(0, t_max), one per copy of z_0 (``repeats`` copies, 12 upstream);
- ``noise``: ε ~ N(0, I); ``x_t = α(t) z_0 + σ(t) ε``;
- ``log_snr``: λ(t), what the UNet is conditioned on; P2 weight w(t) = (1 + e^λ)^(−1/2);
- ``cond``: the EFT feature map f of the query view (zeroed for the copies in ``cond_drop``);
- ``valid``: the latent cells inside the valid (unpadded) region, ``m`` below.

Diffusion loss (upstream ``DDPM.p_losses`` with a loss mask)::

    L_diff = mean_copies( w(t) · mean_{c,h,w}( (m ⊙ ε̂ − m ⊙ ε)² ) )

The mean runs over *all* latent cells, masked ones contributing zero (as upstream), so the loss
scale, and with it the learning rate, matches the authors'.

EFT colour loss, pseudo-Huber with δ = 0.1 (upstream ``huber``)::

    L_eft = mean_{rays, rgb}( m ⊙ (sqrt(1 + (ĉ − c)²/δ²) − 1) · δ )

with ĉ the EFT colour of each query ray and c the ground-truth colour bilinearly sampled at the
ray's NDC position (``grid_sample(−xy, align_corners=True)``, as upstream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from sparsefusion_ns.losses import pseudo_huber
from sparsefusion_ns.teacher.diffusion_schedule import CosineLogSNRSchedule
from sparsefusion_ns.teacher.unet import VLDMUNet


@dataclass
class DiffusionDraws:
    """The random inputs of one example's diffusion loss."""

    t: Float[Tensor, " r"]
    """Diffusion time of every copy of z_0."""
    noise: Float[Tensor, "r c g g"]
    """ε of every copy."""
    cond_drop: Bool[Tensor, " r"]
    """True where the copy's condition is zeroed (classifier-free-guidance dropout)."""

    def to(self, device: torch.device | str) -> DiffusionDraws:
        """The draws on ``device``."""
        return DiffusionDraws(self.t.to(device), self.noise.to(device), self.cond_drop.to(device))


def draw_diffusion_inputs(
    repeats: int,
    latent_shape: tuple[int, int, int],
    t_max: float,
    cond_drop_prob: float,
    generator: torch.Generator,
) -> DiffusionDraws:
    """t ~ U(0, t_max), ε ~ N(0, I) and the condition dropout for ``repeats`` copies, from ``generator``."""
    t = torch.rand(repeats, generator=generator) * t_max
    noise = torch.randn(repeats, *latent_shape, generator=generator)
    cond_drop = torch.rand(repeats, generator=generator) < cond_drop_prob
    return DiffusionDraws(t=t, noise=noise, cond_drop=cond_drop)


def latent_valid_mask(valid: Float[Tensor, "1 s s"], grid_size: int, threshold: float) -> Float[Tensor, "g g"]:
    """Valid region at latent resolution: bilinear downsampling (no antialiasing, as upstream) > threshold."""
    small = F.interpolate(valid[None].float(), size=(grid_size, grid_size), mode="bilinear", align_corners=False)
    return (small[0, 0] > threshold).to(valid.dtype)


def diffusion_loss(
    unet: VLDMUNet,
    schedule: CosineLogSNRSchedule,
    z0: Float[Tensor, "c g g"],
    cond: Float[Tensor, "f g g"],
    draws: DiffusionDraws,
    valid: Float[Tensor, "g g"],
) -> Float[Tensor, ""]:
    """L_diff of the module docstring for one example (z_0 repeated once per draw)."""
    repeats = draws.t.shape[0]
    x0 = z0[None].expand(repeats, -1, -1, -1)
    x_t = schedule.q_sample(x0, draws.t, draws.noise)
    log_snr = schedule.log_snr(draws.t)
    eps_hat = unet(x_t, log_snr, cond[None].expand(repeats, -1, -1, -1), draws.cond_drop)
    mask = valid[None, None]
    per_copy = ((eps_hat.float() * mask - draws.noise * mask) ** 2).mean(dim=(1, 2, 3))
    return (per_copy * schedule.p2_loss_weight(draws.t).to(per_copy.device)).mean()


def eft_colour_loss(
    rgb: Float[Tensor, "3 g g"],
    image: Float[Tensor, "3 s s"],
    xy_ndc: Float[Tensor, "g g 2"],
    valid: Float[Tensor, "g g"],
    delta: float,
) -> Float[Tensor, ""]:
    """L_eft of the module docstring: EFT ray colours against the image sampled at the rays' NDC points."""
    # PyTorch3D NDC has +x left, +y up; grid_sample has +x right, +y down: hence −xy
    target = F.grid_sample(image[None].float(), -xy_ndc[None].to(image), mode="bilinear", align_corners=True)[0]
    return (pseudo_huber(rgb.float(), target, delta) * valid[None]).mean()
