"""``sf-train-teacher``: train a SparseFusion teacher (EFT + VLDM) on CO3Dv2 or nerfstudio scenes.

One process (CPU or GPU)::

    sf-train-teacher --data.root /data/co3d --data.categories hydrant --vae sd-v1-3.ckpt --output runs/hydrant

Several GPUs or machines: start the same command through ``accelerate launch``::

    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 \\
        -m sparsefusion_ns.teacher_training.cli --data.root /data/co3d --vae sd-v1-3.ckpt --output runs/hydrant

See ``docs/teacher_training.md``.
"""

from __future__ import annotations

import tyro
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.teacher_training.config import TeacherTrainingConfig
from sparsefusion_ns.teacher_training.trainer import train


def main(config: TeacherTrainingConfig) -> None:
    """Train; configuration and data errors are printed without a traceback and exit with status 1."""
    try:
        train(config)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        CONSOLE.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from error


def entrypoint() -> None:
    """Entry point of the ``sf-train-teacher`` console script."""
    tyro.extras.set_accent_color("bright_yellow")
    main(tyro.cli(TeacherTrainingConfig))


if __name__ == "__main__":
    entrypoint()
