"""The VLDM's continuous-time cosine noise schedule, in log-SNR form.

SparseFusion's diffusion model uses the continuous-time Gaussian diffusion of Imagen (after
Kingma et al., "Variational Diffusion Models", 2021) with the cosine schedule of Nichol &
Dhariwal (2021). Symbols used throughout (code name → symbol):

- ``t``            diffusion time t ∈ [0, 1]; t = 0 is (almost) clean, t = 1 pure noise.
- ``log_snr``      λ(t) = log(α²/σ²) = −log(cos((t + s)/(1 + s) · π/2)^−2 − 1), s = 0.008,
                   with cos^−2 − 1 = 1/SNR clamped below by 1e-5 (so λ ≤ 11.51).
- ``alpha``        α(t) = sqrt(sigmoid(λ)), the signal scale.
- ``sigma``        σ(t) = sqrt(sigmoid(−λ)), the noise scale; α² + σ² = 1.
- ``alpha_cumprod`` ᾱ(t) = α² = sigmoid(λ), DDPM's cumulative product of (1 − β).
- ``x_t``          x_t = α x_0 + σ ε  (the forward process q(x_t | x_0), :meth:`q_sample`).

Everything is evaluated in float32, whatever the input dtype, because the authors' numbers
depend on it: float32(π)/2 is slightly larger than π/2, so cos((1 + s)/(1 + s) · π/2) is a
tiny *negative* number and λ(1) = −33.89 in float32 (a float64 evaluation gives −74.66). The
authors' PLMS sampler evaluates the network at t = 1 in one branch, so a port that wants their
numbers must keep float32 here.

The module also holds the time grid of the samplers: the authors' PLMS sampler starting at time
t runs ``min(int(t · 50 · 2), 50)`` uniform steps on ``linspace(t, 0, n + 1)`` (see
:func:`num_sampling_steps`, :func:`sampling_times`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class CosineLogSNRScheduleConfig:
    """Constants of the cosine log-SNR schedule (defaults: the authors' VLDM)."""

    offset: float = 0.008
    """s of the cosine schedule: λ(t) = −log(cos((t + s)/(1 + s) · π/2)^−2 − 1)."""
    min_inverse_snr: float = 1e-5
    """Lower clamp of 1/SNR = cos^−2 − 1 before the log (caps λ at −log(1e-5) ≈ 11.51)."""
    x0_clip: float = 10.0
    """Predicted x_0 is clamped to [−x0_clip, x0_clip] (the authors' ``clip_value``)."""
    min_alpha: float = 1e-8
    """α is clamped below by this when x_0 is predicted by dividing by it."""
    min_posterior_variance: float = 1e-20
    """The posterior variance is clamped below by this before its log is taken."""
    p2_gamma: float = 0.5
    """γ of the P2 loss weight (k + SNR)^−γ (Choi et al. 2022)."""
    p2_k: float = 1.0
    """k of the P2 loss weight (k + SNR)^−γ."""


def log_snr_to_alpha_sigma(
    log_snr: Float[Tensor, "*batch"],
) -> tuple[Float[Tensor, "*batch"], Float[Tensor, "*batch"]]:
    """(α, σ) = (sqrt(sigmoid(λ)), sqrt(sigmoid(−λ))) from the log-SNR λ."""
    return torch.sqrt(torch.sigmoid(log_snr)), torch.sqrt(torch.sigmoid(-log_snr))


def _as_float32_time(t: Float[Tensor, "*batch"] | float) -> Float[Tensor, "*batch"]:
    if isinstance(t, Tensor):
        return t.to(torch.float32)
    return torch.tensor(float(t), dtype=torch.float32)


def _right_pad_to(coefficient: Tensor, x: Tensor) -> Tensor:
    """Shape a per-sample coefficient (``*batch``) to broadcast against ``x`` (``*batch ...``).

    A 0-dim coefficient is returned unchanged: it broadcasts against anything and, as a scalar,
    may stay on the CPU while ``x`` lives on an accelerator.
    """
    if coefficient.ndim == 0:
        return coefficient
    padded = coefficient.reshape(*coefficient.shape, *((1,) * (x.ndim - coefficient.ndim)))
    return padded.to(x.device)


@dataclass(frozen=True)
class PosteriorCoefficients:
    """q(x_s | x_t, x_0) for s < t in log-SNR form (VDM appendix, Imagen's ``q_posterior``).

    With λ_t = λ(t), λ_s = λ(s) and c = 1 − exp(λ_t − λ_s) = −expm1(λ_t − λ_s):

        mean     = α_s · (x_t · (1 − c) / α_t + c · x_0)
        variance = σ_s² · c

    Every field has the shape of the times the coefficients were computed for.
    """

    alpha: Tensor
    """α_t at the current time t."""
    alpha_next: Tensor
    """α_s at the next (less noisy) time s."""
    c: Tensor
    """c = −expm1(λ_t − λ_s) ∈ [0, 1): the fraction of x_t's noise removed by the step."""
    variance: Tensor
    """Posterior variance σ_s² · c."""
    log_variance_clipped: Tensor
    """log(max(variance, 1e-20))."""

    @property
    def coef_x_t(self) -> Tensor:
        """Coefficient of x_t in the posterior mean: α_s (1 − c) / α_t."""
        return self.alpha_next * (1 - self.c) / self.alpha

    @property
    def coef_x0(self) -> Tensor:
        """Coefficient of x_0 in the posterior mean: α_s · c."""
        return self.alpha_next * self.c

    @property
    def std(self) -> Tensor:
        """Standard deviation of the posterior noise: exp(½ · clipped log-variance)."""
        return torch.exp(0.5 * self.log_variance_clipped)

    def mean(
        self, x_t: Float[Tensor, "*batch c h w"], x0: Float[Tensor, "*batch c h w"]
    ) -> Float[Tensor, "*batch c h w"]:
        """Posterior mean α_s · (x_t · (1 − c) / α_t + c · x_0), in this operation order."""
        alpha, alpha_next, c = (_right_pad_to(v, x_t) for v in (self.alpha, self.alpha_next, self.c))
        return alpha_next * (x_t * (1 - c) / alpha + c * x0)


class CosineLogSNRSchedule:
    """The VLDM's continuous-time cosine schedule: λ(t), α(t), σ(t), q(x_t | x_0), q(x_s | x_t, x_0).

    Times may be Python floats or tensors of any shape (``*batch``); a per-sample time tensor is
    broadcast against latents of shape ``(*batch, C, H, W)``.
    """

    def __init__(self, config: CosineLogSNRScheduleConfig | None = None) -> None:
        self.config = config if config is not None else CosineLogSNRScheduleConfig()

    def log_snr(self, t: Float[Tensor, "*batch"] | float) -> Float[Tensor, "*batch"]:
        """λ(t) = −log(max(cos((t + s)/(1 + s) · π/2)^−2 − 1, 1e-5)), in float32."""
        s = self.config.offset
        t = _as_float32_time(t)
        # the operation order is the authors': ((t + s) / (1 + s)) · π · 0.5, each in float32
        inverse_snr = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** -2 - 1
        return -torch.log(inverse_snr.clamp(min=self.config.min_inverse_snr))

    def alpha_sigma(
        self, t: Float[Tensor, "*batch"] | float
    ) -> tuple[Float[Tensor, "*batch"], Float[Tensor, "*batch"]]:
        """(α(t), σ(t))."""
        return log_snr_to_alpha_sigma(self.log_snr(t))

    def alpha_cumprod(self, t: Float[Tensor, "*batch"] | float) -> Float[Tensor, "*batch"]:
        """ᾱ(t) = α² = sigmoid(λ(t)); the distillation weights its L1 loss by 1 − ᾱ(t)."""
        return torch.sigmoid(self.log_snr(t))

    def p2_loss_weight(self, t: Float[Tensor, "*batch"] | float) -> Float[Tensor, "*batch"]:
        """P2 weight of the ε-MSE training loss: (k + SNR)^−γ = (1 + exp(λ))^−0.5 by default."""
        return (self.config.p2_k + torch.exp(self.log_snr(t))) ** -self.config.p2_gamma

    def q_sample(
        self,
        x0: Float[Tensor, "*batch c h w"],
        t: Float[Tensor, "*batch"] | float,
        noise: Float[Tensor, "*batch c h w"],
    ) -> Float[Tensor, "*batch c h w"]:
        """Forward process: x_t = α(t) x_0 + σ(t) ε."""
        alpha, sigma = (_right_pad_to(v, x0) for v in self.alpha_sigma(t))
        return alpha * x0 + sigma * noise

    def predict_x0_from_eps(
        self,
        x_t: Float[Tensor, "*batch c h w"],
        t: Float[Tensor, "*batch"] | float,
        eps: Float[Tensor, "*batch c h w"],
    ) -> Float[Tensor, "*batch c h w"]:
        """x̂_0 = (x_t − σ ε) / max(α, 1e-8), clamped to ±x0_clip (the authors' ``clip_value``)."""
        alpha, sigma = (_right_pad_to(v, x_t) for v in self.alpha_sigma(t))
        x0 = (x_t - sigma * eps) / alpha.clamp(min=self.config.min_alpha)
        return x0.clamp(-self.config.x0_clip, self.config.x0_clip)

    def q_posterior(
        self, t: Float[Tensor, "*batch"] | float, t_next: Float[Tensor, "*batch"] | float
    ) -> PosteriorCoefficients:
        """Coefficients of q(x_{t_next} | x_t, x_0) for t_next < t (see :class:`PosteriorCoefficients`)."""
        log_snr, log_snr_next = self.log_snr(t), self.log_snr(t_next)
        alpha, _ = log_snr_to_alpha_sigma(log_snr)
        alpha_next, sigma_next = log_snr_to_alpha_sigma(log_snr_next)
        c = -torch.expm1(log_snr - log_snr_next)
        variance = sigma_next**2 * c
        return PosteriorCoefficients(
            alpha=alpha,
            alpha_next=alpha_next,
            c=c,
            variance=variance,
            log_variance_clipped=torch.log(variance.clamp(min=self.config.min_posterior_variance)),
        )


def num_sampling_steps(t: float, max_steps: int = 50, min_steps: int = 0) -> int:
    """Steps from start time ``t``: ``max(min_steps, min(int(t · max_steps · 2), max_steps))``.

    This is the authors' PLMS rule with ``max_steps = 50`` (one step per 0.01 of time, at most
    50, so every start time t ≥ 0.5 gets 50 steps). It is evaluated with Python floats, left to
    right, exactly as upstream, so rounding matters: ``t = 0.29`` gives 28 steps, not 29. With
    ``min_steps = 0``, as upstream, a start time below 0.01 gets no step at all.
    """
    return max(min_steps, min(int(t * max_steps * 2), max_steps))


def sampling_times(t_start: float, n_steps: int) -> Float[Tensor, " n_steps_plus_1"]:
    """The time grid ``linspace(t_start, 0, n_steps + 1)`` in float32 (first = t_start, last = 0)."""
    return torch.linspace(t_start, 0.0, n_steps + 1, dtype=torch.float32)
