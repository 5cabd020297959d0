"""Harmonic (Fourier) embedding and Plücker ray coordinates, as the EFT consumes them.

The EFT encodes every ray by its Plücker coordinates ``(d, o x d)`` (``d`` unit length) and every
depth by its scalar value, each passed through a harmonic embedding with frequencies
``omega0 * 2^k``, ``k = 0 .. n-1``. The layout must match the released weights exactly:

    [sin(E), cos(E), x],   E = (x[..., i] * f_k) flattened input-dimension-major

i.e. the sines of all ``n`` frequencies of input dimension 0, then of dimension 1, ..., then the
cosines in the same order, then the raw input. A ``c``-dimensional input gives ``c * (2n + 1)``
values: 6 -> 78 for a Plücker ray and 1 -> 13 for a depth with the released ``n = 6``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


class HarmonicEmbedding(nn.Module):
    """``x -> [sin(x f), cos(x f), x]`` with frequencies ``f = omega0 * 2^(0..n-1)``."""

    frequencies: Tensor

    def __init__(self, n_harmonic_functions: int = 6, omega0: float = 1.0) -> None:
        super().__init__()
        frequencies = omega0 * 2.0 ** torch.arange(n_harmonic_functions, dtype=torch.float32)
        # non-persistent: the released checkpoints do not store the frequencies
        self.register_buffer("frequencies", frequencies, persistent=False)

    def output_dim(self, input_dim: int) -> int:
        """Width of the embedding of an ``input_dim``-dimensional input."""
        return input_dim * (2 * self.frequencies.numel() + 1)

    def forward(self, x: Float[Tensor, "*batch c"]) -> Float[Tensor, "*batch e"]:
        # E[..., i * n + k] = x_i * f_k (input-dimension-major)
        scaled = (x[..., None] * self.frequencies).flatten(-2)
        return torch.cat([scaled.sin(), scaled.cos(), x], dim=-1)


def plucker(origins: Float[Tensor, "*batch 3"], directions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 6"]:
    """Plücker coordinates ``(d, o x d)`` of rays, with ``d`` the normalised direction."""
    unit = F.normalize(directions, dim=-1)
    return torch.cat([unit, torch.cross(origins, unit, dim=-1)], dim=-1)
