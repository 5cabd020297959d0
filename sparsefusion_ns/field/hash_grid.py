"""Multiresolution hash grid encoding (Müller et al. 2022), with one parameter layout and two kernels.

The parameters are a single flat table laid out exactly as tiny-cuda-nn's ``Grid``/``Hash``
encoding stores them, so the same checkpoint runs through either kernel:

- ``hash_grid_encode_torch`` — the pure-torch reference twin; runs everywhere (CPU tests use it);
- tiny-cuda-nn — chosen by ``--pipeline.model.field.implementation`` with the rule of
  :mod:`sparsefusion_ns.utils.cuda_kernels`: ``auto`` (the default) uses it when ``tinycudann``
  imports *and* the input is on CUDA, ``tcnn`` insists on it, ``torch`` never uses it.

Layout (per level l = 0..L−1, as in tiny-cuda-nn):
  scale_l = base_resolution · b^l − 1,  b = per_level_scale
  resolution_l = ceil(scale_l) + 1
  size_l = min(resolution_l^3, 2^log2_hashmap_size) rounded up to a multiple of 8
  index = x + y·res + z·res² when res³ ≤ hashmap size (dense), otherwise the coherent prime hash
          (x·1) xor (y·2654435761) xor (z·805459861), all modulo size_l (uint32 arithmetic).
  A point p ∈ [0, 1]^3 is looked up at p·scale_l + 0.5 with trilinear interpolation.
The output concatenates the levels: [level0 f0, level0 f1, level1 f0, ...].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sparsefusion_ns.utils.cuda_kernels import OptionalCudaKernel

HashGridImplementation = Literal["auto", "tcnn", "torch"]
"""Which kernel runs the hash grid (``--pipeline.model.field.implementation``)."""

_PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class HashGridLayout:
    """Sizes of a hash grid; the table layout follows from them."""

    num_levels: int = 16
    """L, number of resolution levels."""
    features_per_level: int = 2
    """F, features stored per table entry."""
    log2_hashmap_size: int = 16
    """T = 2^log2_hashmap_size, the largest table size of a level."""
    base_resolution: int = 16
    """N_min, resolution of the coarsest level."""
    max_resolution: int = 8192
    """N_max, resolution of the finest level (SparseFusion: 2048 · bound 4 = 8192)."""

    @property
    def per_level_scale(self) -> float:
        """b = exp((ln N_max − ln N_min) / (L − 1))."""
        if self.num_levels == 1:
            return 1.0
        return math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.num_levels - 1))

    def level_scales(self) -> list:
        log2_b = math.log2(self.per_level_scale)
        # float32 arithmetic as in tiny-cuda-nn's grid_scale()
        return [
            float(torch.tensor(2.0, dtype=torch.float32) ** torch.tensor(level * log2_b, dtype=torch.float32))
            * self.base_resolution
            - 1.0
            for level in range(self.num_levels)
        ]

    def level_resolutions(self) -> list:
        return [int(math.ceil(scale)) + 1 for scale in self.level_scales()]

    def level_sizes(self) -> list:
        hashmap = 2**self.log2_hashmap_size
        return [((min(res**3, hashmap) + 7) // 8) * 8 for res in self.level_resolutions()]

    @property
    def num_entries(self) -> int:
        return sum(self.level_sizes())

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level


def _level_buffers(layout: HashGridLayout, device: torch.device):
    """Per-level scale, resolution, table size and offset, and whether the level is dense."""
    sizes = torch.tensor(layout.level_sizes(), dtype=torch.int64, device=device)
    offsets = torch.cumsum(sizes, 0) - sizes
    resolutions = torch.tensor(layout.level_resolutions(), dtype=torch.int64, device=device)
    scales = torch.tensor(layout.level_scales(), dtype=torch.float32, device=device)
    dense = resolutions**3 <= 2**layout.log2_hashmap_size
    return scales, resolutions, sizes, offsets, dense


_CORNER_OFFSETS = ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1))
"""The 8 cell corners c = 4·dx + 2·dy + dz, as (dx, dy, dz) offsets from the lower corner."""


def _corner_indices(lower: Tensor, resolutions: Tensor, sizes: Tensor, dense: bool) -> Tensor:
    """Table indices within each level of the 8 cell corners, ``index mod size_l`` included.

    ``lower`` is (n, L, 3), the cell's lower integer grid coordinates; returns (n, L, 8), corner
    c = 4·dx + 2·dy + dz. Dense levels: x + y·res + z·res², which stays below 2·size_l (a corner on
    the grid's far side may pass res³ − 1), so the modulo is one conditional subtraction. Hashed
    levels: (x·π₁) xor (y·π₂) xor (z·π₃); their size is 2^log2_hashmap_size (a power of two, never
    rounded), so the modulo keeps the low bits, which are those of the uint32 products.
    """
    n, levels = lower.shape[:2]
    x, y, z = lower.unbind(-1)
    offsets = torch.tensor(_CORNER_OFFSETS, dtype=lower.dtype, device=lower.device)  # (8, 3)
    if dense:
        strides = torch.stack([torch.ones_like(resolutions), resolutions, resolutions * resolutions], -1)  # (L, 3)
        base = x + y * strides[:, 1] + z * strides[:, 2]  # (n, L)
        index = base[..., None] + (strides[:, None, :] * offsets).sum(-1)  # (n, L, 8)
        size = sizes[:, None]
        return torch.where(index >= size, index - size, index)
    hx = torch.stack([x, x + 1], -1) * _PRIMES[0]  # (n, L, 2): lower and upper corner
    hy = torch.stack([y, y + 1], -1) * _PRIMES[1]
    hz = torch.stack([z, z + 1], -1) * _PRIMES[2]
    hashed = (hx[..., :, None] ^ hy[..., None, :]).reshape(n, levels, 4, 1) ^ hz[..., None, :]
    return hashed.reshape(n, levels, 8) & (sizes[:, None] - 1)


def hash_grid_encode_torch(
    positions: Float[Tensor, "n 3"], table: Float[Tensor, " entries_times_features"], layout: HashGridLayout
) -> Float[Tensor, "n levels_times_features"]:
    """Pure-torch hash grid lookup; ``positions`` in [0, 1]^3, flat ``table`` in tiny-cuda-nn layout."""
    n = positions.shape[0]
    scales, resolutions, sizes, offsets, dense = _level_buffers(layout, positions.device)
    scaled = positions[:, None, :] * scales.to(positions.dtype)[None, :, None] + 0.5  # (n, L, 3)
    floor = torch.floor(scaled)
    frac = scaled - floor
    lower = floor.long()
    # Trilinear weights: per axis (1 − f, f), multiplied over the three axes, corner c = 4·dx + 2·dy + dz.
    wx, wy, wz = torch.stack([1.0 - frac, frac], dim=-1).unbind(2)  # (n, L, 2) each
    weights = (wx[..., :, None] * wy[..., None, :]).reshape(n, -1, 4, 1) * wz[..., None, :]  # (n, L, 4, 2)

    index = torch.empty(n, layout.num_levels, 8, dtype=torch.int64, device=positions.device)
    for is_dense in (True, False):
        levels = torch.nonzero(dense == is_dense).flatten()
        if len(levels) == 0:
            continue
        group = slice(int(levels[0]), int(levels[-1]) + 1)  # a run: resolution is monotonic in the level
        index[:, group] = _corner_indices(lower[:, group], resolutions[group], sizes[group], is_dense)
    index += offsets[:, None]

    encoded = _WeightedGather.apply(
        table, index.reshape(-1, 8), weights.reshape(-1, 8).to(table.dtype), layout.features_per_level
    )
    return encoded.reshape(n, layout.output_dim)


class _WeightedGather(torch.autograd.Function):
    """Σ_c w_c · T[i_c] over the 8 corners, with a scatter-add backward.

    Autograd's own backward of an index gather sorts the indices; ``index_add_`` is about 3× faster
    on CPU and gives the same gradient (up to float summation order).
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weights: Tensor, features: int) -> Tensor:
        values = table.view(-1, features).index_select(0, index.reshape(-1)).view(*index.shape, features)
        ctx.save_for_backward(index, weights, values)
        ctx.table_shape = table.shape
        return torch.bmm(weights[:, None, :], values).squeeze(1)  # batched dot products: 2.5× the broadcast sum

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        index, weights, values = ctx.saved_tensors
        features = values.shape[-1]
        grad_table = None
        if ctx.needs_input_grad[0]:
            grad_table = torch.zeros(ctx.table_shape, dtype=grad_output.dtype, device=grad_output.device)
            contributions = (weights[..., None] * grad_output[:, None, :]).reshape(-1, features)
            grad_table.view(-1, features).index_add_(0, index.reshape(-1), contributions)
        grad_weights = (values * grad_output[:, None, :]).sum(-1) if ctx.needs_input_grad[2] else None
        return grad_table, None, grad_weights, None


def _import_tinycudann():
    try:
        import tinycudann  # noqa: F401  (optional fast path)
    except (ImportError, OSError, EnvironmentError):
        return None
    return tinycudann


TINYCUDANN = OptionalCudaKernel("tiny-cuda-nn", "tcnn", "--pipeline.model.field.implementation", _import_tinycudann)
"""tiny-cuda-nn's hash encoding, imported at most once (the first time a CUDA input asks for it)."""


class HashGridEncoding(nn.Module):
    """Hash grid encoding whose table can run through tiny-cuda-nn or pure torch.

    The kernel is chosen per call from ``implementation`` (see :data:`HashGridImplementation`) and
    where the input is. Importing this module never imports tinycudann.
    """

    def __init__(
        self, layout: HashGridLayout, init_scale: float = 1e-4, implementation: HashGridImplementation = "auto"
    ) -> None:
        super().__init__()
        self.layout = layout
        # tiny-cuda-nn initialises the table uniformly in [−1e-4, 1e-4].
        self.table = nn.Parameter(
            torch.empty(layout.num_entries * layout.features_per_level).uniform_(-init_scale, init_scale)
        )
        """Flat table: entry e of level l, feature f at ``(offset_l + e) · F + f`` (tiny-cuda-nn order)."""
        self._tcnn_encoding: Optional[nn.Module] = None
        self.implementation: HashGridImplementation = implementation
        """``auto``: tiny-cuda-nn on CUDA inputs when it imports; ``tcnn``: always it; ``torch``: the torch
        twin even where tiny-cuda-nn could run (parity tests, debugging)."""

    @property
    def output_dim(self) -> int:
        return self.layout.output_dim

    def uses_tcnn(self, positions: Tensor) -> bool:
        """Whether ``positions`` go through tiny-cuda-nn (``implementation`` and where they are)."""
        return TINYCUDANN.use(self.implementation, positions.is_cuda)

    def forward(self, positions: Float[Tensor, "n 3"]) -> Float[Tensor, "n levels_times_features"]:
        if self.uses_tcnn(positions):
            return self._forward_tcnn(positions)
        return hash_grid_encode_torch(positions, self.table, self.layout)

    def _forward_tcnn(self, positions: Tensor) -> Tensor:
        tcnn = TINYCUDANN.module()
        if self._tcnn_encoding is None:
            layout = self.layout
            encoding = tcnn.Encoding(
                n_input_dims=3,
                encoding_config={
                    "otype": "HashGrid",
                    "n_levels": layout.num_levels,
                    "n_features_per_level": layout.features_per_level,
                    "log2_hashmap_size": layout.log2_hashmap_size,
                    "base_resolution": layout.base_resolution,
                    "per_level_scale": layout.per_level_scale,
                    "interpolation": "Linear",
                },
                dtype=torch.float32,
            )
            if encoding.params.numel() != self.table.numel():
                raise RuntimeError(
                    f"tiny-cuda-nn allocates {encoding.params.numel()} hash grid parameters but our layout has "
                    f"{self.table.numel()}; this tinycudann version uses another layout. Use the torch kernel: "
                    f"{TINYCUDANN.option} torch."
                )
            # Keep tcnn's module out of our state dict: it only borrows our table.
            object.__setattr__(self, "_tcnn_encoding", encoding.to(positions.device))
        encoding = self._tcnn_encoding
        encoding.params = self.table  # one set of parameters, two kernels
        return encoding(positions.contiguous()).to(self.table.dtype)
