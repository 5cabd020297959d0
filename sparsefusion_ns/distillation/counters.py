"""Machine-independent cost of the distillation: how often, and how long, the teacher ran.

Per iteration and in total: UNet evaluations (the PLMS denoiser calls), VAE encodes and decodes,
EFT queries (one per pool camera whose colour/features were computed) and the wall-clock seconds
spent inside teacher calls (the device is synchronised before reading the clock). The counts are
the project's machine-independent cost figure; the seconds say what they cost on this machine.
Totals are kept in :class:`~sparsefusion_ns.distillation.state.DistillationState` and so survive
checkpoints. Logged with nerfstudio's writer under ``Distillation/<name>`` and ``…_total``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from typing import Dict, Iterator, Protocol

import torch

from nerfstudio.utils import writer


class CostTotals(Protocol):
    """Where the running totals live: a float64 tensor, one entry per :data:`COST_NAMES` name
    (:class:`~sparsefusion_ns.distillation.state.DistillationState`, whose buffers are checkpointed)."""

    totals: torch.Tensor


@dataclass
class TeacherCost:
    """Teacher work of one iteration (field names are :data:`COST_NAMES`)."""

    unet_evals: int = 0
    """Denoiser evaluations."""
    vae_encodes: int = 0
    """VAE encoder calls (one image each)."""
    vae_decodes: int = 0
    """VAE decoder calls (one latent each)."""
    eft_queries: int = 0
    """EFT queries (one pool camera each)."""
    teacher_seconds: float = 0.0
    """Wall-clock seconds inside teacher calls."""

    def as_dict(self) -> Dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


COST_NAMES = tuple(f.name for f in fields(TeacherCost))
"""What the distillation counts, in the order of ``DistillationState.totals``."""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(cost: TeacherCost, device: torch.device | str) -> Iterator[TeacherCost]:
    """Add the wall-clock time of the ``with`` block to ``cost.teacher_seconds`` (the device is
    synchronised before each clock reading); yields ``cost`` for the block to count its work in."""
    device = torch.device(device)
    _synchronize(device)
    start = time.perf_counter()
    try:
        yield cost
    finally:
        _synchronize(device)
        cost.teacher_seconds += time.perf_counter() - start


class TeacherCounters:
    """Counts teacher work as it happens; :meth:`finish_iteration` adds it to the totals and logs it."""

    def __init__(self, state: CostTotals, device: torch.device) -> None:
        self._state = state
        self._device = torch.device(device)
        self.current = TeacherCost()
        """Work since the last :meth:`finish_iteration` (the first iteration also gets the cache warm-up)."""

    @contextmanager
    def timed(self) -> Iterator[TeacherCost]:
        """Add the wall-clock time of the ``with`` block to ``current.teacher_seconds``."""
        with timed(self.current, self._device) as cost:
            yield cost

    def finish_iteration(self, step: int, log: bool = True) -> TeacherCost:
        """Close the iteration: add ``current`` to the totals, log both (if ``log``), start afresh."""
        done, self.current = self.current, TeacherCost()
        self._state.totals += torch.tensor(astuple(done), dtype=torch.float64, device=self._state.totals.device)
        if log:
            for name, value in done.as_dict().items():
                writer.put_scalar(name=f"Distillation/{name}", scalar=value, step=step)
            for name, value in self.totals().as_dict().items():
                writer.put_scalar(name=f"Distillation/{name}_total", scalar=value, step=step)
        return done

    def totals(self) -> TeacherCost:
        """Running totals since the start of the distillation (checkpointed)."""
        values = dict(zip(COST_NAMES, self._state.totals.tolist()))
        counts = {name: round(value) for name, value in values.items() if name != "teacher_seconds"}
        return TeacherCost(**counts, teacher_seconds=values["teacher_seconds"])
