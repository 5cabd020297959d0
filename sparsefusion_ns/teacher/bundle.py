"""The SparseFusion teacher as one frozen module and one folder on disk.

The teacher is everything the distillation queries but never trains:

- ``eft``: the Epipolar Feature Transformer (input views → per-ray colour and a 256-d feature map);
- ``unet``: the VLDM ε-prediction UNet, itself a sampler ``Denoiser``:
  ``eps = unet(x_t, log_snr, cond)``;
- ``schedule``: the continuous cosine log-SNR schedule the UNet was trained with;
- ``vae``: the Stable Diffusion v1 VAE mapping 256² images ↔ 4×32² latents.

On disk a teacher is a folder, diffusers-style::

    teacher_config.json   format name + version, the architecture (TeacherConfig), provenance
    eft.safetensors       EpipolarFeatureTransformer state dict (the authors' key names)
    unet.safetensors      VLDMUNet state dict (the authors' keys without "unets.0.")
    vae.safetensors       diffusers AutoencoderKL state dict

Folders are written atomically (into a temporary sibling, then renamed; files get the user's umask
permissions) and read strictly: every file must exist, be complete, and hold exactly the tensors of
the architecture its config names, all finite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import init_empty_weights
from torch import Tensor, nn

from sparsefusion_ns.teacher.diffusion_schedule import CosineLogSNRSchedule, CosineLogSNRScheduleConfig
from sparsefusion_ns.teacher.eft import EFTConfig, EpipolarFeatureTransformer
from sparsefusion_ns.teacher.state_dicts import check_state_dict, state_dict_shapes
from sparsefusion_ns.teacher.unet import VLDMUNet, VLDMUNetConfig
from sparsefusion_ns.teacher.vae import FrozenVAE, VAEConfig
from sparsefusion_ns.utils.atomic_files import atomic_folder
from sparsefusion_ns.utils.config_dicts import DictConfig

FORMAT_NAME = "sparsefusion-ns-teacher"
"""Value of ``format`` in ``teacher_config.json``."""
FORMAT_VERSION = 1
"""Version of the folder layout written here; folders from a newer version are refused."""
CONFIG_FILE = "teacher_config.json"
"""Name of the JSON file describing a teacher folder."""
COMPONENTS = ("eft", "unet", "vae")
"""The weight-carrying parts of a teacher; each is stored in ``<name>.safetensors``."""


@dataclass
class TeacherConfig(DictConfig):
    """Architecture of every teacher component (defaults: the released SparseFusion models)."""

    eft: EFTConfig = field(default_factory=EFTConfig.full)
    """Epipolar Feature Transformer."""
    unet: VLDMUNetConfig = field(default_factory=VLDMUNetConfig.full)
    """VLDM denoiser."""
    vae: VAEConfig = field(default_factory=VAEConfig.full)
    """Stable Diffusion v1 autoencoder."""
    schedule: CosineLogSNRScheduleConfig = field(default_factory=CosineLogSNRScheduleConfig)
    """Noise schedule the UNet was trained with."""

    def __post_init__(self) -> None:
        problems = []
        if self.eft.d_model != self.unet.cond_channels:
            problems.append(
                f"EFT features have {self.eft.d_model} channels, the UNet expects {self.unet.cond_channels}"
            )
        if self.vae.latent_channels != self.unet.latent_channels:
            problems.append(
                f"the VAE has {self.vae.latent_channels} latent channels, the UNet {self.unet.latent_channels}"
            )
        if self.eft.grid_size * self.vae.downsampling_factor != self.eft.image_size:
            problems.append(
                f"the EFT feature grid ({self.eft.grid_size}²) must be the VAE latent of an {self.eft.image_size}² "
                f"image ({self.eft.image_size}/{self.vae.downsampling_factor} per side)"
            )
        unet_factor = 2 ** (len(self.unet.dim_mults) - 1)
        if self.eft.grid_size % unet_factor:
            problems.append(f"the latent side {self.eft.grid_size} is not divisible by the UNet's {unet_factor}")
        if problems:
            raise ValueError("inconsistent TeacherConfig: " + "; ".join(problems))

    @classmethod
    def full(cls) -> TeacherConfig:
        """The released SparseFusion teacher: 256² images, 32² latents."""
        return cls()

    @classmethod
    def tiny(cls) -> TeacherConfig:
        """A CPU-fast teacher with the full structure: 64² images, 8² latents and EFT grid, 16-d features."""
        return cls(
            eft=replace(EFTConfig.tiny(), grid_size=8, image_size=64),
            unet=VLDMUNetConfig.tiny(),
            vae=VAEConfig.tiny(),
        )

    @classmethod
    def mini(cls) -> TeacherConfig:
        """A teacher with the released structure that trains to useful quality on 2 CPU cores:
        64² images, 16² latents (×4 VAE), 64-d EFT features (docs/mini_teacher.md)."""
        return cls(eft=EFTConfig.mini(), unet=VLDMUNetConfig.mini(), vae=VAEConfig.mini())


class Teacher(nn.Module):
    """EFT + VLDM UNet + schedule + VAE, frozen: no parameter needs gradients, always in eval mode.

    Gradients can still flow *through* the teacher to its inputs (e.g. a render fed to
    ``vae.encode``) when the caller enables them.
    """

    def __init__(self, config: TeacherConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else TeacherConfig.full()
        self.eft = EpipolarFeatureTransformer(self.config.eft)
        self.unet = VLDMUNet(self.config.unet)
        self.vae = FrozenVAE(self.config.vae)
        self.schedule = CosineLogSNRSchedule(self.config.schedule)
        # where the weights came from (written by the converter, kept by save/load)
        self.provenance: dict[str, Any] = {}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Stays in eval mode whatever ``mode`` says (e.g. when a parent model calls ``.train()``)."""
        return super().train(False)

    def component_state_dicts(self) -> dict[str, dict[str, Tensor]]:
        """The tensors of each component under the key names stored in its ``.safetensors`` file."""
        return {name: _component(self, name).state_dict() for name in COMPONENTS}

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component and in total (the released teacher: EFT 16.81 M, UNet 400.68 M, VAE 83.65 M)."""
        counts = {name: sum(p.numel() for p in _component(self, name).parameters()) for name in COMPONENTS}
        counts["total"] = sum(counts.values())
        return counts

    @classmethod
    def tiny(cls, seed: int = 0, device: torch.device | str = "cpu") -> Teacher:
        """A :meth:`TeacherConfig.tiny` teacher with seeded random weights, for tests of other modules.

        Every stored tensor is drawn (like the reference goldens: weights N(0,1)/sqrt(fan_in), norm
        gains 1 + 0.1·N(0,1), other vectors 0.1·N(0,1)), so no component outputs a constant, the
        UNet's zero-initialised output conv included. The global RNG is left untouched.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            teacher = cls(TeacherConfig.tiny())
        _randomize_(teacher, torch.Generator().manual_seed(seed))
        return teacher.to(device)

    def save_pretrained(self, folder: Path | str, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
        """Write this teacher to ``folder`` (see the module docstring), its floating tensors in
        ``dtype`` if given; returns the folder."""
        return write_teacher_folder(
            folder, self.config, self.component_state_dicts(), self.provenance, overwrite, dtype
        )

    @classmethod
    def from_pretrained(
        cls, folder: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Teacher:
        """Load a teacher folder strictly onto ``device`` in ``dtype``.

        Raises ``FileNotFoundError`` for a missing folder or file, ``ValueError`` for a folder of
        another format or a newer version, and :class:`~sparsefusion_ns.teacher.state_dicts.StateDictMismatchError`
        (listing the keys) when a file does not hold the configured architecture.
        """
        folder = Path(folder)
        metadata = read_teacher_metadata(folder)
        try:
            config = TeacherConfig.from_dict(metadata["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{folder / CONFIG_FILE} does not describe a valid teacher ({type(error).__name__}: {error}). "
                "Re-create the folder with sf-convert-teacher or sf-train-teacher."
            ) from error
        # Parameters start on the meta device (no memory, no random init); loading assigns the
        # file's tensors. Buffers are real from the start, non-persistent ones included.
        with init_empty_weights(include_buffers=False):
            teacher = cls(config)
        for name in COMPONENTS:
            module = _component(teacher, name)
            path = folder / f"{name}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"teacher folder {folder} lacks {path.name}; re-run sf-convert-teacher")
            # Fresh allocations in the target dtype: tensors viewed straight from a safetensors
            # buffer are not 64-byte aligned, which changes SIMD rounding (outputs differ ~1e-7).
            tensors = {
                key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype, copy=True)
                for key, value in _read_safetensors(path).items()
            }
            _check_finite(tensors, path)
            check_state_dict(
                state_dict_shapes(module),
                tensors,
                architecture=_describe(name, config),
                source=str(path),
            )
            module.load_state_dict(tensors, strict=True, assign=True)
        stray = [name for name, tensor in [*teacher.named_parameters(), *teacher.named_buffers()] if tensor.is_meta]
        if stray:
            raise RuntimeError(f"tensors left unloaded after reading {folder}: {stray[:8]}")
        teacher.provenance = dict(metadata.get("provenance", {}))
        teacher.requires_grad_(False)
        return teacher.to(device=device, dtype=dtype)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a teacher file; a truncated or garbled file is a ValueError naming it."""
    try:
        return safetensors.torch.load_file(path)
    except Exception as error:  # safetensors' SafetensorError, or an OSError from the read
        raise ValueError(
            f"{path} is not a readable .safetensors file ({error}); it is probably truncated or corrupt "
            "(an interrupted copy or download). Copy it again, or re-create the teacher folder with "
            "sf-convert-teacher or sf-train-teacher."
        ) from error


def _check_finite(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity: a teacher with them gives NaN targets or no gradients."""
    bad = [key for key, value in tensors.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"{path} holds NaN or infinite values in {len(bad)} tensor(s): {listed}. The weights are broken "
            "(e.g. a teacher training that diverged): use an earlier checkpoint, or re-create the teacher folder."
        )


def _component(teacher: Teacher, name: str) -> nn.Module:
    """The module whose state dict is stored as ``<name>.safetensors`` (the VAE: its diffusers model)."""
    return teacher.vae.autoencoder if name == "vae" else getattr(teacher, name)


def _describe(name: str, config: TeacherConfig) -> str:
    described = {"eft": "EpipolarFeatureTransformer", "unet": "VLDMUNet", "vae": "diffusers AutoencoderKL"}[name]
    return f"{described} with {getattr(config, name)!r}"


def expected_state_dict_shapes(config: TeacherConfig) -> dict[str, dict[str, torch.Size]]:
    """Component → key → shape of the teacher described by ``config``, computed on the meta device."""
    with torch.device("meta"):
        teacher = Teacher(config)
    return {name: state_dict_shapes(_component(teacher, name)) for name in COMPONENTS}


def check_teacher_state_dicts(
    config: TeacherConfig, state_dicts: Mapping[str, Mapping[str, Tensor]], sources: Mapping[str, str] | None = None
) -> None:
    """Raise unless ``state_dicts`` holds exactly the tensors (keys, shapes) of each component of ``config``.

    Works on meta tensors too, so full-size layouts can be checked without memory.
    """
    if set(state_dicts) != set(COMPONENTS):
        raise ValueError(f"teacher weights need exactly the components {list(COMPONENTS)}, got {sorted(state_dicts)}")
    sources = sources or {}
    for name, expected in expected_state_dict_shapes(config).items():
        check_state_dict(expected, state_dicts[name], _describe(name, config), sources.get(name, f"{name} weights"))


def write_teacher_folder(
    folder: Path | str,
    config: TeacherConfig,
    state_dicts: Mapping[str, Mapping[str, Tensor]],
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Check ``state_dicts`` against ``config`` and write a teacher folder atomically.

    Nothing is left half-written: files go to a temporary sibling folder that is renamed to
    ``folder`` only once complete. An existing ``folder`` is replaced only with ``overwrite``.
    ``dtype`` (e.g. ``torch.float16`` for a small folder to ship) stores every floating tensor in
    that precision; loading casts back to the dtype asked for.
    """
    folder = Path(folder)
    check_teacher_state_dicts(config, state_dicts)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; choose another output or pass overwrite")
    with atomic_folder(folder) as staging:
        for name in COMPONENTS:
            tensors = {
                key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value)
                .detach().contiguous().cpu()
                for key, value in state_dicts[name].items()
            }  # fmt: skip
            safetensors.torch.save_file(
                tensors, staging / f"{name}.safetensors", metadata={"format": "pt", "component": name}
            )
        metadata = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "provenance": dict(provenance or {}),
        }
        (staging / CONFIG_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def read_teacher_metadata(folder: Path | str) -> dict[str, Any]:
    """The parsed ``teacher_config.json`` of ``folder``, after checking its format and version."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"teacher folder {folder} does not exist; create it with sf-convert-teacher from the authors' checkpoints"
        )
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a teacher folder: {CONFIG_FILE} is missing")
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}). Restore it from the folder's source, or re-create the teacher "
            "folder with sf-convert-teacher or sf-train-teacher."
        ) from error
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} holds a JSON {type(metadata).__name__}, not the object of a teacher folder.")
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} describes a {metadata.get('format')!r} folder, not a {FORMAT_NAME!r} one")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version!r}; this sparsefusion-ns reads versions ≤ {FORMAT_VERSION}. "
            "Upgrade sparsefusion-ns to read it."
        )
    return metadata


def _randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Overwrite every floating tensor of ``module.state_dict()`` in place with seeded random values."""
    for key, tensor in module.state_dict().items():  # state_dict() tensors are detached views
        if not tensor.is_floating_point():
            continue  # BatchNorm's num_batches_tracked
        name = key.rsplit(".", 1)[-1]
        noise = torch.randn(tensor.shape, generator=generator)
        if name == "running_var":
            value = 0.5 + torch.rand(tensor.shape, generator=generator)
        elif name == "g" or (name == "weight" and tensor.ndim == 1):  # normalisation gains
            value = 1.0 + 0.1 * noise
        elif tensor.ndim >= 2:
            value = noise / math.sqrt(math.prod(tensor.shape[1:]))
        else:
            value = 0.1 * noise
        tensor.copy_(value)
