"""The distillation's target schedules: ``cached`` counts what it promises, resumes by regenerating,
and the expected UNet evaluations per scene of the ``sparsefusion-mini`` schedule are ≥ 10× fewer.

``authors`` (the paper's, one flag away from the default ``cached``) is covered, unchanged, by
test_distillation_training.py and the goldens.
Sizes are those of test_distillation_training.py: a random tiny teacher, a 9-camera pool, 6
iterations of which steps 3-5 distil the diffusion model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import tyro

from sparsefusion_ns.distillation.config import DistillationConfig
from sparsefusion_ns.distillation.target_cache import annealed_max_start_time, expected_unet_evals
from sparsefusion_ns.plugin.method_configs import sparsefusion_config, sparsefusion_mini_config
from tests.test_distillation_training import (
    BOOTSTRAP,
    ITERATIONS,
    POOL_SIZE,
    distillation_config,
    reseed_at,
    run,
    seed_everything,
    step_b,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

REFRESH_EVERY = 2  # regenerations at steps 3 and 5 of an uninterrupted run
DDIM_STEPS = 2
BATCH = 4  # 9 cameras: batches of 4, 4 and 1


def cached_config(scene: Path, output: Path, teacher: Path, **kwargs):
    config = distillation_config(scene, output, teacher, None, save_every=1, **kwargs)
    distillation = config.pipeline.model.distillation
    distillation.use_perceptual_loss = False
    distillation.schedule = "cached"
    distillation.cached.refresh_every = REFRESH_EVERY
    distillation.cached.ddim_steps = DDIM_STEPS
    distillation.cached.batch_size = BATCH
    return config


@pytest.fixture(scope="module")
def cached_run(scene, teacher_folder, tmp_path_factory):
    config = cached_config(scene, tmp_path_factory.mktemp("runs"), teacher_folder)
    seed_everything()
    trainer = run(config, [reseed_at(BOOTSTRAP + 1)])
    return config, trainer


def test_cached_schedule_counts_every_image_of_a_batch(cached_run):
    config, trainer = cached_run
    step = step_b(trainer)
    assert step.targets is not None and step.targets.refresh_steps == [BOOTSTRAP + 1, BOOTSTRAP + 3]
    totals = step.counters.totals()
    # 2 regenerations · 9 cameras · 2 DDIM steps, counted per image of each batched UNet call
    assert totals.unet_evals == 2 * POOL_SIZE * DDIM_STEPS
    assert totals.unet_evals == expected_unet_evals(config.pipeline.model.distillation, ITERATIONS, POOL_SIZE)
    assert totals.vae_encodes == totals.vae_decodes == 2 * POOL_SIZE
    assert set(step.last_losses) == {"novel_l1_loss", "novel_opacity_loss"}
    assert all(torch.isfinite(value) for value in step.last_losses.values())


def test_resumed_cached_run_regenerates_its_targets(cached_run, scene, teacher_folder, tmp_path):
    reference_config, reference = cached_run
    # resume after step 3 (the first regeneration): the targets are not checkpointed, so the resumed
    # run regenerates them at its first step, 4, and not again (step 5 is 1 < 2 iterations later)
    config = cached_config(scene, tmp_path, teacher_folder, load_dir=reference_config.get_checkpoint_dir())
    config.load_step = BOOTSTRAP + 1
    seed_everything()
    resumed = run(config)
    step = step_b(resumed)
    assert step.targets is not None and step.targets.refresh_steps == [BOOTSTRAP + 2]
    # the checkpointed totals carry the first regeneration; the resumed run adds one of its own
    assert step.counters.totals().unet_evals == 2 * POOL_SIZE * DDIM_STEPS


def test_the_cached_schedule_is_ten_times_cheaper_at_the_mini_schedule():
    mini = sparsefusion_mini_config()
    distillation = mini.pipeline.model.distillation
    pool = distillation.pool
    pool_size = 2 + pool.num_circle_cameras + pool.num_random_cameras  # V = 2 inputs
    assert pool_size == 38
    assert distillation.schedule == "cached"  # the default
    cached = expected_unet_evals(distillation, mini.max_num_iterations, pool_size)
    distillation.schedule = "authors"
    authors = expected_unet_evals(distillation, mini.max_num_iterations, pool_size)
    # 399 diffusion iterations · E[min(max(⌊20t⌋, 1), 10) + 1] = 399 · (1 + 7.2 / 0.99), t ~ U(0, 0.99)
    assert authors == pytest.approx(399 * (1 + 7.2 / 0.99), rel=1e-4)  # 1e-4: the midpoint grid's error
    assert cached == 2 * 38 * 4
    assert authors / cached >= 10


def test_start_time_bound_anneals_over_the_diffusion_phase():
    config = DistillationConfig(bootstrap_iterations=9)
    config.cached.max_start_time, config.cached.final_max_start_time = 0.9, 0.5
    assert annealed_max_start_time(config, 10, last_step=20) == pytest.approx(0.9)
    assert annealed_max_start_time(config, 15, last_step=20) == pytest.approx(0.7)
    assert annealed_max_start_time(config, 20, last_step=20) == pytest.approx(0.5)


def test_cached_is_the_default_and_authors_one_flag_away():
    config = sparsefusion_config()
    assert config.pipeline.model.distillation.schedule == "cached"
    parsed = tyro.cli(
        tyro.conf.FlagConversionOff[type(config)],
        default=config,
        args=[
            "--pipeline.model.distillation.cached.refresh-every", "100",
            "--pipeline.model.distillation.cached.ddim-steps", "5",
        ],
    )  # fmt: skip
    distillation = parsed.pipeline.model.distillation
    assert distillation.schedule == "cached"
    assert (distillation.cached.refresh_every, distillation.cached.ddim_steps) == (100, 5)
    args = ["--pipeline.model.distillation.schedule", "authors"]
    parsed = tyro.cli(tyro.conf.FlagConversionOff[type(config)], default=config, args=args)
    assert parsed.pipeline.model.distillation.schedule == "authors"


def test_config_files_from_before_the_schedule_option_resume_as_authors(tmp_path):
    """A run's config.yml written before ``schedule`` existed: that run used the authors' schedule."""
    import yaml

    from sparsefusion_ns.engine.config_files import load_run_config

    config = sparsefusion_config()
    text = yaml.dump(config)
    line = "\n      schedule: cached\n"  # a field of pipeline.model.distillation
    assert text.count(line) == 1
    path = tmp_path / "config.yml"
    path.write_text(text.replace(line, "\n"))
    assert load_run_config(path).pipeline.model.distillation.schedule == "authors"
    assert (
        yaml.load(path.read_text(), Loader=yaml.Loader).pipeline.model.distillation.schedule == "authors"
    )  # nerfstudio's
    path.write_text(text)
    assert load_run_config(path).pipeline.model.distillation.schedule == "cached"
