"""Settings of SparseFusion's distillation step (B). Defaults are the authors' (docs/method.md#novel-view-step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sparsefusion_ns.distillation.novel_cameras import NovelCameraPoolConfig


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
    log_images_every: int = 100
    """Every this many steps the writer gets [render | teacher target | EFT colour] of step (B)'s camera."""
