"""Run `sparsefusion-tiny` through nerfstudio's own trainer, in-process, for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from nerfstudio.engine.trainer import Trainer, TrainerConfig

from sparsefusion_ns.plugin.method_configs import sparsefusion_tiny_config


def tiny_trainer_config(
    scene: Path,
    output_dir: Path,
    iterations: int,
    input_views: tuple = (0, 4, 8),
    save_every: Optional[int] = None,
    load_dir: Optional[Path] = None,
) -> TrainerConfig:
    config = sparsefusion_tiny_config()
    config.pipeline.datamanager.data = scene
    config.pipeline.datamanager.dataparser.input_views = input_views
    config.output_dir = output_dir
    config.experiment_name = "test"
    config.timestamp = "run"
    config.vis = "tensorboard"
    config.max_num_iterations = iterations
    config.steps_per_save = save_every or iterations
    config.save_only_latest_checkpoint = False
    config.steps_per_eval_batch = 10**9
    config.steps_per_eval_image = 10**9
    config.steps_per_eval_all_images = 10**9
    config.logging.local_writer.enable = False
    config.load_dir = load_dir
    return config


def train(config: TrainerConfig) -> Trainer:
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return trainer
