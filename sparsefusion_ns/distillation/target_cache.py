"""The ``cached`` schedule's targets: one teacher target per pool camera, regenerated together.

With ``schedule="cached"`` (:class:`~sparsefusion_ns.distillation.config.CachedTargetsConfig`) the
diffusion phase does not ask the teacher for a fresh target every iteration. At its first diffusion
step, and whenever ``refresh_every`` iterations have passed since, :meth:`TargetCache.refresh`
renders every pool camera without gradients and denoises the renders in batches (one start time per
batch, DDIM in ``ddim_steps`` steps). Every iteration then regresses the render of its drawn camera
onto that camera's cached target. The targets live on the device (P · 3 · S² floats: 30 MiB for
the paper's 82 cameras at 256²) and are **not** checkpointed: a resumed run starts without them
and regenerates them all at its first diffusion step, so its cost and its random stream differ
from an uninterrupted run's from there on (tests/test_distillation_schedules.py shows both).

:func:`expected_unet_evals` gives a schedule's expected UNet evaluations per scene, the figure
the schedules are compared by (docs/schedules.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from sparsefusion_ns.distillation.config import DistillationConfig
from sparsefusion_ns.distillation.objective import DenoisedTarget, denoised_target, sample_start_time
from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.teacher.samplers import DDIMSampler, DDIMSamplerConfig, PLMSSampler, PLMSSamplerConfig

if TYPE_CHECKING:  # counters imports nerfstudio's writer, which must not be the first nerfstudio import
    from sparsefusion_ns.distillation.counters import TeacherCounters

RenderFn = Callable[[int], Float[Tensor, "1 3 s s"]]
"""Pool camera index → its render at the teacher's size (no gradient needed)."""
FeaturesFn = Callable[[int], Float[Tensor, "c g g"]]
"""Pool camera index → its EFT feature map (the teacher cache)."""


def first_diffusion_step(config: DistillationConfig) -> int:
    """The first step of the diffusion phase (``phase_at``: bootstrap while step ≤ bootstrap_iterations)."""
    return config.bootstrap_iterations + 1


def annealed_max_start_time(config: DistillationConfig, step: int, last_step: int) -> float:
    """The ``cached`` schedule's t_max at ``step``: linear from ``cached.max_start_time`` at the first
    diffusion step to ``cached.final_max_start_time`` at ``last_step`` (constant outside)."""
    first = first_diffusion_step(config)
    progress = 0.0 if last_step <= first else min(max((step - first) / (last_step - first), 0.0), 1.0)
    cached = config.cached
    return cached.max_start_time + (cached.final_max_start_time - cached.max_start_time) * progress


def expected_unet_evals(config: DistillationConfig, max_num_iterations: int, pool_size: int) -> float:
    """Expected UNet evaluations of one uninterrupted run of steps 0 … ``max_num_iterations`` − 1.

    ``authors``: D · E[evaluations of one PLMS target], t ~ U(0, max_start_time), with D the number
    of diffusion iterations (the expectation integrates the sampler's own step rule on a fine grid).
    ``cached``: exactly ⌈D / refresh_every⌉ · pool_size · ddim_steps.
    """
    diffusion_iterations = max(0, max_num_iterations - first_diffusion_step(config))
    if config.schedule == "cached":
        refreshes = math.ceil(diffusion_iterations / config.cached.refresh_every)
        return float(refreshes * pool_size * config.cached.ddim_steps)
    sampler = PLMSSampler(PLMSSamplerConfig(max_steps=config.plms_max_steps, authors_quirks=config.plms_authors_quirks))
    grid = 100_000  # midpoints of equal sub-intervals of [0, max_start_time]: exact to ~1e-5 per target
    total = 0
    for k in range(grid):
        steps = sampler.num_steps((k + 0.5) / grid * config.max_start_time)
        total += steps + 1 if steps > 0 else 0  # PLMS: steps + 1 evaluations, none without a step
    return diffusion_iterations * total / grid


class TargetCache:
    """The cached targets of every pool camera and when they were made (module docstring)."""

    def __init__(
        self, config: DistillationConfig, teacher: Teacher, pool_size: int, last_step: int, counters: TeacherCounters
    ) -> None:
        if config.cached.refresh_every < 1 or config.cached.ddim_steps < 1 or config.cached.batch_size < 1:
            raise ValueError(
                "--pipeline.model.distillation.cached: refresh-every, ddim-steps and batch-size must be ≥ 1, got "
                f"{config.cached.refresh_every}, {config.cached.ddim_steps}, {config.cached.batch_size}"
            )
        self.config = config
        self.teacher = teacher
        self.pool_size = pool_size
        self.last_step = last_step
        self.counters = counters
        self.sampler = DDIMSampler(
            DDIMSamplerConfig(max_steps=config.cached.ddim_steps, steps_proportional_to_t=False), teacher.schedule
        )
        self.refreshed_at: Optional[int] = None
        """Step of the latest regeneration; None: no targets yet (start, or a resumed run)."""
        self.refresh_steps: List[int] = []
        """Every step at which this run regenerated the targets."""
        self._targets: Dict[int, DenoisedTarget] = {}

    def due(self, step: int) -> bool:
        """Whether ``step`` regenerates the targets: none yet, or ``refresh_every`` iterations old."""
        return self.refreshed_at is None or step - self.refreshed_at >= self.config.cached.refresh_every

    def refresh(self, step: int, render: RenderFn, features: FeaturesFn, generator: torch.Generator) -> None:
        """Render every pool camera and denoise the renders in batches (one start time per batch,
        drawn from ``generator``); counted on ``counters`` (UNet evaluations per image)."""
        t_max = annealed_max_start_time(self.config, step, self.last_step)
        batch_size = self.config.cached.batch_size
        for start in range(0, self.pool_size, batch_size):
            indices = list(range(start, min(start + batch_size, self.pool_size)))
            with torch.no_grad():
                renders = torch.cat([render(index) for index in indices])
            conditions = torch.stack([features(index) for index in indices])
            t = sample_start_time(generator, t_max)
            with self.counters.timed() as cost:
                target = denoised_target(self.teacher, self.sampler, renders, conditions, t, generator)
                cost.vae_encodes += len(indices)
                cost.unet_evals += target.num_unet_evals
                cost.vae_decodes += len(indices)
            for row, index in enumerate(indices):
                self._targets[index] = DenoisedTarget(
                    image=target.image[row : row + 1],
                    t=target.t,
                    alpha_cumprod=target.alpha_cumprod,
                    num_unet_evals=target.num_unet_evals // len(indices),
                )
        self.refreshed_at = step
        self.refresh_steps.append(step)

    def __getitem__(self, index: int) -> DenoisedTarget:
        """The cached target of pool camera ``index`` (after a :meth:`refresh`)."""
        if index not in self._targets:
            raise KeyError(f"no cached target for pool camera {index}: call refresh() first")
        return self._targets[index]
