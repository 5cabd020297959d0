"""Step decay of the learning rate: lr(step) = lr₀ · γ^⌊step / step_size⌋ (the authors' StepLR).

The authors call ``StepLR(step_size=50_000, gamma=0.5).step()`` after every optimiser step, so
the rate used by optimiser step ``s + 1`` is lr₀ · 0.5^⌊s / 50 000⌋. This class does the same and
keeps its state in plain Python values (a checkpoint's ``trainer_state.json``), never pickled
objects.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from torch.optim import Optimizer


class StepDecaySchedule:
    """Sets every parameter group's lr to lr₀ · γ^⌊steps / step_size⌋ after each :meth:`step`."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float) -> None:
        if step_size < 1:
            raise ValueError(f"step_size={step_size} must be at least 1")
        self.optimizer = optimizer
        self.step_size = step_size
        self.gamma = gamma
        self.base_lrs: List[float] = [float(group["lr"]) for group in optimizer.param_groups]
        self.steps = 0
        self._apply()

    def learning_rates(self) -> List[float]:
        """The rates the next optimiser step uses, one per parameter group."""
        factor = self.gamma ** (self.steps // self.step_size)
        return [base * factor for base in self.base_lrs]

    def step(self) -> None:
        """Count one optimiser step and update the rates."""
        self.steps += 1
        self._apply()

    def state_dict(self) -> Dict[str, Any]:
        """The schedule as JSON-ready values."""
        return {"steps": self.steps, "base_lrs": list(self.base_lrs), "step_size": self.step_size, "gamma": self.gamma}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a saved schedule (its step count, base rates, step size and γ)."""
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"the saved schedule has {len(state['base_lrs'])} parameter groups, the optimiser "
                f"{len(self.optimizer.param_groups)}"
            )
        self.steps = int(state["steps"])
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self.step_size = int(state["step_size"])
        self.gamma = float(state["gamma"])
        self._apply()

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates()):
            group["lr"] = lr
