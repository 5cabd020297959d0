"""What a teacher-training run shows and records on its main process: a rich progress bar with the
loss, speed and ETA, tensorboard scalars, and image grids (PNG files and tensorboard images)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torchvision.utils import save_image

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.teacher_training.config import TeacherTrainingConfig


class LossWindow:
    """Sums of the loss terms since the last log; :meth:`means` averages them over the window's steps
    and over processes (every process must call it at the same steps) and starts a new window."""

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, values: Dict[str, torch.Tensor]) -> None:
        """Add one step's detached loss terms."""
        for name, value in values.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1

    def means(self, accelerator: Accelerator) -> Dict[str, float]:
        """The window's means, reduced over processes; the window restarts empty."""
        names = sorted(self.sums)
        means = accelerator.reduce(torch.stack([self.sums[n] for n in names]), "mean") / self.steps
        self.sums, self.steps = {}, 0
        return dict(zip(names, means.tolist()))


class TrainingLogger:
    """Main-process outputs: the progress bar, tensorboard scalars and sample grids.

    ``image_tag`` names the grids in tensorboard (what their columns show)."""

    def __init__(
        self,
        config: TeacherTrainingConfig,
        accelerator: Accelerator,
        start_step: int,
        image_tag: str = "samples/context_truth_eft_vldm",
    ) -> None:
        self.output = Path(config.output)
        self.image_tag = image_tag
        self.writer = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                CONSOLE.print("[bold yellow]tensorboard is not installed: no tensorboard logs[/]")
            else:
                self.writer = SummaryWriter(log_dir=str(self.output / "tensorboard"), purge_step=start_step + 1)
        self.progress = None
        if config.progress:
            self.progress = Progress(
                TextColumn(f"[bold]teacher[/] ({config.stage}, {accelerator.num_processes} process(es))"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} steps/s"),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeRemainingColumn(),
                console=CONSOLE,
            )
            self.task = self.progress.add_task(
                "train", total=config.max_steps, completed=start_step, rate=0.0, loss=0.0
            )
            self.progress.start()
        self.rate = 0.0
        self.window_started = time.perf_counter()
        self.window_start_step = start_step

    def progress_step(self, record: Dict[str, float]) -> None:
        # exponential moving average of the speed, robust to the slow first steps
        speed = 1.0 / max(record["seconds"], 1e-9)
        self.rate = speed if self.rate == 0.0 else 0.9 * self.rate + 0.1 * speed
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"], rate=self.rate, loss=record["loss"])

    def scalars(self, step: int, means: Dict[str, float], lr: float) -> None:
        now = time.perf_counter()
        steps_per_second = (step - self.window_start_step) / max(now - self.window_started, 1e-9)
        self.window_started, self.window_start_step = now, step
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(f"loss/{name}" if name != "loss" else "loss/total", value, step)
            self.writer.add_scalar("train/learning_rate", lr, step)
            self.writer.add_scalar("train/steps_per_second", steps_per_second, step)

    def image(self, step: int, grid: torch.Tensor) -> None:
        path = self.output / "samples" / f"step-{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        if self.writer is not None:
            self.writer.add_image(self.image_tag, grid, step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
