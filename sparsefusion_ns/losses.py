"""The penalties every SparseFusion loss is built from, in one place for all their users.

The field's input-view step (``model/``), the distillation's step (B) (``distillation/objective.py``)
and the teacher's EFT colour loss (``teacher_training/losses.py``) all use the authors' pseudo-Huber
penalty; the field's steps also pull the rendered opacity towards zero. docs/method.md#losses
writes out where each is used and with which weight.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def pseudo_huber(
    prediction: Float[Tensor, "*bs c"], target: Float[Tensor, "*bs c"], scale: float = 0.1
) -> Float[Tensor, "*bs c"]:
    """Per-element pseudo-Huber penalty δ·(sqrt(1 + (x − y)²/δ²) − 1), δ = ``scale``.

    This is the "Huber" loss the SparseFusion authors use for colours and silhouettes (the smooth
    L1 of PyTorch3D's NeRF tutorial), quadratic below δ and linear above it.
    """
    squared = (prediction - target) ** 2
    return (torch.sqrt(1.0 + squared / scale**2) - 1.0) * scale


def opacity_regulariser(accumulation: Float[Tensor, "*bs 1"], epsilon: float = 0.01) -> Float[Tensor, ""]:
    """mean(sqrt(O² + ε)): a smooth L1 pull of the rendered opacity O towards zero (weight 1e-3)."""
    return torch.sqrt(accumulation**2 + epsilon).mean()
