"""LPIPS with the VGG-16 trunk (Zhang et al., CVPR 2018, "lin" version 0.1), loaded offline.

SparseFusion uses this metric twice: as a distillation loss (``0.1 * LPIPS-VGG(render, target)``)
and as an evaluation metric. This is our own implementation of the published definition:

    d(x, y) = sum_l  mean_{h,w}  w_l . (f_l(x)_hw - f_l(y)_hw)^2,   f_l = phi_l / ||phi_l||_2

where ``phi_l`` are the VGG-16 activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of
the input after the LPIPS scaling layer, ``||.||_2`` is taken over channels at every pixel, and
``w_l`` are the learned non-negative 1x1 "linear heads". Inputs are images in [0, 1]; they are
mapped to [-1, 1] first, as the reference implementation expects.

Weights come from two local files and nothing is ever downloaded:

- the VGG-16 trunk: torchvision's ImageNet checkpoint ``vgg16-397923af.pth`` (a state dict with
  keys ``features.N.weight`` / ``features.N.bias``; ``classifier.*`` keys are ignored);
- the linear heads: ``weights/v0.1/vgg.pth`` shipped inside the ``lpips`` pip package (keys
  ``lin0.model.1.weight`` ... ``lin4.model.1.weight``).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

LOGGER = logging.getLogger(__name__)

VGG16_CHECKPOINT_NAME = "vgg16-397923af.pth"
"""File name of torchvision's ImageNet VGG-16 checkpoint."""
VGG16_CHECKPOINT_URL = f"https://download.pytorch.org/models/{VGG16_CHECKPOINT_NAME}"
"""Where that checkpoint is published (fetch it yourself; this code never downloads)."""
LPIPS_HEADS_IN_PACKAGE = Path("weights") / "v0.1" / "vgg.pth"
"""Location of the VGG linear heads inside the ``lpips`` package directory."""

# VGG-16 "features" up to relu5_3, in torchvision's index layout: an int is a 3x3 conv with that
# many output channels followed by a ReLU (two indices), "M" is a 2x2 max-pool (one index).
_VGG16_LAYOUT: Tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# ``features[start:end]`` ends at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
_SLICE_ENDS: Tuple[int, ...] = (4, 9, 16, 23, 30)
_TAP_CHANNELS: Tuple[int, ...] = (64, 128, 256, 512, 512)

# The LPIPS v0.1 scaling layer: (x - shift) / scale, x in [-1, 1]. These are the ImageNet mean and
# standard deviation re-expressed for inputs in [-1, 1] (e.g. 2 * 0.485 - 1 = -0.030).
_SHIFT: Tuple[float, float, float] = (-0.030, -0.088, -0.188)
_SCALE: Tuple[float, float, float] = (0.458, 0.448, 0.450)

# Added to the channel norm before dividing, as in the reference implementation.
_NORM_EPS = 1e-10


class LPIPSWeightsNotFoundError(FileNotFoundError):
    """A weight file LPIPS-VGG needs is not on this machine (the message says which and how to fix)."""


@dataclass
class LPIPSConfig:
    """Where the LPIPS-VGG weights live. Constructing it reads nothing; `load_lpips_vgg` loads."""

    vgg_weights: Optional[Path] = None
    """torchvision's ImageNet VGG-16 state dict (``vgg16-397923af.pth``, keys ``features.N.*``).
    None: use ``<torch hub dir>/checkpoints/vgg16-397923af.pth`` if torchvision cached it there."""
    lin_weights: Optional[Path] = None
    """The LPIPS v0.1 VGG linear heads (``vgg.pth``, keys ``linK.model.1.weight``).
    None: use ``lpips/weights/v0.1/vgg.pth`` of the installed ``lpips`` pip package, if any."""


def _vgg16_features() -> nn.Sequential:
    """VGG-16 convolutional layers up to relu5_3, indexed exactly like torchvision's ``features``."""
    layers: List[nn.Module] = []
    in_channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = item
    return nn.Sequential(*layers)


class LPIPSVGG(nn.Module):
    """LPIPS-VGG distance between two batches of images in [0, 1]; differentiable in its inputs.

    Build it with `load_lpips_vgg`, which returns it with frozen weights (no gradients) in eval
    mode; a bare instance has random weights. No layer depends on train/eval mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()
        # w_l: one 1x1 convolution without bias per tapped layer.
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Float[Tensor, "n 3 h w"], references: Float[Tensor, "n 3 h w"]) -> Float[Tensor, " n"]:
        """Per-image LPIPS distance d(images, references); the distance is symmetric."""
        if images.dim() != 4 or images.shape[1] != 3 or images.shape != references.shape:
            raise ValueError(
                "LPIPS-VGG expects two batches of RGB images of the same shape (n, 3, h, w) in [0, 1], "
                f"got {tuple(images.shape)} and {tuple(references.shape)}."
            )
        n = images.shape[0]
        # Both batches go through the trunk together: [-1, 1] range, then the scaling layer.
        x = (torch.cat([images, references]) * 2.0 - 1.0 - self.shift) / self.scale
        distance = images.new_zeros(n)
        start = 0
        for end, head in zip(_SLICE_ENDS, self.heads):
            x = self.features[start:end](x)
            start = end
            # f_l: unit length along channels at every pixel. vector_norm's gradient is 0 (not NaN)
            # where a feature vector is exactly zero.
            f = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + _NORM_EPS)
            squared_difference = (f[:n] - f[n:]) ** 2
            distance = distance + head(squared_difference).mean(dim=(1, 2, 3))
        return distance


def _installed_lpips_heads() -> Optional[Path]:
    """The heads file inside the installed ``lpips`` package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        candidate = Path(directory) / LPIPS_HEADS_IN_PACKAGE
        if candidate.is_file():
            return candidate
    return None


def _cached_torchvision_vgg16() -> Optional[Path]:
    """torchvision's VGG-16 checkpoint in the torch hub cache, if it was ever downloaded there."""
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_CHECKPOINT_NAME
    return candidate if candidate.is_file() else None


def _vgg_missing_message(path: Optional[Path]) -> str:
    where = (
        f"The file {path} does not exist."
        if path is not None
        else (
            f"No path was given and {VGG16_CHECKPOINT_NAME} is not in the torch hub cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'})."
        )
    )
    return (
        f"LPIPS-VGG needs the VGG-16 trunk weights: torchvision's ImageNet checkpoint "
        f"{VGG16_CHECKPOINT_NAME} (published at {VGG16_CHECKPOINT_URL}). {where} "
        f"Copy that file onto this machine and pass it as LPIPSConfig(vgg_weights=Path(...))."
    )


def _heads_missing_message(path: Optional[Path]) -> str:
    where = (
        f"The file {path} does not exist."
        if path is not None
        else ("No path was given and the `lpips` pip package, which ships it, is not installed.")
    )
    return (
        f"LPIPS-VGG needs the LPIPS v0.1 linear heads for VGG: the file {LPIPS_HEADS_IN_PACKAGE.as_posix()} "
        f"inside the `lpips` pip package (also in github.com/richzhang/PerceptualSimilarity under "
        f"lpips/weights/v0.1/vgg.pth). {where} Either `pip install lpips` (it is then found "
        f"automatically) or pass the file as LPIPSConfig(lin_weights=Path(...))."
    )


def resolve_lpips_weights(config: LPIPSConfig) -> Tuple[Path, Path]:
    """The (VGG trunk, linear heads) files `config` designates; `LPIPSWeightsNotFoundError` if absent."""
    vgg = config.vgg_weights if config.vgg_weights is not None else _cached_torchvision_vgg16()
    if vgg is None or not Path(vgg).is_file():
        raise LPIPSWeightsNotFoundError(_vgg_missing_message(config.vgg_weights))
    heads = config.lin_weights if config.lin_weights is not None else _installed_lpips_heads()
    if heads is None or not Path(heads).is_file():
        raise LPIPSWeightsNotFoundError(_heads_missing_message(config.lin_weights))
    return Path(vgg), Path(heads)


def _our_state_dict(
    expected: Dict[str, Tensor], vgg: Dict[str, Tensor], heads: Dict[str, Tensor], files: Tuple[Path, Path]
) -> Dict[str, Tensor]:
    """Our state dict (keys of `expected`) from torchvision's VGG-16 keys and the lpips heads keys."""
    state: Dict[str, Tensor] = {}
    for key, reference in expected.items():
        if key.startswith("features."):  # same key in torchvision's layout
            source, source_key, file, kind = vgg, key, files[0], "a torchvision VGG-16 state dict"
        else:  # "heads.K.weight" <- "linK.model.1.weight"
            source_key = f"lin{key.split('.')[1]}.model.1.weight"
            source, file, kind = heads, files[1], "an LPIPS v0.1 VGG heads file"
        if source_key not in source:
            raise ValueError(f"{file} has no tensor {source_key!r}: it is not {kind}.")
        if source[source_key].shape != reference.shape:
            raise ValueError(
                f"{file}: {source_key!r} has shape {tuple(source[source_key].shape)}, "
                f"expected {tuple(reference.shape)}: it is not {kind}."
            )
        state[key] = source[source_key]
    return state


def load_lpips_vgg(config: LPIPSConfig, device: Optional[torch.device | str] = None) -> LPIPSVGG:
    """Build LPIPS-VGG from the local files `config` designates: frozen, in eval mode, on `device`.

    Raises `LPIPSWeightsNotFoundError` (a `FileNotFoundError`) naming the missing file and the fix.
    """
    files = resolve_lpips_weights(config)
    vgg, heads = (torch.load(f, map_location="cpu", weights_only=True) for f in files)
    model = LPIPSVGG()
    model.load_state_dict(_our_state_dict(model.state_dict(), vgg, heads, files))
    model.requires_grad_(False).eval()
    return model.to(device) if device is not None else model


_ALREADY_WARNED: Set[str] = set()


def lpips_or_warn(config: LPIPSConfig, device: Optional[torch.device | str] = None) -> Optional[LPIPSVGG]:
    """`load_lpips_vgg`, or None after a single warning when a weight file is missing.

    For evaluation code that must keep running offline: LPIPS is then reported as missing. The
    warning (logger ``sparsefusion_ns.metrics.lpips_vgg``) is emitted once per process and cause.
    """
    try:
        return load_lpips_vgg(config, device)
    except LPIPSWeightsNotFoundError as error:
        message = f"LPIPS is skipped. {error}"
        if message not in _ALREADY_WARNED:
            _ALREADY_WARNED.add(message)
            LOGGER.warning(message)
        return None
