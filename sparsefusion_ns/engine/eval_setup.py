"""Load a trained run for evaluation or export: nerfstudio's ``eval_setup``, made safe.

Used by ``sf-eval`` and ``sf-export-density-mesh``. It differs from ``nerfstudio.utils.eval_utils.eval_setup``
in two ways: the ``config.yml`` is read with the restricted loader of :mod:`.config_files` (a config
file cannot run code), and the checkpoint is the newest *complete* one (:mod:`.checkpoints`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Tuple

import torch

from sparsefusion_ns.engine.checkpoints import load_checkpoint
from sparsefusion_ns.engine.config_files import load_run_config

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.pipelines.base_pipeline import Pipeline


def setup_pipeline(
    config: TrainerConfig, test_mode: Literal["test", "val", "inference"] = "test"
) -> Tuple[Pipeline, Path, int]:
    """Build the pipeline of a run's config and load its checkpoint: (pipeline in eval mode, checkpoint, step)."""
    from nerfstudio.configs.method_configs import all_methods

    if config.method_name in all_methods:  # as nerfstudio's eval_setup: the method's datamanager class
        config.pipeline.datamanager._target = all_methods[config.method_name].pipeline.datamanager._target
    config.load_dir = config.get_checkpoint_dir()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = config.pipeline.setup(device=device, test_mode=test_mode)
    pipeline.eval()
    path, state = load_checkpoint(config.load_dir, config.load_step)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    return pipeline, path, int(state["step"])


def eval_setup(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "test"
) -> Tuple[TrainerConfig, Pipeline, Path, int]:
    """A run's config, pipeline (checkpoint loaded, eval mode), checkpoint path and step."""
    config = load_run_config(config_path)
    pipeline, path, step = setup_pipeline(config, test_mode)
    return config, pipeline, path, step
