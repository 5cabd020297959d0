"""The SparseFusion VLDM denoiser: an Imagen-style UNet predicting ε from a noisy latent.

What it computes (SparseFusion §3.2; upstream ``external/imagen_pytorch.py::Unet``):
``ε̂ = UNet(cat(c_EFT, z_t), λ_t)`` where ``z_t = α_t z_0 + σ_t ε`` is the noisy 4-channel VAE latent,
``c_EFT`` the 256-channel feature map rendered by the epipolar feature transformer (placed FIRST in
the channel concatenation) and ``λ_t = log(α_t²/σ_t²)`` the log-SNR of the continuous cosine
schedule. The network is conditioned on λ_t, never on t.

Architecture (released sizes; ``VLDMUNetConfig.full()``):

- input conv: multi-scale "cross-embed" conv, kernels 3/7/15, 260 → 256 channels;
- time: λ → learned Fourier features (16 → 17) → Linear → SiLU (``to_time_hiddens``), then
  ``t = Linear`` (1024-d FiLM conditioning of every ResNet block) and 2 time tokens
  (``to_time_tokens``, 2 × 256), layer-normed into the attention context ``c``;
- 4 levels with channels 256/512/1024/1024 at 32/16/8/4 px: a plain ResNet block, 2 ResNet
  blocks with global-context gating, a transformer block (multi-query self-attention that also
  attends to ``c``) at the lowest level only, then a stride-2 4×4 conv (the lowest level keeps its
  size: 3×3 + 1×1 conv); 3 skip connections per level;
- middle at 4×4: ResNet block with cross-attention to ``c``, residual multi-query self-attention,
  a second such ResNet block;
- decoder mirrors the encoder; skips are concatenated after scaling by 2^-1/2; upsampling is
  1×1 conv + SiLU + PixelShuffle; a final ResNet block (with global context) and a 3×3 conv to 4
  channels give ε̂.

State-dict keys equal the authors' ``ckpt_latest.pt`` ``model_state_dict`` keys without the
``unets.0.`` prefix (477 tensors, 400,675,357 parameters), so released checkpoints load strictly
with :func:`load_authors_state_dict`. Two of those parameters, ``null_conditional_embed`` and
``null_conditional_hidden``, belong to imagen's text conditioning, which SparseFusion switches off;
they are kept (frozen) only so that checkpoints load strictly.

Condition dropout: the authors train with the condition zeroed for 10 % of the samples
(``cond_drop_prob``); SparseFusion never uses classifier-free guidance at inference. Pass
``cond_drop_mask`` (True = drop) to :meth:`VLDMUNet.forward`, e.g. from
:meth:`VLDMUNet.sample_cond_drop_mask`; a dropped condition is exactly a zero feature map.

Why a port rather than a dependency on the ``imagen-pytorch`` PyPI package: no published version
reproduces the authors' key layout. The authors renamed the text-conditioning parameters
(``null_text_embed`` → ``null_conditional_embed``, ``cond_on_text`` → ``cond_on_z``), added the
condition-image dropout, and their vendored snapshot predates later layout changes (e.g. in 2.1.0,
the latest on PyPI, ``mid_attn`` is a ``TransformerBlock`` with different keys). Depending on it
would therefore still need a key-remapping layer, and it pulls ``transformers``, ``datasets``,
``kornia``, ``sentencepiece``, ``pydantic>=2``, ``einops``, ``ema-pytorch``, ... into an
environment pinned by nerfstudio 1.1.5 (numpy 1.x), for ~2.5k lines of which SparseFusion uses one
configuration. The blocks SparseFusion needs fit in :mod:`.unet_blocks`, written from the math
(imagen-pytorch is MIT; the SparseFusion repository has no licence, so nothing is copied from it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from sparsefusion_ns.teacher.state_dicts import check_state_dict, state_dict_shapes
from sparsefusion_ns.teacher.unet_blocks import (
    CrossEmbedConv,
    LearnedSinusoidalEmbedding,
    MultiQueryAttention,
    OnPixelTokens,
    PassThrough,
    PixelShuffleUpsample,
    Residual,
    ResnetBlock,
    SumOfBranches,
    TokenCrossAttention,
    TransformerBlock,
)
from sparsefusion_ns.utils.config_dicts import DictConfig

AUTHORS_KEY_PREFIX = "unets.0."
"""Prefix of the UNet keys inside the authors' ``ckpt_latest.pt`` ``model_state_dict``."""

SKIP_SCALE = 2**-0.5
"""Skip connections are multiplied by 2^-1/2 before concatenation (imagen ``scale_skip_connection``)."""


@dataclass
class VLDMUNetConfig(DictConfig):
    """Hyper-parameters of :class:`VLDMUNet`; defaults are the released SparseFusion model."""

    dim: int = 256
    """Base width: channels of the first level, of the time tokens (``cond_dim``), and 1/4 of the
    time-conditioning vector ``t``."""
    dim_mults: tuple[int, ...] = (1, 2, 4, 4)
    """Per-level channel multipliers of ``dim``; one level per entry, each but the last halves the
    resolution."""
    num_resnet_blocks: tuple[int, ...] = (2, 2, 2, 2)
    """Global-context ResNet blocks per level (after the level's plain first block); each one's
    output is a skip connection."""
    layer_attns: tuple[bool, ...] = (False, False, False, True)
    """Whether a level has a transformer block (self-attention + feed-forward) after its ResNet
    blocks."""
    latent_channels: int = 4
    """Channels of the noisy latent z_t and of the predicted ε (SD kl-f8 VAE latent)."""
    cond_channels: int = 256
    """Channels of the EFT feature map concatenated in front of z_t."""
    attn_heads: int = 8
    """Query heads of every attention (keys/values of self-attention use one shared head)."""
    attn_dim_head: int = 64
    """Width of one attention head."""
    ff_mult: float = 2.0
    """Hidden width multiplier of the transformer blocks' channel feed-forward."""
    resnet_groups: int = 8
    """GroupNorm groups in the ResNet blocks."""
    sinusoidal_dim: int = 16
    """Number of learned Fourier features of the log-SNR (half sine, half cosine)."""
    num_time_tokens: int = 2
    """Tokens derived from the time embedding; the (only) context of all attention layers."""
    init_kernel_sizes: tuple[int, ...] = (3, 7, 15)
    """Kernel sizes of the multi-scale input convolution."""
    max_conditional_len: int = 256
    """Length of the unused imagen text-null embedding ``null_conditional_embed``; only its shape
    matters (strict checkpoint loading)."""
    cond_drop_prob: float = 0.1
    """Training probability of zeroing the condition of a sample (used by
    :meth:`VLDMUNet.sample_cond_drop_mask`; ``forward`` never drops on its own)."""

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep tuples (immutable, hashable).
        for name in ("dim_mults", "num_resnet_blocks", "layer_attns", "init_kernel_sizes"):
            setattr(self, name, tuple(getattr(self, name)))
        levels = len(self.dim_mults)
        if len(self.num_resnet_blocks) != levels or len(self.layer_attns) != levels:
            raise ValueError(
                f"dim_mults, num_resnet_blocks and layer_attns need one entry per level; got lengths "
                f"{levels}, {len(self.num_resnet_blocks)}, {len(self.layer_attns)}"
            )
        widths = [self.dim * m for m in self.dim_mults]
        if any(w % self.resnet_groups for w in [self.dim, *widths]):
            raise ValueError(f"level widths {widths} must be divisible by resnet_groups={self.resnet_groups}")

    @property
    def time_cond_dim(self) -> int:
        """Width of the FiLM time-conditioning vector ``t`` (4 · dim)."""
        return 4 * self.dim

    @property
    def level_dims(self) -> tuple[int, ...]:
        """Channels of each level."""
        return tuple(self.dim * m for m in self.dim_mults)

    @classmethod
    def full(cls) -> VLDMUNetConfig:
        """The released SparseFusion VLDM (400,675,357 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> VLDMUNetConfig:
        """A ~0.4 M-parameter version with the same structure (all blocks present), for fast CPU tests."""
        return cls(dim=8, cond_channels=16, attn_heads=2, attn_dim_head=8, max_conditional_len=4)

    @classmethod
    def mini(cls) -> VLDMUNetConfig:
        """The CPU-trainable teacher's UNet (docs/mini_teacher.md): dim 32 on 16² latents with
        64-d EFT features, all blocks of the released structure."""
        return cls(dim=32, cond_channels=64, attn_heads=4, attn_dim_head=32, max_conditional_len=4)


class DownLevel(nn.Module):
    """One encoder level. Children are named by upstream's ``ModuleList`` indices so that keys match:
    ``1`` first block, ``2`` global-context ResNet blocks, ``3`` attention, ``4`` downsample
    (upstream's slot ``0``, a pre-downsample for memory-efficient UNets, is empty here)."""

    def __init__(
        self, first_block: ResnetBlock, resnet_blocks: nn.ModuleList, attention: nn.Module, downsample: nn.Module
    ) -> None:
        super().__init__()
        for index, module in enumerate((first_block, resnet_blocks, attention, downsample), start=1):
            self.add_module(str(index), module)

    @property
    def first_block(self) -> ResnetBlock:
        return self.get_submodule("1")

    @property
    def resnet_blocks(self) -> nn.ModuleList:
        return self.get_submodule("2")

    @property
    def attention(self) -> nn.Module:
        return self.get_submodule("3")

    @property
    def downsample(self) -> nn.Module:
        return self.get_submodule("4")


class UpLevel(nn.Module):
    """One decoder level, children named as upstream: ``0`` first block, ``1`` global-context ResNet
    blocks, ``2`` attention, ``3`` upsample."""

    def __init__(
        self, first_block: ResnetBlock, resnet_blocks: nn.ModuleList, attention: nn.Module, upsample: nn.Module
    ) -> None:
        super().__init__()
        for index, module in enumerate((first_block, resnet_blocks, attention, upsample)):
            self.add_module(str(index), module)

    @property
    def first_block(self) -> ResnetBlock:
        return self.get_submodule("0")

    @property
    def resnet_blocks(self) -> nn.ModuleList:
        return self.get_submodule("1")

    @property
    def attention(self) -> nn.Module:
        return self.get_submodule("2")

    @property
    def upsample(self) -> nn.Module:
        return self.get_submodule("3")


class VLDMUNet(nn.Module):
    """The VLDM ε-prediction UNet; see the module docstring for the architecture."""

    def __init__(self, config: VLDMUNetConfig) -> None:
        super().__init__()
        self.config = config
        dim, time_dim, token_dim = config.dim, config.time_cond_dim, config.dim
        attn = dict(heads=config.attn_heads, dim_head=config.attn_dim_head)
        groups = config.resnet_groups

        # Unused imagen text-conditioning nulls, kept frozen so that checkpoints load strictly.
        self.null_conditional_embed = nn.Parameter(
            torch.randn(1, config.max_conditional_len, token_dim), requires_grad=False
        )
        self.null_conditional_hidden = nn.Parameter(torch.randn(1, time_dim), requires_grad=False)

        self.init_conv = CrossEmbedConv(config.cond_channels + config.latent_channels, dim, config.init_kernel_sizes)

        # λ → hiddens → (t, time tokens); c = LayerNorm(time tokens) is the attention context.
        self.to_time_hiddens = nn.Sequential(
            LearnedSinusoidalEmbedding(config.sinusoidal_dim), nn.Linear(config.sinusoidal_dim + 1, time_dim), nn.SiLU()
        )
        self.to_time_cond = nn.Sequential(nn.Linear(time_dim, time_dim))
        n_tokens = config.num_time_tokens
        self.to_time_tokens = nn.Sequential(
            nn.Linear(time_dim, token_dim * n_tokens), nn.Unflatten(-1, (n_tokens, token_dim))
        )
        self.norm_cond = nn.LayerNorm(token_dim)

        def resnet(d_in: int, d_out: int, global_context: bool) -> ResnetBlock:
            return ResnetBlock(d_in, d_out, time_cond_dim=time_dim, groups=groups, global_context=global_context)

        def mid_resnet(d: int) -> ResnetBlock:
            cross = TokenCrossAttention(d, context_dim=token_dim, **attn)
            return ResnetBlock(d, d, time_cond_dim=time_dim, groups=groups, cross_attention=cross)

        def attention(d: int, enabled: bool) -> nn.Module:
            if not enabled:
                return PassThrough()
            return TransformerBlock(d, depth=1, ff_mult=config.ff_mult, context_dim=token_dim, **attn)

        level_dims = config.level_dims
        in_out = list(zip((dim, *level_dims[:-1]), level_dims))  # (d_in, d_out) per level
        last = len(in_out) - 1

        self.downs = nn.ModuleList()
        levels = zip(in_out, config.num_resnet_blocks, config.layer_attns)
        for i, ((d_in, d_out), n_blocks, has_attn) in enumerate(levels):
            downsample = (
                nn.Conv2d(d_in, d_out, 4, stride=2, padding=1)
                if i < last
                else SumOfBranches(nn.Conv2d(d_in, d_out, 3, padding=1), nn.Conv2d(d_in, d_out, 1))
            )
            self.downs.append(
                DownLevel(
                    resnet(d_in, d_in, global_context=False),
                    nn.ModuleList(resnet(d_in, d_in, global_context=True) for _ in range(n_blocks)),
                    attention(d_in, has_attn),
                    downsample,
                )
            )

        mid = level_dims[-1]
        self.mid_block1 = mid_resnet(mid)
        self.mid_attn = OnPixelTokens(Residual(MultiQueryAttention(mid, **attn)))
        self.mid_block2 = mid_resnet(mid)

        self.ups = nn.ModuleList()
        reversed_levels = zip(reversed(in_out), reversed(config.num_resnet_blocks), reversed(config.layer_attns))
        for j, ((d_in, d_out), n_blocks, has_attn) in enumerate(reversed_levels):
            skip = d_in  # the encoder level at this resolution ran at its input width
            self.ups.append(
                UpLevel(
                    resnet(d_out + skip, d_out, global_context=False),
                    nn.ModuleList(resnet(d_out + skip, d_out, global_context=True) for _ in range(n_blocks)),
                    attention(d_out, has_attn),
                    PixelShuffleUpsample(d_out, d_in) if j < last else PassThrough(),
                )
            )

        self.final_res_block = resnet(dim, dim, global_context=True)
        self.final_conv = nn.Conv2d(dim, config.latent_channels, 3, padding=1)
        nn.init.zeros_(self.final_conv.weight)  # the untrained network predicts ε̂ = 0
        nn.init.zeros_(self.final_conv.bias)

    def sample_cond_drop_mask(
        self, batch_size: int, *, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Bool[Tensor, " b"]:
        """Training-time condition dropout: True (drop) with probability ``config.cond_drop_prob``."""
        u = torch.rand(batch_size, device=device, generator=generator)
        return u < self.config.cond_drop_prob

    def forward(
        self,
        x_noisy: Float[Tensor, "b 4 h w"],
        log_snr: Float[Tensor, " b"],
        cond: Float[Tensor, "b c h w"],
        cond_drop_mask: Bool[Tensor, " b"] | None = None,
    ) -> Float[Tensor, "b 4 h w"]:
        """Predict ε from z_t (``x_noisy``), λ_t (``log_snr``; a 0-d tensor is broadcast) and the EFT
        feature map ``cond`` (same h, w). ``cond_drop_mask`` (True = drop) zeroes the condition of
        those samples (training-time dropout). Inputs are cast to the parameters' dtype.
        h and w must be divisible by 2^(levels-1) (8 for the released model)."""
        b = x_noisy.shape[0]
        config = self.config
        dtype = self.final_conv.weight.dtype
        if cond.shape[1] != config.cond_channels or x_noisy.shape[1] != config.latent_channels:
            raise ValueError(
                f"expected a {config.latent_channels}-channel latent and a {config.cond_channels}-channel "
                f"condition, got {x_noisy.shape[1]} and {cond.shape[1]}"
            )
        if cond.shape[0] != b or cond.shape[-2:] != x_noisy.shape[-2:]:
            raise ValueError(
                f"condition {tuple(cond.shape)} must match the latent {tuple(x_noisy.shape)} in batch and size"
            )
        factor = 2 ** (len(config.dim_mults) - 1)
        if x_noisy.shape[-2] % factor or x_noisy.shape[-1] % factor:
            raise ValueError(f"latent size {tuple(x_noisy.shape[-2:])} must be divisible by {factor}")
        if cond_drop_mask is not None:
            cond = cond * (~cond_drop_mask.to(torch.bool)).to(cond.dtype)[:, None, None, None]
        log_snr = log_snr.expand(b) if log_snr.ndim == 0 else log_snr

        x = self.init_conv(torch.cat((cond, x_noisy), dim=1).to(dtype))  # condition FIRST

        time_hiddens = self.to_time_hiddens(log_snr.to(dtype))
        t = self.to_time_cond(time_hiddens)  # FiLM conditioning vector
        c = self.norm_cond(self.to_time_tokens(time_hiddens))  # attention context (b, tokens, dim)

        skips: list[Tensor] = []
        for level in self.downs:
            x = level.first_block(x, t)
            for block in level.resnet_blocks:
                x = block(x, t)
                skips.append(x)
            x = level.attention(x, context=c)
            skips.append(x)
            x = level.downsample(x)

        x = self.mid_block1(x, t, context=c)
        x = self.mid_attn(x)
        x = self.mid_block2(x, t, context=c)

        def with_skip(h: Tensor) -> Tensor:
            return torch.cat((h, skips.pop() * SKIP_SCALE), dim=1)

        for level in self.ups:
            x = level.first_block(with_skip(x), t)
            for block in level.resnet_blocks:
                x = block(with_skip(x), t)
            x = level.attention(x, context=c)
            x = level.upsample(x)

        return self.final_conv(self.final_res_block(x, t))


def load_authors_state_dict(model: VLDMUNet, state_dict: Mapping[str, Tensor]) -> VLDMUNet:
    """Load the authors' VLDM weights into ``model`` strictly and return it.

    Accepts the ``model_state_dict`` of ``ckpt_latest.pt`` (keys ``unets.0.*``), the same keys
    without the prefix, or the whole checkpoint dict holding ``model_state_dict``. Values are cast
    to the model's dtype (e.g. float16 goldens into a float32 model). Raises
    :class:`~sparsefusion_ns.teacher.state_dicts.StateDictMismatchError` listing missing /
    unexpected / wrongly-shaped keys.
    """
    if "model_state_dict" in state_dict:
        state_dict = state_dict["model_state_dict"]
    stripped = {k.removeprefix(AUTHORS_KEY_PREFIX): v for k, v in state_dict.items()}
    config = model.config
    check_state_dict(
        state_dict_shapes(model),
        stripped,
        architecture="the SparseFusion VLDM UNet (imagen-pytorch Unet as vendored in zhizdev/sparsefusion, "
        f"dim={config.dim}, dim_mults={config.dim_mults}, cond_channels={config.cond_channels}; the released "
        f"model has 477 tensors with keys '{AUTHORS_KEY_PREFIX}*')",
        source="the VLDM state dict",
        hint="Check that the file is ckpt_latest.pt (not ckpt_latest_eft.pt) and that VLDMUNetConfig matches it.",
    )
    model.load_state_dict(stripped, strict=True)
    return model
