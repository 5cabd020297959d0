"""The trainer of the sparsefusion methods: nerfstudio's ``Trainer`` with safe checkpoints.

Changes to nerfstudio's trainer (everything else is nerfstudio's):

- **Checkpoints** are written atomically and loaded only when complete (:mod:`.checkpoints`): a
  training killed while saving leaves the previous checkpoints, never a partial newest file; a
  full disk says so; resuming from a folder that holds a partial file (an older version's, or
  another writer's) uses the newest complete checkpoint with one warning naming the bad file.
- **Run length**: ``--max-num-iterations`` is the total length of the run, counted from step 0. A
  run resumed with ``--load-dir`` trains the steps left, so rerunning the same command finishes the
  planned run (nerfstudio's trainer would train that many steps again from the resumed step), and
  the progress and ETA are of the planned run.
- **Divergence**: a non-finite training loss stops training with :class:`TrainingDivergedError`
  before the step's checkpoint (or any later one) is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Type

import torch
from torch import Tensor

from nerfstudio.engine.trainer import TRAIN_INTERATION_OUTPUT, Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.engine.checkpoints import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


class TrainingDivergedError(RuntimeError):
    """A training loss became NaN or infinite; training stopped before saving the broken weights."""


def check_finite_losses(losses: Mapping[str, Tensor], step: int, what: str = "training") -> None:
    """Raise :class:`TrainingDivergedError` if any of ``losses`` is NaN or infinite.

    One device synchronisation: only the sum is inspected unless it is not finite."""
    if not losses or bool(torch.isfinite(sum(value.detach().float().sum() for value in losses.values()))):
        return
    values = ", ".join(f"{name} {float(value.detach().float().sum()):.4g}" for name, value in losses.items())
    raise TrainingDivergedError(
        f"The {what} loss is not finite at step {step} ({values}). Training stopped; no checkpoint of this "
        "step was written and the saved ones are unchanged. Usual causes: NaN or infinite camera poses or "
        "intrinsics, broken images or masks, or too large learning rates."
    )


@dataclass
class SparseFusionTrainerConfig(TrainerConfig):
    """nerfstudio's trainer configuration, for :class:`SparseFusionTrainer`."""

    _target: Type = field(default_factory=lambda: SparseFusionTrainer)
    max_num_iterations: int = 1000000
    """Total length of the run in steps, counted from step 0. A run resumed with --load-dir trains only
    the steps left, so rerunning the same command finishes the planned run."""


class SparseFusionTrainer(Trainer):
    """nerfstudio's ``Trainer`` with atomic checkpoints, complete-only loading, a run length that
    counts resumed steps, and a stop on non-finite losses (module docstring)."""

    def _load_checkpoint(self) -> None:
        config = self.config
        if config.load_dir is not None:
            path, state = load_checkpoint(config.load_dir, config.load_step)
        elif config.load_checkpoint is not None:
            path, state = config.load_checkpoint, read_checkpoint(config.load_checkpoint)
        else:
            super()._load_checkpoint()  # nothing to load: nerfstudio's message
            return
        self._start_step = int(state["step"]) + 1
        self.pipeline.load_pipeline(state["pipeline"], state["step"])
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {path}")

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written atomically (the temporary file lives in the run folder)."""
        path = checkpoint_path(self.checkpoint_dir, step)
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        save_checkpoint(path, state, staging_dir=self.checkpoint_dir.parent)
        if self.config.save_only_latest_checkpoint:
            for _, older in list_checkpoints(self.checkpoint_dir):
                if older != path:
                    older.unlink()

    def train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        loss, loss_dict, metrics_dict = super().train_iteration(step)
        check_finite_losses(loss_dict, step)
        return loss, loss_dict, metrics_dict

    def train(self) -> None:
        """Train the steps left of the planned run (``max_num_iterations`` in all, from step 0)."""
        planned = self.config.max_num_iterations
        remaining = planned - self._start_step
        if remaining <= 0:
            CONSOLE.print(
                f"Nothing to train: the run is already at step {self._start_step - 1} of its {planned} planned "
                "steps (--max-num-iterations counts the whole run, resumed steps included). Raise "
                "--max-num-iterations to train longer."
            )
            return
        # nerfstudio's loop trains max_num_iterations steps from the resumed step; it reads the
        # value once, when it starts. The progress display and ETA use the planned total.
        self.config.max_num_iterations = remaining
        try:
            super().train()
        finally:
            self.config.max_num_iterations = planned


def last_training_step(trainer: Trainer, first_step: int) -> int:
    """The last step ``trainer`` will train in a run whose first step is ``first_step`` (0, or the
    step after the checkpoint it resumed from: what the pipeline's ``load_pipeline`` was given)."""
    if isinstance(trainer, SparseFusionTrainer):
        return trainer.config.max_num_iterations - 1
    return first_step + trainer.config.max_num_iterations - 1  # nerfstudio counts from the resumed step
