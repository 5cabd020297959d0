"""The frozen Stable Diffusion v1 "kl-f8" autoencoder that maps images to the VLDM's latents.

SparseFusion's diffusion model works on the latents of Stable Diffusion v1's VAE: a 256×256
RGB image becomes a 4×32×32 latent. We run that VAE as a diffusers ``AutoencoderKL`` and load
its weights from either

- the ``first_stage_model.*`` tensors of a Stable Diffusion v1 checkpoint, which use the original
  latent-diffusion ("ldm") layout; our own key converter (:func:`ldm_vae_to_diffusers`) renames
  them to the diffusers layout (reading the checkpoint files is :mod:`.convert`'s job), or
- a local diffusers VAE folder (``config.json`` + weights), never a model-hub id.

Both paths load strictly: a missing, unexpected or wrongly shaped tensor is an error that lists
the offending keys.

Latent convention (docs/method.md#vae): ``encode(x) = mean(q(z | 2x − 1)) · 0.18215`` (the posterior
mean, not a sample) and ``decode(z) = clip((D(z / 0.18215) + 1) / 2, 0, 1)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from jaxtyping import Float
from torch import Tensor, nn

from sparsefusion_ns.teacher.state_dicts import check_state_dict, state_dict_shapes
from sparsefusion_ns.utils.config_dicts import DictConfig

SD_V1_LATENT_SCALE = 0.18215
"""Stable Diffusion v1's latent scaling factor: it gives the latents roughly unit variance."""

LDM_CHECKPOINT_PREFIX = "first_stage_model."
"""Prefix of the VAE's keys inside a full Stable Diffusion v1 checkpoint."""


@dataclass(frozen=True)
class VAEConfig(DictConfig):
    """Architecture of the ``AutoencoderKL`` (all levels are plain ResNet stacks; the middle
    blocks of the encoder and decoder hold one single-head self-attention, as in kl-f8)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Channels per resolution level; each level but the last halves the resolution (ldm ``ch · ch_mult``)."""
    layers_per_block: int = 2
    """ResNet blocks per encoder level (the decoder uses one more), ldm ``num_res_blocks``."""
    latent_channels: int = 4
    """Channels of the latent z (ldm ``z_channels`` / ``embed_dim``)."""
    norm_num_groups: int = 32
    """GroupNorm groups (ldm hard-codes 32)."""
    scaling_factor: float = SD_V1_LATENT_SCALE
    """Latent scale: the VLDM sees ``z = mean(q(z|x)) · scaling_factor``."""

    @classmethod
    def full(cls) -> VAEConfig:
        """Stable Diffusion v1 kl-f8 (83.65 M parameters, ×8 downsampling)."""
        return cls()

    @classmethod
    def tiny(cls) -> VAEConfig:
        """A ~67 k-parameter VAE with the same ×8 downsampling and 4 latent channels, for tests."""
        return cls(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)

    @classmethod
    def mini(cls) -> VAEConfig:
        """The CPU-trainable teacher's VAE (docs/mini_teacher.md): ×4 downsampling (64² images →
        4×16² latents), trained by ``sf-train-teacher --stage vae``; its latent scale is measured
        on the training images after training."""
        return cls(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16, scaling_factor=1.0)

    @property
    def downsampling_factor(self) -> int:
        """Image pixels per latent pixel along each axis."""
        return 2 ** (len(self.block_out_channels) - 1)

    def build_autoencoder(self) -> AutoencoderKL:
        """A randomly initialised diffusers ``AutoencoderKL`` with this architecture (on the current default device)."""
        levels = len(self.block_out_channels)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            scaling_factor=self.scaling_factor,
        )


# ---------------------------------------------------------------------------------------------
# ldm ↔ diffusers key conversion
# ---------------------------------------------------------------------------------------------

# Each pair is (ldm fragment, diffusers fragment). `<i>`, `<j>` stand for indices copied as they
# are; `<u>` is a decoder level, which ldm counts from the image side (up.0 has the most pixels)
# and diffusers from the latent side (up_blocks.0 has the fewest), so it maps to `levels − 1 − u`
# (an involution: the same rule serves both directions).
_KEY_FRAGMENTS: tuple[tuple[str, str], ...] = (
    ("encoder.down.<i>.block.<j>.", "encoder.down_blocks.<i>.resnets.<j>."),
    ("encoder.down.<i>.downsample.conv.", "encoder.down_blocks.<i>.downsamplers.0.conv."),
    ("decoder.up.<u>.block.<j>.", "decoder.up_blocks.<u>.resnets.<j>."),
    ("decoder.up.<u>.upsample.conv.", "decoder.up_blocks.<u>.upsamplers.0.conv."),
    (".mid.block_1.", ".mid_block.resnets.0."),
    (".mid.block_2.", ".mid_block.resnets.1."),
    (".mid.attn_1.norm.", ".mid_block.attentions.0.group_norm."),
    (".mid.attn_1.q.", ".mid_block.attentions.0.to_q."),
    (".mid.attn_1.k.", ".mid_block.attentions.0.to_k."),
    (".mid.attn_1.v.", ".mid_block.attentions.0.to_v."),
    (".mid.attn_1.proj_out.", ".mid_block.attentions.0.to_out.0."),
    (".nin_shortcut.", ".conv_shortcut."),
    (".norm_out.", ".conv_norm_out."),
)
_PLACEHOLDER = re.compile(r"<([iju])>")

# The attention projections are 1×1 convolutions ([c, c, 1, 1]) in ldm and Linear layers
# ([c, c]) in diffusers.
_DIFFUSERS_ATTENTION_WEIGHT = re.compile(r"\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")
_LDM_ATTENTION_WEIGHT = re.compile(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def _fragment_regex(fragment: str) -> re.Pattern[str]:
    pieces = _PLACEHOLDER.split(fragment)
    # split() alternates literal text and placeholder names.
    regex = "".join(re.escape(piece) if index % 2 == 0 else f"(?P<{piece}>\\d+)" for index, piece in enumerate(pieces))
    return re.compile(regex)


def _rename(key: str, to_diffusers: bool, levels: int) -> str:
    for ldm_fragment, diffusers_fragment in _KEY_FRAGMENTS:
        source, target = (ldm_fragment, diffusers_fragment) if to_diffusers else (diffusers_fragment, ldm_fragment)

        def substitute(match: re.Match[str], target: str = target) -> str:
            values = {name: int(value) for name, value in match.groupdict().items()}
            if "u" in values:
                values["u"] = levels - 1 - values["u"]
            return _PLACEHOLDER.sub(lambda placeholder: str(values[placeholder.group(1)]), target)

        key = _fragment_regex(source).sub(substitute, key)
    return key


def ldm_vae_to_diffusers(state_dict: Mapping[str, Tensor], levels: int) -> dict[str, Tensor]:
    """Rename an ldm-layout VAE state dict (``encoder.down.0.block.0…``, no ``first_stage_model.``
    prefix) to the diffusers ``AutoencoderKL`` layout, reshaping the attention 1×1 convs to Linear
    weights. Keys that follow neither layout pass through unchanged (a strict load then reports them).

    Args:
        state_dict: ldm-layout tensors.
        levels: number of resolution levels, ``len(VAEConfig.block_out_channels)``.
    """
    converted = {}
    for key, value in state_dict.items():
        if _LDM_ATTENTION_WEIGHT.search(key) and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        converted[_rename(key, to_diffusers=True, levels=levels)] = value
    return converted


def diffusers_vae_to_ldm(state_dict: Mapping[str, Tensor], levels: int) -> dict[str, Tensor]:
    """Inverse of :func:`ldm_vae_to_diffusers`: diffusers ``AutoencoderKL`` keys → ldm keys."""
    converted = {}
    for key, value in state_dict.items():
        if _DIFFUSERS_ATTENTION_WEIGHT.search(key) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        converted[_rename(key, to_diffusers=False, levels=levels)] = value
    return converted


def vae_state_dict_from_sd_checkpoint(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Select the VAE of a Stable Diffusion v1 state dict, in ldm layout.

    As the authors' loader does, ``first_stage_model.`` is stripped; the rest of the checkpoint
    (UNet, text encoder, …) is ignored. A dict without any ``first_stage_model.`` key is taken to
    be a bare ldm VAE state dict and returned unchanged.
    """
    selected = {
        key.removeprefix(LDM_CHECKPOINT_PREFIX): value
        for key, value in state_dict.items()
        if key.startswith(LDM_CHECKPOINT_PREFIX)
    }
    return selected if selected else dict(state_dict)


class FrozenVAE(nn.Module):
    """The teacher's image ↔ latent map. Frozen: no parameter needs gradients and it stays in eval mode.

    Gradients still flow through ``encode``/``decode`` to their inputs if the caller wants them.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else VAEConfig.full()
        # the diffusers model; its state dict is what load_diffusers_state_dict() loads
        self.autoencoder = self.config.build_autoencoder()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenVAE:
        """Stays in eval mode whatever ``mode`` says: the VAE is never trained here."""
        return super().train(False)

    @property
    def architecture(self) -> str:
        """A one-line description used in error messages."""
        c = self.config
        return (
            f"AutoencoderKL(block_out_channels={c.block_out_channels}, layers_per_block={c.layers_per_block}, "
            f"latent_channels={c.latent_channels}, norm_num_groups={c.norm_num_groups}), diffusers layout"
        )

    # -- weights -------------------------------------------------------------------------------

    def load_diffusers_state_dict(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Strictly load diffusers-layout tensors (keys as in ``AutoencoderKL.state_dict()``)."""
        check_state_dict(state_dict_shapes(self.autoencoder), state_dict, self.architecture, source)
        self.autoencoder.load_state_dict(state_dict, strict=True)

    def load_ldm_state_dict(self, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Strictly load ldm-layout tensors, with or without the ``first_stage_model.`` prefix."""
        ldm = vae_state_dict_from_sd_checkpoint(state_dict)
        self.load_diffusers_state_dict(ldm_vae_to_diffusers(ldm, len(self.config.block_out_channels)), source)

    @classmethod
    def from_diffusers_folder(cls, path: Path, config: VAEConfig | None = None) -> FrozenVAE:
        """The VAE of a local diffusers folder (``config.json`` + weights). Hub ids are refused."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"diffusers VAE folder {path} does not exist. Weights load from local paths only "
                "(never from a model hub): download the VAE folder first and pass its path."
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a diffusers VAE folder: it has no config.json")
        loaded = AutoencoderKL.from_pretrained(path, local_files_only=True)
        vae = cls(config)
        if loaded.config.scaling_factor != vae.config.scaling_factor:
            raise ValueError(
                f"{path} declares scaling_factor={loaded.config.scaling_factor}, but the teacher's latents use "
                f"{vae.config.scaling_factor} (Stable Diffusion v1): this is not the VAE the VLDM was trained with."
            )
        vae.load_diffusers_state_dict(loaded.state_dict(), source=str(path))
        return vae

    # -- the latent map ------------------------------------------------------------------------

    def encode(self, images: Float[Tensor, "b 3 h w"]) -> Float[Tensor, "b c h/8 w/8"]:
        """z = mean(q(z | 2x − 1)) · scaling_factor for images x in [0, 1] (posterior mean, no sampling)."""
        parameter = next(self.autoencoder.parameters())
        x = (2.0 * images - 1.0).clamp(-1.0, 1.0).to(parameter.dtype)
        posterior = self.autoencoder.encode(x).latent_dist
        return (posterior.mean * self.config.scaling_factor).to(images.dtype)

    def decode(self, latents: Float[Tensor, "b c h w"]) -> Float[Tensor, "b 3 h*8 w*8"]:
        """x = clip((D(z / scaling_factor) + 1) / 2, 0, 1): latents back to images in [0, 1]."""
        parameter = next(self.autoencoder.parameters())
        decoded = self.autoencoder.decode((latents / self.config.scaling_factor).to(parameter.dtype)).sample
        return ((decoded + 1.0) / 2.0).clamp(0.0, 1.0).to(latents.dtype)
