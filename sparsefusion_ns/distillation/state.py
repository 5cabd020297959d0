"""The distillation's own checkpointed state: its random stream and its running cost totals.

Both live in buffers of a small module registered on the model, so nerfstudio's checkpoints carry
them (as plain tensors: checkpoints load with ``torch.load(weights_only=True)``) and a resumed run
continues step (B) exactly where it stopped: same camera choices, start times t and noise.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsefusion_ns.distillation.counters import COST_NAMES


class DistillationState(nn.Module):
    """Random-generator state and cost totals of step (B) (one per ``COST_NAMES`` entry), as buffers."""

    rng_state: torch.Tensor
    totals: torch.Tensor

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.register_buffer("rng_state", torch.Generator().manual_seed(seed).get_state())
        self.register_buffer("totals", torch.zeros(len(COST_NAMES), dtype=torch.float64))

    def generator(self) -> torch.Generator:
        """A CPU generator positioned where the last step left the stream."""
        generator = torch.Generator()
        generator.set_state(self.rng_state.cpu())
        return generator

    def store(self, generator: torch.Generator) -> None:
        """Remember where ``generator`` is, for the next step and for checkpoints."""
        self.rng_state.copy_(generator.get_state().to(self.rng_state.device))
