"""Settings of SparseFusion's distillation step (B). Defaults are the authors' (docs/method.md#novel-view-step).

``schedule`` picks how the diffusion phase gets its teacher targets (docs/schedules.md):
``authors`` asks the teacher for a fresh PLMS target every iteration; ``cached`` keeps one target
per pool camera and regenerates all of them every ``cached.refresh_every`` iterations, batched, with
a few DDIM steps (:class:`CachedTargetsConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sparsefusion_ns.distillation.novel_cameras import NovelCameraPoolConfig


@dataclass
class CachedTargetsConfig:
    """The ``cached`` schedule: one teacher target per pool camera, all regenerated together.

    On the first diffusion step and then every ``refresh_every`` iterations, every pool camera is
    rendered without gradients and turned into a target in batches of ``batch_size`` cameras: one
    start time t ~ U(0, t_max) per batch, DDIM in ``ddim_steps`` steps, VAE decode. Between
    refreshes, an iteration renders its drawn camera with gradients as before and regresses it onto
    that camera's cached target (loss weight 1 − ᾱ(t) of the target's own t). t_max falls linearly
    from ``max_start_time`` at the first diffusion step to ``final_max_start_time`` at the run's last.

    UNet evaluations per scene (counted per sample of a batch): ⌈D / refresh_every⌉ · P · ddim_steps,
    with D diffusion iterations and P pool cameras. ``sparsefusion-mini`` at V = 2 (600 iterations,
    bootstrap 200: D = 399, P = 2 + 24 + 12 = 38): 2 · 38 · 4 = 304, against ≈ 3301 for ``authors``
    (399 · E[min(max(⌊20t⌋, 1), 10) + 1] = 399 · 8.27 for t ~ U(0, 0.99)): 10.9× fewer
    (:func:`~sparsefusion_ns.distillation.target_cache.expected_unet_evals`). A resumed run starts
    with no targets and regenerates them at its first diffusion step (not checkpointed).
    """

    refresh_every: int = 200
    """Regenerate every pool camera's target when this many iterations have passed since the last
    regeneration (GaussianObject refreshes its pseudo-views every 200 steps)."""
    ddim_steps: int = 4
    """DDIM steps (= UNet evaluations per camera) of one regeneration, whatever the start time."""
    batch_size: int = 8
    """Pool cameras denoised together in one batched UNet call (they share the start time t)."""
    max_start_time: float = 0.99
    """t_max at the first diffusion step (authors' U(0, 0.99) bound)."""
    final_max_start_time: float = 0.5
    """t_max at the run's last step: later regenerations refine the field's render more than they
    invent (low noise), set it equal to ``max_start_time`` for a constant bound."""


@dataclass
class DistillationConfig:
    """Step (B) of every iteration: render a pool camera, supervise it with the frozen teacher."""

    seed: int = 0
    """Seed of step (B)'s randomness: the pool's jitter and random azimuths use this seed, the
    camera choice, start time t and diffusion noise of every iteration a stream seeded with seed + 1
    (that stream's state is checkpointed)."""
    pool: NovelCameraPoolConfig = field(default_factory=NovelCameraPoolConfig)
    """The novel cameras rendered for the teacher."""
    render_resolution: int = 128
    """Pool cameras are rendered at this many pixels a side, with gradients, then bilinearly
    upsampled to the teacher's image size (authors: 128² → 256²)."""
    bootstrap_iterations: int = 1000
    """Step (B) bootstraps from the EFT while step ≤ this (0-based), then distils the diffusion
    model: the authors switch at `itr > 1000` of 3000, so 1001 bootstrap iterations."""
    bootstrap_rgb_weight: float = 1.0
    """Bootstrap: weight of the pseudo-Huber loss between the render and the EFT colour (upsampled)."""
    bootstrap_mask_weight: float = 1.0
    """Bootstrap: weight of the pseudo-Huber loss between the rendered opacity and the EFT silhouette."""
    eft_silhouette_threshold: float = 0.1
    """Bootstrap: the EFT silhouette is mean(EFT colour over channels) > this."""
    opacity_weight: float = 1e-3
    """λ_o: weight of mean(sqrt(O² + 0.01)) of the upsampled rendered opacity O, in both phases."""
    max_start_time: float = 0.99
    """Diffusion: the start time is t ~ U(0, max_start_time) (authors: 0.99)."""
    plms_max_steps: int = 50
    """Diffusion: PLMS denoises from t to 0 in min(⌊2 · max_steps · t⌋, max_steps) steps, at least one
    (authors: 50, i.e. min(⌊100 t⌋, 50))."""
    plms_authors_quirks: bool = False
    """Diffusion: reproduce the authors' PLMS edge cases (t < 0.01 runs no step and returns the noisy
    latent; see teacher/samplers.py). Off: every t runs at least one step."""
    use_perceptual_loss: bool = True
    """Diffusion: add λ_p · LPIPS-VGG(render, target). Needs local LPIPS weights
    (--pipeline.model.lpips-vgg-weights, and the lpips package's heads); False runs without it."""
    perceptual_loss_if_weights_missing: Literal["error", "skip"] = "error"
    """Diffusion: what a run that uses the perceptual term does when LPIPS-VGG's local weights are not
    found. 'error' stops the start-up naming the file (the paper's loss needs them); 'skip' trains
    without the term and says so at start-up (the CPU-sized methods: the weights are not part of
    the package)."""
    perceptual_weight: float = 0.1
    """Diffusion: λ_p, weight of the LPIPS-VGG term (authors: 0.1)."""
    cache_max_megabytes: float = 2048.0
    """Device memory for cached EFT colours/features (the released teacher: ~1 MiB per pool camera);
    beyond it, least recently used entries are recomputed when drawn again."""
    schedule: Literal["authors", "cached"] = "cached"
    """Where the diffusion phase's targets come from. 'cached' (the default): a target per pool
    camera, regenerated in batches with few DDIM steps every ``cached.refresh_every`` iterations
    (10.9× fewer UNet evaluations at the ``sparsefusion-mini`` schedule, the same held-out quality
    on the benchmark; docs/schedules.md). 'authors': a fresh PLMS target of the drawn camera every
    iteration, as the paper (reproduces it). Config files written before this option existed
    load as 'authors', what those runs used."""
    cached: CachedTargetsConfig = field(default_factory=CachedTargetsConfig)
    """Settings of the 'cached' schedule (unused by 'authors')."""
    log_images_every: int = 100
    """Every this many steps the writer gets [render | teacher target | EFT colour] of step (B)'s camera."""

    def __setstate__(self, state: dict) -> None:
        """Build from a config file's fields (yaml, as nerfstudio reads ``config.yml``) or a pickle.

        A file written before ``schedule`` existed holds no such field; its run used the authors'
        schedule, so it loads as 'authors' rather than today's default."""
        self.__dict__.update({"schedule": "authors", **state})
