"""Building blocks of the VLDM denoiser (an Imagen-style UNet).

Every block here reproduces one module of lucidrains' imagen-pytorch ``Unet`` as vendored in the
SparseFusion code (``external/imagen_pytorch.py``), restricted to the configuration SparseFusion
uses. Attribute names (``groupnorm``, ``project``, ``gca``, ``null_kv``, ``to_out``, numbered
``nn.Sequential`` slots, the ``fn`` of wrappers, ...) are chosen so that state-dict keys equal the
authors' checkpoint keys; :mod:`sparsefusion_ns.teacher.unet` assembles the blocks.

Symbols used in comments: ``t`` is the time-conditioning vector (from log-SNR), ``c`` the normed
time tokens (the attention context), ``x`` / ``h`` feature maps, ``b`` batch, ``n`` pixels of a
flattened feature map, ``r`` context tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn


def imagen_norm_eps(dtype: torch.dtype) -> float:
    """Epsilon of imagen's gain-only layer norms: 1e-5 in float32, 1e-3 in every other dtype.

    The larger value keeps half-precision variances away from zero; float64 also gets 1e-3, as
    upstream does (only float32 is special-cased there).
    """
    return 1e-5 if dtype == torch.float32 else 1e-3


class GainLayerNorm(nn.Module):
    """Layer norm over the last dim with a learned gain ``g`` and no bias (imagen ``LayerNorm``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=-1, keepdim=True)
        return (x - mean) * (var + imagen_norm_eps(x.dtype)).rsqrt() * self.g


class ChannelGainLayerNorm(nn.Module):
    """Layer norm over the channels of an image, gain only (imagen ``ChanLayerNorm``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h w"]:
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + imagen_norm_eps(x.dtype)).rsqrt() * self.g


class PassThrough(nn.Module):
    """An empty slot (no attention at this level, no upsampling at the top): returns ``x``.

    It is a module, not ``None``, so that the slot can be called uniformly and hooked.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return x


class OnPixelTokens(nn.Module):
    """Runs a token module ``fn`` on the pixels of a feature map: (b, c, h, w) → (b, h·w, c) → back."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Float[Tensor, "b c h w"], **kwargs: Tensor | None) -> Float[Tensor, "b c h w"]:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        out = self.fn(tokens, **kwargs)
        return out.transpose(1, 2).reshape(b, c, h, w)


class Residual(nn.Module):
    """``fn(x) + x``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, **kwargs: Tensor | None) -> Tensor:
        return self.fn(x, **kwargs) + x


class SumOfBranches(nn.Module):
    """Sum of parallel branches ``fns`` (upstream ``Parallel``): the lowest level's non-downsampling
    "downsample", a 3×3 plus a 1×1 convolution."""

    def __init__(self, *fns: nn.Module) -> None:
        super().__init__()
        self.fns = nn.ModuleList(fns)

    def forward(self, x: Tensor) -> Tensor:
        return sum(fn(x) for fn in self.fns)


class MultiQueryAttention(nn.Module):
    """Self-attention with ``heads`` query heads sharing ONE key/value head (multi-query attention).

    A learned null key/value token is always attended to. With ``context_dim`` set, the context
    tokens ``c`` are layer-normed, projected to extra key/value tokens and placed in front of the
    null token: keys = [c_k, null_k, k(x)]. Output: ``GainLayerNorm(W_out · heads)``.
    """

    def __init__(self, dim: int, *, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner_dim = heads * dim_head
        self.norm = GainLayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.to_context = (
            nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, 2 * dim_head))
            if context_dim is not None
            else None
        )
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim, bias=False), GainLayerNorm(dim))

    def forward(
        self, x: Float[Tensor, "b n d"], context: Float[Tensor, "b r dc"] | None = None
    ) -> Float[Tensor, "b n d"]:
        b, n, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2) * self.scale  # (b, heads, n, dh)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (b, n, dh) each: one head shared by all queries
        null_k, null_v = (t.expand(b, 1, -1) for t in self.null_kv.unsqueeze(1).unbind(dim=0))
        k, v = torch.cat((null_k, k), dim=1), torch.cat((null_v, v), dim=1)
        if context is not None:
            if self.to_context is None:
                raise ValueError("this attention block was built without context_dim but got a context")
            context_k, context_v = self.to_context(context).chunk(2, dim=-1)
            k, v = torch.cat((context_k, k), dim=1), torch.cat((context_v, v), dim=1)
        attn = torch.einsum("bhid,bjd->bhij", q, k).softmax(dim=-1)
        out = torch.einsum("bhij,bjd->bhid", attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class TokenCrossAttention(nn.Module):
    """Multi-head cross-attention from pixels to context tokens ``c`` (mid ResNet blocks only).

    Keys/values come from ``c`` (already normed by the UNet) with all ``heads`` heads, plus a
    learned null key/value shared by the heads. The softmax runs in float32 as upstream does.
    """

    def __init__(self, dim: int, *, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner_dim = heads * dim_head
        self.norm = GainLayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim, bias=False), GainLayerNorm(dim))

    def forward(self, x: Float[Tensor, "b n d"], context: Float[Tensor, "b r dc"]) -> Float[Tensor, "b n d"]:
        b, n, _ = x.shape
        x = self.norm(x)

        def split_heads(t: Tensor) -> Tensor:
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)  # (b, heads, tokens, dh)

        q = split_heads(self.to_q(x))
        k, v = (split_heads(t) for t in self.to_kv(context).chunk(2, dim=-1))
        null_k, null_v = (t.expand(b, self.heads, 1, -1) for t in self.null_kv.unsqueeze(1).unbind(dim=0))
        k, v = torch.cat((null_k, k), dim=2), torch.cat((null_v, v), dim=2)
        sim = torch.einsum("bhid,bhjd->bhij", q * self.scale, k)
        attn = sim.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def channel_feed_forward(dim: int, mult: float) -> nn.Sequential:
    """Pointwise MLP on channels: ChanLN → 1×1 conv (dim → mult·dim) → GELU → ChanLN → 1×1 conv back."""
    hidden = int(dim * mult)
    return nn.Sequential(
        ChannelGainLayerNorm(dim),
        nn.Conv2d(dim, hidden, 1, bias=False),
        nn.GELU(),
        ChannelGainLayerNorm(hidden),
        nn.Conv2d(hidden, dim, 1, bias=False),
    )


class TransformerBlock(nn.Module):
    """``depth`` × [x = Attn(x, c) + x; x = FF(x) + x] on a feature map (imagen ``TransformerBlock``)."""

    def __init__(self, dim: int, *, depth: int, heads: int, dim_head: int, ff_mult: float, context_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    OnPixelTokens(MultiQueryAttention(dim, heads=heads, dim_head=dim_head, context_dim=context_dim)),
                    channel_feed_forward(dim, ff_mult),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: Float[Tensor, "b c h w"], context: Float[Tensor, "b r dc"] | None = None) -> Tensor:
        for attention, feed_forward in self.layers:
            x = attention(x, context=context) + x
            x = feed_forward(x) + x
        return x


class GlobalContext(nn.Module):
    """Global-context gate: a softmax-over-pixels pooled vector → MLP → per-channel sigmoid gate.

    ``pooled_c = Σ_n softmax_n(to_k(h))_n · h_{c,n}``; returns ``sigmoid(MLP(pooled))`` of shape
    (b, c, 1, 1), which the ResNet block multiplies into its output.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(3, dim // 2)
        self.to_k = nn.Conv2d(dim, 1, 1)
        self.net = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, dim, 1), nn.Sigmoid())

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c 1 1"]:
        weights = self.to_k(x).flatten(2).softmax(dim=-1)  # (b, 1, n)
        pooled = torch.einsum("bin,bcn->bci", weights, x.flatten(2))  # (b, c, 1)
        return self.net(pooled.unsqueeze(-1))


class NormActConv(nn.Module):
    """GroupNorm → optional FiLM ``x·(scale+1)+shift`` → SiLU → 3×3 conv (imagen ``Block``)."""

    def __init__(self, dim: int, dim_out: int, groups: int) -> None:
        super().__init__()
        self.groupnorm = nn.GroupNorm(groups, dim)
        self.activation = nn.SiLU()
        self.project = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(
        self, x: Float[Tensor, "b c h w"], scale_shift: tuple[Tensor, Tensor] | None = None
    ) -> Float[Tensor, "b c2 h w"]:
        x = self.groupnorm(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.project(self.activation(x))


class ResnetBlock(nn.Module):
    """Time-conditioned ResNet block.

    ``h = block1(x)``; [mid blocks: ``h = CrossAttn(h, c) + h``]; ``h = block2(h)`` with FiLM
    (scale, shift) = ``Linear(SiLU(t))``; [``h = h · GCA(h)``]; returns ``h + res_conv(x)``
    (1×1 conv when the channel count changes, else identity).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        time_cond_dim: int,
        groups: int,
        global_context: bool = False,
        cross_attention: TokenCrossAttention | None = None,
    ) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, 2 * dim_out))
        self.cross_attn = OnPixelTokens(cross_attention) if cross_attention is not None else None
        self.block1 = NormActConv(dim, dim_out, groups)
        self.block2 = NormActConv(dim_out, dim_out, groups)
        self.gca = GlobalContext(dim_out) if global_context else None
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(
        self,
        x: Float[Tensor, "b c h w"],
        time_cond: Float[Tensor, "b dt"],
        context: Float[Tensor, "b r dc"] | None = None,
    ) -> Float[Tensor, "b c2 h w"]:
        scale_shift = self.time_mlp(time_cond)[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this ResNet block cross-attends to the time tokens: pass context")
            h = self.cross_attn(h, context=context) + h
        h = self.block2(h, scale_shift=scale_shift)
        if self.gca is not None:
            h = h * self.gca(h)
        return h + self.res_conv(x)


class CrossEmbedConv(nn.Module):
    """Multi-scale input convolution: one stride-1 conv per kernel size, outputs concatenated.

    Kernels are sorted ascending; output channels halve per scale (``dim_out/2``, ``dim_out/4``,
    ..., and the remainder for the largest kernel), e.g. 256 → 128/64/64 for kernels 3/7/15.
    """

    def __init__(self, dim_in: int, dim_out: int, kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        kernels = sorted(kernel_sizes)
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"cross-embed kernel sizes must be odd for stride 1, got {kernel_sizes}")
        widths = [int(dim_out / 2**i) for i in range(1, len(kernels))]
        widths.append(dim_out - sum(widths))
        self.convs = nn.ModuleList(
            nn.Conv2d(dim_in, width, k, padding=(k - 1) // 2) for k, width in zip(kernels, widths)
        )

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b d h w"]:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class LearnedSinusoidalEmbedding(nn.Module):
    """Fourier features of a scalar with learned frequencies ``w``: [x, sin(2π x w), cos(2π x w)]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"learned sinusoidal embedding dim must be even, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: Float[Tensor, " b"]) -> Float[Tensor, "b d_plus_1"]:
        x = x[:, None]
        freqs = x * self.weights[None] * 2 * math.pi
        return torch.cat((x, freqs.sin(), freqs.cos()), dim=-1)


class PixelShuffleUpsample(nn.Module):
    """×2 upsampling: 1×1 conv to 4·dim_out channels → SiLU → PixelShuffle(2).

    Initialised ICNR-style (each group of 4 sub-pixel filters starts equal, bias zero), so at
    initialisation it behaves like nearest-neighbour upsampling and avoids checkerboard artefacts.
    """

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        conv = nn.Conv2d(dim, 4 * dim_out, 1)
        self.net = nn.Sequential(conv, nn.SiLU(), nn.PixelShuffle(2))
        base = torch.empty_like(conv.weight[:dim_out])
        nn.init.kaiming_uniform_(base)
        with torch.no_grad():
            conv.weight.copy_(base.repeat_interleave(4, dim=0))
            conv.bias.zero_()

    def forward(self, x: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c2 h2 w2"]:
        return self.net(x)
