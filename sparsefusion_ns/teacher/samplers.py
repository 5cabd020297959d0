"""Samplers that denoise a VLDM latent from a start time t down to 0.

Two samplers share one interface, ``sampler.sample(denoiser, cond, t, x_start=... | x_t=...)``:

- :class:`PLMSSampler`: the authors' sampler (pseudo linear multistep, Liu et al. 2022, "PNDM",
  as adapted in Stable Diffusion), re-implemented from its description. The distillation uses
  it to turn a noised render into a teacher image. Each step predicts x̂_0 from a combined ε′
  (clipped to ±10) and moves with the diffusion posterior q(x_s | x_t, x̂_0), adding posterior
  noise on every step but the last. ε′ is
    - step 0, pseudo improved Euler: ε′ = (ε_t + ε_mid) / 2, where ε_mid is the network at the
      posterior sample x_mid (noise included) at the next time s;
    - step 1, Adams–Bashforth 2: ε′ = (3ε_t − ε_{−1}) / 2;
    - step 2, Adams–Bashforth 3: ε′ = (23ε_t − 16ε_{−1} + 5ε_{−2}) / 12;
    - later, Adams–Bashforth 4: ε′ = (55ε_t − 59ε_{−1} + 37ε_{−2} − 9ε_{−3}) / 24,
  with ε_{−k} the *raw* network outputs of the previous steps (not the combined ε′).
  No classifier-free guidance. ``max_steps + 1`` network evaluations for ``max_steps`` steps.
- :class:`DDIMSampler`: deterministic DDIM (Song et al. 2021; η = 0 by default) on the same
  schedule, one network evaluation per step, for the speed work.

The network is any callable ``eps = denoiser(x_t, log_snr, cond)`` with ``x_t`` (B, C, H, W),
``log_snr`` (B,) = λ(t) and ``cond`` passed through unchanged (the EFT feature map for the
VLDM UNet), so nothing here depends on the UNet class.

Randomness comes from a :class:`NoiseStream`: a ``torch.Generator`` (reproducible), a list of
tensors or a callable (to inject known noise, e.g. the reference run's ``noise_used``), or
``None`` for torch's global generator. The PLMS sampler takes exactly one draw for the forward
noising (when it starts from a clean latent) and one per posterior update, in call order: the
half step of step 0, then the final update of every step, the last one included although it
is multiplied by zero. These are exactly the draws of the authors' sampler that reach its
output, in the same order.

Authors' quirks (:attr:`PLMSSamplerConfig.authors_quirks`). The authors' sampler has two
behaviours that look like defects; they are reproduced only on request:
  1. a start time t ≥ 0.99 runs 50 steps on linspace(1, 0, 51) starting from the **clean**
     latent x_0 (the noisy x_t is computed and returned but never denoised), so the network
     sees a clean latent labelled "pure noise";
  2. a start time t < 0.01 runs zero steps and returns the noisy x_t itself.
With the quirks off (the default), every start time follows the same rule: start from x_t and
run ``max(1, min(int(t · 50 · 2), 50))`` steps on linspace(t, 0, n + 1). So t ≥ 0.99 denoises
the noised latent like any other t, and t < 0.01 runs one step, which removes the small noise
that was added instead of handing it back as a "denoised" target. Everywhere else (0.01 ≤ t <
0.99) both settings are identical and match the authors' numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from sparsefusion_ns.teacher.diffusion_schedule import (
    CosineLogSNRSchedule,
    PosteriorCoefficients,
    num_sampling_steps,
    sampling_times,
)

Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""``eps = denoiser(x_t, log_snr, cond)``: x_t (B, C, H, W), log_snr (B,), cond passed through."""

NoiseSource = torch.Generator | Sequence[Tensor] | Callable[[Tensor], Tensor] | None
"""Where a :class:`NoiseStream` takes its Gaussian draws from (see there)."""


class NoiseStream:
    """Hands out the standard-normal tensors a sampler consumes, one :meth:`next` call per draw.

    The source is one of
      - ``torch.Generator``: ``torch.randn`` with that generator (on the generator's device,
        then moved to the latent's device), so the same seed gives the same samples;
      - a sequence of tensors: returned in order (each must have the latent's shape); running out
        is an error;
      - a callable ``like -> noise``: called with the latent the noise is for;
      - ``None``: torch's global generator (``torch.randn_like``).
    """

    def __init__(self, source: NoiseSource) -> None:
        self._source = source
        self.num_draws = 0
        """How many tensors have been handed out so far."""

    def next(self, like: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        """The next draw, shaped, typed and placed like ``like``."""
        source = self._source
        if source is None:
            noise = torch.randn_like(like)
        elif isinstance(source, torch.Generator):
            noise = torch.randn(like.shape, generator=source, device=source.device, dtype=like.dtype)
        elif callable(source):
            noise = source(like)
        else:
            if self.num_draws >= len(source):
                raise ValueError(
                    f"the injected noise list has {len(source)} tensors but the sampler needs more "
                    f"(draw #{self.num_draws + 1}); pass one tensor per draw (see NoiseStream)"
                )
            noise = source[self.num_draws]
        if noise.shape != like.shape:
            raise ValueError(
                f"noise draw #{self.num_draws + 1} has shape {tuple(noise.shape)}, but the latent "
                f"has shape {tuple(like.shape)}"
            )
        self.num_draws += 1
        return noise.to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class SamplerStep:
    """One recorded sampler step from time ``t`` to ``t_next``."""

    t: float
    """Time at the start of the step."""
    t_next: float
    """Time at the end of the step."""
    eps: Tensor
    """Raw network output ε_t = denoiser(x, λ(t), cond) at the start of the step."""
    x: Tensor
    """Latent after the step (at ``t_next``)."""


@dataclass(frozen=True)
class SamplerOutput:
    """What :meth:`PLMSSampler.sample` / :meth:`DDIMSampler.sample` return."""

    x0: Tensor
    """Denoised latent after the last step, clamped to ±x0_clip (B, C, H, W)."""
    x_t: Tensor
    """Noisy latent at the start time, α(t) x_0 + σ(t) ε, or the x_t passed in (B, C, H, W)."""
    alpha_cumprod: Tensor
    """ᾱ(t) = sigmoid(λ(t)) at the start time, (B,); the distillation's L1 weight is 1 − ᾱ(t)."""
    times: Tensor
    """The time grid visited, float32, first = start of the first step, last = 0; (n_steps + 1,)."""
    num_denoiser_evals: int
    """How many times the denoiser ran in this call (the distillation logs this)."""
    steps: tuple[SamplerStep, ...] = field(default_factory=tuple)
    """Per-step record, filled only when ``record_steps=True``."""


class _CountingDenoiser:
    """Calls the denoiser at (x, λ(t)) with a per-sample λ and counts the calls."""

    def __init__(self, denoiser: Denoiser, cond: Tensor | None, schedule: CosineLogSNRSchedule) -> None:
        self._denoiser = denoiser
        self._cond = cond
        self._schedule = schedule
        self.num_evals = 0

    def __call__(self, x: Float[Tensor, "b c h w"], t: Tensor) -> Float[Tensor, "b c h w"]:
        log_snr = self._schedule.log_snr(t).expand(x.shape[0]).to(x.device)
        self.num_evals += 1
        return self._denoiser(x, log_snr, self._cond)


def _check_start(t: float, x_start: Tensor | None, x_t: Tensor | None) -> Tensor:
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"the start time t must lie in [0, 1], got {t}")
    if (x_start is None) == (x_t is None):
        raise ValueError("pass exactly one of x_start (a clean latent, noised here) or x_t (a noisy latent)")
    return x_start if x_start is not None else x_t


@dataclass
class PLMSSamplerConfig:
    """Settings of the authors' PLMS sampler (defaults: the distillation's)."""

    max_steps: int = 50
    """Most steps (the authors' ``plms_steps``): start time t runs
    min(int(t · max_steps · 2), max_steps) steps."""
    authors_quirks: bool = False
    """Reproduce the authors' edge cases: t ≥ 0.99 denoises the *clean* latent from t = 1 on
    linspace(1, 0, max_steps + 1), and t < 0.01 runs no step (returns x_t). Off: t ≥ 0.99 starts
    from x_t like any t, and every t runs at least one step (module docstring)."""


class PLMSSampler:
    """The authors' PLMS sampler (module docstring), ε-prediction, no classifier-free guidance."""

    def __init__(self, config: PLMSSamplerConfig | None = None, schedule: CosineLogSNRSchedule | None = None) -> None:
        self.config = config if config is not None else PLMSSamplerConfig()
        self.schedule = schedule if schedule is not None else CosineLogSNRSchedule()

    def num_steps(self, t: float) -> int:
        """Steps a run from start time ``t`` takes (denoiser evaluations: this + 1 when > 0)."""
        quirks = self.config.authors_quirks
        if quirks and t >= 0.99:
            return self.config.max_steps
        return num_sampling_steps(t, self.config.max_steps, min_steps=0 if quirks else 1)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        cond: Tensor | None,
        t: float,
        *,
        x_start: Float[Tensor, "b c h w"] | None = None,
        x_t: Float[Tensor, "b c h w"] | None = None,
        noise: NoiseSource = None,
        record_steps: bool = False,
    ) -> SamplerOutput:
        """Denoise from start time ``t`` to 0.

        Args:
            denoiser: ``eps = denoiser(x_t, log_snr, cond)``.
            cond: passed to the denoiser unchanged (the EFT feature map).
            t: start time in [0, 1], shared by the batch.
            x_start: a clean latent x_0, noised here to x_t = α(t) x_0 + σ(t) ε with the first draw.
            x_t: an already noised latent at time t (then no draw is spent on noising).
            noise: source of the Gaussian draws (:class:`NoiseStream`).
            record_steps: keep every step's (t, t_next, ε_t, x) in the output's ``steps``.
        """
        latent = _check_start(t, x_start, x_t)
        stream = NoiseStream(noise)
        net = _CountingDenoiser(denoiser, cond, self.schedule)
        if x_t is None:
            x_t = self.schedule.q_sample(x_start, t, stream.next(latent))

        if self.config.authors_quirks and t >= 0.99:
            if x_start is None:
                raise ValueError(
                    "authors_quirks with t >= 0.99 starts the loop from the clean latent: pass "
                    "x_start, not x_t (or turn authors_quirks off)"
                )
            times, x = sampling_times(1.0, self.config.max_steps), x_start
        else:
            times, x = sampling_times(t, self.num_steps(t)), x_t

        eps_history: list[Tensor] = []  # raw ε_t of the previous steps, oldest first, at most 3
        steps: list[SamplerStep] = []
        for t_cur, t_next in zip(times[:-1], times[1:]):
            posterior = self.schedule.q_posterior(t_cur, t_next)
            eps = net(x, t_cur)
            if not eps_history:
                # pseudo improved Euler: average ε at x and at the (noisy) posterior sample x_mid at s
                x_mid = self._posterior_step(x, t_cur, t_next, eps, posterior, stream)
                eps_prime = (eps + net(x_mid, t_next)) / 2
            elif len(eps_history) == 1:
                eps_prime = (3 * eps - eps_history[-1]) / 2
            elif len(eps_history) == 2:
                eps_prime = (23 * eps - 16 * eps_history[-1] + 5 * eps_history[-2]) / 12
            else:
                eps_prime = (55 * eps - 59 * eps_history[-1] + 37 * eps_history[-2] - 9 * eps_history[-3]) / 24
            x = self._posterior_step(x, t_cur, t_next, eps_prime, posterior, stream)
            eps_history = [*eps_history, eps][-3:]
            if record_steps:
                steps.append(SamplerStep(t=float(t_cur), t_next=float(t_next), eps=eps, x=x))

        clip = self.schedule.config.x0_clip
        return SamplerOutput(
            x0=x.clamp(-clip, clip),
            x_t=x_t,
            alpha_cumprod=self.schedule.alpha_cumprod(t).expand(latent.shape[0]).to(latent.device),
            times=times,
            num_denoiser_evals=net.num_evals,
            steps=tuple(steps),
        )

    def _posterior_step(
        self,
        x: Float[Tensor, "b c h w"],
        t: Tensor,
        t_next: Tensor,
        eps: Float[Tensor, "b c h w"],
        posterior: PosteriorCoefficients,
        stream: NoiseStream,
    ) -> Float[Tensor, "b c h w"]:
        """x_s ~ q(x_s | x_t, x̂_0(ε)); the draw is always taken, but only added while s > 0."""
        x0 = self.schedule.predict_x0_from_eps(x, t, eps)
        mean = posterior.mean(x, x0)
        noise = stream.next(x)
        if float(t_next) == 0.0:
            return mean
        return mean + posterior.std * noise


@dataclass
class DDIMSamplerConfig:
    """Settings of the DDIM sampler."""

    max_steps: int = 50
    """Most steps; see ``steps_proportional_to_t``."""
    steps_proportional_to_t: bool = True
    """True: start time t runs max(1, min(int(t · max_steps · 2), max_steps)) steps, the PLMS
    rule; False: always ``max_steps`` steps."""
    eta: float = 0.0
    """Stochasticity η: 0 is deterministic DDIM, 1 adds the full posterior noise (DDPM-like)."""


class DDIMSampler:
    """DDIM on the cosine log-SNR schedule; same interface as :class:`PLMSSampler`.

    Per step t → s: x̂_0 = clip((x_t − σ_t ε) / α_t), ε̂ = (x_t − α_t x̂_0) / σ_t (consistent with
    the clipped x̂_0), σ_η = η · posterior std, and x_s = α_s x̂_0 + sqrt(σ_s² − σ_η²) ε̂ + σ_η z.
    The last step (s = 0) returns x̂_0 itself: λ(0) is finite (σ(0) ≈ 0.008), and returning the
    clean prediction is DDIM's usual final step. One denoiser evaluation per step.
    """

    def __init__(self, config: DDIMSamplerConfig | None = None, schedule: CosineLogSNRSchedule | None = None) -> None:
        self.config = config if config is not None else DDIMSamplerConfig()
        self.schedule = schedule if schedule is not None else CosineLogSNRSchedule()

    def num_steps(self, t: float) -> int:
        """Steps (= denoiser evaluations) a run from start time ``t`` takes."""
        if not self.config.steps_proportional_to_t:
            return self.config.max_steps
        return num_sampling_steps(t, self.config.max_steps, min_steps=1)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        cond: Tensor | None,
        t: float,
        *,
        x_start: Float[Tensor, "b c h w"] | None = None,
        x_t: Float[Tensor, "b c h w"] | None = None,
        noise: NoiseSource = None,
        record_steps: bool = False,
    ) -> SamplerOutput:
        """Denoise from start time ``t`` to 0; arguments as :meth:`PLMSSampler.sample`.

        Draws: one for noising ``x_start`` (if given), then, only when η > 0, one per step but
        the last.
        """
        latent = _check_start(t, x_start, x_t)
        stream = NoiseStream(noise)
        net = _CountingDenoiser(denoiser, cond, self.schedule)
        if x_t is None:
            x_t = self.schedule.q_sample(x_start, t, stream.next(latent))

        times, x = sampling_times(t, self.num_steps(t)), x_t
        steps: list[SamplerStep] = []
        for t_cur, t_next in zip(times[:-1], times[1:]):
            eps = net(x, t_cur)
            x0 = self.schedule.predict_x0_from_eps(x, t_cur, eps)
            if float(t_next) == 0.0:
                x = x0
            else:
                alpha, sigma = self.schedule.alpha_sigma(t_cur)
                alpha_next, sigma_next = self.schedule.alpha_sigma(t_next)
                eps_hat = (x - alpha * x0) / sigma  # ε̂: the noise direction implied by the clipped x̂_0
                sigma_eta = self.config.eta * self.schedule.q_posterior(t_cur, t_next).std
                x = alpha_next * x0 + torch.sqrt(sigma_next**2 - sigma_eta**2) * eps_hat
                if self.config.eta > 0:
                    x = x + sigma_eta * stream.next(x)
            if record_steps:
                steps.append(SamplerStep(t=float(t_cur), t_next=float(t_next), eps=eps, x=x))

        clip = self.schedule.config.x0_clip
        return SamplerOutput(
            x0=x.clamp(-clip, clip),
            x_t=x_t,
            alpha_cumprod=self.schedule.alpha_cumprod(t).expand(latent.shape[0]).to(latent.device),
            times=times,
            num_denoiser_evals=net.num_evals,
            steps=tuple(steps),
        )
