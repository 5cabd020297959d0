"""SparseFusion's Instant-NGP field: a hash grid, a small MLP, a density blob and albedo colour.

For a point x in the [-4, 4]^3 scene box (docs/method.md#field):
  h = MLP(HashGrid((x + 4) / 8))                      # h ∈ R^4
  σ(x) = trunc_exp(h₀ + a · exp(−|x|² / (2 s²)))       # a = 5, s = 0.2: a density blob at the centre
  c(x) = sigmoid(h₁…₃)                                 # albedo, no view dependence
Points outside the box have zero density. The background is black (the renderer's job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field

from sparsefusion_ns.field.hash_grid import HashGridEncoding, HashGridImplementation, HashGridLayout


@dataclass
class SparseFusionFieldConfig:
    """The field's sizes, defined here once (``--pipeline.model.field.*``); defaults are the paper's."""

    grid: HashGridLayout = field(default_factory=HashGridLayout)
    """Hash grid: 16 levels × 2 features, base resolution 16, 2^16 entries, finest 8192."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers."""
    num_layers: int = 3
    """Number of linear layers of the MLP (ReLU between them)."""
    blob_amplitude: float = 5.0
    """a: height of the initial density blob at the origin (added before trunc_exp)."""
    blob_std: float = 0.2
    """s: standard deviation of the density blob."""
    implementation: HashGridImplementation = "auto"
    """Hash grid kernel: 'auto' runs tiny-cuda-nn when the model is on CUDA and tinycudann imports,
    otherwise the pure-torch twin (same parameters, same results up to round-off); 'tcnn' insists on
    tiny-cuda-nn (an error where it cannot run), 'torch' on the twin."""


class SparseFusionField(Field):
    """Density + albedo field on a multiresolution hash grid, covering [-half_extent, half_extent]^3
    (the scene box; the paper's is [-4, 4]^3)."""

    def __init__(self, config: Optional[SparseFusionFieldConfig] = None, half_extent: float = 4.0) -> None:
        super().__init__()
        config = config if config is not None else SparseFusionFieldConfig()
        self.config = config
        self.half_extent = half_extent
        self.encoding = HashGridEncoding(config.grid, implementation=config.implementation)
        layers = []
        for i in range(config.num_layers):
            in_dim = self.encoding.output_dim if i == 0 else config.hidden_dim
            out_dim = 4 if i == config.num_layers - 1 else config.hidden_dim
            layers.append(nn.Linear(in_dim, out_dim))
            if i != config.num_layers - 1:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)

    def blob(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        """a · exp(−|x|² / (2 s²)): the density offset that starts optimisation from a blob."""
        squared = (positions**2).sum(-1, keepdim=True)
        return self.config.blob_amplitude * torch.exp(-squared / (2 * self.config.blob_std**2))

    def query(self, positions: Float[Tensor, "*bs 3"]) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs 4"]]:
        """Return (σ before activation, raw MLP output h) at world positions."""
        half = self.half_extent
        flat = positions.reshape(-1, 3)
        h = self.mlp(self.encoding(((flat + half) / (2 * half)).clamp(0.0, 1.0)))
        h = h.reshape(*positions.shape[:-1], 4)
        return h[..., :1] + self.blob(positions), h

    def inside(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        return (positions.abs() <= self.half_extent).all(-1, keepdim=True).to(positions.dtype)

    def density_at(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        """σ(x) at world positions (zero outside the box)."""
        density_before_activation, _ = self.query(positions)
        return trunc_exp(density_before_activation) * self.inside(positions)

    def colour_at(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """Albedo c(x) at world positions."""
        return torch.sigmoid(self.query(positions)[1][..., 1:])

    def forward(self, ray_samples: RaySamples, compute_normals: bool = False) -> Dict[FieldHeadNames, Tensor]:
        self._normals_requested = compute_normals
        return super().forward(ray_samples, compute_normals=compute_normals)

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        positions = ray_samples.frustums.get_positions()
        if getattr(self, "_normals_requested", False) and not positions.requires_grad:
            positions.requires_grad_(True)  # normals = −∇σ / |∇σ| (nerfstudio's Field.get_normals)
        density_before_activation, h = self.query(positions)
        self._sample_locations = positions
        self._density_before_activation = density_before_activation
        return trunc_exp(density_before_activation) * self.inside(positions), h

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        return {FieldHeadNames.RGB: torch.sigmoid(density_embedding[..., 1:])}
