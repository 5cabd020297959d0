"""Ray sampling for the SparseFusion field: a pure-torch reference and a nerfacc CUDA fast path.

- ``ImportanceSampling`` (pure torch, runs everywhere; what the CPU tests exercise): as the
  authors, 64 stratified samples between the ray's entry and exit of the scene box, then 64 more
  drawn from the coarse weights; the field is evaluated with gradients on the union (128 samples).
  The coarse pass only needs densities and runs without gradients.
- ``OccupancyGridSampling`` (nerfacc): occupancy-grid ray marching, chosen by
  ``--pipeline.model.sampler`` with the rule of :mod:`sparsefusion_ns.utils.cuda_kernels`: ``auto``
  (the default) uses it when the model is on CUDA and nerfacc's CUDA extension loads, ``nerfacc``
  insists on it, ``torch`` never uses it. Both return the same kind of result, so the model
  composites them with the same nerfstudio renderers (padded or packed samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler

from sparsefusion_ns.utils.cuda_kernels import OptionalCudaKernel


@dataclass
class SampledRays:
    """Samples along a batch of rays, padded (``ray_indices is None``) or packed."""

    ray_samples: RaySamples
    ray_indices: Optional[Tensor] = None
    """Packed samples only: the ray each sample belongs to."""


class ImportanceSampling(nn.Module):
    """Stratified coarse samples plus importance samples from the coarse weights (pure torch)."""

    def __init__(self, num_uniform: int, num_importance: int) -> None:
        super().__init__()
        self.uniform = UniformSampler(num_samples=num_uniform, train_stratified=True)
        # nerfstudio's PDFSampler draws num_samples + 1 new interval edges; merged with the coarse
        # edges, num_importance − 1 gives exactly num_uniform + num_importance intervals per ray.
        self.importance = PDFSampler(num_samples=num_importance - 1, train_stratified=True, include_original=True)

    def forward(self, ray_bundle: RayBundle, density_fn: Callable[[Tensor], Tensor]) -> SampledRays:
        coarse = self.uniform(ray_bundle)
        with torch.no_grad():
            coarse_weights = coarse.get_weights(density_fn(coarse.frustums.get_positions()))
        return SampledRays(self.importance(ray_bundle, coarse, coarse_weights))


def _load_nerfacc_cuda():
    if not torch.cuda.is_available():
        return None
    try:
        from nerfacc.cuda._backend import _C  # noqa: F401  (builds or loads the extension)
    except Exception:  # noqa: BLE001  (any build/load failure means: use the torch path)
        return None
    return _C


NERFACC = OptionalCudaKernel("nerfacc's CUDA extension", "nerfacc", "--pipeline.model.sampler", _load_nerfacc_cuda)
"""nerfacc's CUDA extension, loaded at most once (the first time a model on CUDA asks for it)."""


def nerfacc_cuda_available() -> bool:
    """Whether nerfacc's CUDA extension loads (checked once)."""
    return NERFACC.available()


class OccupancyGridSampling:
    """nerfacc occupancy-grid marching (CUDA only). Kept out of the model's state dict: the grid is
    rebuilt from the field after loading (nerfacc's warm-up fills it in the first 256 steps)."""

    def __init__(self, aabb: Tensor, resolution: int, render_step_size: float, device: torch.device) -> None:
        import nerfacc

        from nerfstudio.model_components.ray_samplers import VolumetricSampler

        self.estimator = nerfacc.OccGridEstimator(roi_aabb=aabb.flatten(), resolution=resolution, levels=1).to(device)
        self.render_step_size = render_step_size
        self.density_fn: Optional[Callable[[Tensor], Tensor]] = None
        self.sampler = VolumetricSampler(occupancy_grid=self.estimator, density_fn=self._density)

    def _density(self, positions: Tensor, times: Optional[Tensor] = None) -> Tensor:
        assert self.density_fn is not None
        return self.density_fn(positions)

    def update(self, step: int, density_fn: Callable[[Tensor], Tensor]) -> None:
        self.estimator.update_every_n_steps(
            step=step, occ_eval_fn=lambda x: density_fn(x) * self.render_step_size, n=16
        )

    def __call__(self, ray_bundle: RayBundle, density_fn: Callable[[Tensor], Tensor], training: bool) -> SampledRays:
        self.density_fn = density_fn
        self.sampler.train(training)  # in eval, nerfacc skips no samples by opacity
        with torch.no_grad():
            ray_samples, ray_indices = self.sampler(ray_bundle=ray_bundle, render_step_size=self.render_step_size)
        return SampledRays(ray_samples, ray_indices)
